"""Units of ``pfndiff kernels`` that need neither the network nor QEMU: vmlinux extraction, the
initramfs archive, module ordering, the private apt configuration, names and CLI errors."""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path

import pytest

from kernel_shim.kernels.apt_private import AptError, PrivateApt
from kernel_shim.kernels.cache import generation_of, short_name
from kernel_shim.kernels.initramfs import (
    INIT,
    InitramfsError,
    ModuleSet,
    build_cpio,
    build_initramfs,
    modinfo,
)
from kernel_shim.kernels.vmlinux import VmlinuxError, extract_vmlinux
from oracles.catalogue import family

SEEDS = Path(__file__).resolve().parents[2] / "corpus" / "seeds"

ELF = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64


@pytest.mark.parametrize("pack,name", [(lambda b: lzma.compress(b, format=lzma.FORMAT_XZ), "xz"),
                                       (gzip.compress, "gzip")])
def test_vmlinux_found_behind_a_setup_header(pack, name):
    image = b"MZ" + b"\x00" * 700 + b"HdrS" + b"\x11" * 300 + pack(ELF) + b"\x00" * 64 + b"trailing"
    out, how = extract_vmlinux(image)
    assert out == ELF and how == name


def test_vmlinux_first_magic_may_be_a_false_hit():
    image = b"\xfd7zXZ\x00 not a stream " + lzma.compress(ELF, format=lzma.FORMAT_XZ)
    assert extract_vmlinux(image)[0] == ELF


def test_vmlinux_nothing_compressed_is_an_error():
    with pytest.raises(VmlinuxError, match="no compressed ELF"):
        extract_vmlinux(b"MZ" + b"\x00" * 4096)


def _ko(depends: str) -> bytes:
    return b"\x7fELF....\x00license=GPL\x00depends=" + depends.encode() + b"\x00vermagic=6.1.0 SMP\x00"


def test_modules_come_after_their_dependencies_and_builtins_are_left_out():
    mods = ModuleSet({"kvm_amd": _ko("kvm,ccp"), "kvm": _ko("irqbypass"), "irqbypass": _ko(""), "ccp": _ko(""),
                      "9p": _ko("9pnet,netfs"), "9pnet": _ko(""), "netfs": _ko("")}, builtin={"virtio_pci"})
    order = mods.closure(["kvm_amd", "9p", "virtio_pci"])
    assert order.index("irqbypass") < order.index("kvm") < order.index("kvm_amd")
    assert order.index("ccp") < order.index("kvm_amd")
    assert order.index("netfs") < order.index("9p") and "virtio_pci" not in order
    assert modinfo(mods.files["kvm_amd"])["depends"] == "kvm,ccp"


def test_vfio_modules_are_loaded_where_the_package_has_them():
    base = {"kvm_amd": _ko("kvm"), "kvm": _ko(""), "9p": _ko(""), "9pnet_virtio": _ko("")}
    builtin = {"virtio_pci", "virtio_console"}
    assert "vfio_pci" not in ModuleSet(dict(base), builtin=builtin).guest_modules()
    vfio = {"vfio": _ko("irqbypass"), "irqbypass": _ko(""), "vfio_pci_core": _ko("vfio"),
            "vfio_pci": _ko("vfio_pci_core,vfio"), "vfio_iommu_type1": _ko("vfio")}
    order = ModuleSet(base | vfio, builtin=builtin).guest_modules()
    assert order[:2] == ["kvm", "kvm_amd"]
    assert order.index("vfio") < order.index("vfio_pci_core") < order.index("vfio_pci")
    assert "vfio_iommu_type1" in order and len(order) == len(set(order))


def test_vfio_ioctl_numbers_match_the_uapi_header():
    from kernel_shim.kernels import guest_vfio as v
    # include/uapi/linux/vfio.h: _IO(';', 100 + n)
    assert (v.VFIO_SET_IOMMU, v.VFIO_GROUP_GET_STATUS, v.VFIO_GROUP_SET_CONTAINER) == (0x3B66, 0x3B67, 0x3B68)
    assert (v.VFIO_GROUP_GET_DEVICE_FD, v.VFIO_DEVICE_GET_REGION_INFO) == (0x3B6A, 0x3B6C)


def test_a_missing_module_is_named():
    mods = ModuleSet({"kvm_amd": _ko("kvm")}, builtin={"other"})
    with pytest.raises(InitramfsError, match="module kvm .needed by kvm_amd"):
        mods.closure(["kvm_amd"])


def _read_cpio(blob: bytes) -> dict[str, tuple[int, bytes]]:
    out, pos = {}, 0
    while True:
        assert blob[pos:pos + 6] == b"070701"
        f = [int(blob[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, nlen = f[1], f[6], f[11]
        name = blob[pos + 110: pos + 110 + nlen - 1].decode()
        pos += 110 + nlen
        pos += -pos % 4
        data = blob[pos:pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, data)


def test_initramfs_is_a_newc_archive_with_init_busybox_and_modules():
    blob = build_initramfs(b"BUSYBOX", {"kvm": b"KO1", "kvm_amd": b"KO2"}, ["kvm", "kvm_amd"])
    files = _read_cpio(blob)
    assert files["init"] == (0o100755, INIT.encode())
    assert files["bin/busybox"] == (0o100755, b"BUSYBOX")
    assert files["lib/modules/kvm_amd.ko"][1] == b"KO2"
    assert files["modules.list"][1] == b"kvm\nkvm_amd\n"
    assert files["proc"][0] == 0o040755 and len(blob) % 512 == 0
    assert build_cpio({})[:6] == b"070701"


def test_private_apt_never_names_the_machines_apt_paths(tmp_path):
    apt = PrivateApt("bookworm", root=tmp_path)
    apt._layout()
    opts = dict(o.split("=", 1) for o in apt.options() if o != "-o")
    for key in ("Dir::Etc::SourceList", "Dir::Etc::SourceParts", "Dir::State", "Dir::State::status", "Dir::Cache"):
        assert opts[key].startswith(str(tmp_path)), key
    src = (tmp_path / "etc" / "sources.list").read_text()
    assert "bookworm main" in src and "bookworm-security main" in src and "signed-by=" in src
    with pytest.raises(AptError, match="unknown suite"):
        PrivateApt("hamm", root=tmp_path)


def test_names_and_generations():
    assert short_name("6.12.118+deb13-amd64") == "6.12" and short_name("6.1.0-41-amd64") == "6.1"
    assert generation_of("6.12.118+deb13-amd64") == "g1" and generation_of("7.2.13+deb14-amd64") == "g3"
    assert generation_of("6.13.0-1-amd64") == "g3"
    assert [family(n) for n in ("qemu:6.1", "qemu:6.12", "qemu:6.13", "qemu:7.2", "host")] == \
        ["g1", "g1", "g3", "g3", "host"]


def _cli(capsys, *args: str) -> tuple[int, str]:
    from fuzz.cli import main
    rc = main(list(args))
    return rc, capsys.readouterr().err


def test_bad_input_is_one_line_and_exit_2(capsys):
    rc, err = _cli(capsys, "kernels", "fetch", "--suite", "hamm")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "unknown suite" in err
    rc, err = _cli(capsys, "run", str(SEEDS / "eq-noslot.yaml"), "-b", "qemu:2.6")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "not cached" in err
    rc, err = _cli(capsys, "kernels", "compare", "--jobs", "0")
    assert rc == 2 and len(err.strip().splitlines()) == 1


def test_the_kernel_part_of_a_scenario_ignores_what_no_kernel_reads(host):
    from kernel_shim.kernels.reuse import kernel_part, reaches_kernel, unrun_records
    from kvmsim.scenario import load_scenario, loads_scenario
    sc = load_scenario(str(SEEDS / "eq-normal-present.yaml"))
    text = (SEEDS / "eq-normal-present.yaml").read_text()
    other_api_args = loads_scenario(text.replace("write: true}", "write: false}"))
    assert [op.kind for op in sc.ops] == [op.kind for op in other_api_args.ops] and sc.ops != other_api_args.ops
    assert kernel_part(sc, 1) == kernel_part(other_api_args, 1) != kernel_part(sc, 2)
    other_access = loads_scenario((SEEDS / "eq-normal-present.yaml").read_text().replace("0x1234", "0x4321"))
    assert kernel_part(other_access, 1) != kernel_part(sc, 1)
    api_only = load_scenario(str(SEEDS / "d26-page-out-param.yaml"))
    assert reaches_kernel(sc) and not reaches_kernel(api_only)
    assert [r.to_dict() for r in host.run(api_only).records] == [r.to_dict() for r in unrun_records(api_only)]
