"""``mirror-where`` against a canned index on a loopback socket (no reactor): what it prints,
its exit statuses, and what it does with a hostile answer."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mirror.index import codec, where

D = "e" * 64
ROW = {"node": "n1", "address": "10.0.0.1:9000", "path": "d/a", "size": 5, "mtime_ns": 1,
       "digest": D, "age": 2.2, "expires_in": 57.8}


@contextlib.contextmanager
def canned_index(*answers: bytes) -> Iterator[tuple[int, list[bytes]]]:
    """A one-connection server that reads one request and sends ``answers``."""
    server = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            received.append(connection.recv(65536))
            for answer in answers:
                connection.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], received
    finally:
        thread.join(10)
        server.close()


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = where.main(list(args))
    return status, out.getvalue(), err.getvalue()


class MirrorWhereTests(SynchronousTestCase):
    def test_prints_holders(self) -> None:
        answers = (codec.frame(codec.HOLDERS, 1, {"holders": [ROW]}),
                   codec.frame(codec.DONE, 1, {"count": 1, "truncated": False}))
        with canned_index(*answers) as (port, received):
            status, out, _ = run("-i", f"127.0.0.1:{port}", "/d/")
        self.assertEqual(status, 0)
        self.assertEqual(out, f"d/a\t10.0.0.1:9000\t5\t{D}\trenewed 2s ago, expires in 58s\t"
                              f"node=n1\n")
        opcode, _, payload = codec.split(received[0][4:])
        self.assertEqual((opcode, json.loads(payload)), (codec.WHERE, {"path": "d"}))

    def test_json_and_digest_query(self) -> None:
        answers = (codec.frame(codec.HOLDERS, 1, {"holders": [ROW]}),
                   codec.frame(codec.DONE, 1, {"count": 1, "truncated": False}))
        with canned_index(*answers) as (port, received):
            status, out, _ = run("-i", f"127.0.0.1:{port}", D.upper(), "--json")
        self.assertEqual(status, 0)
        result: dict[str, Any] = json.loads(out)
        self.assertEqual(result["holders"][0]["expires_in"], 57.8)
        self.assertEqual(json.loads(codec.split(received[0][4:])[2]), {"digest": D})

    def test_nobody_holds_it(self) -> None:
        with canned_index(codec.frame(codec.DONE, 1, {"count": 0, "truncated": False})) as (
                port, _):
            status, out, err = run("-i", f"127.0.0.1:{port}", "x")
        self.assertEqual((status, out), (1, ""))
        self.assertIn("no node holds x", err)

    def test_hostile_answers_are_refused(self) -> None:
        for bad in ({**ROW, "path": "../../etc/passwd"}, {**ROW, "node": "\x1b[2J"},
                    {**ROW, "address": "evil\x07:1"}):
            answers = (codec.frame(codec.HOLDERS, 1, {"holders": [bad]}),)
            with canned_index(*answers) as (port, _):
                status, out, err = run("-i", f"127.0.0.1:{port}", "x")
            self.assertEqual((status, out), (1, ""))
            self.assertIn("mirror-where: error:", err)
            self.assertNotIn("closed the connection", err)
            self.assertNotIn("\x1b", err)
            self.assertNotIn("\x07", err)

    def test_index_refusal_is_shown(self) -> None:
        answer = codec.frame(codec.ERROR, 1, {"code": 6, "message": "busy\x1b[31m"})
        with canned_index(answer) as (port, _):
            status, _, err = run("-i", f"127.0.0.1:{port}", "x")
        self.assertEqual(status, 1)
        self.assertIn("the index refused: busy\\x1b[31m", err)

    def test_bad_arguments(self) -> None:
        self.assertEqual(run("-i", "nohost", "x")[0], 2)
        self.assertEqual(run("-i", "h:1", "a/../b")[0], 2)
