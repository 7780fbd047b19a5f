"""The Raft rules: one node's state, fed ticks and messages, producing messages.

:class:`Raft` is the protocol and nothing else. It never reads a clock (time is :meth:`tick`),
never touches a socket (outgoing messages pile up in :attr:`Raft.msgs`) or a disk (new entries
stay unstable in :class:`~.log.RaftLog` until the driver persists them) and draws its election
timeouts from its own seeded ``random.Random``. :class:`~.node.RawNode` wraps it in the
Ready/advance API a driver uses.

Section numbers refer to the Raft paper (Ongaro & Ousterhout, 2014: "§5.3") and to Ongaro's
thesis (2014: "thesis §9.6").
"""

from __future__ import annotations

import dataclasses
import enum
import random

from .log import LogDiverged, RaftLog
from .membership import InvalidConfigChange, Membership, check_single_change
from .messages import (
    Entry,
    EntryType,
    Message,
    MsgApp,
    MsgAppResp,
    MsgHeartbeat,
    MsgHeartbeatResp,
    MsgPreVote,
    MsgPreVoteResp,
    MsgSnap,
    MsgTimeoutNow,
    MsgVote,
    MsgVoteResp,
    NodeId,
    SnapshotMeta,
)
from .progress import Progress
from .storage import Storage
from .validate import InvalidMessage, check_message

#: How far above this node's term a message's term may be. A peer that pushed every node's
#: term to the range's end (MAX_TERM) would leave no term to campaign in; one step at a time of
#: at most this much, it would need 2**42 forged messages. An honest cluster never moves a
#: million terms past a member that keeps hearing it (pre-vote keeps a partitioned node's term
#: where it was). Not applied by a node with an empty log (a new node has term 0, and a
#: cluster's term may be past 2**20) nor by an orphaned one (``Raft.orphaned``: one restored
#: from an old backup hears its leader's term and drops it until then): neither has a cluster
#: of its own to protect, and the nodes that do (they hear their leader) still apply it, so a
#: term pushed up on such a node travels no further.
MAX_TERM_JUMP = 2**20

#: Contradicting appends (entries that contradict what this node committed) from the leader of
#: its term, in a row and over at least an election timeout, before the node concludes that its
#: log diverged from the cluster's (:class:`~.log.LogDiverged`). One forged message must not
#: stop a healthy node; a real leader whose log lacks what this node committed (a forced new
#: cluster) sends the contradiction again at every heartbeat answer.
DIVERGENCE_APPENDS = 3


class Role(enum.Enum):
    """A node's role. PRE_CANDIDATE is the pre-vote phase (thesis §9.6)."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class NotLeader(Exception):
    """Only the leader accepts proposals, membership changes and transfers.

    Attributes:
        leader: The leader this node believes in (a hint for where to retry), or None.
    """

    def __init__(self, leader: NodeId | None) -> None:
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader


class ProposalDropped(Exception):
    """The leader refuses the proposal for now (a leadership transfer is under way); retry."""


@dataclasses.dataclass(frozen=True)
class RaftConfig:
    """Parameters of one node.

    Attributes:
        node_id: This node's stable id.
        election_tick: Minimum election timeout in ticks. Each follower waits a random number of
            ticks in ``[election_tick, 2 * election_tick)`` before campaigning (§5.2).
        heartbeat_tick: Ticks between leader heartbeats; must be well below ``election_tick``.
        seed: Mixed with ``node_id`` to seed the node's own ``random.Random``: same seed, same
            timeouts, so simulations replay exactly.
        pre_vote: Run the pre-vote phase before a real election (thesis §9.6).
        check_quorum: A leader that has not heard from a quorum of voters in ``election_tick``
            ticks steps down, and a node that has heard from a leader within ``election_tick``
            ticks ignores vote requests (thesis §6.2 and §4.2.3).
        max_entries_per_msg: Cap on the entries of one MsgApp.
        applied: Last index the driver's state machine had applied before a restart; committed
            entries after it are handed out again.
        initial_membership: Membership in force while the log holds no CONFIG entry. Empty for a
            node waiting to be added; see :func:`~.node.bootstrap` for a new cluster.
    """

    node_id: NodeId
    election_tick: int = 10
    heartbeat_tick: int = 2
    seed: int = 0
    pre_vote: bool = True
    check_quorum: bool = True
    max_entries_per_msg: int = 64
    applied: int = 0
    initial_membership: Membership = Membership()

    def __post_init__(self) -> None:
        if not self.node_id:
            raise ValueError("node_id must be non-empty")
        if not 0 < self.heartbeat_tick < self.election_tick:
            raise ValueError("need 0 < heartbeat_tick < election_tick")


class Raft:
    """The state of one Raft node and the rules that change it.

    Not thread-safe: one task owns it. Every public method runs to completion synchronously;
    its effects are visible in :attr:`msgs`, the log's unstable entries and commit index, and the
    term/vote fields, which :class:`~.node.RawNode` turns into a Ready.

    Args:
        config: Node parameters.
        storage: Persisted hard state and log, read once here and later for old entries.
    """

    def __init__(self, config: RaftConfig, storage: Storage) -> None:
        self.id = config.node_id
        self.cfg = config
        self._rng = random.Random(f"{config.node_id}/{config.seed}")
        self.log = RaftLog(storage, config.initial_membership)
        hard = storage.hard_state()
        self.term = hard.term
        self.vote = hard.vote
        # (A snapshot's entries are applied: restoring it restores their effect.)
        self.log.applied = max(self.log.applied, min(config.applied, self.log.committed))
        self.role = Role.FOLLOWER
        self.lead: NodeId | None = None
        self.msgs: list[Message] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = 0
        self.votes: dict[NodeId, bool] = {}
        self.prs: dict[NodeId, Progress] = {}
        self.lead_transferee: NodeId | None = None
        self.transfer_elapsed = 0
        self.term_start_index = 0  # index of this leader's no-op entry
        # Leader: entries that a follower handed over (index -> that follower). Only it waits
        # for their commit; see _announce_commit.
        self.handed_over: dict[int, NodeId] = {}
        # Leader: followers to send their handed-over writes once this node has them on disk
        # (so the append can say they commit when stored; see _stored_commit).
        self.after_persist: set[NodeId] = set()
        # The leader of the current term once known (only one can exist, §5.2): same-term
        # appends and heartbeats from anyone else are forged and dropped. Unlike ``lead``,
        # kept through a pre-vote round or a CheckQuorum step-down in the same term.
        self.term_leader: NodeId | None = None
        self.ticks = 0   # ticks since start: how long a contradiction has lasted
        # Ticks since the last append or heartbeat of a leader was taken (see orphaned).
        self.leader_ticks = 0
        # Contradicting appends from the term's leader since its last consistent one, and the
        # tick of the first (see DIVERGENCE_APPENDS).
        self.contradictions = 0
        self.contradicted_at = 0
        self._reset_timeout()

    # --- queries --------------------------------------------------------------------------------

    @property
    def membership(self) -> Membership:
        """Configuration in force: the latest in the log (thesis §4.1)."""
        return self.log.membership()

    @property
    def orphaned(self) -> bool:
        """Whether this node has heard no leader for two maximal election timeouts.

        Then it takes appends and heartbeats from a node outside its configuration: the
        leader may be one added by a configuration this node has not received yet (thesis
        §4.1: a server accepts AppendEntries from a leader not in its latest configuration;
        simulation seed 4606: a voter that missed the entry adding the new leader refused it
        for ever). A node with a leader it hears from refuses non-members (issue 18).
        """
        return self.role is not Role.LEADER and self.leader_ticks >= 2 * self.cfg.election_tick

    def promotable(self) -> bool:
        """Whether this node may campaign: only voters do, never learners or outsiders."""
        return self.id in self.membership.voters

    # --- time -----------------------------------------------------------------------------------

    def tick(self) -> None:
        """Advances logical time by one tick."""
        self.ticks += 1
        self.leader_ticks += 1
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self.election_elapsed += 1
            if self.promotable() and self.election_elapsed >= self.randomized_timeout:
                self.campaign()

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.lead_transferee is not None:
            self.transfer_elapsed += 1
            if self.transfer_elapsed >= self.cfg.election_tick:
                self.lead_transferee = None  # the target did not take over in time: abort
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                # CheckQuorum (thesis §6.2): a leader cut off from a majority steps down instead
                # of serving stale reads and accepting proposals that can never commit.
                active = {i for i, pr in self.prs.items() if pr.recent_active}
                active.add(self.id)
                if not self.membership.has_quorum(active):
                    self._become_follower(self.term, None)
                    return
                for i, pr in self.prs.items():
                    pr.recent_active = i == self.id
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat()

    # --- role changes -------------------------------------------------------------------------------

    def _reset_timeout(self) -> None:
        # §5.2: randomized timeouts make split votes rare and resolve them quickly.
        self.randomized_timeout = self.cfg.election_tick + self._rng.randrange(self.cfg.election_tick)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = None  # a vote is for one term only (Figure 2)
            self.term_leader = None
            self.contradictions = 0
        self.lead = None
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_timeout()
        self.votes = {}
        self.prs = {}
        self.lead_transferee = None
        self.transfer_elapsed = 0
        self.handed_over = {}
        self.after_persist = set()

    def _become_follower(self, term: int, lead: NodeId | None) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.lead = lead
        if lead is not None:
            self.term_leader = lead

    def campaign(self, transfer: bool = False) -> None:
        """Starts an election: the pre-vote phase first unless disabled or ``transfer``.

        Args:
            transfer: Campaign on the leader's :class:`MsgTimeoutNow` (thesis §3.10): skip
                pre-vote and ask voters to ignore their leader lease.
        """
        if self.promotable():
            self._start_election(pre=self.cfg.pre_vote and not transfer, transfer=transfer)

    def _start_election(self, pre: bool, transfer: bool) -> None:
        if pre:
            # Pre-vote (thesis §9.6): ask at term+1 without moving to it. Only if a majority
            # would vote for us does the real election start, so a node back from a partition
            # cannot force the healthy cluster into a new term.
            self._reset(self.term)
            self.role = Role.PRE_CANDIDATE
            ask_term = self.term + 1
        else:
            self._reset(self.term + 1)
            self.role = Role.CANDIDATE
            self.vote = self.id
            ask_term = self.term
        if self._poll(self.id, True) == "won":
            self._on_won()
            return
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for v in sorted(self.membership.voters - {self.id}):
            if pre:
                self.msgs.append(MsgPreVote(self.id, v, ask_term, last_index, last_term))
            else:
                self.msgs.append(MsgVote(self.id, v, ask_term, last_index, last_term, transfer))

    def _poll(self, voter: NodeId, granted: bool) -> str:
        """Records a (pre-)vote. Returns "won", "lost" or "pending". Only voters' votes count."""
        if voter in self.membership.voters:
            self.votes.setdefault(voter, granted)
        yes = sum(1 for v in self.votes.values() if v)
        no = len(self.votes) - yes
        quorum = self.membership.quorum()
        if yes >= quorum:
            return "won"
        if no > len(self.membership.voters) - quorum:
            return "lost"
        return "pending"

    def _on_won(self) -> None:
        if self.role is Role.PRE_CANDIDATE:
            self._start_election(pre=False, transfer=False)  # pre-vote passed: the real one
        else:
            self._become_leader()

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.lead = self.term_leader = self.id
        last = self.log.last_index()
        for member in self.membership.members | {self.id}:
            self.prs[member] = Progress(next=last + 1)
        self.prs[self.id].match = self.log.stable_last_index()
        self.prs[self.id].recent_active = True
        # A new leader commits a no-op of its own term at once (§8, thesis §6.4): entries of
        # earlier terms commit only under an entry of the current term (§5.4.2).
        self.term_start_index = last + 1
        self._append_entries([Entry(index=last + 1, term=self.term, type=EntryType.NOOP)])

    # --- the message handler ------------------------------------------------------------------------

    def step(self, m: Message) -> str | None:
        """Handles one message from a peer.

        Messages may arrive late, twice, out of order or never; each rule below holds anyway.
        A message that no honest peer sends (out of range, the wrong types, a same-term append
        from a node that is not the term's leader, an append contradicting committed entries)
        is dropped: it changes nothing, and never raises (the transport checks the same
        things first; this is the second line).

        Returns:
            Why the message was dropped, or None when it was handled.

        Raises:
            LogDiverged: the leader of this term kept contradicting committed entries (see
                :data:`DIVERGENCE_APPENDS`).
        """
        try:
            check_message(m)
        except InvalidMessage as exc:
            return str(exc)
        if m.term > self.term + MAX_TERM_JUMP and self.log.last_index() > 0 and not self.orphaned:
            return f"term {m.term} is more than {MAX_TERM_JUMP} above this node's {self.term}"
        if m.term > self.term:
            if isinstance(m, (MsgVote, MsgPreVote)):
                forced = isinstance(m, MsgVote) and m.transfer
                in_lease = (self.cfg.check_quorum and self.lead is not None
                            and self.election_elapsed < self.cfg.election_tick)
                if in_lease and not forced:
                    # Thesis §4.2.3: a server that heard from a leader within the minimum
                    # election timeout neither updates its term nor grants its vote, so a
                    # removed or partitioned server cannot disrupt a healthy leader.
                    return None
            if isinstance(m, MsgPreVote):
                pass  # a pre-vote never changes anyone's term
            elif isinstance(m, MsgPreVoteResp) and not m.reject:
                pass  # granted at our future term: the term moves only if we win (campaign)
            else:
                lead = m.src if isinstance(m, (MsgApp, MsgHeartbeat, MsgSnap)) else None
                self._become_follower(m.term, lead)  # §5.1: a higher term always wins
        elif m.term < self.term:
            if isinstance(m, (MsgApp, MsgHeartbeat, MsgSnap)) and (self.cfg.check_quorum or self.cfg.pre_vote):
                # A stale leader (e.g. on the minority side of a heal): tell it our term so it
                # steps down. Without this, pre-vote would leave it stuck, since we never
                # disrupt it with a higher-term vote request.
                self.msgs.append(MsgAppResp(self.id, m.src, self.term, index=0, reject=True))
            elif isinstance(m, MsgPreVote):
                self.msgs.append(MsgPreVoteResp(self.id, m.src, self.term, reject=True))
            return None

        if isinstance(m, (MsgVote, MsgPreVote)):
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            return self._step_leader(m)
        elif isinstance(m, (MsgApp, MsgHeartbeat, MsgSnap)):
            if self.term_leader is not None and m.src != self.term_leader:
                # One leader per term (Election Safety, §5.2): this node already follows
                # another in this term, so this one is forged (or a bug). Following it would
                # take entries no quorum holds.
                return (f"{type(m).__name__} from {m.src} in term {self.term}, whose leader is "
                        f"{self.term_leader}")
            # Same-term AppendEntries means a legitimate leader exists (§5.2): (pre-)candidates
            # give up, and everyone follows it.
            if self.role is not Role.FOLLOWER or self.lead != m.src:
                self._become_follower(self.term, m.src)
            self.election_elapsed = 0
            self.leader_ticks = 0
            if isinstance(m, MsgApp):
                return self._handle_append(m)
            if isinstance(m, MsgSnap):
                self._handle_snapshot(m)
                return None
            self._handle_heartbeat(m)
        elif isinstance(m, MsgPreVoteResp) and self.role is Role.PRE_CANDIDATE:
            # A grant counts only for the term we are asking about now (not an older round).
            if m.reject or m.term == self.term + 1:
                self._on_poll(m.src, not m.reject)
        elif isinstance(m, MsgVoteResp) and self.role is Role.CANDIDATE:
            self._on_poll(m.src, not m.reject)
        elif isinstance(m, MsgTimeoutNow) and self.role is Role.FOLLOWER:
            if m.src != self.term_leader:
                # Only the leader hands leadership over: from anyone else it would start an
                # election that ignores the leader lease.
                return f"MsgTimeoutNow from {m.src}, not the leader of term {self.term}"
            # Thesis §3.10: the leader says our log is up to date; campaign at once.
            self.campaign(transfer=True)
        return None

    def _on_poll(self, voter: NodeId, granted: bool) -> None:
        result = self._poll(voter, granted)
        if result == "won":
            self._on_won()
        elif result == "lost":
            self._become_follower(self.term, None)

    def _handle_vote_request(self, m: MsgVote | MsgPreVote) -> None:
        pre = isinstance(m, MsgPreVote)
        # At most one vote per term (§5.2); a pre-vote for a future term commits us to nothing.
        can_vote = (self.vote == m.src
                    or (self.vote is None and self.lead is None)
                    or (pre and m.term > self.term))
        # Election restriction (§5.4.1): only a candidate whose log is at least as up-to-date
        # as ours can hold every committed entry.
        if can_vote and self.log.is_up_to_date(m.last_index, m.last_term):
            if pre:
                self.msgs.append(MsgPreVoteResp(self.id, m.src, m.term, reject=False))
            else:
                self.msgs.append(MsgVoteResp(self.id, m.src, m.term, reject=False))
                self.vote = m.src
                self.election_elapsed = 0  # granting a vote resets the timer (Figure 2)
        elif pre:
            self.msgs.append(MsgPreVoteResp(self.id, m.src, self.term, reject=True))
        else:
            self.msgs.append(MsgVoteResp(self.id, m.src, self.term, reject=True))

    # --- follower side of replication -----------------------------------------------------------

    def _handle_append(self, m: MsgApp) -> str | None:
        contradiction = self._contradiction(m)
        if contradiction is not None:
            return self._on_contradiction(m, contradiction)
        self.contradictions = 0
        if m.prev_index < self.log.committed:
            # Everything up to our commit index is settled; tell the leader where we stand.
            if not m.commit_only:
                self.msgs.append(MsgAppResp(self.id, m.src, self.term, index=self.log.committed))
            return None
        last_new = self.log.maybe_append(m.prev_index, m.prev_term, m.entries)
        if last_new is None:
            # Log Matching check failed (§5.3). Hint the last entry at or below prev_index whose
            # term is at most prev_term: nothing after it can match the leader's log.
            hint_index, hint_term = self.log.find_conflict_by_term(m.prev_index, m.prev_term)
            self.msgs.append(MsgAppResp(self.id, m.src, self.term, index=m.prev_index,
                                        reject=True, hint_index=hint_index, hint_term=hint_term))
            return None
        # Figure 2 receiver rule 5. Only up to the last entry this message vouches for: entries
        # after it may be stale leftovers that the leader has not yet overwritten. With
        # stored_commit, what our copy makes a quorum of (it is on disk before it is applied:
        # the driver persists a Ready's entries before it applies its committed ones).
        self.log.commit_to(min(max(m.commit, m.stored_commit), last_new))
        if not m.commit_only:
            # The answer to a commit-only append would tell the leader nothing: a lost entry
            # shows up as a rejection of the next append, or at the next heartbeat's answer.
            self.msgs.append(MsgAppResp(self.id, m.src, self.term, index=last_new))
        return None

    def _contradiction(self, m: MsgApp) -> str | None:
        """How ``m`` contradicts an entry this node committed, or None.

        The leader of our term holds every entry we committed (Leader Completeness, §5.4), so
        an append whose previous entry or entries disagree with one of them can only come from
        a log that diverged (a forced new cluster, an old copy of a data dir) or a forger.
        """
        committed = self.log.committed
        held = [(m.prev_index, m.prev_term)] if m.prev_index else []
        for index, term in held + [(e.index, e.term) for e in m.entries]:
            if index > committed:
                break
            mine = self.log.term(index)
            if mine is None:
                continue   # compacted: its effect is in the snapshot, its term is gone
            if mine != term:
                return (f"leader {m.src} has term {term} at entry {index}, where this node "
                        f"committed term {self.log.term(index)} (committed up to {committed})")
        return None

    def _on_contradiction(self, m: MsgApp, what: str) -> str:
        """Drops a contradicting append, unanswered (the leader sends it again at the next
        heartbeat's answer; answering would only have it probe lower at once), and raises
        LogDiverged once the term's leader kept contradicting for long enough."""
        if self.contradictions == 0:
            self.contradicted_at = self.ticks
        self.contradictions += 1
        if self.contradictions >= DIVERGENCE_APPENDS and \
                self.ticks - self.contradicted_at >= self.cfg.election_tick:
            raise LogDiverged(f"{what}; {self.contradictions} such appends in "
                              f"{self.ticks - self.contradicted_at} ticks, none consistent")
        return f"contradicting append dropped ({self.contradictions} in a row): {what}"

    def _handle_snapshot(self, m: MsgSnap) -> None:
        """Follower side of InstallSnapshot (thesis §5.3, its Figure 5.3 receiver rules).

        The driver stepped the message in only once this node held the snapshot, verified.
        A snapshot at or below the commit index says nothing new (a stale or duplicated
        transfer): it changes nothing, and above all never moves the commit index back. One
        whose last entry this log holds (same index and term) keeps the log after it and
        commits up to it. Otherwise the log is replaced by the snapshot, which the driver
        installs before this node answers.
        """
        snap = SnapshotMeta(m.snap_index, m.snap_term, m.config)
        if snap.index <= self.log.committed:
            self.msgs.append(MsgAppResp(self.id, m.src, self.term, index=self.log.committed))
            return
        if self.log.match_term(snap.index, snap.term):
            self.log.commit_to(snap.index)
        else:
            self.log.restore(snap)
        self.msgs.append(MsgAppResp(self.id, m.src, self.term, index=snap.index))

    def _handle_heartbeat(self, m: MsgHeartbeat) -> None:
        # The leader caps a heartbeat's commit at our known match index, so it is in our log.
        # One that reaches our commit index says the term's leader matched our log at least
        # that far (it counted our acknowledgement): whatever contradicted it before was not
        # this leader, so the count of contradictions starts again (an idle leader sends no
        # appends, and three forged contradictions over its term must not add up). A leader
        # whose log really diverged never matched us: its heartbeats carry commit 0.
        if self.log.committed <= m.commit <= self.log.last_index() and m.commit > 0:
            self.contradictions = 0
        self.log.commit_to(min(m.commit, self.log.last_index()))
        self.msgs.append(MsgHeartbeatResp(self.id, m.src, self.term))

    # --- leader side of replication ---------------------------------------------------------------

    def _step_leader(self, m: Message) -> str | None:
        pr = self.prs.get(m.src)
        if pr is None:
            return f"{type(m).__name__} from {m.src}, not a member"
        if isinstance(m, MsgAppResp):
            if m.index > self.log.last_index():
                # No follower matches past this leader's log: counting it would send appends
                # from past the end of the log (and count a quorum that does not exist).
                return f"MsgAppResp from {m.src} claims index {m.index}, past this leader's log"
            pr.recent_active = True
            if m.reject:
                self._on_reject(m, pr)
                return None
            was_paused = pr.probing and pr.paused
            if pr.pending_snapshot and m.index >= pr.pending_snapshot:
                # The member restored the snapshot (or holds the entries after it): append
                # from there (etcd: a snapshot's progress becomes a probe).
                pr.pending_snapshot = 0
                pr.paused = False
            if pr.update(m.index):
                committed = self.log.committed
                if self._maybe_commit():
                    self._announce_commit(committed)
                elif (pr.next <= self.log.last_index() and not pr.deferred) or was_paused:
                    # (A paused follower was told no commit index meanwhile: _send_append
                    # skips it. Tell it now, if only in an empty append. An answer that moves
                    # nothing, an empty probe's, is left to the next heartbeat: without
                    # knowing which commit index it holds, answering it could ping-pong.)
                    self._send_append(m.src, pr, commit_only=True)
                if m.src == self.lead_transferee and pr.match == self.log.last_index():
                    self.msgs.append(MsgTimeoutNow(self.id, m.src, self.term))
        elif isinstance(m, MsgHeartbeatResp):
            pr.recent_active = True
            pr.paused = False
            if pr.match < self.log.last_index():
                if not (pr.deferred and not pr.probing and pr.next == pr.match + 1):
                    # Whatever was sent may have been lost: resend from what is known to match.
                    # (A deferred follower with nothing in flight was sent nothing to lose:
                    # it stays replicating, so its own next write is not held behind a probe.)
                    pr.reset_probe()
                self._send_append(m.src, pr)
        return None

    def _on_reject(self, m: MsgAppResp, pr: Progress) -> None:
        if pr.pending_snapshot:
            return   # answers an append sent before the snapshot: the snapshot's answer decides
        if m.index <= pr.match or (pr.probing and m.index != pr.next - 1):
            return  # stale: answers an append we have moved past
        # Fast backtracking: skip every index the follower's hint proves cannot match.
        probe, _ = self.log.find_conflict_by_term(m.hint_index, m.hint_term)
        pr.reset_probe()
        pr.next = max(pr.match + 1, min(probe + 1, m.index))
        self._send_append(m.src, pr)

    def _maybe_commit(self) -> bool:
        """Advances the commit index to what a majority of voters store. Returns whether it moved."""
        match = {v: self.prs[v].match for v in self.membership.voters if v in self.prs}
        index = self.membership.committed_index(match)
        # §5.4.2 (Figure 8): only an entry of the current term is committed by counting
        # replicas; earlier entries commit indirectly, by the Log Matching Property.
        if index <= self.log.committed or self.log.term(index) != self.term:
            return False
        self.log.commit_to(index)
        return True

    def _send_append(self, to: NodeId, pr: Progress, commit_only: bool = False) -> None:
        """Sends what ``to`` lacks; with ``commit_only``, an empty append to a replicating
        follower asks for no answer (see :class:`MsgApp`). A probe is always answered."""
        if (pr.probing and pr.paused) or pr.pending_snapshot:
            return
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None:
            assert prev < self.log.first_index(), f"next {pr.next} past the log of leader {self.id}"
            self._send_snapshot(to, pr)
            return
        hi = min(self.log.last_index() + 1, pr.next + self.cfg.max_entries_per_msg)
        entries = tuple(self.log.slice(pr.next, hi))
        if hi > self.log.last_index():
            pr.deferred = False   # it is sent all it lacks
        quiet = commit_only and not entries and not pr.probing
        stored = self._stored_commit(to, hi - 1)
        pr.stored_commit = max(pr.stored_commit, stored)
        self.msgs.append(MsgApp(self.id, to, self.term, prev, prev_term, entries, self.log.committed,
                                commit_only=quiet, stored_commit=stored))
        if not quiet:
            pr.answer_due = True
        if pr.probing:
            pr.paused = True
        elif entries:
            pr.next = entries[-1].index + 1  # replicate mode: pipeline the next batch

    def _send_snapshot(self, to: NodeId, pr: Progress) -> None:
        """Sends ``to`` the snapshot: it lacks entries this leader compacted away (thesis §5.3)."""
        snap = self.log.snapshot()
        assert snap is not None, f"leader {self.id} compacted its log without a snapshot"
        pr.pending_snapshot = snap.index
        pr.probing, pr.paused = True, True
        pr.answer_due = True
        self.msgs.append(MsgSnap(self.id, to, self.term, snap.index, snap.term, snap.config))

    def report_snapshot(self, to: NodeId, ok: bool) -> None:
        """The driver's word on a snapshot sent to ``to``: delivered (``ok``; the member's answer
        may still be on its way) or failed. Either way the member is probed again, at its next
        heartbeat's answer at the latest: it gets the entries after the snapshot if it
        installed it, or a snapshot again if not. Does nothing if none was pending."""
        pr = self.prs.get(to)
        if self.role is not Role.LEADER or pr is None or not pr.pending_snapshot:
            return
        pr.pending_snapshot = 0
        pr.reset_probe()
        pr.paused = True   # until an answer: a failed transfer is not retried in a loop

    def _stored_commit(self, to: NodeId, last: int) -> int:
        """What ``to`` may commit once it stores the log up to ``last`` (see
        :attr:`MsgApp.stored_commit`), or 0.

        The commit index this leader would compute on ``to``'s answer, ahead of it: the
        highest index that this leader's own disk (its match is its stable index), ``to``'s
        copy and the copies acknowledged so far put on a quorum of voters, if it is of this
        term (§5.4.2) and past the commit index already known. Such an entry is committed the
        moment ``to`` stores it, whoever learns it first. Not while a membership change is
        uncommitted: the quorum counted must be the one elections will use.
        """
        voters = self.membership.voters
        if to not in voters or self.log.last_config_index() > self.log.committed:
            return 0
        match = {v: self.prs[v].match for v in voters if v in self.prs}
        match[to] = max(match.get(to, 0), last)
        index = self.membership.committed_index(match)
        if index <= self.log.committed or self.log.term(index) != self.term:
            return 0
        return index

    def _bcast_append(self, commit_only: bool = False) -> None:
        for member in sorted(self.prs):
            if member != self.id:
                self._send_append(member, self.prs[member], commit_only)

    def _announce_commit(self, before: int) -> None:
        """Tells followers that the commit index moved past ``before``.

        A follower needs to hear it at once only to answer a write it handed over (its proposer
        waits until the entry is applied there). So when every newly committed entry was handed
        over by some follower, only those followers are told now; the others learn the index
        with their next append or heartbeat (§5.3: the leader's commit index rides on every
        AppendEntries), which saves a message per follower per write under load. The leader's
        own entries (the coordinator's writes, configuration changes, its no-op) are announced
        to everyone at once, as before: any node may act on them.
        """
        committed = self.log.committed
        told: set[NodeId] | None = set()
        for index in range(before + 1, committed + 1):
            origin = self.handed_over.pop(index, None)
            if origin is None:
                told = None
            elif told is not None and origin != self.id:
                pr = self.prs.get(origin)
                if pr is None or pr.stored_commit < index:   # else it committed it itself
                    told.add(origin)
        for member in sorted(self.prs):
            if member == self.id:
                continue
            pr = self.prs[member]
            if told is None or member in told or pr.probing or \
                    (pr.next <= self.log.last_index() and not pr.deferred):
                # (Someone probing or with entries still to take gets a message anyway, but
                # for entries deferred on purpose.)
                self._send_append(member, pr, commit_only=True)

    def _bcast_heartbeat(self) -> None:
        for member in sorted(self.prs):
            if member != self.id:
                pr = self.prs[member]
                if pr.answer_due:
                    # An answered append went out since the last round: it already reset the
                    # member's election timer and its answer counts for CheckQuorum, so a
                    # heartbeat now would be a second message for nothing. A lost append is
                    # still noticed, one round later, by the heartbeat after this one.
                    pr.answer_due = False
                    continue
                commit = min(pr.match, self.log.committed)
                self.msgs.append(MsgHeartbeat(self.id, member, self.term, commit))

    def _append_entries(self, entries: list[Entry], origin: NodeId | None = None) -> None:
        """Leader: appends new entries of its term and replicates them (Leader Append-Only).

        Args:
            origin: The follower that handed the entries over, waiting for them alone: they
                go at once only to the followers :meth:`_write_targets` picks.
        """
        self.log.append(entries)
        if any(e.type is EntryType.CONFIG for e in entries):
            self._sync_progress()
        targets = self._write_targets(origin) if origin is not None else None
        if targets is None:
            self._bcast_append()
            return
        last = self.log.last_index()
        for member in sorted(self.prs):
            if member == self.id:
                continue
            pr = self.prs[member]
            if member == origin:
                # Sent once this node has the entry on disk: the append then tells origin that
                # storing it commits it, which spares the commit notice origin would wait for.
                self.after_persist.add(member)
            elif member in targets or pr.probing or last - pr.match > self.cfg.max_entries_per_msg // 2:
                # (A bystander's lag stays bounded: once it lacks half a message's worth, it
                # is sent them, in one message, as with any other append.)
                self._send_append(member, pr)
            else:
                pr.deferred = True

    def _write_targets(self, origin: NodeId) -> set[NodeId] | None:
        """The followers a write handed over by ``origin`` is sent to now, or None: all.

        ``origin`` must receive it anyway (it waits to apply it) and its answer counts towards
        the commit, so with three voters the leader and ``origin`` are a majority and the third
        voter, a bystander, can take the entry later with whatever it is sent next: its own
        writes, the leader's, or the answer to its next heartbeat. Under load that halves the
        messages per write on the leader and spares the bystander one answer per write (each
        a gRPC stream write on a real node). With more voters, others in id order make up the
        majority. Everyone is sent the entry when ``origin`` is not a replicating voter (its
        answer might not come: the fastest majority should commit it then, as usual).
        """
        voters = self.membership.voters
        if origin == self.id:
            targets: set[NodeId] = set()
        else:
            pr = self.prs.get(origin)
            if origin not in voters or pr is None or pr.probing:
                return None
            targets = {origin}
        need = self.membership.quorum() - 1 - len(targets)   # besides the leader (and origin)
        # Up-to-date voters first: they are sent just the new entry.
        others = sorted(voters - {self.id, origin}, key=lambda v: (self.prs[v].deferred, v)
                        if v in self.prs else (True, v))
        for v in others:
            if need <= 0:
                break
            other = self.prs.get(v)
            if other is not None and not other.probing:
                targets.add(v)
                need -= 1
        return targets if need <= 0 else None

    def _sync_progress(self) -> None:
        members = self.membership.members | {self.id}
        for gone in set(self.prs) - members:
            del self.prs[gone]
        for new in members - set(self.prs):
            self.prs[new] = Progress(next=self.log.last_index(), recent_active=True)

    # --- the driver's requests ------------------------------------------------------------------

    def propose(self, data: bytes, proposal_id: str | None = None, origin: NodeId | None = None) -> Entry:
        """Appends a NORMAL entry (leader only). Committed once a majority of voters store it.

        Args:
            origin: The follower that handed this write over, if any: it alone is told of the
                entry's commit at once (see :meth:`_announce_commit`).

        Returns:
            The new entry; the driver can wait for its index to be applied at its term.

        Raises:
            NotLeader: this node is not the leader; ``leader`` says who may be.
            ProposalDropped: a leadership transfer is under way (thesis §3.10).
        """
        self._check_proposal()
        entry = Entry(self.log.last_index() + 1, self.term, EntryType.NORMAL, data, proposal_id)
        if origin is not None and origin in self.prs:
            self.handed_over[entry.index] = origin
        else:
            origin = None
        self._append_entries([entry], origin)
        return entry

    def propose_membership(self, new: Membership) -> Entry:
        """Appends a CONFIG entry changing one member (leader only; thesis §4.1).

        The new configuration is in force as soon as the entry is in the log. A further change
        is refused until this one is committed.

        Raises:
            NotLeader, ProposalDropped: as for :meth:`propose`.
            InvalidConfigChange: more than one node changes, no voter would remain, the leader
                would not be a voter, a change is still uncommitted, or this leader has not yet
                committed an entry of its term.
        """
        self._check_proposal()
        if self.log.last_config_index() > self.log.committed:
            raise InvalidConfigChange("the previous membership change is not committed yet")
        if self.log.committed < self.term_start_index:
            # The single-server change bug (Ongaro, raft-dev 2015): a new leader must commit an
            # entry of its own term before changing the configuration, or an uncommitted change
            # from an earlier term can combine with this one into disjoint majorities.
            raise InvalidConfigChange("the new leader has not committed an entry of its term yet")
        if self.id not in new.voters:
            # Thesis §4.2.2 lets a leader manage a configuration that excludes it until that
            # is committed. With CheckQuorum that can deadlock: a leader that steps down before
            # the entry spreads no longer campaigns (it is not a voter in its log), while the
            # others, still in the old configuration, need its vote and its longer log rejects
            # them. Simulation seed 68 found it. Moving leadership away first avoids all that.
            raise InvalidConfigChange("a leader cannot demote or remove itself: transfer "
                                      "leadership first")
        check_single_change(self.membership, new)
        entry = Entry(self.log.last_index() + 1, self.term, EntryType.CONFIG, new.encode())
        self._append_entries([entry])
        return entry

    def catch_up(self, to: NodeId) -> None:
        """Leader: sends member ``to`` what it lacks and the commit index now, deferred
        entries included (see :meth:`_write_targets`), because it is about to act on them.
        Does nothing on a follower or for a non-member."""
        pr = self.prs.get(to)
        if self.role is Role.LEADER and to != self.id and pr is not None:
            self._send_append(to, pr, commit_only=True)

    def transfer_leadership(self, to: NodeId) -> None:
        """Hands leadership to voter ``to`` (thesis §3.10), e.g. before a graceful leave.

        Proposals are refused while the transfer runs. Once ``to`` holds the whole log the leader
        sends it :class:`MsgTimeoutNow`; ``to`` then wins the election at the next term. The
        transfer is abandoned after ``election_tick`` ticks.

        Raises:
            NotLeader: this node is not the leader.
            ValueError: ``to`` is not a voter.
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead)
        if to == self.id:
            return
        if to not in self.membership.voters:
            raise ValueError(f"{to} is not a voter")
        self.lead_transferee = to
        self.transfer_elapsed = 0
        pr = self.prs[to]
        if pr.match == self.log.last_index():
            self.msgs.append(MsgTimeoutNow(self.id, to, self.term))
        else:
            self._send_append(to, pr)

    def _check_proposal(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead)
        if self.lead_transferee is not None:
            raise ProposalDropped(f"leadership is moving to {self.lead_transferee}")

    # --- persistence feedback ---------------------------------------------------------------------

    def on_persisted(self, index: int, term: int) -> None:
        """The driver persisted entries up to ``(index, term)``.

        A leader counts its own log toward a majority only once it is on its own disk.
        """
        self.log.stable_to(index, term)
        if self.role is Role.LEADER and self.log.term(index) == term:
            committed = self.log.committed
            moved = self.prs[self.id].update(index)
            for member in sorted(self.after_persist):
                if member in self.prs:
                    self._send_append(member, self.prs[member], commit_only=True)
            self.after_persist.clear()
            if moved and self._maybe_commit():
                self._announce_commit(committed)
