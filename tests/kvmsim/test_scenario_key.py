"""``Scenario.repr_key``: equal for two scenarios iff their reprs are (the checker's memo key), so
every field of every part must change it, dict order included, and decoded scenarios must pair
up the same way under either."""

from __future__ import annotations

import copy
import dataclasses
import random
from typing import Any

import pytest

from fuzz.inputs.codec import decode
from kvmsim.scenario import Op, PageSpec, PteSpec, Scenario, SlotSpec, VmaSpec, WorldSpec, make_op


def _rich() -> Scenario:
    """A scenario with a value in every field and every dict (lines, entry lines, tags and file too;
    not a valid one: the key does not care)."""
    pte = PteSpec("p", True, False, "fails")
    w = WorldSpec(pages=[PageSpec("p", "normal", 0x1000, True, line=3)],
                  vmas=[VmaSpec("ram", 4, page_states={1: ("present_rw", "p"), 0: ("resident", None)}, line=5,
                                entry_lines={1: 6}, ptes={2: pte}),
                        VmaSpec("dev", 2, 0x10000, remap="pfnmap", ptes={0: pte}, page_states={1: ("resident", None)},
                                entry_lines={0: 8})],
                  memslots=[SlotSpec(0, 0, 4, "ram", 0, False, True, 0, None, line=9)])
    return Scenario(w, [make_op("lookup", gfn=1), make_op("vcpu_map", gfn=2, handle="h")], "n", "d",
                    tags={"pairs": ["a~b"]}, file="f.yaml")


def _other(v: Any) -> Any:
    """A value whose repr differs from v's."""
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 1
    if isinstance(v, str):
        return v + "x"
    if v is None:
        return 7
    if isinstance(v, dict):
        return {**v, 99: next(iter(v.values()))}
    if isinstance(v, list):
        return v + v[-1:]
    raise AssertionError(f"no other value for {v!r}")


def _parts(sc: Scenario) -> list[Any]:
    w = sc.world
    return [sc, w, w.pages[0], w.vmas[0], w.vmas[1], w.vmas[1].ptes[0], w.memslots[0], sc.ops[0]]


@pytest.mark.parametrize("index", range(len(_parts(_rich()))))
def test_every_field_of_every_part_changes_the_key(index: int) -> None:
    base = _rich()
    part = _parts(base)[index]
    for f in dataclasses.fields(part):
        if dataclasses.is_dataclass(getattr(part, f.name)):
            continue                                # a part of its own: its fields are changed there
        sc = copy.deepcopy(base)
        target = _parts(sc)[index]
        setattr(target, f.name, _other(getattr(target, f.name)))
        assert repr(sc) != repr(base)
        assert sc.repr_key() != base.repr_key(), f"{type(part).__name__}.{f.name}"
    assert copy.deepcopy(base).repr_key() == base.repr_key()


def test_an_op_argument_and_dict_order_change_the_key() -> None:
    base = _rich()
    sc = copy.deepcopy(base)
    sc.ops[0].args["gfn"] = 2
    assert sc.repr_key() != base.repr_key()
    sc = copy.deepcopy(base)
    v = sc.world.vmas[0]
    v.page_states = dict(reversed(v.page_states.items()))      # == still holds; repr and key differ
    assert sc == base and repr(sc) != repr(base) and sc.repr_key() != base.repr_key()
    sc = copy.deepcopy(base)
    sc.ops[0] = Op("lookup", dict(reversed(sc.ops[0].args.items())))
    assert sc == base and sc.repr_key() != base.repr_key()


def test_decoded_scenarios_pair_up_alike_under_repr_and_key() -> None:
    rng = random.Random(11)
    by_repr: dict[str, tuple] = {}
    by_key: dict[tuple, str] = {}
    base = bytes([2, 0x40, 1, 0x44, 2, 0x88, 0, 0x9C, 1])
    for _ in range(3000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        sc = decode(bytes(data))
        r, k = repr(sc), sc.repr_key()
        assert by_repr.setdefault(r, k) == k and by_key.setdefault(k, r) == r
    assert len(by_repr) < 3000 - 100                # many inputs decoded to one scenario
