"""Disaster recovery: a survivor of a cluster that lost a majority of its voters for good.

With a majority of voters gone, nothing can be committed (that is what makes Raft safe), so
jobs pause until those voters come back on their data dirs. When they never will (disks
lost, machines gone), ``nexus-node --force-new-cluster`` rewrites one survivor's log so that
it is the only member (:func:`~nexus_node.consensus.raft.force_new_cluster`); started again
normally, it leads at once, with every job, model and study its log holds. Other nodes that
are still running find that the cluster no longer lists them and join it again
(:meth:`~nexus_node.cluster.mesh.Mesh._rejoin_forever`), and new nodes join as usual.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nexus_node.consensus.log_store import RaftLogStore
from nexus_node.consensus.raft import Membership, force_new_cluster
from nexus_node.consensus.raft.log import RaftLog


@dataclasses.dataclass(frozen=True)
class Recovered:
    """What :func:`force_new_cluster_in` wrote."""

    before: Membership      # the configuration in force before
    after: Membership       # the one-member configuration now in force
    term: int
    last_index: int         # the new CONFIG entry's index: everything up to it is committed
    was_committed: int      # the commit index the log knew of before


async def force_new_cluster_in(data_dir: Path, node_id: str) -> Recovered:
    """Rewrites the Raft log in ``data_dir`` so that ``node_id`` is the cluster's only voter.

    Raises:
        LogDamaged: the log is damaged (it is checked first: forcing a half-read log would
            commit whatever survived of it).
        ValueError: no Raft log there, or the node is not a member of its configuration.
    """
    db = data_dir / "raft.db"
    if not db.is_file():
        raise ValueError(f"no Raft log in {data_dir}: there is no cluster to recover")
    store = await RaftLogStore.open(db, check=True)
    try:
        before = RaftLog(store).membership()
        was_committed = store.hard_state().commit
        hard, entry = force_new_cluster(store, node_id)
        await store.save(hard, [entry])
    finally:
        await store.close()
    return Recovered(before, Membership.decode(entry.data), hard.term, entry.index, was_committed)
