"""Setting fault-path tracing up in tracefs, and taking it down again.

What is traced (each only where the kernel has it; what is missing is listed, and the record's
fields that need it are marked not observable):

* tracepoints ``kvm:kvm_page_fault`` (the guest-physical address and error code of every #NPF),
  ``kvmmmu:kvm_mmu_set_spte`` (the SPTE installed: writable bit, level), ``kvmmmu:mark_mmio_spte``,
  ``kvmmmu:fast_page_fault``, ``kvm:kvm_emulate_insn`` (the fault ended in the emulator),
  ``kvm:kvm_try_async_get_page`` and ``kvm:kvm_async_pf_repeated_fault`` (async #PF);
* a kprobe and a kretprobe on KVM's gfn->pfn entry point of the x86 fault path, with the
  arguments that matter: ``__gfn_to_pfn_memslot`` (≤ 6.12; before 6.2 without ``interruptible``)
  or ``__kvm_faultin_pfn`` (≥ 6.13, ``foll`` flags); the return value (pfn or error class) and,
  where return probes can read entry arguments (``$argN``), ``*writable`` = ``map_writable``.

Why once per batch: creating probe events and enabling tracepoints costs milliseconds each;
per scenario the events are consumed from ``trace_pipe`` (resetting the buffer would wait for an RCU grace period).  Why a tracefs instance of its own
(``instances/pfndiff-<pid>-<n>``): its buffer, marker and event switches are this process's, so other
tracing on the machine (another pfndiff, a developer's ``trace-cmd``) neither sees nor disturbs
them; events of other processes are dropped by pid when parsed.  Everything this module creates
is removed by ``close`` (events disabled, probes deleted, the instance removed, tracefs unmounted
if it mounted it).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import re
from dataclasses import dataclass, field

ROOTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
GROUP = "pfndiff"
TRACEPOINTS = ("kvm/kvm_page_fault", "kvmmmu/kvm_mmu_set_spte", "kvmmmu/mark_mmio_spte", "kvmmmu/fast_page_fault",
               "kvm/kvm_emulate_insn", "kvm/kvm_try_async_get_page", "kvm/kvm_async_pf_repeated_fault")
BUFFER_KB = 1024
_SERIAL = itertools.count()


@dataclass(frozen=True)
class EntryPoint:
    """A gfn->pfn entry point and how its arguments are fetched (x86-64 calling convention)."""
    symbol: str
    entry: str                  # the kprobe's fetch args
    wr: str                     # the kretprobe's fetch of *writable (needs $argN on return probes)


ENTRY_POINTS = {
    # ≤ 6.1: (slot, gfn, atomic, bool *async, write_fault, bool *writable, hva_t *hva)
    "legacy-6.1": EntryPoint("__gfn_to_pfn_memslot", "gfn=%si:x64 atomic=%dx:u8 async=%cx:x64 write=%r8:u8",
                             "wr=+0($arg6):u8"),
    # 6.2 - 6.12: (slot, gfn, atomic, interruptible, bool *async, write_fault, bool *writable, hva_t *hva)
    "legacy": EntryPoint("__gfn_to_pfn_memslot",
                         "gfn=%si:x64 atomic=%dx:u8 intr=%cx:u8 async=%r8:x64 write=%r9:u8", "wr=+0($arg7):u8"),
    # ≥ 6.13: (slot, gfn, unsigned int foll, bool *writable, struct page **refcounted_page)
    "merged": EntryPoint("__kvm_faultin_pfn", "gfn=%si:x64 foll=%dx:x32", "wr=+0($arg4):u8"),
}


@dataclass
class Tracing:
    """What was set up: the tracefs instance (``root``) in tracefs (``top``), the tracepoints
    enabled, the entry point probed (or why not), whether ``map_writable`` is readable, and what
    is not observable."""
    root: str
    top: str = ""
    mounted: bool = False
    tracepoints: list[str] = field(default_factory=list)
    entry_point: str | None = None
    layout: str | None = None
    map_writable: bool = False
    missing: dict[str, str] = field(default_factory=dict)      # what -> why not observable
    symbols: list[str] = field(default_factory=list)            # of the entry points, those kallsyms lists
    pipe: int | None = None                                     # trace_pipe, read without blocking

    def info(self) -> dict[str, object]:
        return {"tracefs": self.root, "tracepoints": list(self.tracepoints), "entry_point": self.entry_point,
                "layout": self.layout, "map_writable": self.map_writable, "not_observable": dict(self.missing),
                "symbols": list(self.symbols)}


def _write(path: str, text: str, append: bool = False) -> str | None:
    """Write to a tracefs file; the error's text, or None."""
    try:
        fd = os.open(path, os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC))
    except OSError as e:
        return e.strerror or str(e)
    try:
        os.write(fd, text.encode())
        return None
    except OSError as e:
        return e.strerror or str(e)
    finally:
        os.close(fd)


def _mount(root: str) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.mount(b"nodev", root.encode(), b"tracefs", 0, None) == 0


def find_root(mount: bool = True) -> tuple[str | None, bool]:
    """(tracefs root, whether it was mounted here)."""
    for r in ROOTS:
        if os.path.exists(os.path.join(r, "trace_marker")):
            return r, False
    if mount and os.path.isdir(ROOTS[0]) and _mount(ROOTS[0]) and os.path.exists(os.path.join(ROOTS[0], "trace_marker")):
        return ROOTS[0], True
    return None, False


def _kvm_symbols() -> set[str]:
    names = {e.symbol for e in ENTRY_POINTS.values()} | {"hva_to_pfn", "__gfn_to_page"}
    found: set[str] = set()
    try:
        with open("/proc/kallsyms") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3 and parts[2] in names:
                    found.add(parts[2])
    except OSError:
        pass
    return found


def _layout(release: str, symbols: set[str]) -> str | None:
    if "__kvm_faultin_pfn" in symbols:
        return "merged"
    if "__gfn_to_pfn_memslot" in symbols:
        m = re.match(r"(\d+)\.(\d+)", release)
        return "legacy-6.1" if m and (int(m[1]), int(m[2])) < (6, 2) else "legacy"
    return None


def open_tracing(release: str | None = None, kprobes: bool = True) -> Tracing | None:
    """Set fault-path tracing up; None when this kernel has no tracefs to trace with."""
    top, mounted = find_root()
    if top is None:
        return None
    _remove_stale(top)
    root = os.path.join(top, "instances", f"{GROUP}-{os.getpid()}-{next(_SERIAL)}")
    try:
        if not os.path.isdir(root):
            os.mkdir(root)
    except OSError:
        if mounted:
            ctypes.CDLL(None, use_errno=True).umount2(top.encode(), 0)
        return None
    t = Tracing(root, top, mounted)
    _write(os.path.join(root, "tracing_on"), "0")
    _write(os.path.join(root, "buffer_size_kb"), str(BUFFER_KB))
    for tp in TRACEPOINTS:
        if tp == "kvm/kvm_page_fault" and os.path.isdir("/sys/module/kvm_pvm"):
            t.missing[tp] = "PVM's exit handler does not report #PF exits through it: fault boundaries unknown"
            continue
        why = _write(os.path.join(root, "events", tp, "enable"), "1")
        if why is None:
            t.tracepoints.append(tp)
        else:
            t.missing[tp] = "no such tracepoint" if not os.path.exists(os.path.join(root, "events", tp)) else why
    release = release or os.uname().release
    probe_file = os.path.join(top, "kprobe_events")
    if not kprobes:
        t.missing["entry point"] = "kprobes not used here"
    elif not os.path.exists(probe_file):
        t.missing["entry point"] = "no kprobe events (CONFIG_KPROBE_EVENTS off)"
    else:
        symbols = _kvm_symbols()
        t.symbols = sorted(symbols)
        layout = _layout(release, symbols)
        if layout is None:
            t.missing["entry point"] = "kvm has neither __gfn_to_pfn_memslot nor __kvm_faultin_pfn"
        else:
            _remove_probes(t)
            ep = ENTRY_POINTS[layout]
            why = _write(probe_file, f"p:{GROUP}/pfn_in {ep.symbol} {ep.entry}\n", append=True)
            if why is None:
                t.map_writable = _write(probe_file, f"r:{GROUP}/pfn_out {ep.symbol} ret=$retval:x64 {ep.wr}\n",
                                        append=True) is None
                if not t.map_writable:
                    t.missing["map_writable"] = "return probes cannot read entry arguments ($argN) on this kernel"
                    why = _write(probe_file, f"r:{GROUP}/pfn_out {ep.symbol} ret=$retval:x64\n", append=True)
            if why is None:
                why = _write(os.path.join(root, "events", GROUP, "enable"), "1")
            if why is None:
                t.entry_point, t.layout = ep.symbol, layout
            else:
                t.missing["entry point"] = f"cannot probe {ep.symbol}: {why}"
                _remove_probes(t)
    if t.entry_point is None:
        t.missing.setdefault("map_writable", "needs the entry point's probe")
    reset(t)
    _write(os.path.join(root, "tracing_on"), "1")
    return t


def _remove_stale(top: str) -> None:
    """Instances left by processes that died before taking their tracing down (SIGKILL, or a VMM
    worker still holding the marker open when its parent exited)."""
    inst = os.path.join(top, "instances")
    try:
        names = os.listdir(inst)
    except OSError:
        return
    for n in names:
        m = re.fullmatch(rf"{GROUP}-(\d+)-\d+", n)
        if m and not os.path.exists(f"/proc/{m[1]}"):
            for tp in TRACEPOINTS + (GROUP,):
                _write(os.path.join(inst, n, "events", tp, "enable"), "0")
            try:
                os.rmdir(os.path.join(inst, n))
            except OSError:
                pass


def _remove_probes(t: Tracing) -> None:
    _write(os.path.join(t.root, "events", GROUP, "enable"), "0")
    for name in ("pfn_out", "pfn_in"):
        _write(os.path.join(t.top, "kprobe_events"), f"-:{GROUP}/{name}\n", append=True)


def reset(t: Tracing) -> None:
    """Empty the buffer by resetting it: waits for an RCU grace period (tens of milliseconds under
    TCG), so only at set-up and tear-down; per scenario ``read`` consumes instead."""
    _write(os.path.join(t.root, "trace"), "")


def clear(t: Tracing) -> None:
    """Drop whatever the buffer holds (events between scenarios), by consuming it."""
    read(t)


def read(t: Tracing, limit: int = 4 << 20) -> str:
    """The events since the last read (bounded), consumed from ``trace_pipe`` without blocking."""
    if t.pipe is None:
        try:
            t.pipe = os.open(os.path.join(t.root, "trace_pipe"), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return ""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        try:
            b = os.read(t.pipe, 1 << 16)
        except BlockingIOError:
            break
        except OSError:
            break
        if not b:
            break
        chunks.append(b)
        size += len(b)
    return b"".join(chunks).decode(errors="replace")


def close(t: Tracing) -> None:
    """Undo everything ``open_tracing`` did."""
    root = t.root
    _write(os.path.join(root, "tracing_on"), "0")
    for tp in t.tracepoints:
        _write(os.path.join(root, "events", tp, "enable"), "0")
    if t.entry_point is not None:
        _remove_probes(t)
    if t.pipe is not None:
        os.close(t.pipe)
        t.pipe = None
    reset(t)
    try:
        os.rmdir(root)
    except OSError:
        return                      # still open somewhere (a worker's marker): the next set-up removes it
    others = [n for n in os.listdir(os.path.join(t.top, "instances")) if n.startswith(GROUP + "-")]
    if t.mounted and not others:    # unmounted only when no other process traces through it
        libc = ctypes.CDLL(None, use_errno=True)
        libc.umount2(t.top.encode(), 0)
