#!/usr/bin/env python3
"""Real kernels in QEMU: boot time per cached kernel, scenarios per second inside each guest
(the bundled seed corpus, repeated, in one boot), executions per second of a ``pfndiff fuzz``
campaign pairing each kernel with its generation's model (target: 100/s once booted), and the
wall time of the whole ``pfndiff kernels compare`` matrix (every cached kernel + this host).
Target: the matrix for three kernels in under 5 minutes.  Needs qemu-system-x86_64 and cached
kernels (``pfndiff kernels fetch``)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from kernel_shim.kernels.cache import cached_kernels
from kernel_shim.kernels.compare import build_matrix, kernel_backends, seed_files
from kernel_shim.kernels.qemu import QemuSession, qemu_missing
from kernel_shim.kernels.qemu_backend import QemuBackend
from kvmsim.checkout import ROOT
from kvmsim.scenario import load_scenario

# Seeds that wait for the per-scenario deadline on some kernels (measured separately: they
# would turn a throughput figure into a timeout figure).
SLOW = {"eq-sigpending"}


def boot_times(k, n: int) -> list[float]:
    out = []
    for _ in range(n):
        s = QemuSession(k)
        try:
            s.start()
            out.append(s.boot_seconds)
        finally:
            s.stop()
    return out


def throughput(k, repeat: int) -> dict[str, float]:
    scs = [sc for sc in (load_scenario(f) for f in seed_files()) if sc.name not in SLOW]
    b = QemuBackend(name=f"qemu:{k.name}", kernel=k.name)
    try:
        b.run(scs[0])                                # boot outside the measurement
        t0 = time.monotonic()
        traces = b.run_many(scs * repeat)
        wall = time.monotonic() - t0
    finally:
        b.close()
    guest = sum(t.meta.get("guest_seconds", 0.0) for t in traces)
    n = len(traces)
    return {"scenarios": n, "wall_s": round(wall, 2), "per_s": round(n / wall, 1),
            "guest_per_s": round(n / guest, 1) if guest else 0.0}


def campaign_rate(k, seconds: int) -> dict[str, str | float]:
    """``pfndiff fuzz --pair sim:<gen>~qemu:<kernel>`` from the bundled corpus for ``seconds``:
    executions per second from the first status line with executions (the guest is up) to the
    last, and over the whole run (boot included)."""
    pair = f"sim:{k.generation}~qemu:{k.name}"
    with tempfile.TemporaryDirectory(prefix="pfndiff-bench-") as tmp:
        cmd = [os.path.join(os.path.dirname(sys.executable), "pfndiff"), "fuzz", "--pair", pair,
               "--time", str(seconds), "--status-every", "5",
               "--corpus", os.path.join(tmp, "corpus"), "--artifacts", os.path.join(tmp, "artifacts")]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 300,
                           cwd=ROOT)
    points = [(float(t), int(n)) for t, n in re.findall(r"\[\s*(\d+)s\] execs (\d+)", r.stdout)]
    up = [p for p in points if p[1] > 0]
    steady = (up[-1][1] - up[0][1]) / (up[-1][0] - up[0][0]) if len(up) > 1 and up[-1][0] > up[0][0] else 0.0
    total = points[-1][1] if points else 0
    compared = re.search(r"vs qemu:\S+: (\d+) of (\d+) ops compared", r.stdout)
    return {"pair": pair, "execs": total, "exec_per_s": round(steady, 1),
            "exec_per_s_with_boot": round(total / points[-1][0], 1) if points and points[-1][0] else 0.0,
            "ops_compared": int(compared[1]) if compared else 0, "ops": int(compared[2]) if compared else 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boots", type=int, default=2, help="boots per kernel (default 2)")
    ap.add_argument("--repeat", type=int, default=5, help="corpus repetitions for throughput (default 5)")
    ap.add_argument("--jobs", type=int, default=2, help="guests at a time in the matrix (default 2)")
    ap.add_argument("--fuzz-seconds", type=int, default=60, help="campaign length per kernel (0: skip; default 60)")
    ap.add_argument("--no-matrix", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    why = qemu_missing()
    ks = cached_kernels()
    if why or not ks:
        print(f"skipped: {why or 'no kernel cached (pfndiff kernels fetch)'}")
        return 0
    load = os.getloadavg()
    per_kernel: dict[str, dict[str, object]] = {}
    out: dict[str, object] = {"load_average": load, "cpus": os.cpu_count(), "kernels": per_kernel}
    for k in ks:
        boots = boot_times(k, a.boots)
        tp = throughput(k, a.repeat)
        per_kernel[k.release] = {"boot_s": boots, **tp}
        if not a.json:
            print(f"{k.release:<26} boot {' '.join(f'{b:.1f}s' for b in boots)}   {tp['scenarios']} scenarios "
                  f"in {tp['wall_s']:.1f}s = {tp['per_s']:.1f}/s round trip ({tp['guest_per_s']:.1f}/s in the guest)",
                  flush=True)
        if a.fuzz_seconds > 0:
            fz = campaign_rate(k, a.fuzz_seconds)
            per_kernel[k.release]["fuzz"] = fz
            if not a.json:
                print(f"{'':<26} pfndiff fuzz {fz['pair']} {a.fuzz_seconds}s: {fz['execs']} executions, "
                      f"{fz['exec_per_s']:.1f}/s once booted ({fz['exec_per_s_with_boot']:.1f}/s with the boot); "
                      f"{fz['ops_compared']} of {fz['ops']} ops compared", flush=True)
    if not a.no_matrix:
        t0 = time.monotonic()
        m = build_matrix(kernel_backends(), jobs=a.jobs)
        total = round(time.monotonic() - t0, 1)
        out["matrix"] = {"kernels": len(ks), "scenarios": len(m.rows), "total_s": total, "per_backend_s": m.seconds,
                         "target_s": 300, "met": total < 300}
        if not a.json:
            print(f"compare matrix: {len(m.rows)} seeds x {len(m.columns)} backends ({len(ks)} kernels + host) "
                  f"in {total:.1f}s (target < 300s: {'met' if total < 300 else 'MISSED'}); "
                  f"per backend: {', '.join(f'{n} {s:.1f}s' for n, s in m.seconds.items())}")
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"(load average {', '.join(f'{x:.1f}' for x in load)} on {out['cpus']} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
