"""A group's member list as a deterministic function of its operation DAG.

Every member holds the same set of signed operations once they have met (directly or
through others), and computes the member list from that set alone, so the order in
which operations arrived cannot matter.  The rules (docs/groups.md explains them with
examples):

1. **Linear order.** Operations are ordered topologically (an operation after every
   operation it names as parent, directly or transitively), ties broken by the smaller
   operation id (Kahn's algorithm with a min-heap).  Adding operations never changes
   the relative order of the ones already there, because new operations are never
   ancestors of old ones.

2. **Authority at the causal point.** An operation is allowed only if its author had the
   needed role in the state computed (by these same rules) from the operation's
   ancestors: admins add, remove, rename and promote; any member may leave.  An
   operation that was not allowed there is refused outright and never stored: every
   member reaches the same verdict, since an operation's ancestors never change.

3. **Removal wins.** Two operations are *concurrent* when neither is an ancestor of the
   other.  A removal ``q`` (``remove`` or ``leave``) *attacks* a removal ``r`` when
   ``q`` removes ``r``'s author concurrently with ``r``, unless ``r`` removes ``q``'s
   author (two admins removing each other at once both go).  The *effective* removals
   are those of the grounded extension of this attack graph (removals attacked only by
   defeated removals win; a removal attacked by a winner is void), with undecided ones
   (odd cycles) counted as effective: when in doubt, the member goes.
4. Every other operation (``add``, ``promote``, ``rename``) is *void* when an effective
   removal of its author is concurrent with it, and an ``add`` or ``promote`` is void
   when an effective removal of its target is concurrent with it: a removal beats a
   concurrent re-add, and a removed admin's concurrent changes do not count.
5. The state is the effect of the non-void operations applied in the linear order.
   A removed member's ``cutoff`` (the highest of its message numbers the remover had, or
   the leaver's own last number) bounds which of its messages are still accepted.

Why grounded semantics rather than "first in the linear order wins": a removed admin can
always *claim* concurrency by naming old parents (backdating), and it can grind operation
ids to sort first.  With these rules a backdated removal by a removed admin is attacked by
the removal that removed it and is void, except against the very admin that removed it,
and backdating cannot save its author.  So a removed admin can at most take its remover
out with it; see docs/groups.md for what each role can and cannot do.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from p2pchat.core.errors import LocalProtocolError, RemoteProtocolError
from p2pchat.core.group.ops import MAX_PARENTS, NONCE_SIZE, Op, OpKind, Role, WireOp, sign_op

__all__ = [
    "MAX_MEMBERS",
    "MAX_OPS",
    "MAX_ORPHANS",
    "GroupState",
    "Membership",
    "new_group",
]

MAX_MEMBERS = 256
MAX_OPS = 1024
MAX_ORPHANS = 64
_STATE_CACHE = 64


@dataclass(frozen=True, eq=True)
class GroupState:
    """The group as of some set of operations: name, members with roles, and the
    message cutoff of each member that was removed or left."""

    name: str
    members: dict[bytes, Role] = field(default_factory=dict)
    removed: dict[bytes, int] = field(default_factory=dict)

    def role(self, key: bytes) -> Role | None:
        return self.members.get(key)

    def is_member(self, key: bytes) -> bool:
        return key in self.members

    def is_admin(self, key: bytes) -> bool:
        return self.members.get(key) == "admin"

    @property
    def admins(self) -> tuple[bytes, ...]:
        return tuple(sorted(k for k, r in self.members.items() if r == "admin"))


class Membership:
    """The operation DAG of one group and the state it resolves to.

    Operations whose parents have not arrived yet are kept aside (at most
    ``MAX_ORPHANS``) and inserted once they can be; at most ``MAX_OPS`` are stored.
    """

    def __init__(
        self,
        genesis: Op,
        *,
        max_ops: int = MAX_OPS,
        max_orphans: int = MAX_ORPHANS,
        max_members: int = MAX_MEMBERS,
    ) -> None:
        if genesis.kind != "create":
            raise RemoteProtocolError("a group starts with its create operation")
        self.group_id = genesis.id
        self.max_ops = max_ops
        self.max_orphans = max_orphans
        self.max_members = max_members
        self._ops: list[Op] = []
        self._index: dict[bytes, int] = {}
        self._anc: list[int] = []  # bitset of each operation's ancestors (by index)
        self._heads: set[bytes] = set()
        self._order: list[int] = []
        self._orphans: OrderedDict[bytes, Op] = OrderedDict()
        self._states: OrderedDict[int, GroupState] = OrderedDict()
        self._append(genesis, 0)

    # ------------------------------------------------------------- reading
    @property
    def genesis(self) -> Op:
        return self._ops[0]

    @property
    def heads(self) -> tuple[bytes, ...]:
        return tuple(sorted(self._heads))

    def __len__(self) -> int:
        return len(self._ops)

    def __contains__(self, op_id: object) -> bool:
        return op_id in self._index

    def get(self, op_id: bytes) -> Op | None:
        i = self._index.get(op_id)
        return None if i is None else self._ops[i]

    def ordered(self) -> Iterator[Op]:
        """Every stored operation, parents before children (the linear order)."""
        for i in self._order:
            yield self._ops[i]

    def wire(self) -> list[WireOp]:
        return [op.wire for op in self.ordered()]

    @property
    def orphan_count(self) -> int:
        return len(self._orphans)

    def state(self) -> GroupState:
        return self._resolve((1 << len(self._ops)) - 1)

    def state_at(self, heads: Iterable[bytes]) -> GroupState:
        """The state as of the given (known) operations and their ancestors."""
        return self._resolve(self._closure(heads))

    def knows(self, heads: Iterable[bytes]) -> bool:
        return all(h in self._index for h in heads)

    def missing_for(
        self, their_heads: Iterable[bytes], *, upto: Iterable[bytes] | None = None
    ) -> list[Op]:
        """Operations a member whose heads are ``their_heads`` lacks, parents first;
        with ``upto``, only those among the given operations and their ancestors.

        Heads we do not know are skipped: that member has operations we lack, and the
        ones it names that we know bound what it certainly has."""
        have = self._closure(h for h in their_heads if h in self._index)
        within = -1 if upto is None else self._closure(h for h in upto if h in self._index)
        return [self._ops[i] for i in self._order if not have >> i & 1 and within >> i & 1]

    # ------------------------------------------------------------- writing
    def add(self, op: Op, *, trusted: bool = False) -> list[Op]:
        """Store a verified operation if it is allowed; return every operation stored as
        a result (it, and any waiting operations it completed), in linear order.

        ``RemoteProtocolError`` if the operation belongs to another group, was not
        allowed at its causal point, or the log is full.  ``trusted`` skips the
        authority check for operations reloaded from our own store, which were checked
        when they first arrived.
        """
        if op.group_id != self.group_id:
            raise RemoteProtocolError("operation belongs to another group")
        if op.id in self._index or op.id in self._orphans:
            return []
        if op.kind == "create":
            raise RemoteProtocolError("a group has exactly one create operation")
        if not all(p in self._index for p in op.parents):
            if len(self._orphans) >= self.max_orphans:
                self._orphans.popitem(last=False)
            self._orphans[op.id] = op
            return []
        added = [self._insert(op, trusted=trusted)]
        progress = True
        while progress and self._orphans:
            progress = False
            for oid, orphan in list(self._orphans.items()):
                if all(p in self._index for p in orphan.parents):
                    del self._orphans[oid]
                    progress = True
                    try:
                        added.append(self._insert(orphan, trusted=trusted))
                    except RemoteProtocolError:
                        pass  # an orphan that turns out not to be allowed is dropped
        return added

    def propose(
        self,
        sign: Callable[[bytes], bytes],
        *,
        kind: OpKind,
        author: bytes,
        at: float,
        target: bytes | None = None,
        role: Role | None = None,
        name: str | None = None,
        cutoff: int = 0,
    ) -> Op:
        """Sign a new operation on top of the current heads and store it.

        ``LocalProtocolError`` if the author may not do it (checked before signing, so we
        never publish an operation every member would refuse)."""
        parents = tuple(sorted(self._heads)[:MAX_PARENTS])
        state = self.state_at(parents)
        probe = Op(
            id=b"",
            group_id=self.group_id,
            kind=kind,
            author=author,
            parents=parents,
            at=at,
            target=author if kind == "leave" else target,
            role=role,
            name=name,
            cutoff=cutoff,
        )
        problem = self._refusal(probe, state)
        if problem is not None:
            raise LocalProtocolError(problem)
        if len(self._ops) >= self.max_ops:
            raise LocalProtocolError("this group's operation log is full")
        op = sign_op(
            sign,
            group_id=self.group_id,
            kind=kind,
            author=author,
            parents=parents,
            at=at,
            target=target,
            role=role,
            name=name,
            cutoff=cutoff,
        )
        self._insert(op)
        return op

    # ------------------------------------------------------------ internals
    def _closure(self, heads: Iterable[bytes]) -> int:
        bits = 0
        for h in heads:
            i = self._index[h]
            bits |= self._anc[i] | (1 << i)
        return bits

    def _refusal(self, op: Op, state: GroupState) -> str | None:
        """Why ``op`` is not allowed in ``state`` (None: allowed)."""
        role = state.role(op.author)
        if op.kind == "leave":
            return None if role is not None else "only a member can leave"
        if role != "admin":
            return f"only an admin may {op.kind}"
        assert op.target is not None or op.kind == "rename"
        if op.kind == "add":
            if op.target is not None and state.is_member(op.target):
                return "already a member"
            if len(state.members) >= self.max_members:
                return f"a group has at most {self.max_members} members"
        elif op.kind == "remove":
            if op.target is None or not state.is_member(op.target):
                return "not a member"
        elif op.kind == "promote":
            if op.target is None or state.role(op.target) != "member":
                return "only a member can be promoted"
        return None

    def _insert(self, op: Op, *, trusted: bool = False) -> Op:
        if len(self._ops) >= self.max_ops:
            raise RemoteProtocolError("the group's operation log is full")
        past = self._closure(op.parents)
        problem = None if trusted else self._refusal(op, self._resolve(past))
        if problem is not None:
            raise RemoteProtocolError(f"{op.kind} not allowed at its causal point: {problem}")
        self._append(op, past)
        return op

    def _append(self, op: Op, past: int) -> None:
        self._index[op.id] = len(self._ops)
        self._ops.append(op)
        self._anc.append(past)
        self._heads.difference_update(op.parents)
        self._heads.add(op.id)
        self._place(len(self._ops) - 1)

    def _place(self, new: int) -> None:
        """Insert a new operation into the linear order (Kahn's algorithm, smallest id
        first among the ready ones) without recomputing it.

        The new operation has no descendants, so the others keep their relative order.
        It becomes ready right after its last parent; from there, Kahn's algorithm would
        pop it at the first step whose popped operation has a larger id (that one is the
        smallest of the other ready operations, so only it needs comparing)."""
        op = self._ops[new]
        position = {i: k for k, i in enumerate(self._order)}
        start = max((position[self._index[p]] + 1 for p in op.parents), default=0)
        for k in range(start, len(self._order)):
            if self._ops[self._order[k]].id > op.id:
                self._order.insert(k, new)
                return
        self._order.append(new)

    def _concurrent(self, a: int, b: int) -> bool:
        return a != b and not (self._anc[b] >> a & 1) and not (self._anc[a] >> b & 1)

    def _resolve(self, bits: int) -> GroupState:
        cached = self._states.get(bits)
        if cached is not None:
            self._states.move_to_end(bits)
            return cached
        state = self._compute(bits)
        self._states[bits] = state
        if len(self._states) > _STATE_CACHE:
            self._states.popitem(last=False)
        return state

    def _effective_removals(self, order: list[int]) -> set[int]:
        removals = [i for i in order if self._ops[i].is_removal]
        by_target: dict[bytes, list[int]] = {}
        for i in removals:
            target = self._ops[i].target
            assert target is not None
            by_target.setdefault(target, []).append(i)
        attackers: dict[int, list[int]] = {}
        for r in removals:
            op = self._ops[r]
            attackers[r] = [
                q
                for q in by_target.get(op.author, ())
                if self._concurrent(q, r) and self._ops[q].author != op.target
            ]
        won: set[int] = set()
        lost: set[int] = set()
        changed = True
        while changed:
            changed = False
            for r in removals:
                if r in won or r in lost:
                    continue
                if any(q in won for q in attackers[r]):
                    lost.add(r)
                    changed = True
                elif all(q in lost for q in attackers[r]):
                    won.add(r)
                    changed = True
        return {r for r in removals if r not in lost}

    def _compute(self, bits: int) -> GroupState:
        order = [i for i in self._order if bits >> i & 1]
        effective = self._effective_removals(order)
        removed_by: dict[bytes, list[int]] = {}
        for e in effective:
            target = self._ops[e].target
            assert target is not None
            removed_by.setdefault(target, []).append(e)

        def removed_concurrently(key: bytes | None, i: int) -> bool:
            return key is not None and any(self._concurrent(e, i) for e in removed_by.get(key, ()))

        name = ""
        members: dict[bytes, Role] = {}
        removed: dict[bytes, int] = {}
        for i in order:
            op = self._ops[i]
            if op.kind == "create":
                members[op.author] = "admin"
                name = op.name or ""
                continue
            if op.is_removal:
                if i in effective:
                    assert op.target is not None
                    members.pop(op.target, None)
                    removed[op.target] = max(removed.get(op.target, 0), op.cutoff)
                continue
            if removed_concurrently(op.author, i):
                continue
            if op.kind in ("add", "promote") and removed_concurrently(op.target, i):
                continue
            if op.kind == "add":
                assert op.target is not None and op.role is not None
                current = members.get(op.target)
                members[op.target] = "admin" if "admin" in (current, op.role) else "member"
                removed.pop(op.target, None)
            elif op.kind == "promote":
                assert op.target is not None
                if op.target in members:
                    members[op.target] = "admin"
            elif op.kind == "rename":
                name = op.name or name
        return GroupState(name=name, members=members, removed=removed)


def new_group(
    sign: Callable[[bytes], bytes], *, author: bytes, name: str, at: float, nonce: bytes
) -> Membership:
    """Found a group: its create operation, signed by ``author``, who is its first admin."""
    if len(nonce) != NONCE_SIZE:
        raise LocalProtocolError(f"the create nonce is {NONCE_SIZE} random bytes")
    genesis = sign_op(
        sign, group_id=b"", kind="create", author=author, parents=(), at=at, name=name,
        nonce=nonce,
    )
    return Membership(genesis)
