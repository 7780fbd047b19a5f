"""A node's place in the mesh: forming or joining a cluster, admitting members, shaping voters.

:class:`Mesh` runs the consensus driver it is given and the membership work that needs I/O;
the decisions themselves are pure
(:mod:`nexus_node.cluster.admission`).

* **Forming.** A node whose data dir has no Raft log says Hello to the peers it knows (``--seeds``
  and mDNS) until :func:`~nexus_node.cluster.admission.formation_step` says found or join. Joining is
  ``PeerService.Join`` to the leader, which adds the node as a non-voting member; the node runs
  its driver with an empty log meanwhile and receives the whole log from the leader.
* **Addresses.** Each member's address is a replicated record, so whichever node leads next
  can reach every member; a node restarted on a new address records it again.
* **Shaping.** The leader checks every second whether to promote or demote one member.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Callable, Mapping, Protocol

import grpc

from nexus_node._generated.nexus.v1 import peer_pb2 as pb
from nexus_node.cluster import admission
from nexus_node.consensus.driver import MeshStopped, RaftDriver
from nexus_node.consensus.raft import InvalidConfigChange, Membership, NotLeader, ProposalDropped
from nexus_node.consensus.state import encode_command
from nexus_node.consensus.transport import PeerTransport

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class JoinAnswer:
    """What this node answers a node asking to join (``PeerService.Join``; the servicer turns
    it into a ``ProposeReply``)."""

    OK = "ok"                  # admitted (or a member already)
    NOT_LEADER = "not_leader"  # ask the leader named here
    RETRY = "retry"            # the configuration change could not be made now

    status: str
    leader_id: str = ""
    leader_address: str = ""

BARRIER = "barrier"


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    """Membership policy of one node (used while it coordinates).

    Attributes:
        voters: Voters wanted (odd; 1 to 7). Other members are non-voting.
        voter_timeout: Seconds a voter may be silent before a healthy non-voter replaces it.
        remove_after: Seconds a non-voter may be silent before it is removed from the cluster.
        join_window: Seconds a new node listens for peers before founding a cluster.
        replicas: Copies of every blob the cluster keeps.
    """

    voters: int = 3
    voter_timeout: float = 30.0
    remove_after: float = 600.0
    join_window: float = 2.0
    replicas: int = 2


class AddressBook(Protocol):
    """Where members' addresses are replicated (the node's records implement it)."""

    @property
    def addresses(self) -> Mapping[str, str]: ...

    async def put_member(self, node_id: str, address: str) -> None: ...


class Mesh:
    """Consensus, replicated state and membership for one node.

    Args:
        driver: This node's consensus driver (not started: :meth:`start` starts it). The
            layers above register their state machines with it before :meth:`start`.
        addresses: The replicated member addresses (the records, registered on ``driver``).
        peers: The peer directory's current entries (addresses to say Hello to).
        listening: Whether peers may turn up (seeds given, mDNS on): a new node then listens
            for ``join_window`` seconds before founding a cluster.
        settings: Membership policy.
    """

    def __init__(self, driver: RaftDriver, addresses: AddressBook,
                 peers: Callable[[], list[str]], listening: Callable[[], bool] = lambda: False,
                 settings: ClusterSettings = ClusterSettings()) -> None:
        self.node_id, self.cluster, self.address = driver.node_id, driver.cluster, driver.address
        self.settings = settings
        self.driver = driver
        self.records = addresses
        self.driver.state.register(BARRIER, lambda body, index: None)
        self._peers = peers
        self._listening = listening   # whether peers may still turn up (seeds, mDNS)
        self._tasks: list[asyncio.Task[None]] = []
        self._join_lock = asyncio.Lock()
        self._leader_since = 0.0
        self.on_change: Callable[[], None] = lambda: None   # leader or membership changed

    @property
    def transport(self) -> PeerTransport:
        return self.driver._transport

    @property
    def vital_tasks(self) -> list["asyncio.Task[None]"]:
        """The tasks :meth:`start` began that run as long as the node (shaping, rejoining):
        one that ends while the driver runs is a bug the node cannot live with."""
        return [t for t in self._tasks if t.get_name() in ("mesh-shape", "mesh-rejoin")]

    def members(self) -> set[str]:
        try:
            return set(self.driver.status().membership.members)
        except MeshStopped:
            return {self.node_id}

    # ---- start ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Resumes from the log, or forms/joins a cluster; returns once this node is a member
        and has applied what its log held at start."""
        if await self.driver.has_log():
            await self.driver.start()
        else:
            action, target = await self._form()
            if action is admission.Formation.FOUND:
                log.info("founding cluster %r as its first voter", self.cluster)
                await self.driver.start([self.node_id])
            else:
                await self.driver.start()
                await self._join(target)
        commit = self.driver.status().commit
        await self.driver.wait_for(lambda: self.driver.state.applied_index >= commit, 120)
        self._tasks = [asyncio.create_task(self._shape_forever(), name="mesh-shape"),
                       asyncio.create_task(self._announce(), name="mesh-announce"),
                       asyncio.create_task(self._rejoin_forever(), name="mesh-rejoin")]

    async def _form(self) -> tuple[admission.Formation, str]:
        started = time.monotonic()
        while True:
            addresses = [a for a in self._peers() if a != self.address]
            answers = await asyncio.gather(*(self._hello(a) for a in addresses))
            heard = [a for a in answers if a is not None]
            action, target = admission.formation_step(
                self.node_id, heard, time.monotonic() - started, self.settings.join_window,
                peers_configured=bool(addresses) or self._listening())
            if action is not admission.Formation.WAIT:
                return action, target
            await asyncio.sleep(0.3)

    async def _hello(self, address: str) -> admission.HelloAnswer | None:
        try:
            reply = await self.transport.hello(self.transport.stub(address), None)
        except Exception as exc:  # noqa: BLE001 - unreachable or refused: not an answer
            log.debug("hello %s: %s", address, exc)
            return None
        self.driver.note_hello(reply.node_id, reply.address or address)
        return admission.HelloAnswer(reply.node_id, reply.address or address, reply.member,
                                     reply.leader_id, reply.leader_address,
                                     frozenset(m.node_id for m in reply.members))

    async def _join(self, target: str) -> None:
        """Asks to be added until this node is in the configuration it has applied."""
        failures = 0
        while not self.driver.is_member():
            if failures >= 5:
                # The node we were sent to is gone: ask the peers again who leads now.
                failures = 0
                action, found = await self._form()
                if action is admission.Formation.JOIN:
                    target = found
                # (FOUND cannot be acted on now: the driver runs with an empty log; keep asking.)
            joined, target = await self._ask_to_join(target)
            if joined:
                log.info("joined cluster %r through %s", self.cluster, target)
                await self.driver.wait_for(self.driver.is_member, 30)
                return
            failures += 1
            await asyncio.sleep(0.3)

    async def _rejoin_forever(self) -> None:
        """Joins again when the cluster went on without this node.

        A node that hears from no leader for a while asks the peers it knows (the directory and
        the members in its log); if one answers for a cluster that no longer lists this node
        (:func:`~nexus_node.cluster.admission.rejoin_target`), it asks that cluster's leader to
        add it again. Its log is then brought in line by the leader like any follower's, or,
        if it holds committed entries the leader lacks, the node stops with the reason.
        """
        patience = self.driver.settings.retry_interval   # an election may yet settle it
        led_at = time.monotonic()   # when this node last knew a live leader (or last asked)
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if self.driver.stopped:
                return
            lead = self.driver.leader
            # A learner keeps believing in a dead leader (it never campaigns): what counts is
            # whether the leader is still heard from.
            if lead == self.node_id or (lead is not None and now - (self.driver.last_heard(lead) or 0.0) < patience):
                led_at = now
                continue
            if now - led_at < patience:
                continue
            led_at = now   # ask again after another while, not every second
            try:
                known = {a for _, a in self.driver.member_addresses()} | set(self._peers())
                addresses = sorted(a for a in known if a and a != self.address)
                answers = [a for a in await asyncio.gather(*(self._hello(a) for a in addresses)) if a is not None]
                target = admission.rejoin_target(self.node_id, frozenset(self.members()), answers)
                if target:
                    log.warning("the cluster's members no longer include this node; asking %s to add it again",
                                target)
                    await self._ask_to_join(target)
            except Exception as exc:  # noqa: BLE001 - keep watching: the next round may succeed
                log.warning("rejoin check failed: %s", exc)

    async def _ask_to_join(self, target: str) -> tuple[bool, str]:
        """One ``Join`` through ``target``, following it once to the leader it names.

        Returns:
            Whether the leader added this node (or had it already), and the address to ask
            next time (the leader's, once named).
        """
        for _ in range(2):
            try:
                reply = await self.transport.stub(target).Join(
                    pb.JoinRequest(cluster=self.cluster, node_id=self.node_id, address=self.address),
                    timeout=10, metadata=self.transport.metadata)
            except (grpc.aio.AioRpcError, TimeoutError) as exc:
                log.debug("join through %s: %s", target, exc)
                return False, target
            if reply.status == pb.ProposeReply.NOT_LEADER and reply.leader_address:
                target = reply.leader_address
                continue
            return reply.status == pb.ProposeReply.OK, target
        return False, target

    # ---- the coordinator's side -------------------------------------------------------------------

    async def join(self, node_id: str, address: str) -> "JoinAnswer":
        """``PeerService.Join`` on this node: add ``node_id`` as a non-voting member."""
        d = self.driver
        if not d.is_leader:
            lead = d.leader or ""
            return JoinAnswer(JoinAnswer.NOT_LEADER, leader_id=lead,
                              leader_address=d.peer_address(lead) or "" if lead else "")
        async with self._join_lock:
            d.note_hello(node_id, address)
            # Its silence counts from now, not from when this node took over: a member that
            # has not answered yet is not one to remove.
            d.note_contact(node_id)
            try:
                # A member never joins (it is in): a Join naming one must not move its address
                # (issue 18; a member restarted elsewhere says Hello and records it itself).
                if self.records.addresses.get(node_id) != address and \
                        node_id not in d.status().membership.members:
                    await self.records.put_member(node_id, address)
                m = d.status().membership
                if node_id not in m.members:
                    await d.change_membership(Membership(m.voters, m.learners | {node_id}))
                    log.info("admitted %s at %s as a non-voting member", node_id, address)
            except (NotLeader, ProposalDropped, InvalidConfigChange, TimeoutError, MeshStopped) as exc:
                log.info("join of %s deferred: %s", node_id, exc)
                return JoinAnswer(JoinAnswer.RETRY)
        return JoinAnswer(JoinAnswer.OK)

    async def barrier(self, term: int, timeout: float = 30.0) -> None:
        """Returns once an entry this node proposed as leader of ``term`` is applied here: every
        earlier entry is too. Raises NotLeader if it does not lead in ``term``."""
        await self.driver.propose(encode_command(BARRIER, {}, term), None, timeout)

    def health(self, now: float) -> dict[str, admission.MemberHealth]:
        d = self.driver
        commit = d.status().commit
        out = {}
        for n in self.members():
            if n == self.node_id:
                out[n] = admission.MemberHealth(0.0, True)
                continue
            out[n] = admission.member_health(now, d.last_heard(n), self._leader_since, d.match_index(n), commit)
        return out

    async def _shape_forever(self) -> None:
        last_view: tuple[object, ...] = ()
        was_leader = False
        while True:
            await asyncio.sleep(1.0)
            d = self.driver
            try:
                status = d.status()
            except MeshStopped:
                return
            view = (status.lead, status.term, status.membership)
            if view != last_view:
                last_view = view
                self.on_change()
            if d.is_leader and not was_leader:
                self._leader_since = time.monotonic()
            was_leader = d.is_leader
            if not d.is_leader:
                continue
            change = admission.next_change(status.membership, self.node_id, self.health(time.monotonic()),
                                           self.settings.voters, self.settings.voter_timeout,
                                           self.settings.remove_after)
            if change is None:
                continue
            try:
                await d.change_membership(change)
                log.info("membership: voters %s, non-voters %s", sorted(change.voters), sorted(change.learners))
            except (NotLeader, ProposalDropped, InvalidConfigChange, TimeoutError) as exc:
                log.debug("membership change deferred: %s", exc)

    async def _announce(self) -> None:
        """Records this node's address once it differs from the recorded one."""
        while self.records.addresses.get(self.node_id) != self.address:
            try:
                await self.records.put_member(self.node_id, self.address)
            except (TimeoutError, MeshStopped) as exc:
                log.debug("announcing address: %s", exc)
                await asyncio.sleep(1.0)

    async def leave(self, timeout: float = 3.0) -> None:
        """A graceful stop: a leader hands leadership to the most caught-up voter first."""
        d = self.driver
        if not d.is_leader:
            return
        others = [v for v in d.status().membership.voters if v != self.node_id]
        if others:
            best = max(others, key=d.match_index)
            if await d.transfer_leadership(best, timeout):
                log.info("handed leadership to %s", best)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.driver.stop()
