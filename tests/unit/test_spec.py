"""Parsing of mirror-init's -s SPECs."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mirror.initiator.spec import (
    SpecError,
    check_resolvable,
    format_source,
    parse_spec,
    parse_specs,
)
from mirror.wire.control import MAX_SOURCES, SourceRequest


def no_dns(host: str, port: int) -> None:
    """A resolver that knows every name except those ending in .invalid."""
    if host.endswith(".invalid"):
        raise SpecError(f"unknown host {host!r}")


def spec(text: str) -> SourceRequest:
    return parse_spec(text, no_dns)


class SpecTests(SynchronousTestCase):
    def test_forms(self) -> None:
        cases = {
            "files.example:8000:pub/docs": SourceRequest("files.example", 8000, "pub/docs", 0.0),
            "files.example:8000:pub/docs:2": SourceRequest("files.example", 8000, "pub/docs", 2.0),
            "10.0.0.1:1:.:0.25": SourceRequest("10.0.0.1", 1, "", 0.25),
            "h:65535:/": SourceRequest("h", 65535, "", 0.0),
            "h:80:/a/b/": SourceRequest("h", 80, "a/b", 0.0),
            "h:80:x:.5": SourceRequest("h", 80, "x", 0.5),
            "h:80:x:3.": SourceRequest("h", 80, "x", 3.0),
            "[::1]:9000:.": SourceRequest("::1", 9000, "", 0.0),
            "[fe80::1%eth0]:9000:a": SourceRequest("fe80::1%eth0", 9000, "a", 0.0),
            "h:80:a:b:0": SourceRequest("h", 80, "a:b", 0.0),
            "h:80:a::b:1.5": SourceRequest("h", 80, "a::b", 1.5),
            "h:80:-rf": SourceRequest("h", 80, "-rf", 0.0),
            "h:80:with space": SourceRequest("h", 80, "with space", 0.0),
        }
        for text, expected in cases.items():
            self.assertEqual(spec(text), expected, text)

    def test_errors(self) -> None:
        cases = {
            "h": "missing PORT",
            "h:": "missing PORT",
            "h::.": "missing PORT",
            ":80:.": "empty HOST",
            "h:0:.": "out of range",
            "h:70000:.": "out of range",
            "h:http:.": "bad PORT",
            "h:+80:.": "bad PORT",
            "h:80": "missing PATH",
            "h:80:": "missing PATH",
            "h:80::1": "missing PATH",
            "h:80:.:-1": "negative DELAY",
            "h:80:.:abc": "bad DELAY",
            "h:80:.:nan": "bad DELAY",
            "h:80:.:inf": "bad DELAY",
            "h:80:.:1e3": "bad DELAY",
            "h:80:.:99999": "over the limit",
            "h:80:a:b": "needs an explicit :DELAY",
            "h:80:../etc": "'..' path component",
            "h:80:a\\b": "backslash",
            "fe80::1:80:x": "IPv6 HOST needs brackets",
            "[::1:80:x": "missing ']'",
            "[::1]80:x": "expected ':PORT'",
            "[]:80:x": "empty HOST",
            "[h]:80:x": "only for IPv6",
            "h x:80:.": "bad HOST",
            "nosuch.invalid:80:.": "unknown host",
        }
        for text, why in cases.items():
            with self.assertRaises(SpecError, msg=text) as cm:
                spec(text)
            message = str(cm.exception)
            self.assertIn(why, message, text)
            self.assertIn(repr(text), message, "the message names the SPEC")
            self.assertNotIn("\n", message)

    def test_list(self) -> None:
        self.assertEqual(
            parse_specs(["a:1:x,b:2:y:1", "c:3:."], no_dns),
            [
                SourceRequest("a", 1, "x", 0.0),
                SourceRequest("b", 2, "y", 1.0),
                SourceRequest("c", 3, "", 0.0),
            ],
        )

    def test_list_errors(self) -> None:
        cases = [
            ([], "no SPEC given"),
            ([""], "empty SPEC list"),
            (["a:1:x,"], "stray ','"),
            ([",a:1:x"], "stray ','"),
            (["a:1:x,,b:1:y"], "stray ','"),
            (["a:1:x", "a:1:/x/"], "given twice"),
            ([",".join(f"h:1:d{i}" for i in range(MAX_SOURCES + 1))], f"more than {MAX_SOURCES}"),
        ]
        for values, why in cases:
            with self.assertRaises(SpecError, msg=values) as cm:
                parse_specs(values, no_dns)
            self.assertIn(why, str(cm.exception))

    def test_max_sources_accepted(self) -> None:
        values = [",".join(f"h:1:d{i}" for i in range(MAX_SOURCES))]
        self.assertEqual(len(parse_specs(values, no_dns)), MAX_SOURCES)

    def test_syntax_checked_before_any_lookup(self) -> None:
        seen: list[str] = []
        with self.assertRaises(SpecError):
            parse_specs(["a:1:x", "b:1:y,"], lambda host, port: seen.append(host))
        self.assertEqual(seen, [])

    def test_each_host_resolved_once(self) -> None:
        seen: list[str] = []
        parse_specs(["a:1:x,a:2:y", "b:1:z"], lambda host, port: seen.append(host))
        self.assertEqual(seen, ["a", "b"])

    def test_real_resolver_without_dns(self) -> None:
        # Numeric addresses resolve, and an over-long label fails in the IDNA codec, both
        # without asking a DNS server.
        check_resolvable("127.0.0.1", 80)
        check_resolvable("::1", 80)
        with self.assertRaises(SpecError) as cm:
            check_resolvable("a" * 64 + ".example", 80)
        self.assertIn("unknown host", str(cm.exception))

    def test_format_source(self) -> None:
        self.assertEqual(format_source(SourceRequest("h", 1, "", 0)), "h:1:.")
        self.assertEqual(format_source(SourceRequest("::1", 2, "a/b", 0)), "[::1]:2:a/b")
