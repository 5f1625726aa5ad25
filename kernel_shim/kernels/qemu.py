"""One QEMU guest (TCG, ``-cpu max``: AMD SVM with nested paging) running ``guest_runner``.

Why a session object: booting costs seconds and running a scenario milliseconds, so a guest is
booted once and serves every scenario of a batch (or a whole fuzzing campaign) over a
virtio-serial port.  Every wait has a deadline; on a missed one QEMU is killed (its own process
group, and it dies with us through PDEATHSIG) and the next request boots a fresh guest.  The
serial console goes to a file, so each scenario's kernel messages can be kept with its trace.
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kernel_shim.worker import read_msg, write_msg
from kvmsim.checkout import ROOT

from .cache import KernelEntry
from .guest_pfnmap import HUGE_IVSHMEM_MIB, IVSHMEM_MIB

REPO = ROOT
QEMU = "qemu-system-x86_64"
INSTALL_HINT = "install it with: apt-get install qemu-system-x86"
BOOT_TIMEOUT = 90.0
SERIAL_KEEP = 16_000


class QemuError(Exception):
    """QEMU is missing, the guest did not come up, or it died (the message says which)."""


def qemu_missing() -> str | None:
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed ({INSTALL_HINT})"
    return None


def _pdeathsig() -> None:
    """In the QEMU child: die with the parent, in a process group of its own."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)      # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class QemuSession:
    kernel: KernelEntry
    memory_mib: int = 1024
    boot_timeout: float = BOOT_TIMEOUT
    proc: subprocess.Popen | None = None
    sock: socket.socket | None = None
    tmp: str = ""
    hello: dict[str, Any] = field(default_factory=dict)
    boot_seconds: float = 0.0
    served: int = 0
    python_flags: tuple[str, ...] = ("-S",)
    _console_pos: int = 0
    _console_fd: int = -1
    _console_left: bytes = b""                      # unread output of a killed guest

    @property
    def console_path(self) -> str:
        return os.path.join(self.tmp, "console.log")

    def command(self) -> list[str]:
        py, repo = sys.executable, REPO
        # -S: no site processing (dozens of stats over 9p at TCG speed); the path is explicit.
        path = ":".join([repo, sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
        for what, p in (("python", py), ("checkout", repo), ("site-packages", path)):
            if any(c.isspace() for c in p):
                raise QemuError(f"the {what} path {p!r} contains white space (it goes on the kernel command line)")
        # intel_iommu=on: the emulated VT-d gives the second ivshmem device an IOMMU group, so
        # vfio-pci can map its BAR (guest_vfio; Debian has no CONFIG_VFIO_NOIOMMU); iommu=pt keeps
        # the other devices' DMA untranslated.
        # no_timer_check: under TCG on a loaded machine the IO-APIC timer test can miss its window
        # and panic the boot ("timer doesn't work through Interrupt-remapped IO-APIC").
        append = (f"console=ttyS0 panic=-1 loglevel=4 printk.time=1 nokaslr mitigations=off "
                  f"intel_iommu=on iommu=pt no_timer_check "
                  f"pfndiff.py={py} pfndiff.repo={repo} pfndiff.path={path} "
                  f"pfndiff.flags={','.join(self.python_flags)}")
        if os.environ.get("PFNDIFF_FAULTPATH", "1") == "0":
            append += " pfndiff.faultpath=0"                 # no fault-path tracing in the guest
        # phys-bits=48: the shim's guests use GPAs up to 2^48 (as on a real host); TCG's default
        # of 40 would make such accesses fault inside the L2 guest (a triple fault, SHUTDOWN).
        return [QEMU, "-accel", "tcg", "-machine", "q35", "-cpu", "max,phys-bits=48", "-m", str(self.memory_mib),
                "-smp", "1",
                "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot", "-net", "none",
                "-serial", f"file:{self.console_path}",
                "-device", "intel-iommu",                   # before the PCI devices it translates
                "-kernel", str(self.kernel.vmlinux), "-initrd", str(self.kernel.initramfs), "-append", append,
                "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
                "-device", "virtio-serial-pci,id=vser",
                "-chardev", f"socket,id=ctl,path={os.path.join(self.tmp, 'ctl.sock')},server=on,wait=on",
                "-device", "virtserialport,bus=vser.0,chardev=ctl,name=pfndiff.ctl",
                "-object", f"memory-backend-memfd,id=ivmem,size={IVSHMEM_MIB}M,share=on",
                "-device", "ivshmem-plain,memdev=ivmem",
                "-object", f"memory-backend-memfd,id=ivhuge,size={HUGE_IVSHMEM_MIB}M,share=on",
                "-device", "ivshmem-plain,memdev=ivhuge"]

    # --- life cycle ----------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        why = qemu_missing()
        if why is not None:
            raise QemuError(why)
        self.tmp = tempfile.mkdtemp(prefix="pfndiff-qemu-")
        self._console_pos = 0
        with open(self.console_path, "wb"):
            pass                                    # QEMU truncates and writes this same file
        self._console_fd = os.open(self.console_path, os.O_RDONLY | os.O_CLOEXEC)
        t0 = time.monotonic()
        with open(os.path.join(self.tmp, "qemu.log"), "wb") as log:
            # PDEATHSIG follows the starting *thread*: only the main thread's children get it (a
            # guest started from a worker thread is powered off by close() or at exit instead).
            main = threading.current_thread() is threading.main_thread()
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True, preexec_fn=_pdeathsig if main else None)
        path = os.path.join(self.tmp, "ctl.sock")
        deadline = t0 + 10.0
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                s.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    s.close()
                    err = self._qemu_log()
                    self.kill()
                    raise QemuError(f"QEMU did not start: {err or 'no control socket'}") from None
                time.sleep(0.02)
        self.sock = s
        hello = self._recv(self.boot_timeout)
        self.boot_seconds = round(time.monotonic() - t0, 3)
        if not isinstance(hello, dict) or "ready" not in hello:
            tail = self.console()[-2000:]
            self.kill()
            raise QemuError(f"kernel {self.kernel.release} did not come up within {self.boot_timeout:g} s "
                            f"({type(hello).__name__}); console tail:\n{tail}")
        if not hello["ready"]:
            self.kill()
            raise QemuError(f"kernel {self.kernel.release}: KVM is not usable in the guest: {hello.get('kvm')}")
        self.hello = hello
        # Nothing of the session needs a path any more (QEMU and we hold fds): leave nothing on
        # disk, even if this process is killed and QEMU dies with it.
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp = ""
        return hello

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.sock is not None

    def request(self, msg: Any, timeout: float) -> Any:
        """Send one request and wait for its reply; a TimeoutError/EOFError value on failure
        (QEMU is killed then)."""
        assert self.sock is not None
        try:
            write_msg(self.sock.fileno(), msg)
        except OSError:
            self.kill()
            return EOFError("the guest closed the control port")
        reply = self._recv(timeout)
        if isinstance(reply, Exception):
            self.kill()
        else:
            self.served += 1
        return reply

    def _recv(self, timeout: float) -> Any:
        assert self.sock is not None
        fd = self.sock.fileno()
        r, _, _ = select.select([fd], [], [], timeout)
        if not r:
            return TimeoutError(f"no answer within {timeout:g} s")
        try:
            msg = read_msg(fd)
        except (OSError, EOFError, ValueError) as e:
            return EOFError(str(e))
        return EOFError("the guest closed the control port") if msg is None else msg

    def _read_console(self, pos: int) -> bytes:
        if self._console_fd < 0:
            return b""
        out = b""
        while True:
            chunk = os.pread(self._console_fd, 1 << 20, pos + len(out))
            if not chunk:
                return out
            out += chunk

    def console(self) -> str:
        return self._read_console(0).decode(errors="replace")

    def console_since_last(self) -> str:
        """Console output since the previous call (kernel messages of one scenario)."""
        data = self._console_left + self._read_console(self._console_pos)
        self._console_pos += len(data) - len(self._console_left)
        self._console_left = b""
        text = data.decode(errors="replace")
        return text if len(text) <= SERIAL_KEEP else "…" + text[-SERIAL_KEEP:]

    def _qemu_log(self) -> str:
        try:
            with open(os.path.join(self.tmp, "qemu.log"), errors="replace") as fh:
                return fh.read().strip()[-1000:]
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        """Ask the guest to power off; kill QEMU if it does not within ``grace`` seconds."""
        if self.alive:
            try:
                assert self.sock is not None
                write_msg(self.sock.fileno(), "quit")
            except OSError:
                pass
            try:
                assert self.proc is not None
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self._console_fd >= 0:
            self._console_left += self._read_console(self._console_pos)
            self._console_pos += len(self._console_left)
            os.close(self._console_fd)
            self._console_fd = -1
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = ""
