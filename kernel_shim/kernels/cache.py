"""Where fetched kernels live: ``$XDG_CACHE_HOME/pfndiff`` (or ``~/.cache/pfndiff``).

Why a user cache and not the checkout: downloads are large, machine-specific and never committed;
they survive ``git clean`` and are shared by every checkout of the project.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pfndiff"


def kernels_dir() -> Path:
    return cache_root() / "kernels"


def generation_of(release: str) -> str | None:
    """≤ 6.12: legacy gfn_to_pfn family (g1); ≥ 6.13: merged kvm_follow_pfn (g3)."""
    m = re.match(r"(\d+)\.(\d+)", release)
    if not m:
        return None
    return "g3" if (int(m[1]), int(m[2])) >= (6, 13) else "g1"


def short_name(release: str) -> str:
    """``6.12.57+deb13-amd64`` -> ``6.12`` (the name in ``qemu:<kernel>``)."""
    m = re.match(r"(\d+\.\d+)", release)
    return m[1] if m else release


@dataclass
class KernelEntry:
    """One cached, bootable kernel (``manifest.json`` in its directory)."""
    release: str                    # uname -r, e.g. 6.1.0-41-amd64
    suite: str
    packages: dict[str, str]        # package -> version
    generation: str
    api: str                        # __gfn_to_pfn_memslot | kvm_follow_pfn (what kvm.ko exports)
    modules: list[str] = field(default_factory=list)     # load order
    busybox: str = ""
    directory: str = ""
    alias: str = ""                 # the name a kernel added with `pfndiff kernels add` was given

    @property
    def name(self) -> str:
        return self.alias or short_name(self.release)

    @property
    def key(self) -> str:
        """What one guest is booted per: the cache directory (two entries may share a release)."""
        return self.directory

    @property
    def vmlinux(self) -> Path:
        return Path(self.directory) / "vmlinux"

    @property
    def initramfs(self) -> Path:
        """The initramfs for the current ``/init``, rebuilt from the cached busybox and modules
        when ``/init`` changed since it was built."""
        from .initramfs import build_initramfs, init_version
        d = Path(self.directory)
        path = d / f"initramfs-{init_version()}.cpio"
        if not path.exists():
            mods = {n: (d / "modules" / f"{n}.ko").read_bytes() for n in self.modules}
            blob = build_initramfs((d / "busybox").read_bytes(), mods, self.modules)
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")     # builders may race
            tmp.write_bytes(blob)
            os.replace(tmp, path)       # older ones stay: another checkout may boot with its own /init
        return path

    def complete(self) -> bool:
        d = Path(self.directory)
        return self.vmlinux.is_file() and (d / "busybox").is_file() and \
            all((d / "modules" / f"{n}.ko").is_file() for n in self.modules)

    def save(self) -> None:
        d = asdict(self)
        d.pop("directory")
        tmp = Path(self.directory) / f"manifest.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(d, indent=2) + "\n")
        os.replace(tmp, Path(self.directory) / "manifest.json")


def cached_kernels() -> list[KernelEntry]:
    """Every complete kernel in the cache (manifest, vmlinux, busybox and modules present), oldest first."""
    out: list[KernelEntry] = []
    root = kernels_dir()
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        man = d / "manifest.json"
        try:
            data = json.loads(man.read_text())
            e = KernelEntry(directory=str(d), **data)
        except (OSError, ValueError, TypeError):
            continue
        if e.complete():
            out.append(e)
    out.sort(key=lambda e: _version_key(e.release))
    return out


def find_kernel(name: str) -> KernelEntry | None:
    """``6.1`` (newest cached 6.1.x) or a full release ``6.1.0-41-amd64``."""
    hits = [e for e in cached_kernels() if e.name == name or (e.release == name and not e.alias)]
    return hits[-1] if hits else None


def _version_key(release: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", release)[:4])


def install_entry(tmp: Path, dest: Path, vmlinux: bytes, busybox: bytes, modules: dict[str, bytes],
                  order: list[str], entry_at: Callable[[str], KernelEntry]) -> KernelEntry:
    """Write a kernel's files into ``tmp`` (a directory beside ``dest``), record its manifest, then
    move it to ``dest`` in one rename: a failed or interrupted install leaves the cache as it was.
    The initramfs is built now, not at the first boot."""
    try:
        (tmp / "vmlinux").write_bytes(vmlinux)
        (tmp / "busybox").write_bytes(busybox)
        (tmp / "modules").mkdir()
        for n in order:
            (tmp / "modules" / f"{n}.ko").write_bytes(modules[n])
        entry = entry_at(str(tmp))
        entry.save()
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    entry.directory = str(dest)
    entry.initramfs                                     # noqa: B018 - built now, not at the first boot
    return entry
