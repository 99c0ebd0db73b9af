"""``--web ENDPOINT`` and ``--insecure`` for the daemons, and listening on them.

Until access control exists (issue 11: HTTPS with the daemon's certificate and a client
certificate or a token), the web site has none: anyone who can connect can read it. So it
listens on a loopback address (or a Unix socket) unless ``--insecure`` says the operator
knows that every host that can reach the endpoint may read the daemon's status.
"""

from __future__ import annotations

import ipaddress

from twisted.application.service import IServiceCollection
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXServerEndpoint,
    serverFromString,
)
from twisted.python import usage
from twisted.web.resource import IResource

from mirror.daemon_options import add_listeners
from mirror.web.site import LOOPBACK_HOSTS, WebSite


def is_local(description: str) -> bool:
    """True if the endpoint ``description`` listens on a loopback address or a Unix socket.

    ``tcp:PORT`` without ``interface=`` listens on every address: not local. TLS endpoints
    are not local either (and would be no access control without client authentication).
    """
    endpoint = serverFromString(None, description)
    if isinstance(endpoint, UNIXServerEndpoint):
        return True
    if isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint):
        # Twisted keeps the interface only in this attribute.
        interface: str = endpoint._interface
        try:
            return bool(interface) and ipaddress.ip_address(interface).is_loopback
        except ValueError:
            return interface == "localhost"
    return False


class WebOptions(usage.Options):
    """The options of the web site, mixed into a daemon's options (after `ListenOptions`)."""

    optFlags = [
        ["insecure", None, "Allow a --web endpoint that is not a loopback address (the site "
                           "has no access control yet: anyone who can connect can read it), "
                           "a --listen endpoint off the loopback without --identity (in "
                           "clear), and plain TCP to servers off the loopback without a "
                           "pin."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["web"] = []
        # Here rather than in opt_web's docstring, whose line breaks --help would keep.
        self.docs["web"] = ("Serve a read-only status page, a JSON API and Prometheus metrics "
                            "on ENDPOINT (e.g. tcp:8080:interface=127.0.0.1). May be given "
                            "several times.")

    def opt_web(self, endpoint: str) -> None:
        """Serve the web site on ENDPOINT (see ``docs["web"]``)."""
        try:
            serverFromString(None, endpoint)
        except Exception as e:
            raise usage.UsageError(f"--web {endpoint}: {e}") from None
        self["web"].append(endpoint)

    def check_web(self) -> None:
        """Refuse a --web endpoint off the loopback without --insecure (call from postOptions)."""
        for endpoint in self["web"]:
            if not self["insecure"] and not is_local(endpoint):
                raise usage.UsageError(
                    f"--web {endpoint}: not a loopback address; the web site has no access "
                    f"control yet, so anyone who can connect could read it: listen on "
                    f"127.0.0.1 (tcp:PORT:interface=127.0.0.1) or add --insecure")


def add_web(parent: IServiceCollection, endpoints: list[str], root: IResource,
            command: str) -> None:
    """Listen on every ``--web`` endpoint with a `WebSite` of ``root``.

    Loopback endpoints answer only loopback ``Host`` names (DNS rebinding); the others (only
    with --insecure) any.
    """
    for endpoint in endpoints:
        hosts = LOOPBACK_HOSTS if is_local(endpoint) else None
        add_listeners(parent, [endpoint], WebSite(root, hosts), command)
