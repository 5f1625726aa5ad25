"""fuzz.campaigns.progress: a bar with counts and ETA on a terminal, one line per stage otherwise."""

import io

from fuzz.campaigns.progress import Stage


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_shows_a_bar_with_counts_and_eta(monkeypatch):
    monkeypatch.delenv("PFNDIFF_PROGRESS")
    out = _Tty()
    with Stage("triage: re-running artifacts", 4, stream=out) as st:
        st.advance(note="crash-1")
        st._drawn = 0.0                      # redraws are rate-limited; force this one
        st.advance()
    text = out.getvalue()
    frames = [f for f in text.split("\r") if f]
    assert any("2/4" in f and "50%" in f and "ETA" in f for f in frames), frames
    assert text.endswith("\n") and "4/4" not in text and "[" in text and "#" in text


def test_not_a_terminal_one_line_per_stage(monkeypatch):
    monkeypatch.delenv("PFNDIFF_PROGRESS")
    out = io.StringIO()
    with Stage("minimise", None, "checks", stream=out) as st:
        for _ in range(7):
            st.advance()
    with Stage("report", 2, stream=out) as st:
        st.advance()
        st.advance()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in out.getvalue()
    assert lines[0].startswith("minimise: 7 checks in ") and lines[1].startswith("report: 2/2 in ")


def test_silenced(monkeypatch):
    monkeypatch.setenv("PFNDIFF_PROGRESS", "0")
    out = _Tty()
    with Stage("x", 3, stream=out) as st:
        st.advance()
    assert out.getvalue() == ""


def test_long_commands_report_their_stages_on_stderr(monkeypatch, capsys, tmp_path):
    import os

    from fuzz.cli import main
    from fuzz.corpus.seeds import SEEDS
    monkeypatch.delenv("PFNDIFF_PROGRESS")
    assert main(["corpus", "build", "--out", str(tmp_path / "built")]) == 0     # a fresh clone has none
    capsys.readouterr()
    corpus = str(tmp_path / "built" / "diff")
    assert main(["corpus", "stats", corpus]) == 0
    cap = capsys.readouterr()
    n = len(os.listdir(corpus))
    assert cap.err.splitlines() == [ln for ln in cap.err.splitlines() if ln.startswith("corpus stats: ")]
    assert cap.err.startswith(f"corpus stats: running every generation: {n}/{n} input(s) in ")
    assert "corpus stats" not in cap.out                      # stdout stays the result
    seed = os.path.join(SEEDS, "d05-remapped-refcount0.yaml")
    assert main(["minimize", seed, "-o", str(tmp_path / "m")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("minimize: checking candidates: ") and " checks in " in err[0]
