"""``--hosts-allow`` / ``--hosts-deny`` (rsync's ``hosts allow``/``hosts deny``, by CIDR), and
the per-address limit on failed authentications. Both are checked when a connection is
accepted, before any TLS work."""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(texts: Iterable[str]) -> list[Network]:
    """CIDR blocks (``10.0.0.0/8``, ``::1``, ``192.0.2.7``), comma-separated or not;
    `ValueError` naming the bad one."""
    networks = []
    for text in texts:
        for item in text.split(","):
            item = item.strip()
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{item[:80]!r} is not an address or CIDR block "
                                 "(10.0.0.0/8, 2001:db8::/32)") from None
    return networks


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    return address


class HostsAccess:
    """rsync's rule: with only an allow list, only its hosts; with only a deny list, all but
    its hosts; with both, a host on the allow list is let in, then one on the deny list is
    refused, and the rest are let in. A peer that is not an IP address (a UNIX socket) is
    local and always let in."""

    def __init__(self, allow: list[Network], deny: list[Network]) -> None:
        self.allow = allow
        self.deny = deny

    @property
    def active(self) -> bool:
        return bool(self.allow or self.deny)

    def allows(self, host: str) -> bool:
        address = _address(host)
        if address is None:
            return True
        if any(address in net for net in self.allow):
            return True
        if self.allow and not self.deny:
            return False
        return not any(address in net for net in self.deny)


class FailureLimiter:
    """At most ``max_failures`` failed authentications per address within ``window``
    seconds; past that the address is refused at accept until its failures age out.

    Remembers at most ``max_hosts`` addresses (the least recent are forgotten), so a scan
    from many addresses cannot grow it without bound.
    """

    def __init__(self, now: Callable[[], float], max_failures: int = 5, window: float = 60.0,
                 max_hosts: int = 10000) -> None:
        self._now = now
        self.max_failures = max_failures
        self.window = window
        self.max_hosts = max_hosts
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def _recent(self, host: str) -> list[float]:
        times = self._failures.get(host)
        if times is None:
            return []
        cutoff = self._now() - self.window
        times[:] = [t for t in times if t > cutoff]
        if not times:
            del self._failures[host]
        return times

    def blocked(self, host: str) -> bool:
        """True while ``host`` has used up its failures."""
        return len(self._recent(host)) >= self.max_failures

    def failed(self, host: str) -> None:
        """Count one failure of ``host``. Peers that are not IP addresses (UNIX sockets,
        which all share one key) are not counted: one local process must not lock out
        every other."""
        if _address(host) is None:
            return
        times = self._recent(host)
        times.append(self._now())
        del times[:-self.max_failures]
        self._failures[host] = times
        self._failures.move_to_end(host)
        while len(self._failures) > self.max_hosts:
            self._failures.popitem(last=False)
