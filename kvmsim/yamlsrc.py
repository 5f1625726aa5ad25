"""Safe YAML reading that keeps line numbers, so every scenario error can say ``FILE:LINE``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml


class ScenarioError(Exception):
    """A malformed or inconsistent scenario; ``str()`` is the one-line ``FILE:LINE: problem``."""

    def __init__(self, problem: str, line: int = 0, file: str = "<scenario>") -> None:
        super().__init__(problem)
        self.problem, self.line, self.file = problem, line, file

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.problem}" if self.line else f"{self.file}: {self.problem}"


@dataclass(slots=True)
class Node:
    """A YAML value with the (1-based) line it started on."""
    value: Any
    line: int

    def get(self, key: str) -> Node | None:
        return self.value.get(key) if isinstance(self.value, dict) else None


def plain(n: Node) -> Any:
    """A line-annotated node back to plain Python values."""
    if isinstance(n.value, dict):
        return {k: plain(v) for k, v in n.value.items()}
    if isinstance(n.value, list):
        return [plain(v) for v in n.value]
    return n.value


def _convert(node: yaml.Node) -> Node:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Node] = {}
        for knode, vnode in node.value:
            key = yaml.SafeLoader.construct_scalar(_LOADER, knode) if isinstance(knode, yaml.ScalarNode) else None
            if key is None:
                raise ScenarioError("mapping keys must be plain scalars", knode.start_mark.line + 1)
            key = _scalar(knode)
            if key in out:
                raise ScenarioError(f"duplicate key {key!r}", knode.start_mark.line + 1)
            out[key] = _convert(vnode)
        return Node(out, line)
    if isinstance(node, yaml.SequenceNode):
        return Node([_convert(n) for n in node.value], line)
    return Node(_scalar(node), line)


class _Loader(yaml.SafeLoader):
    pass


_LOADER = _Loader("")


def _scalar(node: yaml.ScalarNode) -> Any:
    return _LOADER.construct_object(node, deep=True)


def parse(text: str, file: str = "<scenario>") -> Node:
    """Parse one YAML document safely into line-annotated nodes."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ScenarioError(f"bad YAML: {problem}", line, file) from None
    if root is None:
        raise ScenarioError("empty document", 1, file)
    try:
        return _convert(root)
    except ScenarioError as e:
        e.file = file
        raise
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ScenarioError(f"bad YAML: {getattr(e, 'problem', e)}", mark.line + 1 if mark else 0, file) from None
