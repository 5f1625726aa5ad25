"""Findings as data (DESIGN principle 6): ``crash-<sha1>`` (libFuzzer naming) + a YAML sidecar,
each written atomically (temp file in the same directory, fsync, rename), so that an interrupted
campaign never leaves a half-written finding and triage reads only these files.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml

from fuzz.inputs import schema
from kvmsim.scenario import Scenario, scenario_from_node
from kvmsim.yamlsrc import MAX_YAML_BYTES, Node, ScenarioError, load_yaml, plain

SIGNATURE_DIR = "by-signature"      # one marker per signature: the first artifact wins
SIDECAR_LOCK = ".sidecar.lock"      # held while a sidecar is read and written (fuzz.judging.artifacts.write_finding)
STATS_DIR = ".stats"                # per-process counters, aggregated by the campaign


def atomic_write(path: str, data: bytes) -> None:
    d = os.path.dirname(path) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    except OSError as e:                    # name the file the caller wanted, not the scratch one
        raise OSError(e.errno, e.strerror, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# libFuzzer names inputs by content: crash-/timeout-/oom-/leak-/slow-unit-<sha1>, corpus files <sha1>.
_NAMED_BY_CONTENT = re.compile(r"^(?:(?:crash|timeout|oom|leak|slow-unit)-)?([0-9a-f]{40})$")


def content_mismatch(path: str, data: bytes) -> str | None:
    """For a file named by its content's sha1: the one-line problem if the content no longer
    matches (a truncated copy, an interrupted transfer), else None."""
    m = _NAMED_BY_CONTENT.match(os.path.basename(path))
    digest = hashlib.sha1(data).hexdigest()
    if m and digest != m.group(1):
        return (f"{path}: content does not match its name (sha1 {digest[:12]}…, {len(data)} bytes): "
                f"truncated or modified")
    return None


def input_name(data: bytes) -> str:
    return "crash-" + hashlib.sha1(data).hexdigest()


def claim_signature(artifacts: str, sig_id: str, name: str) -> bool:
    """True for the first process to report this signature in this artifacts directory."""
    d = os.path.join(artifacts, SIGNATURE_DIR)
    os.makedirs(d, exist_ok=True)
    try:
        fd = os.open(os.path.join(d, sig_id), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(name + "\n")
    return True


def write_finding(artifacts: str, data: bytes, sidecar: dict[str, Any]) -> str:
    """Write the input, then its sidecar (so a sidecar never points at a missing input).  Several
    workers of a campaign run the same inputs (the seeds, each other's finds): one may claim
    signatures of an input whose sidecar another worker already wrote for other signatures.  The
    sidecar is then extended with them (under a lock on the artifacts directory), never replaced,
    so every claimed signature stays listed in a sidecar."""
    os.makedirs(artifacts, exist_ok=True)
    name = input_name(data)
    path = os.path.join(artifacts, name)
    if not os.path.exists(path):
        atomic_write(path, data)
    with _sidecar_lock(artifacts):
        merged = _with_earlier(path + ".yaml", _plain(sidecar))
        text = yaml.safe_dump(merged, sort_keys=False, default_flow_style=None, width=110, allow_unicode=True)
        atomic_write(path + ".yaml", text.encode("utf-8"))
    return path


@contextmanager
def _sidecar_lock(artifacts: str) -> Iterator[None]:
    with open(os.path.join(artifacts, SIDECAR_LOCK), "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _with_earlier(path: str, sidecar: dict[str, Any]) -> dict[str, Any]:
    """``sidecar``, or the sidecar already at ``path`` (another worker's, for the same input) with
    this one's signatures added to its list.  An unreadable earlier file is replaced."""
    if not os.path.exists(path):
        return sidecar
    try:
        earlier = read_sidecar(path)
    except (ScenarioError, OSError):
        return sidecar
    listed = {s.get("id") for s in earlier.get("signatures") or []}
    earlier["signatures"] = list(earlier.get("signatures") or []) + [
        s for s in sidecar.get("signatures") or [] if s.get("id") not in listed]
    return earlier


def read_yaml_doc(path: str, what: str) -> tuple[Any, Node]:
    """A YAML file pfndiff reads back (sidecar, corpus entry): bounded, safe, plain values plus
    the line-annotated tree for error lines.  Raises ScenarioError."""
    root = load_yaml(path, MAX_YAML_BYTES, what)
    return plain(root), root


def is_sidecar(doc: Any) -> bool:
    """A sidecar names its signature; a scenario YAML (a reproducer) has ``world``/``ops``."""
    return isinstance(doc, dict) and "signature" in doc and not ("world" in doc or "ops" in doc)


def read_twin(path: str) -> dict[str, Any] | None:
    """The YAML beside a raw input: its sidecar, checked against the sidecar schema, or None when
    it is a scenario (``pfndiff minimize`` writes ``X.min`` and the tagged ``X.min.yaml``, which
    is the input).  ScenarioError (one line) for anything else."""
    try:
        doc, root = read_yaml_doc(path, "sidecar")
    except ScenarioError as e:
        if e.problem.startswith("bad YAML"):
            e.problem = "truncated or malformed sidecar: " + e.problem
        raise
    if isinstance(doc, dict) and not is_sidecar(doc) and ("world" in doc or "ops" in doc):
        return None
    if not is_sidecar(doc):
        raise ScenarioError("not a pfndiff sidecar (no 'signature')", 0, path)
    schema.check("sidecar", doc, path, root)
    return doc


def read_sidecar(path: str) -> dict[str, Any]:
    """A finding's sidecar, checked against the sidecar schema; ScenarioError (one line) if not."""
    doc = read_twin(path)
    if doc is None:
        raise ScenarioError("not a pfndiff sidecar (a scenario)", 0, path)
    return doc


def load_corpus_entry(path: str) -> Scenario:
    """A scenario YAML pfndiff acts on by its tags (seed, promoted regression, minimised
    reproducer): bounded read, corpus-entry schema, then the scenario loader.  ScenarioError."""
    doc, root = read_yaml_doc(path, "scenario")
    schema.check("corpus-entry", doc, path, root)
    return scenario_from_node(root, path)


def _plain(v: Any) -> Any:
    """Only plain YAML types in sidecars (safe_dump refuses anything else)."""
    return json.loads(json.dumps(v, default=str))


def host_info() -> dict[str, str]:
    return {"kernel": platform.release(), "machine": platform.machine(), "python": platform.python_version(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_stats(artifacts: str, stats: dict[str, Any]) -> None:
    d = os.path.join(artifacts, STATS_DIR)
    os.makedirs(d, exist_ok=True)
    atomic_write(os.path.join(d, f"{os.getpid()}.json"), json.dumps(stats).encode())


def read_stats(artifacts: str) -> list[dict[str, Any]]:
    d = os.path.join(artifacts, STATS_DIR)
    out: list[dict[str, Any]] = []
    try:
        names = os.listdir(d)
    except OSError:
        return out
    for n in names:
        if not n.endswith(".json"):
            continue
        try:
            with open(os.path.join(d, n), encoding="utf-8") as fh:
                out.append(json.load(fh))
        except (OSError, ValueError):
            continue
    return out
