"""The Textual dashboard of a Nexus cluster (``nexus-tui``): see :mod:`nexus_tui.app`."""

from nexus_tui.app import NexusApp, create_app, main

__all__ = ["NexusApp", "create_app", "main"]
