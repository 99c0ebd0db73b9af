"""``make demo``'s second step: the same kind of job with every hop TLS 1.3 and pinned keys
(issue 11), and what a client without a certificate gets."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

BIN = Path(sys.executable).parent

Start = Callable[[str, list[str], Path], "tuple[subprocess.Popen[bytes], int]"]


def _admin(*args: str) -> str:
    out = subprocess.run([str(BIN / "mirror-admin"), *args], capture_output=True, text=True,
                         check=True).stdout
    return out.split()[0]


def secured_job(work: Path, src: Path, start: Start,
                procs: list[subprocess.Popen[bytes]]) -> tuple[int, Path]:
    """Identities for a content server, a mirror server and mirror-init; the daemons
    secured, each pinning and authorizing the next; a pinned job, then one without a
    certificate. Returns mirror-init's status and where the mirror is."""
    ids = work / "identities"
    fp = {name: _admin("keygen", str(ids / name), "--name", name)
          for name in ("content", "mirror", "init")}
    print(f"demo: $ mirror-admin keygen {ids}/content  (and mirror, init): "
          f"content server is {fp['content'][:23]}...")
    (ids / "content.authorized").write_text(f"{fp['mirror']} the mirror server\n")
    (ids / "mirror.authorized").write_text(f"{fp['init']} mirror-init\n")
    cs, cport = start("content-server", [
        "--root", str(src), "--identity", str(ids / "content"),
        "--authorized-keys", str(ids / "content.authorized")],
        work / "content-server-tls.log")
    procs.append(cs)
    (ids / "mirror.known_hosts").write_text(f"127.0.0.1:{cport} {fp['content']}\n")
    mirror = work / "mirror-tls"
    mirror.mkdir()
    ms, mport = start("mirror-server", [
        "--mirror-dir", str(mirror), "--identity", str(ids / "mirror"),
        "--authorized-keys", str(ids / "mirror.authorized"),
        "--known-hosts", str(ids / "mirror.known_hosts")], work / "mirror-server-tls.log")
    procs.append(ms)
    (ids / "init.known_hosts").write_text(f"127.0.0.1:{mport} {fp['mirror']}\n")
    print(f"demo: secured content server on 127.0.0.1:{cport}, mirror server on "
          f"127.0.0.1:{mport} (TLS 1.3, pinned keys)")
    base = [str(BIN / "mirror-init"), "-n", "127.0.0.1", "-p", str(mport),
            "-s", f"127.0.0.1:{cport}:.", "--known-hosts", str(ids / "init.known_hosts")]
    print("demo: $ mirror-init " + " ".join(base[1:]) + " (no --identity)")
    subprocess.run(base)
    cmd = [*base, "--identity", str(ids / "init")]
    print("demo: $ mirror-init " + " ".join(cmd[1:]))
    status = subprocess.run(cmd).returncode
    return status, mirror / f"127.0.0.1_{cport}"
