"""Token buckets: how many replies the DHT node may send, per source and in total.

A KRPC reply is larger than the query that asked for it (a ``find_node`` query of ~60
bytes brings back ~250-450), and UDP source addresses can be forged, so every reply is
something a stranger can aim at a third party. Two layers bound it:

* per source IP (:class:`KeyedBuckets`): one source cannot monopolise the node;
* globally (:class:`TokenBucket`), with separate budgets for *unverified* sources and
  for sources that proved their address by answering one of our queries (a random
  transaction ID only reaches whoever really is at that address). Forged queries from
  any number of addresses share the small unverified budget, while the nodes the DHT
  actually works with keep their own share.

Beyond a bucket the query is dropped unanswered: the asker retries elsewhere, as it
would after a lost datagram.
"""

from __future__ import annotations

from p2pchat.core.budget import KeyedBuckets, TokenBucket

__all__ = ["KeyedBuckets", "TokenBucket"]
