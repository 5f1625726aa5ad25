"""The byte codec: every byte string decodes to a valid bounded scenario; every scenario within
the bounds encodes to bytes that decode back to it; the stream is versioned and gap-tolerant."""

from __future__ import annotations

import glob
import os
import random

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fuzz.inputs import codec
from fuzz.inputs.codec import EncodeError, decode, encode
from kvmsim import Op, load_scenario, make_op
from kvmsim.checkout import ROOT
from kvmsim.scenario import (
    HOST_LEVELS,
    MAP_STATES,
    OP_SCHEMAS,
    PROTS,
    REMAPS,
    SIGNALS,
    PageSpec,
    PteSpec,
    Scenario,
    SlotSpec,
    VmaSpec,
    WorldSpec,
    validate,
)
from kvmsim.yamlsrc import ScenarioError

SEEDS = sorted(glob.glob(os.path.join(ROOT, "corpus", "seeds", "*.yaml")))


@pytest.mark.parametrize("path", SEEDS, ids=os.path.basename)
def test_every_seed_round_trips(path):
    sc = load_scenario(path)
    assert decode(encode(sc)) == sc


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_decode_to_a_valid_bounded_scenario(data):
    sc = decode(data)
    validate(sc)
    w = sc.world
    assert len(sc.ops) <= codec.MAX_OPS
    assert len(w.vmas) <= codec.MAX_VMAS and len(w.memslots) <= codec.MAX_SLOTS and len(w.pages) <= codec.MAX_PAGES
    assert decode(data) == sc                          # deterministic


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_decoded_scenarios_round_trip(data):
    sc = decode(data)
    assert decode(encode(sc)) == sc


def _op(op_kind: str, args: dict) -> Op:
    """Like make_op, but also for ops with a field called 'kind' (signal)."""
    return Op(op_kind, {f.name: args.get(f.name, f.default) for f in OP_SCHEMAS[op_kind]})


NAMES = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12)


@st.composite
def scenarios(draw) -> Scenario:
    """Scenarios written by hand would look like this: named things, explicit values."""
    w = WorldSpec(allow_unsafe_mappings=draw(st.booleans()), async_pf=draw(st.booleans()),
                  guest_mode=draw(st.booleans()), smm=draw(st.booleans()), apicv=draw(st.booleans()),
                  signal=draw(st.sampled_from(SIGNALS)), mmap_lock_contended=draw(st.booleans()),
                  seq_bits=draw(st.sampled_from([32, 64])))
    w.seq = draw(st.integers(0, (1 << w.seq_bits) - 1))
    pnames = draw(st.lists(NAMES.filter(lambda n: n != "zero"), max_size=3, unique=True))
    w.pages = [PageSpec(n, draw(st.sampled_from(codec.DECLARED_KINDS)),
                        draw(st.one_of(st.none(), st.integers(0x100, (1 << 40) - 1))), draw(st.booleans()))
               for n in pnames]
    vnames = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    for i, n in enumerate(vnames):
        v = VmaSpec(n, draw(st.integers(1, 20)), None, draw(st.sampled_from(PROTS)), draw(st.booleans()),
                    draw(st.sampled_from(REMAPS)), draw(st.sampled_from(HOST_LEVELS)),
                    draw(st.sampled_from(MAP_STATES)), frames=draw(st.sampled_from(codec.DECLARED_KINDS)))
        if draw(st.booleans()):
            v.start = (0x10 + i * 0x1000) << 21
        for _ in range(draw(st.integers(0, 2))):
            idx = draw(st.integers(0, v.pages - 1))
            if v.remap in ("pfnmap", "io"):
                v.ptes[idx] = PteSpec(draw(st.one_of(st.none(), st.sampled_from(pnames))) if pnames else None,
                                      draw(st.booleans()), draw(st.booleans()),
                                      draw(st.sampled_from(("populates", "fails"))))
            else:
                v.page_states[idx] = (draw(st.sampled_from(MAP_STATES)), None)
        w.vmas.append(v)
    for sid in range(draw(st.integers(0, 3))):
        v = draw(st.sampled_from(w.vmas))
        w.memslots.append(SlotSpec(sid, 0x100 * (sid + 1), draw(st.integers(1, v.pages)), v.name,
                                   readonly=draw(st.booleans()), log_dirty=draw(st.booleans())))
    ops = []
    handles: list[str] = []
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(st.sampled_from(["lookup", "gfn_to_page", "vcpu_map", "vcpu_unmap", "x86_fault", "access",
                                     "madvise", "mprotect", "signal", "invalidate_begin", "vcpu_state", "pte"]))
        if kind == "vcpu_unmap":
            if not handles:
                continue
            ops.append(make_op(kind, handle=handles.pop(), dirty=draw(st.booleans())))
            continue
        args = {}
        for f in OP_SCHEMAS[kind]:
            if f.name == "gfn":
                args["gfn"] = draw(st.integers(0, 0x500))
            elif f.name == "gpa":
                args["gpa"] = draw(st.integers(0, 0x500FFF))
            elif f.name == "vma":
                args["vma"] = draw(st.sampled_from(vnames))
            elif f.name == "handle":
                h = draw(NAMES)
                assume(h not in handles)
                handles.append(h)
                args["handle"] = h
            elif f.type == "bool":
                args[f.name] = draw(st.booleans())
            elif f.type == "optbool":
                args[f.name] = draw(st.sampled_from([None, False, True]))
            elif f.type == "optint":
                args[f.name] = draw(st.one_of(st.none(), st.integers(0, 1 << 40)))
            elif f.type == "enum":
                args[f.name] = draw(st.sampled_from(f.choices))
            elif f.name in ("page", "count"):
                args[f.name] = draw(st.integers(0, 1))
            elif f.type == "int":
                args[f.name] = draw(st.integers(0, 1 << 20))
        ops.append(_op(kind, args))
    sc = Scenario(w, ops, name=draw(st.text(max_size=20)), description=draw(st.text(max_size=40)))
    try:
        validate(sc)
    except ScenarioError:
        assume(False)
    return sc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(scenarios())
def test_generated_scenarios_round_trip(sc):
    assert decode(encode(sc)) == sc


def test_unknown_opcodes_are_skipped_and_versions_tolerated():
    sc = load_scenario(SEEDS[0])
    data = encode(sc)
    assert 0x41 not in codec.OP_LAYOUTS and 0x05 not in codec._RECORDS
    # an opcode from a future version in the middle of the stream is skipped (one byte)
    body = codec.strip_names(data)
    world_end = body.index(bytes([0x40]))
    assert decode(body[:world_end] + bytes([0x41]) + body[world_end:]) == decode(body)
    assert decode(bytes([99]) + data[1:]) == sc           # an unknown version reads as the current one


def test_names_never_come_from_mutated_bytes():
    sc = load_scenario(os.path.join(os.path.dirname(SEEDS[0]), "d19-reserved-page-leak.yaml"))
    data = encode(sc)
    assert decode(data) == sc and decode(data).name == sc.name and decode(data).description == sc.description
    dw = codec.default_world()
    derived = {p.name for p in dw.pages} | {v.name for v in dw.vmas}       # the built-in world's names
    for i in range(1, len(data)):                         # any one changed byte: derived names only
        m = bytearray(data)
        m[i] ^= 0x5A
        d = decode(bytes(m))
        assert not d.name and not d.description
        assert all(p.name.startswith("page") or p.name in derived for p in d.world.pages)
        assert all(v.name.startswith("vma") or v.name in derived for v in d.world.vmas)
    # a name spliced into a record's body is ignored too
    body = codec.strip_names(data)
    page = body.index(bytes([codec.OP_PAGE, 0]))
    spliced = body[:page + 1] + bytes([5]) + b"8)\x03r" + body[page + 2:]
    assert all(p.name.startswith("page") for p in decode(spliced).world.pages)


def test_version_1_bytes_still_decode_with_their_names():
    # an old corpus entry: names inside the records, scenario name in OP_META
    old = (bytes([1, codec.OP_META, 4]) + b"seed"
           + bytes([0, codec.OP_VMA, 3]) + b"ram" + bytes([2, 0, 0, 0, 0, 0, 0, 0])
           + bytes([codec.OP_VMA, 3]) + b"\x03\xff\xfe" + bytes([1, 0, 0, 0, 0, 0, 0, 0]))
    sc = decode(old)
    assert sc.name == "seed" and [v.name for v in sc.world.vmas] == ["ram", "vma1"]   # garbage name: derived


def test_every_op_kind_has_an_opcode_whose_layout_covers_its_schema():
    for kind, schema in OP_SCHEMAS.items():
        code = codec.ENCODE_OPCODE[kind]
        assert {f.name for f in schema} <= set(codec.OP_LAYOUTS[code][1]), kind


def test_opcodes_leave_gaps():
    codes = sorted([*codec.OP_LAYOUTS, *codec._RECORDS])
    assert all(b - a >= 2 or a < 0x04 for a, b in zip(codes, codes[1:]))
    assert max(codec._RECORDS) < codec._FIRST_OP <= min(codec.OP_LAYOUTS)     # world records, then ops


def test_empty_stream_uses_the_default_world_and_empty_marker_keeps_it_empty():
    assert decode(b"").world == codec.default_world()
    empty = Scenario(WorldSpec(), [_op("signal", {"kind": "fatal"})])
    assert decode(encode(empty)) == empty


def test_too_large_scenarios_are_refused():
    sc = load_scenario(SEEDS[0])
    sc.ops = [make_op("invalidate_end")] * (codec.MAX_OPS + 1)
    with pytest.raises(EncodeError):
        encode(sc)


def test_invalid_utf8_names_stay_within_the_bounds_when_re_encoded():
    data = (b"\x00\x08\x1d" + b"\x00" * 11 + b"\x80" * 18)
    sc = decode(data)
    assert decode(encode(sc)) == sc


def _mutants(n: int, seed: int) -> list[bytes]:
    """Seeds with a few bytes changed, inserted or deleted: inputs that share parts of a world."""
    rng = random.Random(seed)
    seeds = [encode(load_scenario(p)) for p in SEEDS]
    out = []
    for _ in range(n):
        m = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(m))
            k = rng.randrange(3)
            if k == 0:
                m[pos] = rng.randrange(256)
            elif k == 1:
                m.insert(pos, rng.randrange(256))
            else:
                del m[pos]
        out.append(bytes(m))
    return out


def test_a_structure_determines_the_pages_vmas_and_memslots():
    """``Parsed._structure`` keys the cache of worlds that passed validation: inputs with one
    structure (but other settings, names or ops) must build worlds with equal pages, VMAs and memslots."""
    seen: dict[tuple, tuple[str, str]] = {}
    shared = 0
    for data in _mutants(3000, 7):
        p = codec.parse(data)
        structure, sc = p._structure(), p.scenario()
        w = sc.world
        got = repr((w.pages, w.vmas, w.memslots)), repr((w.seq, w.signal, sc.ops))
        if structure in seen:
            assert seen[structure][0] == got[0]
            shared += seen[structure][1] != got[1]
        seen.setdefault(structure, got)
    assert shared > 100                         # the structure was shared by scenarios that differ


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_the_valid_worlds_cache_changes_no_decoding(inputs):
    codec._VALID_WORLDS.clear()
    cold = [repr(decode(d)) for d in inputs]    # each world checked (and remembered) ...
    assert [repr(decode(d)) for d in inputs] == cold     # ... or not checked again: the same scenarios


@pytest.mark.parametrize("cache,size", [("_VALID_WORLDS", "VALID_WORLDS_SIZE"),
                                        ("_OPS_BY_RECORD", "OPS_BY_RECORD_SIZE")])
def test_the_decoding_caches_are_bounded(monkeypatch, cache, size):
    """The valid-worlds set and the ops shared by record bytes never hold more than their bound."""
    monkeypatch.setattr(codec, size, 5)
    held = getattr(codec, cache)
    held.clear()
    for data in _mutants(50, 3):
        decode(data)
        assert len(held) <= 5
    assert held


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=48), st.integers(0, 48), st.integers(1, 12))
def test_varints_read_as_varint_does(data, start, k):
    """``_Reader.varints`` (a slice, or one regex match) gives what ``varint`` gives k times, the end of
    the input included (a continuation byte there ends the varint)."""
    start = min(start, len(data))
    bulk = codec._Reader(data)
    got = list(bulk.varints(start, k))
    one = codec._Reader(data)
    one.pos = start
    assert got == [one.varint() for _ in range(k)] and bulk.pos == one.pos


def _world_record(mask: int, signal: int, seq: int) -> bytes:
    return bytes([codec.OP_WORLD, mask, signal, seq])


def test_inputs_with_one_key_decode_to_equal_scenarios():
    """The checker remembers a judgement by ``Parsed.key``: inputs that share a key must decode to
    equal scenarios (a part of the input left out of the key would pair different ones)."""
    rng = random.Random(11)
    inputs = _mutants(3000, 11)
    for data in inputs[:1000]:                  # world records anywhere, some of them superseded
        pos = rng.randrange(1, len(data) + 1)
        rec = _world_record(rng.randrange(256) & 0x7F, rng.randrange(4), rng.randrange(128))
        inputs.append(data[:pos] + rec + data[pos:])
    seen: dict[tuple, tuple[str, bytes]] = {}
    shared = 0
    for data in inputs:
        p = codec.parse(data)
        got = repr(p.scenario())
        if p.key in seen:
            assert seen[p.key][0] == got
            shared += seen[p.key][1] != data
        seen.setdefault(p.key, (got, data))
    assert shared > 100


def test_records_that_decide_nothing_stay_out_of_the_key():
    """A superseded world record, a version-2 META record and a repeated EMPTY_WORLD marker change
    neither the scenario nor the key; the last world record's values do."""
    body = codec.strip_names(encode(load_scenario(SEEDS[0])))
    first = body.index(bytes([0x40]))
    plain = body[:first] + _world_record(3, 1, 5) + body[first:]
    extra = (body[:first] + _world_record(0x7F, 2, 9) + bytes([codec.OP_META, 2]) + b"hi" + bytes([0])
             + _world_record(3, 1, 5) + body[first:])
    assert codec.parse(extra).key == codec.parse(plain).key and decode(extra) == decode(plain)
    for other in (_world_record(2, 1, 5), _world_record(3, 2, 5), _world_record(3, 1, 6)):
        changed = body[:first] + other + body[first:]
        assert codec.parse(changed).key != codec.parse(plain).key and decode(changed) != decode(plain)
    empty = bytes([codec.VERSION, codec.OP_EMPTY_WORLD, 0x9C, 1])
    twice = bytes([codec.VERSION, codec.OP_EMPTY_WORLD, codec.OP_EMPTY_WORLD, 0x9C, 1])
    assert codec.parse(empty).key == codec.parse(twice).key and decode(empty) == decode(twice)


def test_ops_shared_by_record_change_no_decoding():
    """``_OPS_BY_RECORD`` keys an op by its record's bytes: an op built from other inputs must equal
    the one built afresh (an op whose record names a VMA, map or handle is never shared)."""
    inputs = _mutants(1500, 5)
    cold = []
    for data in inputs:
        codec._OPS_BY_RECORD.clear()
        cold.append(repr(decode(data)))
    assert [repr(decode(data)) for data in inputs] == cold
    assert codec._OPS_BY_RECORD
