"""The guest's initramfs: busybox-static, the KVM/9p/virtio modules in load order, and ``/init``.

Why so small: the guest only loads KVM, mounts the host's root read-only over 9p and runs the
host's Python on it (``guest_runner``); everything else comes from the host.  The archive is an
uncompressed ``newc`` cpio written here (no ``cpio`` program needed, nothing to decompress at
boot).  What to run is read from the kernel command line at boot, so one initramfs serves every
checkout.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import subprocess
from dataclasses import dataclass, field

# The modules the guest needs; their dependencies are added from each module's .modinfo.
WANTED = ["kvm_amd", "9p", "9pnet_virtio", "virtio_pci", "virtio_console"]
# Loaded where the package has them: vfio-pci maps the BAR of 2 MiB PFNMAP VMAs (guest_vfio).
OPTIONAL = ["vfio_pci", "vfio_iommu_type1"]

INIT = r"""#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
for m in $($B cat /modules.list); do
  $B insmod /lib/modules/$m.ko 2>/dev/null || echo "pfndiff-init: insmod $m failed"
done
PY=; REPO=; PYPATH=; FLAGS=
for a in $($B cat /proc/cmdline); do
  case $a in
    pfndiff.py=*) PY=${a#pfndiff.py=} ;;
    pfndiff.repo=*) REPO=${a#pfndiff.repo=} ;;
    pfndiff.path=*) PYPATH=${a#pfndiff.path=} ;;
    pfndiff.flags=*) FLAGS=$(echo ${a#pfndiff.flags=} | $B tr , ' ') ;;
  esac
done
$B mkdir -p /host
if ! $B mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /host; then
  echo "pfndiff-init: cannot mount the host root over 9p"; $B poweroff -f
fi
$B mount -t proc proc /host/proc
$B mount -t sysfs sys /host/sys
$B mount -t devtmpfs dev /host/dev
# a checkout (or venv) under the host's /tmp must stay visible below the guest's own tmpfs /tmp
$B mkdir -p /hosttmp
$B mount -o bind /host/tmp /hosttmp
$B mount -t tmpfs tmp /host/tmp
for p in $REPO $PY; do
  case $p in
    /tmp/*) top=${p#/tmp/}; top=${top%%/*}
            $B mkdir -p /host/tmp/$top && $B mount -o bind /hosttmp/$top /host/tmp/$top ;;
  esac
done
$B mount -t tmpfs run /host/run 2>/dev/null
echo "pfndiff-init: $($B uname -r) up $($B cut -d' ' -f1 /proc/uptime)s, kvm: $($B ls /dev/kvm 2>&1)"
cd /host$REPO
$B chroot /host /usr/bin/env -i PYTHONPATH=$PYPATH PYTHONDONTWRITEBYTECODE=1 HOME=/tmp PATH=/usr/bin:/bin \
  $PY $FLAGS -m kernel_shim.kernels.guest_runner
echo "pfndiff-init: runner exited with $?"
$B poweroff -f
"""


class InitramfsError(Exception):
    """A needed module is missing from the kernel package (the message names it)."""


def modinfo(ko: bytes) -> dict[str, str]:
    """Fields of a module's .modinfo section (``depends``, ``vermagic``, …)."""
    out: dict[str, str] = {}
    for m in re.finditer(rb"(?:^|\x00)(depends|vermagic|name|softdep)=([^\x00]*)", ko):
        out.setdefault(m[1].decode(), m[2].decode(errors="replace"))
    return out


def decompress_module(name: str, data: bytes) -> bytes:
    if name.endswith(".xz"):
        return lzma.decompress(data)
    if name.endswith(".zst"):
        p = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, timeout=60, check=True)
        return p.stdout
    return data


def module_key(path: str) -> str:
    base = os.path.basename(path)
    base = re.sub(r"\.ko(\.xz|\.zst|\.gz)?$", "", base)
    return base.replace("-", "_")


@dataclass
class ModuleSet:
    """Modules of one kernel package, by canonical name (``kvm_amd``)."""
    files: dict[str, bytes] = field(default_factory=dict)     # decompressed .ko
    builtin: set[str] = field(default_factory=set)

    def closure(self, wanted: list[str]) -> list[str]:
        """``wanted`` and their dependencies, dependencies first; built-in ones are left out."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(n: str, chain: tuple[str, ...]) -> None:
            n = n.replace("-", "_")
            if n in seen:
                return
            seen.add(n)
            if n not in self.files:
                if n in self.builtin or not self.builtin:
                    return                       # built in (or no list to tell: assume it is)
                raise InitramfsError(f"module {n} (needed by {' <- '.join(chain) or 'the guest'}) "
                                     "is neither in the package nor built in")
            deps = modinfo(self.files[n]).get("depends", "")
            for d in filter(None, deps.split(",")):
                visit(d, (n, *chain))
            order.append(n)

        for w in wanted:
            visit(w, ())
        return order

    def guest_modules(self) -> list[str]:
        """``WANTED`` and those of ``OPTIONAL`` the package has, with dependencies, in load order."""
        order = self.closure(WANTED)
        extra = [m for m in OPTIONAL if m in self.files or m in self.builtin]
        return order + [m for m in self.closure(extra) if m not in order]


def _cpio_entry(name: str, mode: int, data: bytes = b"", ino: int = 1) -> bytes:
    nb = name.encode() + b"\x00"
    hdr = b"070701" + b"".join(f"{v:08X}".encode() for v in (
        ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
    out = hdr + nb
    out += b"\x00" * (-len(out) % 4)
    out += data
    out += b"\x00" * (-len(out) % 4)
    return out


def build_cpio(files: dict[str, tuple[int, bytes]]) -> bytes:
    """A newc archive: path -> (mode, contents); directories have mode 0o040755 and no data."""
    parts = [_cpio_entry(p, mode, data, ino=i + 1) for i, (p, (mode, data)) in enumerate(sorted(files.items()))]
    parts.append(_cpio_entry("TRAILER!!!", 0, ino=0))
    blob = b"".join(parts)
    return blob + b"\x00" * (-len(blob) % 512)


def init_version() -> str:
    """Changes whenever ``/init`` does: a cached initramfs is rebuilt when it is stale."""
    return hashlib.sha256(INIT.encode()).hexdigest()[:16]


def build_initramfs(busybox: bytes, mods: dict[str, bytes], order: list[str]) -> bytes:
    d = 0o040755
    files: dict[str, tuple[int, bytes]] = {p: (d, b"") for p in (
        "bin", "dev", "proc", "sys", "tmp", "host", "lib", "lib/modules")}
    files["bin/busybox"] = (0o100755, busybox)
    files["init"] = (0o100755, INIT.encode())
    files["modules.list"] = (0o100644, ("\n".join(order) + "\n").encode())
    for n in order:
        files[f"lib/modules/{n}.ko"] = (0o100644, mods[n])
    return build_cpio(files)
