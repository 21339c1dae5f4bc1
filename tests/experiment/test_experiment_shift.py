import pytest

from neurostep.experiment import load_config, run_experiment
from neurostep.experiment.results import ResultStore


def test_concept_shift_experiment_and_report(tmp_path):
    toml = tmp_path / "cs.toml"
    toml.write_text(f"""
[experiment]
name = "cs"
kind = "concept_shift"
seeds = [0, 1]
out_dir = "{(tmp_path / 'runs').as_posix()}"
[concept_shift]
epochs = 2
test_fraction = 0.9
swaps_per_epoch = [0, 4]
""")
    run_dir = run_experiment(load_config(toml), log=lambda s: None)
    recs = ResultStore(run_dir).load()
    assert len(recs) == 12
    by = {(r["block"], r["task"], r["seed"]): r for r in recs}
    assert by[("constant", "swaps_0", 0)]["final_eta"] == pytest.approx(0.01)
    assert by[("homeostatic", "swaps_4", 1)]["swaps"] == 8
    assert all(len(r["test_curve"]) == 2 and 0.0 <= r["metric"] <= 1.0 for r in recs)
    # One score per label-mapping segment, each taken under the mapping that segment trained on.
    assert by[("constant", "swaps_4", 0)]["segments"] == 8 and by[("constant", "swaps_0", 0)]["segments"] == 2
    # Paired design: same seed and rate -> same swaps for every learner, and same start.
    assert by[("random", "swaps_4", 0)]["swaps"] == by[("constant", "swaps_4", 0)]["swaps"]
    text = (run_dir / "report.md").read_text()
    assert "Homeostatic advantage" in text and "Does the advantage grow with the shift rate?" in text
    for png in ("accuracy_over_time.png", "learning_rates.png", "advantage_vs_shift_rate.png"):
        assert (run_dir / png).stat().st_size > 1000
