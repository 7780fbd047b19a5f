"""Which address a node id may be reached at: a member's address moves only on proof (pure)."""

from __future__ import annotations

import enum


class AddressClaim(enum.Enum):
    """What to do with the address a caller's Hello claims for a node id."""

    ADOPT = "adopt"      # take it: no address known, or the node is not a member
    KEEP = "keep"        # nothing to change: the address already known
    VERIFY = "verify"    # a member claimed elsewhere: move only once its old address is gone


def address_claim(known: str | None, claimed: str, member: bool) -> AddressClaim:
    """Decides what a Hello claiming that a node is at ``claimed`` may change (issue 18: a node
    id is bound to its first-hand address).

    Args:
        known: The address this node has for the node id, if any.
        claimed: The address the Hello gives.
        member: Whether the node id is a member of this node's configuration.

    Returns:
        ADOPT when no address is known or the id is no member (nothing of the cluster's goes
        there yet); KEEP when it is the known one; VERIFY for a member claimed at a new
        address: the caller dials the old address and moves the member only if it no longer
        answers as that node (a node restarted on a new port), so that a caller claiming a
        member's id cannot divert the member's messages while the member is up.
    """
    if not claimed or claimed == known:
        return AddressClaim.KEEP
    if known is None or not member:
        return AddressClaim.ADOPT
    return AddressClaim.VERIFY
