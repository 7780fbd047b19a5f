"""Credentials and channels: TLS, the auth interceptor and the table of roles per RPC.

The lowest layer: it imports nothing of Nexus but ``errors`` and the generated code, so the
client, the dashboard and every layer of the node can use it.
"""
