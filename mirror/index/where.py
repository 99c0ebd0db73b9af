"""``mirror-where -i HOST:PORT PATH-or-DIGEST [--json]``: who holds a file or a tree.

Standard library only (a blocking socket and `mirror.index.codec`): like mirror-init it
starts in a few tens of milliseconds, without Twisted. An argument of 64 hex digits is a
digest (every holder of that content, under any path); anything else a path (``.`` or ``/``
for everything the index knows). Every value the index sends is checked and printed through
`mirror.text.printable`.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
from collections.abc import Sequence

from mirror import paths
from mirror.index import codec
from mirror.text import printable

_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mirror-where",
        description="Print which nodes of a mirror network hold a file (or every file of a "
                    "tree), with size, digest and how fresh each node's lease is.")
    parser.add_argument("-i", "--index", required=True, metavar="HOST:PORT",
                        help="the index (twistd mirror-index)")
    parser.add_argument("what", metavar="PATH-or-DIGEST",
                        help="a path in the exports, or a BLAKE3 digest (64 hex digits)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="give up after this long without an answer (default 30)")
    return parser.parse_args(argv)


def query_message(what: str) -> dict[str, str]:
    """The WHERE request for what a user typed; raises ValueError for a bad path."""
    if _DIGEST.match(what):
        return {"digest": what.lower()}
    try:
        parts = paths.parse_user_path(what)
    except paths.UnsafePath as e:
        raise ValueError(f"bad path {printable(what)!r}: {e}") from None
    return {"path": paths.join_parts(parts)}


def ask(host: str, port: int, message: dict[str, str], timeout: float
        ) -> tuple[list[codec.Holder], bool]:
    """The holders the index at host:port lists for ``message``, and whether it cut the
    answer short (its --max-answer)."""
    holders: list[codec.Holder] = []
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(codec.frame(codec.WHERE, 1, message))
        buffer = bytearray()
        while True:
            data = sock.recv(256 * 1024)
            if not data:
                raise ConnectionError("the index closed the connection before answering")
            buffer += data
            for frame_bytes in codec.read_frames(buffer):
                opcode, request_id, answer = codec.decode_answer(frame_bytes)
                if request_id not in (0, 1):
                    raise codec.BadMessage(f"answer for unknown request {request_id}")
                if opcode == codec.ERROR:
                    raise ConnectionError(f"the index refused: "
                                          f"{printable(answer['message'], 300)}")
                if opcode == codec.HOLDERS:
                    holders += codec.holders_of(answer)
                    if len(holders) > codec.MAX_ROWS:
                        raise codec.BadMessage(f"more than {codec.MAX_ROWS} rows")
                elif opcode == codec.DONE:
                    return holders, answer.get("truncated") is True
                else:
                    raise codec.BadMessage("unexpected answer")


def freshness(holder: codec.Holder) -> str:
    return f"renewed {holder.age:.0f}s ago, expires in {holder.expires_in:.0f}s"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        host, port = codec.parse_address(args.index)
        message = query_message(args.what)
    except (codec.BadMessage, ValueError) as e:
        sys.stderr.write(f"mirror-where: error: {e}\n")
        return 2
    try:
        holders, truncated = ask(host, port, message, args.timeout)
    except (OSError, ConnectionError, codec.BadMessage) as e:
        sys.stderr.write(f"mirror-where: error: {codec.format_address(host, port)}: "
                         f"{printable(str(e), 300)}\n")
        return 1
    if args.json:
        json.dump({"query": message, "holders": [h.to_wire() for h in holders],
                   "truncated": truncated}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0 if holders else 1
    if not holders:
        sys.stderr.write(f"mirror-where: no node holds {printable(args.what, 300)}\n")
        return 1
    for h in holders:
        print(f"{printable(h.path)}\t{printable(h.address)}\t{h.size}\t"
              f"{h.digest or '(digest pending)'}\t{freshness(h)}\tnode={printable(h.node)}")
    if truncated:
        sys.stderr.write(f"mirror-where: answer cut short at {len(holders)} rows by the index\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
