import csv
import json

import pytest

from neurostep.experiment.results import ResultStore


def _rec(block, seed, **extra):
    return {"block": block, "task": "t", "seed": seed, "config_hash": "abc", **extra}


def test_append_load_and_csv(tmp_path):
    store = ResultStore(tmp_path / "exp")
    store.append(_rec("a", 0, metric=0.5, spike_rates={"l1": 0.1}))
    store.append(_rec("b", 1, metric=float("nan"), latency_ms=2.0))
    recs = store.load()
    assert [r["block"] for r in recs] == ["a", "b"] and recs[1]["metric"] is None
    assert store.done_keys() == {("a", "t", 0, "abc"), ("b", "t", 1, "abc")}
    rows = list(csv.DictReader(store.csv.open()))
    assert rows[0]["block"] == "a" and json.loads(rows[0]["spike_rates"]) == {"l1": 0.1}
    assert "latency_ms" in rows[0] and rows[1]["latency_ms"] == "2.0"
    assert not list(tmp_path.glob("exp/.*tmp"))


def test_torn_last_line_is_ignored_and_repaired(tmp_path):
    store = ResultStore(tmp_path)
    store.append(_rec("a", 0))
    with store.jsonl.open("a") as fh:          # a process killed inside its write
        fh.write('{"block": "b", "task"')
    assert [r["block"] for r in store.load()] == ["a"]
    store.append(_rec("c", 0))
    assert [r["block"] for r in store.load()] == ["a", "c"]
    assert store.jsonl.read_text().count("\n") == 2


def test_corrupt_middle_line_raises_and_key_required(tmp_path):
    store = ResultStore(tmp_path)
    store.jsonl.write_text('{"block": "a", "task": "t", "seed": 0, "config_hash": "x"}\nnot json\n{}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        store.load()
    with pytest.raises(ValueError, match="lacks key field 'seed'"):
        ResultStore(tmp_path / "other").append({"block": "a", "task": "t", "config_hash": "x"})
