"""Nexus: a peer-to-peer worker mesh for automated deep learning on tabular data.

The public Python API is :class:`nexus_client.client.NexusClient`; ``nexus-node`` runs a node
and ``nexus`` is the command line. Nothing here imports torch, pandas or scikit-learn: those
load only in runner processes (see ``nexus_node.runner``).
"""

__version__ = "0.1.0"
