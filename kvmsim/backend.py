"""Backends execute scenarios and return traces.  Each sits behind one small abstract class and
is registered by dotted path, so that a backend's module (and what it needs, e.g. /dev/kvm) is
imported only when that backend is used."""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from typing import Any

from .scenario import Scenario
from .trace import Trace


class BackendError(Exception):
    """Unknown backend name, or a backend that cannot run here (the message says why)."""


class Backend(ABC):
    name: str = ""

    @abstractmethod
    def description(self) -> str:
        """One line for ``pfndiff backends``."""

    @abstractmethod
    def version(self) -> str:
        """What the traces of this backend come from (model version, kernel release)."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """Details for ``pfndiff backends --json`` (generation, spec section, capabilities)."""

    @abstractmethod
    def available(self) -> str | None:
        """None when usable here, else the reason it is not."""

    @abstractmethod
    def run(self, scenario: Scenario) -> Trace:
        """Execute the scenario; never raises for anything the scenario does."""

    def generation(self) -> str | None:
        """The model generation this backend's traces implement (a kernel's, from its KVM's exported
        symbols), for the catalogue's families; None when the name says it or it is unknown."""
        return None

    def explain_divergence(self, sc: Scenario, index: int, fields: list[str], model: Trace,
                           real: Trace) -> dict[str, str]:
        """field -> ``quirk:<name>`` for the fields of op ``index`` where this (real) backend's trace
        ``real`` differs from the model's ``model`` through a documented quirk of the backend, not
        a model bug.  A model has none."""
        return {}


# name -> (dotted path of the Backend class, keyword arguments)
REGISTRY: dict[str, tuple[str, dict[str, Any]]] = {
    "sim:g1": ("kvmsim.sim_backend:SimBackend", {"generation": "kvmsim.g1_legacy:G1Legacy"}),
    "sim:g2": ("kvmsim.sim_backend:SimBackend", {"generation": "kvmsim.g2_noref:G2Noref"}),
    "sim:g2s": ("kvmsim.sim_backend:SimBackend", {"generation": "kvmsim.g2s_sketch:G2sSketch"}),
    "sim:g2s-literal": ("kvmsim.sim_backend:SimBackend",
                        {"generation": "kvmsim.g2s_sketch:G2sSketch", "quirks": "S2,S4,S5,S6,S8"}),
    "sim:g2f": ("kvmsim.sim_backend:SimBackend", {"generation": "kvmsim.g2f_posted:G2fPosted"}),
    "sim:g3": ("kvmsim.sim_backend:SimBackend", {"generation": "kvmsim.g3_merged:G3Merged"}),
}
# Parameterised names: "sim:g2s-literal:S4,S8" enables only the listed sketch quirks.
PARAMETERISED = {"sim:g2s-literal": "quirks"}
# Name families without a fixed list, e.g. "qemu:6.1" -> (class path, keyword the rest is passed as).
PREFIXES: dict[str, tuple[str, str]] = {}


def load_object(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def register(name: str, path: str, **kwargs: Any) -> None:
    REGISTRY[name] = (path, kwargs)


def register_family(family: str, path: str, keyword: str) -> None:
    """``family:<rest>`` names the class at ``path`` with ``keyword=<rest>``."""
    PREFIXES[family] = (path, keyword)


# Backends outside the model (real hosts, kernels in QEMU) register themselves through this entry-point
# group: each entry names a function called with no arguments, once, the first time a name the model
# does not define is resolved or the names are listed.  The model never names the classes of the layers
# above it.
HOOKS_GROUP = "pfndiff.backends"
_hooks_loaded = False


def _load_hooks() -> None:
    global _hooks_loaded
    if _hooks_loaded:
        return
    _hooks_loaded = True
    from importlib.metadata import entry_points
    for ep in entry_points(group=HOOKS_GROUP):
        ep.load()()


# Out-of-tree generation modules (e.g. the triage-quality bench's planted bugs): a JSON file named by
# this variable lists {"backend": "sim:g3-b16", "module": "kvmsim._planted_b16", "file": PATH,
# "class": "G3Merged"}; each file is loaded under its module name and registered as a sim backend,
# so campaigns, their libFuzzer workers and triage (separate processes) all see the same backends.
# An entry without "backend" only loads its module (a patched copy of a module a generation builds
# on, e.g. kvmsim.gup_era, that a later entry's copy imports under that name).
PLUGINS_ENV = "PFNDIFF_BACKEND_PLUGINS"


def load_plugins(path: str) -> list[str]:
    """Register the backends a plugin file lists; returns their names."""
    import importlib.util
    import json
    import sys
    with open(path, encoding="utf-8") as fh:
        specs = json.load(fh)
    names = []
    for sp in specs:
        mod = sp["module"]
        if mod not in sys.modules:
            spec = importlib.util.spec_from_file_location(mod, sp["file"])
            if spec is None or spec.loader is None:
                raise BackendError(f"{path}: cannot load {sp['file']}")
            m = importlib.util.module_from_spec(spec)
            sys.modules[mod] = m
            spec.loader.exec_module(m)
        if "backend" not in sp:
            continue
        register(sp["backend"], "kvmsim.sim_backend:SimBackend", generation=f"{mod}:{sp['class']}")
        names.append(sp["backend"])
    return names


def _plugins_from_env() -> None:
    path = os.environ.get(PLUGINS_ENV)
    if path:
        load_plugins(path)


def backend_names() -> list[str]:
    _load_hooks()
    if os.environ.get(PLUGINS_ENV):
        _plugins_from_env()
    return list(REGISTRY)


def get_backend(name: str) -> Backend:
    if name not in REGISTRY:
        _load_hooks()
    if name not in REGISTRY and os.environ.get(PLUGINS_ENV):
        _plugins_from_env()
    entry = REGISTRY.get(name)
    kwargs: dict[str, Any] = {}
    if entry is None:
        base, sep, param = name.rpartition(":")
        if sep and base in PARAMETERISED and param:
            entry = REGISTRY[base]
            kwargs[PARAMETERISED[base]] = param
        family, _, rest = name.partition(":")
        if entry is None and family in PREFIXES and rest:
            entry = (PREFIXES[family][0], {})
            kwargs[PREFIXES[family][1]] = rest
    if entry is None:
        raise BackendError(f"unknown backend {name!r} (known: {', '.join(REGISTRY)})")
    path, base_kwargs = entry
    cls = load_object(path)
    try:
        backend = cls(name=name, **{**base_kwargs, **kwargs})
    except ValueError as e:
        raise BackendError(f"backend {name!r}: {e}") from None
    return backend
