"""One node's discovery in a process of its own, for the network-namespace test.

``python -m tests.cluster.discovery_probe --host IP --cluster NAME --node-id ID --expect A,B
--refuse C --timeout S`` registers and browses like a node (nothing listens on the port: only
discovery runs), waits until this node's registration is announced, the admitted peers are
exactly ``--expect`` and every ``--refuse`` node was heard and refused, or until ``--timeout``,
then prints one JSON line. It keeps announcing until stdin closes, so a fast probe does not
vanish before slower ones have heard it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from nexus_node.cluster.discovery import Discovery, DiscoverySettings


async def run(a: argparse.Namespace) -> dict:
    expect = {x for x in a.expect.split(",") if x}
    refuse = {x for x in a.refuse.split(",") if x}
    d = Discovery(DiscoverySettings(node_id=a.node_id, cluster=a.cluster, port=7070,
                                    advertise_host=a.host))
    await d.start()
    try:
        ok = await d.wait_until(
            lambda: d.registered and {p.node_id for p in d.peers()} == expect and refuse <= set(d.refused),
            a.timeout)
        print(json.dumps({
            "node_id": a.node_id, "ok": ok, "registered": d.registered,
            "peers": [{"node_id": p.node_id, "address": p.address, "source": p.source} for p in d.peers()],
            "refused": d.refused,
        }), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await d.close()
    return {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--node-id", required=True)
    ap.add_argument("--expect", default="")
    ap.add_argument("--refuse", default="")
    ap.add_argument("--timeout", type=float, default=15.0)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
