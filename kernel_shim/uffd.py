"""userfaultfd: pages that "need I/O" are missing pages of a registered range, and a resolver thread
plays the I/O device.

The vCPU thread blocks in ``handle_userfault`` (an interruptible wait, as KVM's fault path passes
``FOLL_INTERRUPTIBLE``) until the resolver fills the page with ``UFFDIO_COPY``.  When the scenario
has a signal pending, the resolver first sends the signal to the vCPU thread and leaves the page
missing, which is how a real VMM sees ``KVM_RUN`` return ``-EINTR`` (spec §8, v6.1+).
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .kvm_ioctl import PAGE, KvmError, libc

SYS_userfaultfd = 323
UFFD_API = 0xAA
UFFDIO_REGISTER_MODE_MISSING = 1
UFFD_EVENT_PAGEFAULT = 0x12
UFFD_PAGEFAULT_FLAG_WRITE = 1
O_CLOEXEC, O_NONBLOCK = 0o2000000, 0o4000


def _ioc(d: int, nr: int, size: int) -> int:
    return (d << 30) | (size << 16) | (0xAA << 8) | nr


UFFDIO_API = _ioc(3, 0x3F, 24)
UFFDIO_REGISTER = _ioc(3, 0x00, 32)
UFFDIO_UNREGISTER = _ioc(2, 0x01, 16)
UFFDIO_COPY = _ioc(3, 0x03, 40)
UFFDIO_ZEROPAGE = _ioc(3, 0x04, 32)

RESOLVE, SIGNAL, HOLD = "resolve", "signal", "hold"


def _call(fd: int, req: int, buf: ctypes.Array) -> int:
    r = libc.ioctl(fd, req, ctypes.addressof(buf))
    return -ctypes.get_errno() if r < 0 else r


def open_uffd() -> int:
    fd = libc.syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)
    if fd < 0:
        e = ctypes.get_errno()
        raise KvmError(e, f"userfaultfd: {os.strerror(e)}")
    api = ctypes.create_string_buffer(struct.pack("<QQQ", UFFD_API, 0, 0), 24)
    r = _call(fd, UFFDIO_API, api)
    if r < 0:
        os.close(fd)
        raise KvmError(-r, f"UFFDIO_API: {os.strerror(-r)}")
    return fd


def register(fd: int, start: int, length: int) -> int:
    buf = ctypes.create_string_buffer(struct.pack("<QQQQ", start, length, UFFDIO_REGISTER_MODE_MISSING, 0), 32)
    return _call(fd, UFFDIO_REGISTER, buf)


def unregister(fd: int, start: int, length: int) -> int:
    return _call(fd, UFFDIO_UNREGISTER, ctypes.create_string_buffer(struct.pack("<QQ", start, length), 16))


def copy(fd: int, dst: int, data: bytes) -> int:
    src = ctypes.create_string_buffer(data.ljust(PAGE, b"\0"), PAGE)
    buf = ctypes.create_string_buffer(struct.pack("<QQQQq", dst, ctypes.addressof(src), PAGE, 0, 0), 40)
    return _call(fd, UFFDIO_COPY, buf)


def zeropage(fd: int, dst: int) -> int:
    return _call(fd, UFFDIO_ZEROPAGE, ctypes.create_string_buffer(struct.pack("<QQQq", dst, PAGE, 0, 0), 32))


@dataclass
class Resolver:
    """The resolver thread.  ``policy(addr, write)`` returns RESOLVE, SIGNAL or HOLD;
    ``fill(addr, write)`` resolves one page (returns 0 or -errno)."""
    fd: int
    policy: Callable[[int, bool], str]
    fill: Callable[[int, bool], int]
    target: int = field(default_factory=threading.get_ident)       # the vCPU thread
    signum: int = signal.SIGUSR1
    faults: list[tuple[int, bool, str]] = field(default_factory=list)
    _stop_r: int = -1
    _stop_w: int = -1
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop_r, self._stop_w = os.pipe2(O_CLOEXEC)
        self._thread = threading.Thread(target=self._loop, name="uffd-resolver", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == self._stop_r:
                    return
                try:
                    msg = os.read(self.fd, 32 * 16)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                for off in range(0, len(msg) - 31, 32):
                    if msg[off] != UFFD_EVENT_PAGEFAULT:
                        continue
                    flags, addr = struct.unpack_from("<QQ", msg, off + 8)
                    write = bool(flags & UFFD_PAGEFAULT_FLAG_WRITE)
                    addr &= ~(PAGE - 1)
                    action = self.policy(addr, write)
                    self.faults.append((addr, write, action))
                    if action == SIGNAL:
                        signal.pthread_kill(self.target, self.signum)
                    elif action == RESOLVE:
                        self.fill(addr, write)

    def stop(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=5)
            self._thread = None
        for fd in (self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._stop_r = self._stop_w = -1
