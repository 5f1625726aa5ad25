"""Runs inside the QEMU guest (started by the initramfs's ``/init``): scenarios in, VMM-level
records out, over a virtio-serial port, for as long as the host keeps asking.

Why here and how: the guest runs the host's Python from the read-only 9p root, and executes each
scenario through kernel_shim's own Runner (a worker child with a hard timeout), so a scenario
that hangs or kills the VMM costs one record, not the boot.  Standard library plus kvmsim and
kernel_shim only; no pytest, nothing installed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import traceback
from typing import Any

from kernel_shim import guest_code as g
from kernel_shim import kvm_ioctl as k
from kernel_shim import quirks, worker
from kernel_shim.probe import generation_of, kvm_unusable
from kernel_shim.runner import Runner, Worker, WorkerError
from kernel_shim.worker import read_msg, write_msg

from ..faultpath import session, tracefs
from . import guest_pfnmap

PORT_NAME = "pfndiff.ctl"


def find_port() -> str | None:
    base = "/sys/class/virtio-ports"
    try:
        ports = sorted(os.listdir(base))
    except OSError:
        return None
    for p in ports:
        try:
            with open(os.path.join(base, p, "name")) as fh:
                if fh.read().strip() == PORT_NAME:
                    return "/dev/" + p
        except OSError:
            continue
    return None


class ForkedChild:
    """What ``Runner`` uses of a ``subprocess.Popen``, for a worker forked from this process."""

    def __init__(self, pid: int, stdin: int, stdout: int) -> None:
        self.pid = pid
        self.stdin = os.fdopen(stdin, "wb", buffering=0)
        self.stdout = os.fdopen(stdout, "rb", buffering=0)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)      # -signal when killed, as Popen
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired("pfndiff worker", timeout or 0)
            time.sleep(0.002)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class GuestRunner(Runner):
    """kernel_shim's Runner whose worker child is forked from this process, which has BAR-backed
    VM_PFNMAP VMAs installed and every module imported: a fresh Python costs seconds under TCG,
    and every scenario whose fatal signal kills its VMM (the worker) needs a new one."""

    def start(self) -> Worker:
        size = g.SHIM_PAGES * k.PAGE
        fd = k.memfd_create("pfndiff-shim")
        os.ftruncate(fd, size)
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        pid = os.fork()
        if pid == 0:                                        # the worker: stdin, stdout, the shim at fd 3
            code = 1
            try:
                os.dup2(req_r, 0)
                os.dup2(rep_w, 1)
                os.dup2(fd, 3)
                os.closerange(4, os.sysconf("SC_OPEN_MAX"))
                sys.argv = [sys.argv[0], "3"]
                code = worker.main()
            finally:
                os._exit(code)
        for f in (req_r, rep_w):
            os.close(f)
        hva = k.mmap(0, size, k.PROT_READ, k.MAP_SHARED, fd, 0)
        view = memoryview((ctypes.c_char * size).from_address(hva)).cast("B")
        w = Worker(ForkedChild(pid, req_w, rep_r), fd, view, hva)       # type: ignore[arg-type]
        hello = self._recv(w, 60.0)
        if not isinstance(hello, dict) or "ready" not in hello:
            w.close(kill=True)
            raise WorkerError(hello.get("error", "worker did not start") if isinstance(hello, dict)
                              else "worker did not start")
        return w


def guest_quirks(sc: Any) -> list[str]:
    out = [q for q in quirks.applicable(sc) if q != "perf-pfnmap"]
    if any(v.remap in ("pfnmap", "io") for v in sc.world.vmas):
        out.append("ivshmem-pfnmap")
    return out


def _faultpath_wanted() -> bool:
    """``pfndiff.faultpath=0`` on the kernel command line (``PFNDIFF_FAULTPATH=0`` on the host) turns
    fault-path tracing off."""
    try:
        with open("/proc/cmdline") as fh:
            return "pfndiff.faultpath=0" not in fh.read().split()
    except OSError:
        return True


def _uptime() -> float:
    try:
        with open("/proc/uptime") as fh:
            return float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def main() -> int:
    t_start = _uptime()
    port = find_port()
    if port is None:
        print("pfndiff-guest: no virtio-serial port named " + PORT_NAME, file=sys.stderr)
        return 1
    fd = os.open(port, os.O_RDWR)
    release = os.uname().release
    why_kvm = kvm_unusable()
    pfnmap = guest_pfnmap.install()
    if why_kvm is not None:
        write_msg(fd, {"ready": False, "release": release, "kvm": why_kvm})
        return 1
    tracing = session.acquire(release) if _faultpath_wanted() else None   # once per boot (every batch of
                                                    # scenarios), before the worker is forked: it writes the markers
    runner = GuestRunner(timeout=30.0)
    try:
        runner.worker = runner.start()              # the worker's Python start-up is part of the boot
    except WorkerError as e:
        write_msg(fd, {"ready": False, "release": release, "kvm": f"worker did not start: {e}"})
        return 1
    write_msg(fd, {"ready": True, "release": release, "generation": generation_of(release), "kvm": None,
                   "pfnmap": pfnmap, "uptime_at_start": t_start, "uptime": _uptime(),
                   "fault_path": tracing.info() if tracing is not None else None})
    try:
        while True:
            req = read_msg(fd)
            if req is None or req == "quit":
                break
            sc, opts, timeout = req
            runner.timeout = timeout
            t0 = time.monotonic()
            if tracing is not None:
                tracefs.clear(tracing)
            try:
                out = runner.execute(sc, opts)
            except WorkerError as e:
                out = {"error": f"worker: {e}"}
            except Exception:                       # noqa: BLE001 - reported to the host
                out = {"error": traceback.format_exc(limit=6)}
            if "records" in out:
                out["meta"]["quirks"] = guest_quirks(sc)
                if tracing is not None:
                    session.attach_faults(out, sc, tracing)
                out["meta"]["guest_seconds"] = round(time.monotonic() - t0, 6)
            write_msg(fd, out)
    finally:
        runner.close()
        if tracing is not None:
            session.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
