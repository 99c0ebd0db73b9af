"""The web site of a daemon (``--web``): security headers on every response, a ``Host``
allow-list on loopback, and nothing but GET and HEAD.

The site only shows: no request changes any state of the daemon (job submission and cancel stay
on the control protocol). On a loopback endpoint it answers only requests whose ``Host`` names
the loopback (``localhost``, ``127.0.0.1``, ``[::1]``): a page of another web site that got its
name to resolve to 127.0.0.1 (DNS rebinding) sends its own name, and is refused.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.web.pages import errorPage
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

#: Every response says: load scripts, styles, images and API calls from this site only; no
#: inline script or style, no plugin, no frame, no form, no <base>.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    (b"Content-Security-Policy", CONTENT_SECURITY_POLICY.encode("ascii")),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"X-Frame-Options", b"DENY"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"Cross-Origin-Resource-Policy", b"same-origin"),
    (b"Cache-Control", b"no-store"),
)
#: The names a browser sends in ``Host`` for a loopback address (as `Request.getRequestHostname`
#: gives them: no port, no brackets).
LOOPBACK_HOSTS = frozenset({b"localhost", b"127.0.0.1", b"::1"})
#: Seconds an idle HTTP connection is kept.
IDLE_TIMEOUT = 60


class WebSite(Site):
    """A `Site` that adds `SECURITY_HEADERS` to every response and refuses other methods
    than GET and HEAD; with ``allowed_hosts``, also every ``Host`` not in it (403)."""

    def __init__(self, resource: IResource, allowed_hosts: frozenset[bytes] | None,
                 reactor: IReactorTime | None = None) -> None:
        super().__init__(resource, timeout=IDLE_TIMEOUT, reactor=reactor)
        self.allowed_hosts = allowed_hosts

    def logPrefix(self) -> str:
        # The daemon's log then tells the web port ("WebSite starting on N") from the others.
        return "WebSite"

    def getResourceFor(self, request: Request) -> IResource:
        for name, value in SECURITY_HEADERS:
            request.setHeader(name, value)
        if self.allowed_hosts is not None:
            host = request.getRequestHostname().lower()
            if host not in self.allowed_hosts:
                return errorPage(403, "Forbidden", "This site answers to its loopback "
                                 "address only (Host not allowed).")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return errorPage(405, "Method Not Allowed", "This site only shows: GET and HEAD.")
        resource: IResource = super().getResourceFor(request)
        return resource

