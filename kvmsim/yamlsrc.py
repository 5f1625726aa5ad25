"""Bounded reading of untrusted files and safe YAML that keeps line numbers.

Every file pfndiff reads (scenarios, the catalogue, sidecars, corpus inputs, earlier triage
reports) may come from a fuzzing farm, another person or an old run.  So reading is bounded
*before* memory is spent: a file larger than its stated limit is refused after reading one byte
past the limit, and YAML is composed here from the parser's event stream, counting as it goes:
nodes, nesting depth and alias uses are capped, an alias is never copied (the anchored node is
shared and its size charged against the budget), and only the standard scalar tags are accepted.
A "billion laughs" document is refused at its first alias over the bound instead of expanding.
Errors are ``ScenarioError``: one line, ``FILE:LINE: problem``.  The limits are documented in
docs/scenarios.md ("Limits").
"""

from __future__ import annotations

import gc
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

KiB, MiB = 1 << 10, 1 << 20
MAX_YAML_BYTES = 16 * MiB      # scenarios, catalogues, sidecars
MAX_INPUT_BYTES = 1 * MiB      # raw fuzzer inputs (libFuzzer's -max_len is far below this)
MAX_JSON_BYTES = 64 * MiB      # triage.json of an earlier triage (--join)
MAX_NODES = 2_000_000          # YAML nodes per document, aliases counted as what they stand for
MAX_DEPTH = 64                 # nesting of YAML collections
MAX_ALIASES = 100              # alias uses per document ...
MAX_ALIAS_NODES = 10_000       # ... which together may stand for at most this many nodes
MAX_PROBLEM = 300              # characters of an error message after FILE:LINE

_EVENT_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_CONSTRUCTOR = yaml.SafeLoader("")          # scalar construction only (no memo of constructed objects)
_SCALAR_TAGS = frozenset({"tag:yaml.org,2002:null", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int",
                          "tag:yaml.org,2002:float", "tag:yaml.org,2002:str"})
_COLLECTION_TAGS = frozenset({None, "!", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"})


class ScenarioError(Exception):
    """A malformed or inconsistent scenario; ``str()`` is the one-line ``FILE:LINE: problem``."""

    def __init__(self, problem: str, line: int = 0, file: str = "<scenario>") -> None:
        super().__init__(problem)
        self.problem, self.line, self.file = problem, line, file

    def __str__(self) -> str:
        problem = " ".join(self.problem.split("\n"))
        if len(problem) > MAX_PROBLEM:               # a value quoted from a huge file stays one short line
            problem = problem[:MAX_PROBLEM] + "…"
        return f"{self.file}:{self.line}: {problem}" if self.line else f"{self.file}: {problem}"


@dataclass(slots=True)
class Node:
    """A YAML value with the (1-based) line it started on."""
    value: Any
    line: int

    def get(self, key: str) -> Node | None:
        return self.value.get(key) if isinstance(self.value, dict) else None

    def __repr__(self) -> str:                 # error messages show the value, never the wrapper
        return show(self)


def plain(n: Node) -> Any:
    """A line-annotated node back to plain Python values."""
    if isinstance(n.value, dict):
        return {k: plain(v) for k, v in n.value.items()}
    if isinstance(n.value, list):
        return [plain(v) for v in n.value]
    return n.value


def show(v: Any, limit: int = 60) -> str:
    """A short rendering of a (possibly node-wrapped, possibly huge) value for one-line errors."""
    out: list[str] = []
    budget = [limit]

    def walk(x: Any) -> None:
        if budget[0] <= 0:
            return
        if isinstance(x, Node):
            x = x.value
        if isinstance(x, dict):
            walk_items("{", ((f"{k!r}: ", val) for k, val in x.items()), "}")
        elif isinstance(x, list):
            walk_items("[", (("", val) for val in x), "]")
        else:
            emit(repr(x))

    def walk_items(opening: str, items: Iterator[tuple[str, Any]], closing: str) -> None:
        emit(opening)
        for i, (prefix, val) in enumerate(items):
            emit((", " if i else "") + prefix)
            walk(val)
            if budget[0] <= 0:
                return
        emit(closing)

    def emit(s: str) -> None:
        out.append(s[: budget[0]])
        budget[0] -= len(s)

    walk(v)
    text = "".join(out)
    return text + "…" if budget[0] < 0 else text


# --- bounded reads ------------------------------------------------------------------------------

def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB and n % MiB == 0 else f"{n // KiB} KiB" if n >= KiB else f"{n} bytes"


def read_bytes(path: str, limit: int, what: str = "file") -> bytes:
    """At most ``limit`` bytes of a regular file; ScenarioError (one line) otherwise."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if stat.S_ISDIR(st.st_mode):
                raise ScenarioError(f"is a directory, not a {what}", 0, path)
            if stat.S_ISREG(st.st_mode) and st.st_size > limit:
                raise ScenarioError(f"{what} is {st.st_size} bytes, over the {_size(limit)} limit", 0, path)
            data = fh.read(limit + 1)
    except IsADirectoryError:
        raise ScenarioError(f"is a directory, not a {what}", 0, path) from None
    except OSError as e:
        raise ScenarioError(f"cannot read: {e.strerror or e}", 0, path) from None
    if len(data) > limit:
        raise ScenarioError(f"{what} is over the {_size(limit)} limit", 0, path)
    return data


def read_text(path: str, limit: int = MAX_YAML_BYTES, what: str = "file") -> str:
    """A bounded read decoded as UTF-8 (one-line error on anything else)."""
    data = read_bytes(path, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScenarioError(f"not UTF-8 text ({e.reason} at byte {e.start})", 0, path) from None


# --- YAML ---------------------------------------------------------------------------------------

class _Open:
    """A collection being composed."""
    __slots__ = ("node", "anchor", "size", "key", "key_line")

    def __init__(self, node: Node, anchor: str | None) -> None:
        self.node, self.anchor, self.size = node, anchor, 1
        self.key: Any = _NO_KEY
        self.key_line = 0


_NO_KEY = object()


def _yaml_error(e: yaml.YAMLError, file: str) -> ScenarioError:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    line = mark.line + 1 if mark is not None else 0
    problem = getattr(e, "problem", None) or getattr(e, "reason", None) or str(e).splitlines()[0]
    return ScenarioError(f"bad YAML: {problem}", line, file)


def _short(tag: str) -> str:
    return "!!" + tag[len("tag:yaml.org,2002:"):] if tag.startswith("tag:yaml.org,2002:") else tag


# Plain scalars whose first character starts no YAML 1.1 implicit type (bool, null, int, float,
# timestamp, merge, value) are strings; plain decimal and 0x integers need no regex resolver.
_NOT_STR_FIRST = frozenset("yYnNtTfFoO-+0123456789.<~=")
_PLAIN_INT = re.compile(r"(?:[1-9][0-9]*|0|0x[0-9a-fA-F]+)")


def _scalar(ev: yaml.ScalarEvent, loader: Any, line: int, file: str) -> Any:
    tag = ev.tag
    if tag is None and ev.implicit[0]:                   # fast paths, same results as the resolver
        v = ev.value
        if v and v[0] not in _NOT_STR_FIRST:
            return v
        if _PLAIN_INT.fullmatch(v):
            return int(v, 0)
    if tag is None or tag == "!":
        tag = loader.resolve(yaml.ScalarNode, ev.value, ev.implicit)
        if tag == "tag:yaml.org,2002:timestamp":     # a date-like plain scalar stays text
            tag = "tag:yaml.org,2002:str"
    if tag not in _SCALAR_TAGS:
        raise ScenarioError(f"unsupported YAML tag {_short(ev.tag or tag)} (only plain scalars, lists and mappings)",
                            line, file)
    if tag == "tag:yaml.org,2002:str":                # the common cases without building a node
        return ev.value
    if tag == "tag:yaml.org,2002:null":
        return None
    node = yaml.ScalarNode(tag, ev.value, ev.start_mark, ev.end_mark, ev.style)
    try:
        return _CONSTRUCTOR.yaml_constructors[tag](_CONSTRUCTOR, node)
    except (yaml.YAMLError, ValueError) as e:
        raise ScenarioError(f"bad YAML scalar {show(ev.value)}: {str(e).splitlines()[0]}", line, file) from None


def parse(text: str, file: str = "<scenario>") -> Node:
    """Parse one YAML document safely and within the limits into line-annotated nodes."""
    loader = _EVENT_LOADER(text)
    collecting = gc.isenabled()
    gc.disable()                    # millions of acyclic nodes: the cycle collector would rescan them
    try:
        return _compose(loader, file)
    except yaml.YAMLError as e:
        raise _yaml_error(e, file) from None
    except RecursionError:
        raise ScenarioError(f"bad YAML: nested deeper than {MAX_DEPTH}", 0, file) from None
    finally:
        loader.dispose()
        if collecting:
            gc.enable()


def _compose(loader: Any, file: str) -> Node:
    return _Composer(loader, file).run()


class _Composer:
    """Builds the node tree from the parser's events, one bounded step per event kind: aliases
    are counted by the nodes they stand for, nesting and node counts are capped."""

    def __init__(self, loader: Any, file: str) -> None:
        self.loader, self.file = loader, file
        self.anchors: dict[str, tuple[Node, int]] = {}
        self.open_anchors: set[str] = set()
        self.stack: list[_Open] = []
        self.nodes = self.aliases = self.alias_nodes = 0
        self.root: Node | None = None
        self.documents = 0

    def err(self, problem: str, line: int) -> ScenarioError:
        return ScenarioError(problem, line, self.file)

    def run(self) -> Node:
        while self.loader.check_event():
            ev = self.loader.get_event()
            line = ev.start_mark.line + 1 if ev.start_mark is not None else 0
            self.event(ev, line)
        if self.root is None:
            raise self.err("empty document", 1)
        return self.root

    def event(self, ev: Any, line: int) -> None:
        if isinstance(ev, (yaml.StreamStartEvent, yaml.StreamEndEvent, yaml.DocumentEndEvent)):
            return
        if isinstance(ev, yaml.DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                raise self.err("bad YAML: expected a single document, found another", line)
            return
        if isinstance(ev, yaml.AliasEvent):
            self.alias(ev, line)
            return
        self.count(1, line)
        if isinstance(ev, yaml.ScalarEvent):
            self.attach(Node(_scalar(ev, self.loader, line, self.file), line), 1, line, ev.anchor)
        elif isinstance(ev, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            self.open_collection(ev, line)
        elif isinstance(ev, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            done = self.stack.pop()
            if done.anchor is not None:
                self.open_anchors.discard(done.anchor)
            self.attach(done.node, done.size, done.node.line, done.anchor)

    def count(self, size: int, line: int) -> None:
        self.nodes += size
        if self.nodes > MAX_NODES:
            raise self.err(f"YAML document has more than {MAX_NODES} nodes", line)

    def alias(self, ev: Any, line: int) -> None:
        if ev.anchor in self.open_anchors:
            raise self.err(f"bad YAML: alias *{ev.anchor} refers to a collection that contains it", line)
        if ev.anchor not in self.anchors:
            raise self.err(f"bad YAML: undefined alias *{ev.anchor}", line)
        n, size = self.anchors[ev.anchor]
        self.aliases += 1
        self.alias_nodes += size
        self.nodes += size
        if self.aliases > MAX_ALIASES or self.alias_nodes > MAX_ALIAS_NODES:
            raise self.err(f"YAML aliases expand beyond the limit ({MAX_ALIASES} aliases standing for at most "
                           f"{MAX_ALIAS_NODES} nodes)", line)
        self.count(0, line)
        self.attach(n, size, line, None)

    def open_collection(self, ev: Any, line: int) -> None:
        if ev.tag not in _COLLECTION_TAGS:
            raise self.err(f"unsupported YAML tag {_short(ev.tag)} (only plain scalars, lists and mappings)", line)
        if len(self.stack) >= MAX_DEPTH:
            raise self.err(f"YAML nested deeper than {MAX_DEPTH}", line)
        if self.stack and isinstance(self.stack[-1].node.value, dict) and self.stack[-1].key is _NO_KEY:
            raise self.err("mapping keys must be plain scalars", line)
        self.stack.append(_Open(Node([] if isinstance(ev, yaml.SequenceStartEvent) else {}, line), ev.anchor))
        if ev.anchor is not None:
            self.open_anchors.add(ev.anchor)

    def attach(self, n: Node, size: int, line: int, anchor: str | None) -> None:
        if anchor is not None:
            if anchor in self.anchors or anchor in self.open_anchors:
                raise self.err(f"bad YAML: duplicate anchor &{anchor}", line)
            self.anchors[anchor] = (n, size)
        if not self.stack:
            self.root = n
            return
        top = self.stack[-1]
        top.size += size
        if isinstance(top.node.value, list):
            top.node.value.append(n)
        elif top.key is _NO_KEY:
            if isinstance(n.value, (dict, list)):
                raise self.err("mapping keys must be plain scalars", line)
            if n.value in top.node.value:
                raise self.err(f"duplicate key {n.value!r}", line)
            top.key, top.key_line = n.value, line
        else:
            top.node.value[top.key] = n
            top.key = _NO_KEY


def load_yaml(path: str, limit: int = MAX_YAML_BYTES, what: str = "YAML file") -> Node:
    """A bounded read and a bounded parse of one YAML file."""
    return parse(read_text(path, limit, what), path)
