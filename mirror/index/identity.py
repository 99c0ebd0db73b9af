"""The one place where the index decides who a connection is.

Today a node names itself in HELLO (any string of `mirror.index.codec.node_name`'s form).
Access control (issue 11) will replace the claimed name with the fingerprint of the node's
TLS client certificate, and refuse nodes and users without a grant, here and nowhere else:
every registration a connection changes is keyed on what `node_identity` returns.
"""

from __future__ import annotations

from twisted.internet.interfaces import ITransport


class NotAllowed(Exception):
    """The connection may not act as that node (or query the index)."""


def node_identity(transport: ITransport | None, claimed: str) -> str:
    """The identity registrations of this connection are kept under."""
    return claimed


def may_query(transport: ITransport | None) -> bool:
    """Whether this connection may ask who holds what (all may, until issue 11)."""
    return True
