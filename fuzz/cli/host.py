"""``pfndiff host …``: what this host can realise, and model-vs-host conformance on scenarios
(the ``host`` and ``host:emulated`` backends are registered by ``kernel_shim.plugin``)."""

from __future__ import annotations

import argparse
import json

from fuzz.campaigns import progress
from fuzz.cli.common import Commands, UsageError
from kvmsim.backend import BackendError, get_backend
from kvmsim.scenario import load_scenario


def cmd_host(args: argparse.Namespace) -> int:
    if args.host_cmd == "probe":
        return cmd_probe(args)
    if args.host_cmd == "sweep":
        return cmd_sweep(args)
    return cmd_conform(args)


def cmd_sweep(args: argparse.Namespace) -> int:
    from kernel_shim.sweep import sweep
    from kvmsim.scenario import dump_scenario
    if args.runs < 1:
        raise UsageError("pfndiff host sweep: --runs must be at least 1")
    host = get_backend("host" if args.path == "native-cpl3" else "host:emulated")
    why = host.available()
    if why is not None:
        raise BackendError(f"host backend is not available here: {why}")
    with progress.stage("host sweep: random scenarios on the model and this kernel", args.runs) as st:
        r = sweep(args.runs, args.seed, model=args.model, host=host, all_diffs=True,
                  madvise_all=not args.no_madvise_remapped, on_run=st.advance)
    print(f"{r.runs} random scenarios, {r.compared} ops compared, {len(r.groups)} unexplained difference kinds")
    for sig, n in r.groups.most_common():
        print(f"  {n:6d}  {sig}")
        if args.show:
            print("\n".join("          " + line for line in dump_scenario(r.examples[sig]).splitlines()))
    return 1 if r.groups else 0


def cmd_probe(args: argparse.Namespace) -> int:
    from kernel_shim.probe import probe
    from kernel_shim.quirks import QUIRKS
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
    from kernel_shim.conformance import check, unstable_ops
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
        rep = check(sc, model, host)[0]
        cov = rep.coverage
        unstable = unstable_ops(sc, host, args.repeat) if args.repeat > 1 else []
        bad += not rep.ok or bool(unstable)
        out.append({"scenario": path, "compared": rep.compared, "not_realisable": rep.unrealisable,
                    "observed": {args.model: cov.left, "host": cov.right} if cov else None,
                    "differences": [d.to_dict() for d in rep.differences], "unstable_ops": unstable})
        if not args.json:
            seen = f" ({args.model} observed {cov.left}, host {cov.right} of {cov.ops} ops)" if cov else ""
            print(f"{path}: {rep.compared} ops compared{seen}, {rep.unrealisable} not realisable, "
                  f"{len(rep.differences)} differences ({rep.status()})")
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
    ps = sub.add_parser("sweep", help="random VMM-level scenarios on a model and on this host; differences grouped")
    ps.add_argument("--runs", type=int, default=200, help="number of random scenarios (default 200)")
    ps.add_argument("--seed", type=int, default=1, help="random seed")
    ps.add_argument("--model", default="sim:g3", help="model backend (default sim:g3)")
    ps.add_argument("--path", choices=("native-cpl3", "emulated"), default="native-cpl3")
    ps.add_argument("--no-madvise-remapped", action="store_true",
                    help="keep madvise to the normal VMA (hides the known pfnmap/hugetlb madvise model bug)")
    ps.add_argument("--show", action="store_true", help="print one example scenario per difference kind")
    pc.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="also run each scenario N times on the host and report ops that vary")
    pc.add_argument("--json", action="store_true", help="machine-readable output")


COMMANDS: Commands = {}
COMMANDS["host"] = ("the real-host backend: probe this host, check the model against it", cmd_host, _setup)
