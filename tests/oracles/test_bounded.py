"""The checker's and the judge's memos keep a bounded number of entries, oldest out first."""

from oracles.bounded import BoundedMemo


def test_a_bounded_memo_keeps_its_last_entries_first_in_first_out():
    m: BoundedMemo[int, str] = BoundedMemo(3)
    for i in range(5):
        assert m.put(i, str(i)) == str(i)
    assert list(m.items()) == [(2, "2"), (3, "3"), (4, "4")]
    m.put(2, "again")                       # a key put again keeps its place in the order, evicts nothing
    assert list(m.items()) == [(2, "again"), (3, "3"), (4, "4")]
    m.put(5, "5")
    assert list(m) == [3, 4, 5]
