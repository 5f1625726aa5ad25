"""``pfndiff kernels add PATH``: a kernel the user built becomes a cached, bootable ``qemu:<name>``.

Why: the person who most needs a comparison with the model or with a released kernel is the one
with a patched KVM.  PATH is a ``bzImage``/``vmlinuz`` or ``vmlinux`` (with ``--modules DIR``), a
kernel build tree (``vmlinux`` or ``arch/x86/boot/bzImage`` plus the ``.ko`` files built in it), or
a directory holding a ``vmlinux`` and its modules (what ``pfndiff kernels fetch`` caches).  The
kernel is checked for what the guest needs before anything is written, each lack one line:
KVM and AMD SVM (``kvm``, ``kvm_amd``), 9p over virtio and the virtio console, tracefs, and a PVH
entry point (QEMU boots the ELF image directly).  Its generation is read from the symbols its KVM
exports (``__gfn_to_pfn_memslot``: legacy g1; ``__kvm_faultin_pfn``/``kvm_follow_pfn``: merged g3),
never from its version string.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .cache import KernelEntry, cached_kernels, install_entry, kernels_dir
from .initramfs import WANTED, InitramfsError, ModuleSet, decompress_module, modinfo, module_key
from .vmlinux import ELF_MAGIC, VmlinuxError, extract_vmlinux

MAX_IMAGE = 1 << 30                 # bytes read of a kernel image or a module, at most
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")
IMAGE_CANDIDATES = ("vmlinux", "arch/x86/boot/bzImage", "bzImage", "vmlinuz")
# Exported by kvm (plain strings in its symbol table, or in vmlinux's __ksymtab_strings when built in).
MERGED_SYMBOLS = (b"__kvm_faultin_pfn", b"kvm_follow_pfn")
LEGACY_SYMBOLS = (b"__gfn_to_pfn_memslot",)

# What the guest needs, the modules (or built-in parts) that provide it, and the one-line lack.
NEEDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("KVM (CONFIG_KVM)", ("kvm",)),
    ("AMD SVM support (CONFIG_KVM_AMD)", ("kvm_amd",)),
    ("9p over virtio (CONFIG_NET_9P_VIRTIO, CONFIG_9P_FS)", ("9p", "9pnet", "9pnet_virtio")),
    ("virtio PCI and the virtio console (CONFIG_VIRTIO_PCI, CONFIG_VIRTIO_CONSOLE)", ("virtio_pci", "virtio_console")),
)
XEN_ELFNOTE_PHYS32_ENTRY = 18


class AddError(Exception):
    """The kernel cannot be added (one line: what is missing and where it was looked for)."""


def _read(p: Path) -> bytes:
    try:
        if p.stat().st_size > MAX_IMAGE:
            raise AddError(f"{p}: larger than {MAX_IMAGE >> 20} MiB")
        return p.read_bytes()
    except OSError as e:
        raise AddError(f"{p}: {e.strerror or e}") from None


def find_image(path: Path) -> Path:
    """The kernel image PATH names: the file itself, or a known image inside a directory."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise AddError(f"{path}: no such file or directory")
    for c in IMAGE_CANDIDATES:
        if (path / c).is_file():
            return path / c
    boot = sorted(path.glob("boot/vmlinuz-*")) + sorted(path.glob("vmlinuz-*"))
    if boot:
        return boot[-1]
    raise AddError(f"{path}: no kernel image in it (looked for {', '.join(IMAGE_CANDIDATES)}, boot/vmlinuz-*)")


def module_files(root: Path, limit: int = 20000) -> Iterator[Path]:
    """Every module file under ``root`` (a build tree or a modules directory), bounded."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if f.endswith(MODULE_SUFFIXES):
                n += 1
                if n > limit:
                    raise AddError(f"{root}: more than {limit} module files")
                yield Path(dirpath) / f


def elf_release(elf: bytes) -> str:
    m = re.search(rb"Linux version (\S+) \(", elf)
    if not m:
        raise AddError("the image has no 'Linux version' banner: not a Linux kernel")
    return m[1].decode(errors="replace")


# Strings a module leaves in the image only when it is built in: its parameters' names carry the
# module's prefix (``kvm_amd.npt``), a driver registers under its name (``virtio_console``,
# ``virtio-pci``), and built-in KVM exports its gfn->pfn entry points.  Used only when the kernel comes
# without a built-in list (``modules.builtin``, or the image's ``.modinfo``, which a bzImage's
# vmlinux no longer has).
BUILTIN_MARKERS: dict[str, tuple[bytes, ...]] = {
    "kvm": tuple(s + b"\x00" for s in MERGED_SYMBOLS + LEGACY_SYMBOLS),
    "virtio_pci": (b"\x00virtio-pci\x00",),
    "virtio_console": (b"\x00virtio_console\x00",),
}


MIN_MODINFO = 16


def builtin_modules(elf: bytes, tree: Path | None) -> set[str]:
    """Modules built into the image: its ``.modinfo`` strings (``kvm_amd.license=…``) and a
    ``modules.builtin`` list when the tree has them; else what the markers above show."""
    names = {m[1].decode().replace("-", "_") for m in re.finditer(rb"\x00([a-z0-9_-]+)\.file=", elf)}
    if len(names) < MIN_MODINFO:
        names = set()               # stray strings (the purgatory's sha256), not a built-in list
    if tree is not None:
        for lst in [tree / "modules.builtin", *tree.glob("lib/modules/*/modules.builtin")]:
            if lst.is_file():
                names |= {module_key(x) for x in lst.read_text(errors="replace").split()}
    if names:
        return names
    wanted = {m for _, ms in NEEDS for m in ms}
    for m in wanted:
        if re.search(rb"\x00" + m.encode() + rb"\.[a-z0-9_]+\x00", elf) or \
                any(k in elf for k in BUILTIN_MARKERS.get(m, ())):
            names.add(m)
    return names


def has_pvh_entry(elf: bytes) -> bool:
    """Does the ELF image carry Xen's PHYS32_ENTRY note (CONFIG_PVH), QEMU's way in?"""
    if len(elf) < 64 or elf[4] != 2:
        return False
    phoff, = struct.unpack_from("<Q", elf, 32)
    phentsize, phnum = struct.unpack_from("<HH", elf, 54)
    for i in range(min(phnum, 64)):
        off = phoff + i * phentsize
        if off + 56 > len(elf):
            break
        ptype, = struct.unpack_from("<I", elf, off)
        if ptype != 4:                                      # PT_NOTE
            continue
        noff, nsize = struct.unpack_from("<Q", elf, off + 8)[0], struct.unpack_from("<Q", elf, off + 32)[0]
        pos, end = noff, min(noff + nsize, len(elf))
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\x00")
            if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def kvm_generation(kvm: bytes) -> tuple[str, str]:
    """(generation, the symbol that shows it) from kvm's exported names."""
    for s in MERGED_SYMBOLS:
        if s + b"\x00" in kvm:
            return "g3", s.decode()
    for s in LEGACY_SYMBOLS:
        if s + b"\x00" in kvm:
            return "g1", s.decode()
    raise AddError("its KVM exports neither __gfn_to_pfn_memslot (legacy) nor __kvm_faultin_pfn/kvm_follow_pfn "
                   "(merged): cannot tell its generation")


def _busybox() -> tuple[bytes, str]:
    """busybox-static from a kernel already cached (``pfndiff kernels fetch`` puts it there)."""
    for e in cached_kernels():
        p = Path(e.directory) / "busybox"
        if p.is_file():
            return p.read_bytes(), e.busybox
    try:
        from .apt_private import AptError, PrivateApt
        from .fetch import BUSYBOX_SUITE, FetchError, _members
        apt = PrivateApt(BUSYBOX_SUITE)
        apt.update()
        v = apt.candidate("busybox-static")
        if v is None:
            raise AddError(f"busybox-static is not in {BUSYBOX_SUITE}")
        bb = _members(apt.download("busybox-static", v), lambda n: n == "bin/busybox").get("bin/busybox")
    except (AptError, FetchError) as e:
        raise AddError(f"no busybox cached and none fetched ({e}); "
                       "run `pfndiff kernels fetch --suite bookworm`") from None
    if bb is None:
        raise AddError("busybox-static has no bin/busybox")
    return bb, f"busybox-static {v}"


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise AddError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (at most 40)")
    for e in cached_kernels():
        if e.name == name and e.alias != name:
            raise AddError(f"--name {name}: qemu:{name} is a fetched kernel ({e.release}); choose another name")
    return name


def _x86_64_vmlinux(image_path: Path) -> tuple[bytes, str]:
    """The ELF vmlinux inside the image and how it was packed; an x86-64 kernel or AddError."""
    try:
        elf, how = extract_vmlinux(_read(image_path))
    except VmlinuxError as e:
        raise AddError(f"{image_path}: {e}") from None
    if not elf.startswith(ELF_MAGIC) or elf[4] != 2 or struct.unpack_from("<H", elf, 18)[0] != 62:
        raise AddError(f"{image_path}: not an x86-64 kernel image")
    return elf, how


def _check_needs(image_path: Path, elf: bytes, paths: dict[str, Path], builtin: set[str],
                 mod_root: Path | None) -> None:
    """What the guest needs of the kernel: its modules (built in or given), tracefs, a PVH entry."""
    for what, needed in NEEDS:
        lacking = [m for m in needed if m not in paths and m not in builtin]
        if lacking:
            where = f" nor in {mod_root}" if mod_root is not None else " (no --modules directory given)"
            raise AddError(f"{image_path}: the kernel lacks {what}: {', '.join(lacking)} is neither built in{where}")
    if b"trace_marker\x00" not in elf:
        raise AddError(f"{image_path}: the kernel lacks tracefs (CONFIG_TRACING): its fault path cannot be traced")
    if not has_pvh_entry(elf):
        raise AddError(f"{image_path}: no PVH entry point (CONFIG_PVH): QEMU cannot boot the image directly")


def _load_wanted(mods: ModuleSet, paths: dict[str, Path], builtin: set[str], release: str,
                 mod_root: Path | None) -> None:
    """Load the wanted modules and their dependencies only (a build tree has thousands), each
    checked to be built for ``release``."""
    def load(n: str) -> bytes:
        data = decompress_module(paths[n].name, _read(paths[n]))
        vm = modinfo(data).get("vermagic", "")
        if vm.split(" ")[0] != release:
            raise AddError(f"{paths[n]}: built for {vm.split(' ')[0] or '?'}, the image is {release}")
        return data

    todo = list(WANTED)
    while todo:
        n = todo.pop().replace("-", "_")
        if n in mods.files or n in builtin:
            continue
        if n not in paths:
            raise AddError(f"module {n} (a dependency of the guest's modules) is neither built in nor in {mod_root}")
        mods.files[n] = load(n)
        todo.extend(filter(None, modinfo(mods.files[n]).get("depends", "").split(",")))


def add_kernel(path: str, name: str | None = None, modules: str | None = None,
               log: Callable[[str], None] = print) -> KernelEntry:
    """Check, prepare and cache the kernel at ``path`` as ``qemu:<name>`` (replacing an earlier
    ``add`` under that name)."""
    src = Path(path).expanduser()
    image_path = find_image(src)
    elf, how = _x86_64_vmlinux(image_path)
    release = elf_release(elf)
    name = check_name(name or f"{release.split('-')[0].split('+')[0]}-local")
    mod_root = Path(modules).expanduser() if modules else (src if src.is_dir() else None)
    if mod_root is not None and not mod_root.is_dir():
        raise AddError(f"--modules {mod_root}: not a directory")
    tree = src if src.is_dir() else None
    paths: dict[str, Path] = {}
    if mod_root is not None:
        for p in module_files(mod_root):
            paths.setdefault(module_key(p.name), p)
    builtin = builtin_modules(elf, tree or mod_root)
    mods = ModuleSet(builtin=builtin | {"__builtin_marker__"})       # a list exists: lacks are errors
    _check_needs(image_path, elf, paths, builtin, mod_root)
    _load_wanted(mods, paths, builtin, release, mod_root)
    try:
        order = mods.closure(WANTED)
    except InitramfsError as e:
        raise AddError(str(e)) from None
    kvm = mods.files["kvm"] if "kvm" in mods.files else elf
    generation, symbol = kvm_generation(kvm)
    busybox, bb_version = _busybox()
    dest = kernels_dir() / f"local-{name}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".local-{name}.", dir=dest.parent))
    entry = install_entry(tmp, dest, elf, busybox, mods.files, order,
                          lambda directory: KernelEntry(release, "local", {"source": str(src.resolve())}, generation,
                                                    symbol, order, bb_version, directory, alias=name))
    log(f"qemu:{name}: Linux {release} ({generation}: its KVM has {symbol}; image was {how}; "
        f"{len(order)} modules: {' '.join(order) or 'all built in'})")
    return entry


def remove_kernel(name: str) -> bool:
    """Forget a kernel added under ``name``; False if there is none."""
    d = kernels_dir() / f"local-{name}"
    if not NAME_RE.fullmatch(name) or not (d / "manifest.json").is_file():
        return False
    shutil.rmtree(d)
    return True
