"""The worker child: owns the VM and runs one scenario per request, forever.

Protocol on stdin/stdout: 4-byte little-endian length + pickle.  Requests are
``(scenario, Options)``; replies ``{"records", "meta"}`` or ``{"error": text}``.  The first
reply is a hello (``{"ready": True}`` or ``{"error": ...}``).  Status for the parent (what runs
now, records so far) lives in the shim memfd it passes as ``argv[1]``, so a hang or a crash of
this process still leaves the parent something to report.
"""

from __future__ import annotations

import copyreg
import os
import pickle
import signal
import struct
import sys
import traceback
from typing import Any

from kvmsim.scenario import Op

# kvmsim's Op forwards attribute lookups to its args, which recurses when pickle probes a bare
# instance; reduce it to its constructor arguments instead.
copyreg.pickle(Op, lambda op: (Op, (op.kind, op.args, op.line)))


def read_msg(fd: int) -> Any:
    head = _read_exact(fd, 4)
    if head is None:
        return None
    (n,) = struct.unpack("<I", head)
    body = _read_exact(fd, n)
    return None if body is None else pickle.loads(body)


def write_msg(fd: int, obj: Any) -> None:
    blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    data = struct.pack("<I", len(blob)) + blob
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def main() -> int:
    # Ctrl-C reaches the whole process group: the parent decides when this child stops (it
    # closes our stdin or kills us), so the child neither dies mid-reply nor prints a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return _serve()
    except (BrokenPipeError, EOFError):             # the parent went away: nothing to report to
        return 0


def _serve() -> int:
    from .host_exec import Machine
    shim_fd = int(sys.argv[1])
    inp, out = 0, os.dup(1)
    os.dup2(2, 1)                                   # stray prints must not corrupt the protocol
    try:
        machine = Machine(shim_fd)
    except Exception as e:                          # noqa: BLE001 - reported to the parent
        write_msg(out, {"error": f"cannot set up the VM: {e}"})
        return 1
    write_msg(out, {"ready": True})
    while True:
        req = read_msg(inp)
        if req is None:
            break
        sc, opts = req
        try:
            reply = machine.execute(sc, opts)
        except Exception:                           # noqa: BLE001 - an observation, not a crash
            reply = {"error": traceback.format_exc(limit=6)}
        write_msg(out, reply)
    machine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
