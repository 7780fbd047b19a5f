"""Membership: discovery (mDNS, seeds), the peer directory, forming and joining a cluster,
shaping voters, and the replicated client tokens. Imports ``consensus`` and ``net`` only."""
