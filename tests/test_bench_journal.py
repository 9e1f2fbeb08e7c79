"""The benchmark journal: an interrupted run resumes with the figures it already has."""

from benchmarks.journal import Journal


def test_figures_survive_a_restart_and_read_back_alike(tmp_path):
    path = tmp_path / "journal.jsonl"
    first = Journal(path, "python -m benchmarks.run --quick", "abc1234")
    fresh = first.put("full primitives", {"by_workers": {1: 10.0, 2: 19.5}})
    calls = []
    again = Journal(path, "second run")
    resumed = again.measure("full primitives", lambda: calls.append(1))
    assert calls == []
    # a fresh figure and a resumed one have the same types, int keys included
    assert fresh == resumed == {"by_workers": {"1": 10.0, "2": 19.5}}
    # the report names the command and the code that measured each resumed figure
    assert list(again.provenance(again.resumed)) == ["`python -m benchmarks.run --quick` at abc1234"]


def test_a_line_cut_short_by_a_kill_is_measured_again(tmp_path):
    path = tmp_path / "journal.jsonl"
    Journal(path, "first run").put("row a 1 2", {"wall_s": 1.0})
    with path.open("a") as out:
        out.write('{"key": "row b 1 2", "at": "2026-01-01T00:00:00+00:00", "by": "first run", "val')
    journal = Journal(path, "second run")
    assert journal.get("row a 1 2") == {"wall_s": 1.0}
    assert list(journal.provenance(journal.resumed)) == ["`first run`"]  # no commit recorded
    assert journal.measure("row b 1 2", lambda: {"wall_s": 2.0}) == {"wall_s": 2.0}
    assert Journal(path, "third run").get("row b 1 2") == {"wall_s": 2.0}


def test_without_a_file_nothing_is_written(tmp_path):
    journal = Journal(None, "a run")
    assert journal.put("load", [1, 2]) == [1, 2]
    assert journal.get("load") == [1, 2]
    assert list(tmp_path.iterdir()) == []
