import math

import pytest

from neurostep.experiment.report import mean_ci, pareto_front, write_report
from neurostep.experiment.results import ResultStore


def test_mean_ci_matches_t_interval():
    m, h = mean_ci([1.0, 2.0, 3.0])
    # t_{0.975, 2} = 4.302653; sd = 1; n = 3
    assert m == pytest.approx(2.0) and h == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    m, h = mean_ci([0.7])
    assert m == 0.7 and math.isnan(h)


def test_pareto_front():
    costs = [1.0, 2.0, 3.0, 2.5]
    scores = [0.5, 0.8, 0.9, 0.7]          # point 3 is dominated by point 1
    assert pareto_front(costs, scores) == [0, 1, 2]
    assert pareto_front(costs, [3.0, 2.0, 1.0, 2.5], higher_is_better=False) == [0, 1, 2]
    assert pareto_front(costs, [1.0, 2.0, 3.0, 2.5], higher_is_better=False) == [0]


def test_mixer_report_tables_and_plots(tmp_path):
    store = ResultStore(tmp_path)
    for block, acc, energy, rates in (("attn", 0.9, 2.0, {}), ("ssa", 0.8, 0.5, {"blocks.0.mixer.lif": 0.12}),
                                      ("slow", 0.7, 3.0, {})):
        for seed in (0, 1):
            store.append({"experiment": "x", "block": block, "task": "digits", "seed": seed, "config_hash": "h",
                          "metric_name": "accuracy", "metric": acc + 0.01 * seed, "params": 100, "macs": 1e4,
                          "acs": 10.0, "energy_uj": energy, "spike_rate": 0.12 if rates else None,
                          "spike_rates": rates, "latency_ms": energy, "throughput_sps": 1000.0, "train_time_s": 1.0})
    path = write_report(tmp_path)
    text = path.read_text()
    assert "| attn | 0.9050 ± 0.0635 | 2 |" in text
    assert "Pareto front (energy): ssa, attn" in text
    for png in ("digits_accuracy_vs_energy.png", "digits_accuracy_vs_latency.png", "digits_spike_rates.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_report_without_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results"):
        write_report(tmp_path)
