"""twistd plugins: `twistd content-server`, `twistd mirror-server`, `twistd mirror-index`.

Only ServiceMaker lines: importing anything heavy here (or the reactor) would install the
default reactor before twistd reads --reactor.
"""
from twisted.application.service import ServiceMaker

content_server = ServiceMaker(
    "mirror content server",
    "mirror.content_server.tap",
    "Export a directory tree over the mirror content protocol (LIST, FETCH).",
    "content-server",
)
mirror_server = ServiceMaker(
    "mirror server",
    "mirror.mirror_server.tap",
    "Accept mirror jobs and fetch trees from content servers into a mirror directory.",
    "mirror-server",
)
mirror_index = ServiceMaker(
    "mirror index",
    "mirror.index.tap",
    "Know which node of a mirror network holds which file (registrations are leases).",
    "mirror-index",
)
