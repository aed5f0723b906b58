"""The mutation tool's own promises (tests/mutation.py), on files in a temporary folder: a break whose code is
gone is a failure, a mutated file comes back (content and modification time) whatever happens, a killed run's
journal is replayed, and the generated mutants are the edits they say they are."""

from __future__ import annotations

import os
import pathlib

import mutation
import pytest
import yaml
from mutation_ast import generate

SOURCE = '''"""A module."""


def scaled(x, rate):
    """Docstring with 1 number."""
    keep = 1.0 - rate
    if rate == 0.0:
        return x
    return tf.reduce_sum(x, axis=-1) / keep * f"{rate * 2}"
'''


@pytest.fixture
def tree(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    monkeypatch.setattr(mutation, "ROOT", tmp_path)
    monkeypatch.setattr(mutation, "JOURNAL", tmp_path / ".mutation-journal.json")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(SOURCE)
    return tmp_path


def test_a_break_whose_code_is_gone_or_doubled_is_reported(tree: pathlib.Path) -> None:
    applies = mutation.Break("fine", "pkg/mod.py", "keep = 1.0 - rate", "keep = 1.0", ("t",))
    assert mutation.check_break(applies) is None
    gone = mutation.Break("gone", "pkg/mod.py", "keep = 1 - rate", "keep = 1", ("t",))
    assert mutation.check_break(gone) == "break gone no longer applies: its code is not in pkg/mod.py; update it"
    doubled = mutation.Break("doubled", "pkg/mod.py", "rate", "r", ("t",))
    assert "is ambiguous" in mutation.check_break(doubled)
    moved = mutation.Break("moved", "pkg/other.py", "x", "y", ("t",))
    assert "no longer applies: pkg/other.py does not exist" in mutation.check_break(moved)


def test_the_file_comes_back_after_an_error_with_its_modification_time(tree: pathlib.Path) -> None:
    path = tree / "pkg" / "mod.py"
    os.utime(path, ns=(1_000_000_000_000, 1_000_000_000_000))
    with pytest.raises(KeyboardInterrupt), mutation.Mutated("pkg/mod.py", b"broken = True\n"):
        assert path.read_bytes() == b"broken = True\n"
        assert path.stat().st_mtime_ns != 1_000_000_000_000  # never mistaken for the original's .pyc
        assert mutation.JOURNAL.exists()
        raise KeyboardInterrupt
    assert path.read_text() == SOURCE and path.stat().st_mtime_ns == 1_000_000_000_000
    assert not mutation.JOURNAL.exists()


def test_a_killed_run_is_undone_by_the_next_one(tree: pathlib.Path) -> None:
    path = tree / "pkg" / "mod.py"
    mutated = mutation.Mutated("pkg/mod.py", b"broken = True\n")
    mutated.__enter__()  # ... and the process dies here (kill -9): no __exit__
    assert path.read_bytes() == b"broken = True\n"
    assert mutation.recover() == ["pkg/mod.py"]
    assert path.read_text() == SOURCE and not mutation.JOURNAL.exists()
    assert mutation.recover() == []


def test_generated_mutants_are_small_edits_with_stable_ids() -> None:
    mutants, missing = generate(SOURCE.encode(), "pkg/mod.py", ["scaled", "absent"])
    assert missing == ["absent"]
    edits = {(m.original, m.replacement): m for m in mutants}
    # The docstring, the f-string (and the product with it) and the axis are left alone.
    assert set(edits) == {("1.0", "2.0"), ("-", "+"), ("==", "!="), ("0.0", "1.0"), ("tf.reduce_sum", "tf.reduce_mean"),
                          ("/", "*")}
    minus = edits[("-", "+")]
    assert minus.id == "pkg/mod.py::scaled::- -> +#1" and minus.line == 6
    assert minus.apply(SOURCE.encode()).decode().splitlines()[5] == "    keep = 1.0 + rate"
    assert edits[("/", "*")].describe(SOURCE.encode()) == 'line 9: return tf.reduce_sum(x, axis=-1) * keep * f"{rate * 2}"'
    # Ids do not move with the code above them.
    shifted, _ = generate(("# a comment\n\n" + SOURCE).encode(), "pkg/mod.py", ["scaled"])
    assert [m.id for m in shifted] == [m.id for m in mutants]


def test_the_shipped_breaks_apply_to_today_s_code() -> None:
    """Every named break of tests/mutation_breaks.yaml finds its code exactly once (CI runs them all)."""
    breaks, targets, equivalent = mutation.load_spec()
    assert len(breaks) >= 15 and all(b.tests for b in breaks)
    assert [problem for b in breaks if (problem := mutation.check_break(b))] == []
    generated = set()
    for target in targets:
        mutants, missing = generate((mutation.ROOT / target.file).read_bytes(), target.file, list(target.functions))
        assert not missing, (target.file, missing)
        generated |= {m.id for m in mutants}
    assert sorted(set(equivalent) - generated) == []  # each listed equivalent mutant names one that is generated
    # Every listed test still exists under its name (a renamed one would otherwise show only in CI's named run).
    for test in {t for item in [*breaks, *targets] for t in item.tests}:
        file, _, name = test.partition("::")
        assert (mutation.ROOT / file).is_file(), test
        assert not name or f"def {name.split('::')[-1].split('[')[0]}(" in (mutation.ROOT / file).read_text(), test
    spec = yaml.safe_load(mutation.SPEC.read_text())
    assert {b["name"] for b in spec["breaks"]} == {b.name for b in breaks} and isinstance(equivalent, dict)
