"""The uncompressed ``vmlinux`` ELF inside a ``vmlinuz`` (bzImage), the way the kernel's
``scripts/extract-vmlinux`` finds it: look for a compression magic, decompress from there, keep
the first result that is an ELF file.

Why: QEMU boots an ELF ``vmlinux`` through its PVH entry point directly, skipping the kernel's
own decompressor, which under TCG costs seconds per boot.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import subprocess
import zlib
from collections.abc import Callable

ELF_MAGIC = b"\x7fELF"


class VmlinuxError(Exception):
    """No decompressible ELF image found in the file (the message says what was tried)."""


def _xz(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _lzma(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)


def _gzip(data: bytes) -> bytes:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


def _bzip2(data: bytes) -> bytes:
    return bz2.BZ2Decompressor().decompress(data)


def _zstd(data: bytes) -> bytes:
    if shutil.which("zstd") is None:
        raise VmlinuxError("the image is zstd-compressed and no `zstd` program is installed (apt-get install zstd)")
    p = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, timeout=120)
    return p.stdout             # zstd complains about trailing data but has written the frame


# magic -> decompressor (the order of scripts/extract-vmlinux)
FORMATS: list[tuple[str, bytes, Callable[[bytes], bytes]]] = [
    ("gzip", b"\x1f\x8b\x08", _gzip),
    ("xz", b"\xfd7zXZ\x00", _xz),
    ("bzip2", b"BZh", _bzip2),
    ("lzma", b"\x5d\x00\x00\x00", _lzma),
    ("zstd", b"\x28\xb5\x2f\xfd", _zstd),
]
_ = gzip                                         # gzip framing is handled by zlib (wbits 16+)


def extract_vmlinux(image: bytes) -> tuple[bytes, str]:
    """(vmlinux ELF bytes, compression name)."""
    if image.startswith(ELF_MAGIC):
        return image, "none"
    tried = []
    for name, magic, fn in FORMATS:
        pos = image.find(magic)
        attempts = 0
        while pos >= 0 and attempts < 8:
            attempts += 1
            try:
                out = fn(image[pos:])
            except (lzma.LZMAError, zlib.error, OSError, EOFError, ValueError):
                out = b""
            if out.startswith(ELF_MAGIC):
                return out, name
            pos = image.find(magic, pos + 1)
        if attempts:
            tried.append(name)
    raise VmlinuxError(f"no compressed ELF image found (magics tried: {', '.join(tried) or 'none present'})")


def write_vmlinux(vmlinuz: str, dest: str) -> str:
    with open(vmlinuz, "rb") as fh:
        data = fh.read()
    elf, how = extract_vmlinux(data)
    tmp = dest + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(elf)
    shutil.move(tmp, dest)
    return how
