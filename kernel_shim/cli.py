"""``pfndiff host …``: what this host can realise, and model-vs-host conformance on scenarios.

Imported by ``fuzz.cli._load_extensions``; registers the ``host`` command and the
``host:emulated`` backend (the CPL0 instruction-emulator path) on import.
"""

from __future__ import annotations

import argparse
import json
import sys

from fuzz.cli import COMMANDS, UsageError
from kvmsim.backend import REGISTRY, BackendError, get_backend
from kvmsim.scenario import load_scenario

REGISTRY.setdefault("host:emulated", ("kernel_shim.host_backend:HostBackend", {"path": "emulated"}))


def cmd_host(args: argparse.Namespace) -> int:
    if args.host_cmd == "probe":
        return cmd_probe(args)
    return cmd_conform(args)


def cmd_probe(args: argparse.Namespace) -> int:
    from .probe import probe
    from .quirks import QUIRKS
    p = probe()
    d = p.to_dict()
    if args.json:
        d["quirks"] = QUIRKS
        print(json.dumps(d, indent=2))
        return 0
    print(f"kernel      {p.kernel}  (generation {p.generation or '?'}: "
          f"{'merged kvm_follow_pfn, v6.13+' if p.generation == 'g3' else 'legacy gfn_to_pfn, ≤ v6.12'})")
    print(f"/dev/kvm    {p.kvm or 'usable'}")
    print(f"modules     {', '.join(p.modules) or '-'}")
    print(f"allow_unsafe_mappings  {p.params.get('allow_unsafe_mappings', 'absent (≤ v6.12)')}")
    for key in ("tdp_mmu", "mmio_caching"):
        if key in p.params:
            print(f"kvm.{key:<18} {p.params[key]}")
    if p.caps:
        print("capabilities")
        for n, v in p.caps.items():
            print(f"  {n:<36} {v}")
    print("backings")
    notes = {"guest_memfd": " (checked by tests; not used by scenarios: gmem faults bypass hva_to_pfn)",
             "hwpoison": ""}
    for n, why in p.backings.items():
        print(f"  {n:<16} {'yes' + notes.get(n, '') if why is None else 'no: ' + why}")
    print("paths")
    for n, why in p.paths.items():
        print(f"  {n:<16} {'yes' if why is None else 'no: ' + why}")
    return 0


def cmd_conform(args: argparse.Namespace) -> int:
    from .conformance import compare, unstable_ops
    if not args.scenarios:
        raise UsageError("pfndiff host conform: give at least one scenario file")
    model = get_backend(args.model)
    host = get_backend("host" if args.path == "native-cpl3" else "host:emulated")
    why = host.available()
    if why is not None:
        raise BackendError(f"host backend is not available here: {why}")
    scs = [load_scenario(f) for f in args.scenarios]
    bad = 0
    out = []
    for path, sc in zip(args.scenarios, scs):
        rep = compare(model.run(sc), host.run(sc), sc)
        unstable = unstable_ops(sc, host, args.repeat) if args.repeat > 1 else []
        bad += not rep.ok or bool(unstable)
        out.append({"scenario": path, "compared": rep.compared, "not_realisable": rep.unrealisable,
                    "differences": [d.to_dict() for d in rep.differences], "unstable_ops": unstable})
        if not args.json:
            status = "ok" if rep.ok else f"{len(rep.unexplained)} unexplained"
            print(f"{path}: {rep.compared} ops compared, {rep.unrealisable} not realisable, "
                  f"{len(rep.differences)} differences ({status})")
            for d in rep.differences:
                print(f"    {d}")
            if unstable:
                print(f"    not reproducible over {args.repeat} host runs: ops {unstable}")
    if args.json:
        print(json.dumps(out, indent=2))
    return 1 if bad else 0


def _setup(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="host_cmd", metavar="SUBCOMMAND", parser_class=type(p))
    sub.required = True
    pp = sub.add_parser("probe", help="what this host can realise (capabilities, backings, paths)")
    pp.add_argument("--json", action="store_true", help="machine-readable output")
    pc = sub.add_parser("conform", help="compare a model backend with this host at VMM level")
    pc.add_argument("scenarios", nargs="*", help="scenario YAML files")
    pc.add_argument("--model", default="sim:g3", help="model backend (default sim:g3)")
    pc.add_argument("--path", choices=("native-cpl3", "emulated"), default="native-cpl3",
                    help="guest fault path on the host")
    pc.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="also run each scenario N times on the host and report ops that vary")
    pc.add_argument("--json", action="store_true", help="machine-readable output")


COMMANDS["host"] = ("the real-host backend: probe this host, check the model against it", cmd_host, _setup)

if __name__ == "__main__":
    sys.exit(0)
