"""Who is connected to a secured daemon and what they are doing (``mirror-admin who``).

Every listener of a daemon (a mirror server's control port and its --serve port alike)
registers its `mirror.security.tls.SecuredFactory` here; `Presence.connections` walks their
admitted connections. A daemon's protocol may say what its peer is doing with an
``activity()`` method (a short text).
"""

from __future__ import annotations

from typing import Any

from mirror.text import printable

#: Connections described at most in one answer.
MAX_CONNECTIONS = 1000


class Presence:
    """The secured listeners of one daemon."""

    def __init__(self, daemon: str) -> None:
        self.daemon = daemon
        self.factories: list[Any] = []

    def connections(self, now: float) -> dict[str, Any]:
        """A JSON-able description: the daemon, and per admitted connection its user (or
        key, or ``anyone``), address, seconds connected and activity."""
        rows: list[dict[str, Any]] = []
        for factory in self.factories:
            for gate in list(factory.protocols):
                identity = getattr(gate, "identity", None)
                if identity is None or not getattr(gate, "admitted", False):
                    continue
                proto = gate.wrappedProtocol
                activity = getattr(proto, "activity", None)
                rows.append({
                    "user": identity.user if identity.user is not None else (
                        "anyone" if identity.fingerprint is None else None),
                    "fingerprint": identity.fingerprint,
                    "address": gate.host,
                    "seconds": round(max(0.0, now - gate.since), 1),
                    "service": factory.wrappedFactory.__class__.__name__,
                    "activity": printable(activity()) if activity is not None else "",
                })
        rows.sort(key=lambda r: (r["seconds"], r["address"]), reverse=True)
        return {"daemon": self.daemon, "connections": rows[:MAX_CONNECTIONS],
                "total": len(rows)}
