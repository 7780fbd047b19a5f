"""Which runner family a task needs, and when a node keeps one family per runner."""

from nexus_node.runner import families


def test_each_task_names_the_libraries_it_loads():
    assert families.family_of({"task": "prepare"}) == families.TABLES
    assert families.family_of({"task": "trial", "params": {"family": "gbt"}}) == families.TABLES
    assert families.family_of({"task": "trial", "params": {"family": "mlp"}}) == families.NETWORKS
    # Configurations from before families were searched are networks.
    assert families.family_of({"task": "trial", "params": {"width": 64}}) == families.NETWORKS
    assert families.family_of({"task": "finalize", "params": {"family": "gbt"}}) == families.TABLES
    assert families.family_of({"task": "finalize", "params": {"family": "mlp"}}) == families.NETWORKS
    # An ensemble's finalize refits members of every family in its library.
    mixed = [{"params": {"family": "gbt"}}, {"params": {"family": "mlp"}}]
    assert families.family_of({"task": "finalize", "params": {"family": "gbt"}, "library": mixed}) == families.ANY
    assert families.family_of({"task": "finalize", "params": {"family": "gbt"}, "library": mixed[:1]}) == families.TABLES
    # Across the mesh: selection is numpy alone; each member refits in its own family's runner.
    assert families.family_of({"task": "select", "params": {"family": "gbt"}, "library": mixed}) == families.ANY
    assert families.family_of({"task": "refit", "params": {"family": "gbt"},
                               "candidate": {"params": {"family": "mlp"}}}) == families.NETWORKS
    assert families.family_of({"task": "refit", "params": {"family": "mlp"},
                               "candidate": {"params": {"family": "gbt"}}}) == families.TABLES
    chosen = [{"candidate": c, "weight": 0.5} for c in mixed]
    assert families.family_of({"task": "finalize", "params": {"family": "gbt"}, "chosen": chosen}) == families.ANY
    # Members refitted elsewhere are read, not fitted: a network's file needs torch, a tree's
    # numpy alone, so a 512 MB node assembles a mixed ensemble in one family's runner.
    files = [{"candidate": {**c, "member_path": f"/m{i}.zip"}, "weight": 0.5} for i, c in enumerate(mixed)]
    assert families.family_of({"task": "finalize", "params": {"family": "gbt"}, "chosen": files}) == families.NETWORKS
    assert families.family_of({"task": "finalize", "params": {"family": "mlp"}, "chosen": files[:1]}) == families.TABLES
    assert families.family_of({"task": "predict"}) == families.ANY
    assert families.family_of({"task": "ping"}) == families.ANY


def test_a_node_short_of_memory_keeps_one_family_per_runner():
    assert families.one_family_per_runner(512, 1)
    assert families.one_family_per_runner(1500, 2)   # 750 MB a slot
    assert not families.one_family_per_runner(1024, 1)
    assert not families.one_family_per_runner(24 << 10, 2)


def test_memory_caps_the_slots():
    assert families.slots_for_memory(256) == 1     # never none
    assert families.slots_for_memory(512) == 1
    assert families.slots_for_memory(1024) == 2
    assert families.slots_for_memory(24 << 10) == 61
