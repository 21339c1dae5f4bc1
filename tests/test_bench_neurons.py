"""benchmarks/neurons.py: the round-by-round ratio to the roofline."""

import pytest
from repo_scripts import load_script

bench = load_script("benchmarks/neurons.py", "bench_neurons")


def test_paired_ratios_follow_each_round_not_the_drift():
    # the machine slows down over the run: both contenders' times grow, each round's ratio stays 2
    roof = [1.0, 1.0, 1.0, 1.5, 1.5, 1.5, 1.5]
    ours = [2.0 * r for r in roof]
    ours[0] = 2.6                                          # one slow call of the op
    paired = bench._paired_ratios(ours, roof)
    assert paired["median"] == pytest.approx(2.0)
    assert paired["q1"] == pytest.approx(2.0) and paired["q3"] >= 2.0


def test_paired_ratios_pair_calls_of_one_round():
    ours, roof = [1.0, 10.0, 4.0], [1.0, 2.0, 8.0]         # rounds' ratios 1, 5 and 0.5
    assert bench._paired_ratios(ours, roof)["median"] == pytest.approx(1.0)
    assert sorted(ours)[1] / sorted(roof)[1] == pytest.approx(2.0)    # the medians' ratio
