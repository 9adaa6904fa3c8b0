"""End-to-end encrypted group chat with no server (sans-IO).

Members carry each other's messages: any member that holds a message hands it to any
member that lacks it, so a message reaches everyone who comes online even after its
author has gone.  See docs/groups.md.

* ``ops``: signed membership operations forming a hash DAG;
* ``membership``: the deterministic rule that turns that DAG into a member list;
* ``messages``: signed messages numbered per author, with a Lamport clock;
* ``replica``: one member's bounded view of a group and its sync decisions;
* ``frames``: the ``g…`` frames carried over pairwise sessions;
* ``ranges``, ``codec``: small helpers.
"""

from p2pchat.core.group.membership import GroupState, Membership
from p2pchat.core.group.messages import GroupMessage
from p2pchat.core.group.ops import Op
from p2pchat.core.group.replica import GroupLimits, GroupReplica, Receipt, Summary, SyncPlan

__all__ = [
    "GroupLimits",
    "GroupMessage",
    "GroupReplica",
    "GroupState",
    "Membership",
    "Op",
    "Receipt",
    "Summary",
    "SyncPlan",
]
