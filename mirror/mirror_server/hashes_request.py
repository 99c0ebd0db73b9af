"""The mirror server's HASHES request (doc/protocol.md, "HASHES"): a file's chunk hashes
from its origin, every value checked before it is believed (mirror/wire/chunk_hashes.py).

A HASHES answer is held whole (at most `chunk_hashes.MAX_CHUNKS` hashes: 2 MiB), since the
multi-source download needs all of them; `decode_head` refuses a count that does not match
the announced size and the protocol's chunk size, so a server cannot make us hold more.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from mirror.mirror_server.content_client import ContentClientProtocol, _Request
from mirror.wire import chunk_hashes, frames
from mirror.wire.chunk_hashes import ChunkHashes

#: Seconds a HASHES answer may take (hashing a big file takes a while; the content server
#: stops at its own --hashes-timeout, 120 s by default).
HASHES_TIMEOUT = 150.0


class _HashesRequest(_Request):
    def __init__(self, client: ContentClientProtocol, request_id: int, what: str,
                 timeout: float) -> None:
        super().__init__(client, request_id, what, timeout)
        self.head: chunk_hashes.Head | None = None
        self.hashes: list[bytes] = []

    def frame(self, opcode: int, payload: bytes) -> None:
        try:
            if opcode == frames.HASHES_HEAD and self.head is None:
                self.head = chunk_hashes.decode_head(payload, self.client.max_file_size)
                self.deadline.restart()
            elif opcode == frames.HASH_LIST and self.head is not None:
                room = self.head.count - len(self.hashes)
                self.hashes += chunk_hashes.decode_hash_list(payload, room)
                self.deadline.restart()
            else:
                self.fail(f"{self.what}: unexpected response {opcode:#x}")
                return
        except ValueError as e:
            self.fail(f"{self.what}: bad answer: {e}")
            return
        head = self.head
        if head is not None and len(self.hashes) == head.count:
            self.finish(ChunkHashes(head.file_size, head.mtime_ns, head.mode, head.digest,
                                    head.chunk_size, tuple(self.hashes)))


def request_hashes(client: ContentClientProtocol, path: str,
                   timeout: float = HASHES_TIMEOUT) -> Deferred[ChunkHashes]:
    """HASHES ``path`` on ``client``'s server; fails with `TransferError`."""
    req = _HashesRequest(client, client.new_request_id(), f"HASHES {path}", timeout)
    return client.start_request(req, frames.HASHES, path.encode("utf-8"))
