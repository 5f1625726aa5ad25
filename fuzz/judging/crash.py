"""Crash mode: a finding becomes an uncaught exception whose stack names its cause.

Why: a fuzzing engine that knows nothing about pfndiff (ClusterFuzzLite, OSS-Fuzz/ClusterFuzz)
sees a Python finding only as an uncaught exception.  ClusterFuzz's crash type for it is
"Uncaught exception" and its crash *state* is the names of the three innermost frames (the
exception text is ignored; names shorter than 3 characters or on its ignore list -- starting with
``new``/``free``/``main``/``abort``..., containing ``assert``... -- are skipped; lines are cut at 80
characters).  Equal states are one testcase; states sharing two frames in order, or with lines
about 80 % alike, are grouped.

So the exception is raised from inside three functions generated for the finding and named after
the parts of its root cause (fuzz.judging.rootcause; ``crash_parts`` is the one place that decides them):
the same cause gives the same state whatever the input, op class or field that shows it, and
different causes give different states that share no frame (a digest of the cause is one of
them) -- one ClusterFuzz testcase per cause, as one triage cluster per cause.  The exception
message carries the cause, the signature and its id, the spec ids and the pairs on one line.
"""

from __future__ import annotations

import hashlib
import os
import re
import types
from collections.abc import Callable

from fuzz.judging.rootcause import RootCause, root_cause
from kvmsim.scenario import Scenario
from oracles.diff import Divergence, report_order

ENV = "PFNDIFF_CRASH"
LINE_CAP = 80                  # ClusterFuzz's LINE_LENGTH_CAP for crash-state lines

# Frame names ClusterFuzz would skip (its STACK_FRAME_IGNORE_REGEXES, as far as a name made of
# [A-Za-z0-9_] can meet them): prefixes, and substrings anywhere in the name.
_IGNORED_PREFIX = re.compile(
    r"^(abort|exit$|raise$|new|New|free|main|malloc|calloc|realloc|delete|operator|scanf|asan_|_asan_|"
    r"kasan_|_start|gsignal|g_log|dump_stack|dump_backtrace|show_stack|print_trailer|object_err|"
    r"check_memory_region|common_exit|generic_cpp_|mozalloc_|tgkill|pthread_|_+|aeabi_|mem(cmp|cpy|move|set)|"
    r"str(cmp|cpy|dup|len|ncpy)|rust_|libfuzzer_|LLVMFuzzer|TestOneProtoInput|WTF|X11Error|Abort|CFCrash|"
    r"ExitCallback|IsSandboxedProcess|MSanAtExitWrapper|RaiseException|SbSystem|Signal|art_|exit_or_)")
_IGNORED_ANYWHERE = ("assert", "logger", "PartitionAlloc", "allocator_shim", "asan_", "libpthread", "DebugBreak",
                     "SkDebugf", "DefaultDcheckHandler", "ForceCrashOnSigAbort", "RtlFreeHeap", "RtlUserThreadStart",
                     "RtlInitializeExceptionChain", "RtlReportCriticalFailure", "RtlpHeapHandleError",
                     "RtlpLogHeapFailure", "BaseThreadInitThunk", "StackDumpSignalHandler", "tmainCRTStartup",
                     "ASAN_OnSIGSEGV", "libgcc_s")


class PfndiffFinding(Exception):
    """A divergence no catalogue entry explains (crash mode only)."""


def enabled(value: str | None = None) -> bool:
    """Crash mode from ``PFNDIFF_CRASH`` (``1``/``yes``/``on``/``true``); off when unset."""
    v = os.environ.get(ENV, "") if value is None else value
    return v.strip().lower() in ("1", "yes", "on", "true")


def primary(divs: list[Divergence]) -> Divergence | None:
    """The finding an input stands for: its first unknown divergence in report order (op order,
    pair diffs before single-trace invariants), the key ``pfndiff triage`` clusters by."""
    return next((d for d in sorted(divs, key=report_order) if not d.known), None)


def _root_cause(sc: Scenario, d: Divergence, others: list[Divergence] | None = None) -> RootCause:
    return root_cause(sc, d, others=others)


def crash_parts(sc: Scenario, d: Divergence, cause_of: Callable[..., RootCause] = _root_cause,
                others: list[Divergence] | None = None) -> tuple[RootCause, tuple[str, str, str]]:
    """The cause of a finding and its crash state, innermost frame first: what the cause is, with
    its id; where the two sides part (or which quirk); a digest of the cause's key.  The last word
    of each part survives cutting; the digests keep distinct causes from sharing or nearly sharing
    frames (ClusterFuzz groups states with two equal frames or ~80 % similar lines).  ``cause_of``:
    the campaign's own root-cause function, when it has one; ``others``: the input's other
    divergences, so the cause is the one triage gives (a pair difference at an op where a backend
    breaks an invariant is that violation's)."""
    cause = cause_of(sc, d, others)
    where, _, what = cause.title.partition(": ")
    digest = hashlib.sha1(cause.key.encode()).hexdigest()
    return cause, (f"{what or where} {cause.id}", f"{where[:40]} {digest[:12]}", f"cause {digest[12:28]}")


def _slug(text: str) -> str:
    s = text.replace(">", " to ").replace("+", " plus ").replace("!", " not ").replace("==", " eq ")
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_") or "none"


def frame_name(part: str) -> str:
    """A function name ClusterFuzz keeps verbatim: [A-Za-z0-9_], at least 3 characters, nothing
    it ignores, at most ``LINE_CAP`` characters (the part's last word is kept when cutting)."""
    s = _slug(part)
    for bad in _IGNORED_ANYWHERE:
        while bad in s:
            s = s.replace(bad, bad[0] + "X" + bad[1:])
    if _IGNORED_PREFIX.match(s) or len(s) < 3 or s[0].isdigit():
        s = "at_" + s
    if len(s) > LINE_CAP:
        tail = _slug(part.split()[-1]) if part.split() else ""
        s = s[:LINE_CAP - len(tail) - 1] + "_" + tail if 0 < len(tail) < LINE_CAP // 2 else s[:LINE_CAP]
    return s


def crash_state(parts: tuple[str, str, str]) -> list[str]:
    """The frame names, innermost first: what ClusterFuzz's parser will report as the state."""
    return [frame_name(p) for p in parts]


def message(cause: RootCause, d: Divergence, spec_ids: list[str], pairs: list[tuple[str, str]], name: str) -> str:
    """One line: the cause, the signature and its id, the spec rows involved, how to reproduce."""
    spec = list(dict.fromkeys([*cause.spec, *spec_ids]))
    pair_txt = ";".join(f"{a}~{b}" for a, b in pairs)
    left, right = (d.left, d.right) if d.right else (d.left, d.left)
    return (f"cause {cause.id}: {cause.title} | signature {d.signature} [id {d.sig_id}] | spec {','.join(spec) or '-'} "
            f"| pairs {pair_txt} | reproduce: pfndiff repro {name} --left {left} --right {right}").replace("\n", " ")


def _frame(exc: BaseException, *inner: Callable[..., None]) -> None:
    """Template of every generated frame: call the next one inward, or raise."""
    if not inner:
        raise exc
    inner[0](exc, *inner[1:])


_CHAINS: dict[tuple[str, ...], list[Callable[..., None]]] = {}


def _chain(names: list[str]) -> list[Callable[..., None]]:
    """Outermost first; one function per name, made once per distinct crash state."""
    key = tuple(names)
    if key not in _CHAINS:
        _CHAINS[key] = [types.FunctionType(_frame.__code__.replace(co_name=n, co_qualname=n), _frame.__globals__, n)
                        for n in reversed(names)]
    return _CHAINS[key]


def raise_finding(sc: Scenario, d: Divergence, spec_ids: list[str], pairs: list[tuple[str, str]], name: str,
                  cause_of: Callable[..., RootCause] = _root_cause, others: list[Divergence] | None = None) -> None:
    """Raise ``PfndiffFinding`` from inside the frames named by the finding's crash state."""
    cause, parts = crash_parts(sc, d, cause_of, others)
    chain = _chain(crash_state(parts))
    chain[0](PfndiffFinding(message(cause, d, spec_ids, pairs, name)), *chain[1:])
