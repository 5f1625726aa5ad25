"""``pfndiff kernels fetch``: Debian kernels into the pfndiff cache, ready to boot in QEMU.

Per suite: resolve the newest matching packages through a private apt (``apt_private``),
download them once, take ``vmlinux`` out of the ``vmlinuz`` and the needed modules out of the
package, and build an initramfs with Debian's busybox-static.  Everything lands in one directory
per kernel release with a ``manifest.json``; a kernel already there is not fetched again.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .apt_private import AptError, PrivateApt
from .cache import KernelEntry, generation_of, install_entry, kernels_dir
from .initramfs import OPTIONAL, InitramfsError, ModuleSet, decompress_module, module_key
from .vmlinux import VmlinuxError, extract_vmlinux

# Only modules under these trees are kept while reading a package (the guest's modules live here).
MODULE_TREES = ("arch/x86/", "virt/", "drivers/crypto/", "drivers/virtio/", "drivers/char/", "drivers/vfio/", "fs/",
                "net/9p/", "lib/", "crypto/", "mm/")


@dataclass(frozen=True)
class SuiteSpec:
    """Which packages make a bootable kernel in one suite: ``image`` holds the vmlinuz (and the
    modules unless ``modules`` names a separate package; ``{abi}`` is the image's ABI part)."""
    suite: str
    image: str
    modules: str | None = None


SPECS: dict[str, SuiteSpec] = {
    "bookworm": SuiteSpec("bookworm", r"linux-image-(?P<abi>6\.1\.\d+-\d+-amd64)-unsigned"),
    "trixie": SuiteSpec("trixie", r"linux-image-(?P<abi>6\.12\.\d+\+deb13(?:\.\d+)?-amd64)-unsigned"),
    "trixie-backports": SuiteSpec("trixie-backports", r"linux-binary-(?P<abi>\d+\.\d+\.\d+\+deb13(?:\.\d+)?-amd64)",
                                  modules="linux-modules-{abi}"),
    "sid": SuiteSpec("sid", r"linux-binary-(?P<abi>\d+\.\d+\.\d+\+deb\d+(?:\.\d+)?-amd64)",
                     modules="linux-modules-{abi}"),
}
BUSYBOX_SUITE = "bookworm"


class FetchError(Exception):
    """Fetching or preparing a kernel failed (the message says where)."""


def _members(deb: Path, want: Callable[[str], bool]) -> dict[str, bytes]:
    """Files of a .deb whose path satisfies ``want`` (read through ``dpkg-deb --fsys-tarfile``,
    which handles every compression the archive uses)."""
    if shutil.which("dpkg-deb") is None:
        raise FetchError("dpkg-deb not found (needed to read Debian packages)")
    out: dict[str, bytes] = {}
    p = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None
        with tarfile.open(fileobj=p.stdout, mode="r|") as tf:
            for m in tf:
                name = m.name.lstrip("./")
                if m.isfile() and want(name):
                    f = tf.extractfile(m)
                    if f is not None:
                        out[name] = f.read()
    finally:
        if p.stdout is not None:
            p.stdout.close()
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return out


def _is_vmlinuz(name: str) -> bool:
    return bool(re.fullmatch(r"boot/vmlinuz-.*|(usr/)?lib/modules/[^/]+/vmlinuz", name))


def _is_module(name: str) -> bool:
    m = re.fullmatch(r"(?:usr/)?lib/modules/[^/]+/kernel/(.*\.ko(?:\.xz|\.zst)?)", name)
    return bool(m and m[1].startswith(MODULE_TREES))


def _is_builtin_list(name: str) -> bool:
    return bool(re.fullmatch(r"(?:usr/)?lib/modules/[^/]+/modules\.builtin", name))


def fetch_suite(suite: str, log: Callable[[str], None] = print, update: bool = True) -> KernelEntry:
    """Fetch (or find in the cache) the newest kernel of ``suite``."""
    spec = SPECS.get(suite)
    if spec is None:
        raise FetchError(f"unknown suite {suite!r} (known: {', '.join(SPECS)})")
    try:
        apt = PrivateApt(suite)
        if update:
            log(f"{suite}: apt-get update (private configuration under {apt.root})")
            apt.update()
        image, image_v = apt.newest(spec.image)
        abi = re.fullmatch(spec.image, image)["abi"]                  # type: ignore[index]
        pkgs = {image: image_v}
        if spec.modules:
            mname = spec.modules.format(abi=abi)
            mv = apt.candidate(mname)
            if mv is None:
                raise FetchError(f"{suite}: {mname} (modules for {image}) is not in the archive")
            pkgs[mname] = mv
        dest = kernels_dir() / abi
        done = _cached(dest, pkgs)
        if done is not None:
            log(f"{suite}: {abi} already cached ({dest})")
            return done
        debs = {}
        for n, v in pkgs.items():
            log(f"{suite}: downloading {n} {v}")
            debs[n] = apt.download(n, v)
        bb_apt = apt if suite == BUSYBOX_SUITE else PrivateApt(BUSYBOX_SUITE)
        bb_name = "busybox-static"
        if bb_apt is not apt and not any((bb_apt.directory / "state" / "lists").glob("*Packages*")):
            bb_apt.update()
        bb_v = bb_apt.candidate(bb_name)
        if bb_v is None:
            raise FetchError(f"busybox-static is not in {BUSYBOX_SUITE}")
        bb_deb = bb_apt.download(bb_name, bb_v)
    except AptError as e:
        raise FetchError(str(e)) from None
    return prepare(suite, abi, pkgs, debs, bb_deb, bb_v, dest, log)


def _cached(dest: Path, pkgs: dict[str, str]) -> KernelEntry | None:
    from .cache import cached_kernels
    for e in cached_kernels():
        # prepared before the optional modules were taken (a Debian package has them): again
        if Path(e.directory) == dest and e.packages == pkgs and set(OPTIONAL) <= set(e.modules):
            return e
    return None


def _module_set(files: dict[str, bytes]) -> ModuleSet:
    """The packages' modules (decompressed) and the list of built-in ones."""
    mods = ModuleSet()
    for n, data in files.items():
        if _is_module(n):
            mods.files[module_key(n)] = decompress_module(n, data)
        elif _is_builtin_list(n):
            mods.builtin = {module_key(x) for x in data.decode().split()}
    return mods


def _pfn_api(kvm: bytes) -> str:
    """The gfn->pfn API kvm.ko exports: the merged one (≥ 6.13), the legacy one, or ``?``."""
    return ("kvm_follow_pfn" if b"kvm_follow_pfn\x00" in kvm else
            "__gfn_to_pfn_memslot" if b"__gfn_to_pfn_memslot\x00" in kvm else "?")


def prepare(suite: str, abi: str, pkgs: dict[str, str], debs: dict[str, Path], bb_deb: Path, bb_v: str,
            dest: Path, log: Callable[[str], None] = print) -> KernelEntry:
    """Extract vmlinux and modules, build the initramfs, write the manifest (atomically: the
    kernel appears in the cache only when complete)."""
    files: dict[str, bytes] = {}
    for deb in debs.values():
        files.update(_members(deb, lambda n: _is_vmlinuz(n) or _is_module(n) or _is_builtin_list(n)))
    vmlinuz = [n for n in files if _is_vmlinuz(n)]
    if not vmlinuz:
        raise FetchError(f"{suite}: no vmlinuz in {', '.join(pkgs)}")
    release = re.search(r"vmlinuz-(.+)$|modules/([^/]+)/vmlinuz$", vmlinuz[0])
    release_s = next(g for g in release.groups() if g) if release else abi
    mods = _module_set(files)
    try:
        order = mods.guest_modules()
        elf, how = extract_vmlinux(files[vmlinuz[0]])
    except (InitramfsError, VmlinuxError) as e:
        raise FetchError(f"{suite} {release_s}: {e}") from None
    api = _pfn_api(mods.files.get("kvm", b""))
    busybox = _members(bb_deb, lambda n: n == "bin/busybox").get("bin/busybox")
    if busybox is None:
        raise FetchError(f"no bin/busybox in {bb_deb.name}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{abi}.", dir=dest.parent))
    entry = install_entry(tmp, dest, elf, busybox, mods.files, order,
                          lambda directory: KernelEntry(release_s, suite, pkgs, generation_of(release_s) or "?", api,
                                                    order, f"busybox-static {bb_v}", directory))
    log(f"{suite}: {release_s} ready ({entry.generation}, kvm.ko has {api}; vmlinux was {how}; "
        f"{len(order)} modules: {' '.join(order)})")
    return entry
