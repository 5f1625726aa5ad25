"""JSON schemas for what pfndiff reads back from disk (shipped in ``fuzz/inputs/schemas/``): finding
sidecars, triage reports (``--join``), corpus entries (scenario YAML with tags) and the cluster
views ``pfndiff report`` draws.

Why schemas on top of the loaders: these files come from other machines and older runs, and the
code that consumes them indexes into them (``sidecar["pair"][1]``, ``tags["pairs"]``); one
declarative shape per format, checked once at the door, turns a malformed file into one line
``FILE[:LINE]: problem`` instead of a traceback (or a silently wrong triage) deep inside.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

from kvmsim.yamlsrc import Node, ScenarioError, show

SCHEMAS = ("sidecar", "triage-report", "corpus-entry", "cluster-view")
_WHAT = {"sidecar": "sidecar", "triage-report": "triage report", "corpus-entry": "corpus entry",
         "cluster-view": "cluster view"}


@functools.cache
def validator(name: str) -> Draft202012Validator:
    text = resources.files("fuzz.inputs").joinpath("schemas", f"{name}.json").read_text(encoding="utf-8")
    schema = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _line(node: Node | None, path: list[Any]) -> int:
    """The line of the deepest node along ``path`` that the YAML tree has."""
    if node is None:
        return 0
    line = node.line
    for p in path:
        v = node.value
        if isinstance(v, dict) and p in v:
            node = v[p]
        elif isinstance(v, list) and isinstance(p, int) and 0 <= p < len(v):
            node = v[p]
        else:
            break
        line = node.line
    return line


_TYPES = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
          "number": "a number", "boolean": "true or false", "null": "null"}


def _problem(e: jsonschema.ValidationError) -> str:
    """One short sentence: jsonschema's own messages repeat the whole (possibly huge) value."""
    got = show(e.instance, 40)
    if e.validator == "type":
        want: list[str] = e.validator_value if isinstance(e.validator_value, list) else [e.validator_value]
        return f"must be {' or '.join(_TYPES.get(t, t) for t in want)}, got {got}"
    if e.validator in ("maxItems", "minItems"):
        n = len(e.instance) if isinstance(e.instance, list) else "?"
        bound = "at most" if e.validator == "maxItems" else "at least"
        return f"has {n} entries, {bound} {e.validator_value} allowed"
    if e.validator == "required":
        return e.message.split(" is a required", 1)[0] + " is missing"
    if e.validator in ("const", "enum"):
        allowed = [e.validator_value] if e.validator == "const" else e.validator_value
        return f"must be {' or '.join(json.dumps(a) for a in allowed)}, got {got}"
    if e.validator == "minLength":
        return "must not be empty"
    if e.validator == "minimum":
        return f"must be at least {e.validator_value}, got {got}"
    if e.validator in ("minProperties", "maxProperties"):
        return f"must have exactly one key, got {got}"
    return e.message[:120]


def check(name: str, doc: Any, file: str, root: Node | None = None) -> None:
    """Raise ScenarioError (``FILE[:LINE]: <what> field <path> <problem>``) if ``doc`` does not
    match schema ``name``; ``root`` (the parsed YAML) supplies line numbers."""
    err = jsonschema.exceptions.best_match(validator(name).iter_errors(doc))
    if err is None:
        return
    path = list(err.absolute_path)
    where = ".".join(str(p) for p in path)
    field = f"field '{where}'" if where else "document"
    raise ScenarioError(f"{_WHAT[name]} {field} {_problem(err)}", _line(root, path), file)
