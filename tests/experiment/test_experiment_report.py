import json
import math

import pytest

from neurostep.experiment.findings import FINDINGS, Finding, judge
from neurostep.experiment.report import dedupe, known_results, mean_ci, mixer_rows, pareto_front, write_report
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


def _rec(block, seed, metric, config_hash="h", task="digits", **extra):
    return {"experiment": "x", "block": block, "task": task, "seed": seed, "config_hash": config_hash,
            "metric_name": "accuracy", "metric": metric, "params": 100, "macs": 1e4, "acs": 10.0, "energy_uj": 2.0,
            "spike_rate": None, "spike_rates": {}, "latency_ms": 1.0, "throughput_sps": 1000.0,
            "train_time_s": 1.0, "chance": 0.1, "chance_loss": 2.3, "trained": True, **extra}


def test_duplicate_seeds_count_once_and_configs_never_mix():
    records = [_rec("a", 0, 0.5), _rec("a", 1, 0.7), _rec("a", 0, 0.6),      # seed 0 twice: the latest counts
               _rec("a", 0, 0.9, config_hash="g"), _rec("b", 0, 0.4)]
    groups = dedupe(records)
    assert sorted(groups) == [("digits", "a", "g"), ("digits", "a", "h"), ("digits", "b", "h")]
    assert [r["metric"] for r in groups[("digits", "a", "h")]] == [0.6, 0.7]
    rows = {r["label"]: r for r in mixer_rows(records, current={"h"})["digits"]}
    assert set(rows) == {"a [config h, current]", "a [config g, other]", "b"}
    a = rows["a [config h, current]"]
    assert a["seeds"] == 2 and a["metric"] == pytest.approx(0.65)
    assert rows["a [config g, other]"]["seeds"] == 1 and not rows["a [config g, other]"]["current"]


def test_duplicate_records_do_not_narrow_the_interval(tmp_path):
    store = ResultStore(tmp_path)
    for _ in range(2):                          # two runners wrote the same three seeds
        for seed, acc in enumerate((0.80, 0.90, 0.85)):
            store.append(_rec("attn", seed, acc))
    text = write_report(tmp_path).read_text()
    half = mean_ci([0.80, 0.90, 0.85])[1]
    assert f"| attn | {0.85:.4f} ± {half:.4f} | 3 |" in text


def test_findings_judged_on_current_rows():
    table = {"selective_copy": {"mamba": (0.95, 0.02, 3), "mamba_lti": (0.35, 0.05, 3),
                                "softmax_attention": (0.7, 0.1, 3)},
             "digits": {"softmax_attention": (0.96, 0.01, 3), "spikformer_ssa": (0.93, 0.01, 3),
                        "vim": (0.85, 0.02, 3)}}
    verdicts = {(v.finding.task, v.block, v.finding.reference): v for v in judge(FINDINGS, table)}
    assert verdicts[("selective_copy", "mamba", None)].reproduced
    lti = verdicts[("selective_copy", "mamba_lti", "mamba")]
    assert lti.reproduced and lti.robust and lti.mean == pytest.approx(-0.6)
    wide = judge(FINDINGS, {"selective_copy": {"mamba": (0.95, 0.02, 3), "mamba_lti": (0.6, 0.5, 3)}})
    assert [(v.reproduced, v.robust) for v in wide if v.block == "mamba_lti"] == [(True, False)]
    assert "interval crosses" in [v for v in wide if v.block == "mamba_lti"][0].label()
    assert not verdicts[("selective_copy", "softmax_attention", None)].reproduced
    bare = judge(FINDINGS, {"selective_copy": {"s4d": (0.25, 0.03, 3)}})
    assert [(v.block, v.reproduced, v.robust) for v in bare] == [("s4d", True, True)]
    assert not judge(FINDINGS, {"selective_copy": {"s4d": (0.45, 0.03, 3)}})[0].reproduced
    assert not verdicts[("digits", "vim", None)].reproduced             # "every block >= 0.9"
    ssa = verdicts[("digits", "spikformer_ssa", "softmax_attention")]
    assert ssa.mean == pytest.approx(-0.03) and ssa.reproduced
    assert ssa.half == pytest.approx(math.hypot(0.01, 0.01))
    assert ("mqar", "softmax_attention", None) not in verdicts          # not run: not judged
    recall = judge(FINDINGS, {"mqar": {"mamba": (0.27, 0.01, 3), "mamba2": (0.96, 0.05, 3)}})
    assert [(v.block, v.finding.reference, v.reproduced) for v in recall] == [("mamba2", "mamba", True)]
    assert not judge(FINDINGS, {"mqar": {"mamba": (0.80, 0.01, 3), "mamba2": (0.96, 0.05, 3)}})[0].reproduced
    assert Finding("c", "s", "p", "t", "b", "<=", 0.4).condition() == "accuracy <= 0.4"


def test_mixer_report_tables_plots_and_known_results(tmp_path):
    store = ResultStore(tmp_path)
    curve = [{"step": 10, "samples": 320, "train_loss": 1.0, "val_metric": 0.5, "val_loss": 1.0,
              "train_energy_uj": 100.0},
             {"step": 20, "samples": 640, "train_loss": 0.5, "val_metric": 0.9, "val_loss": 0.4,
              "train_energy_uj": 200.0}]
    for block, acc, energy, rates in (("softmax_attention", 0.95, 2.0, {}),
                                      ("spikformer_ssa", 0.93, 0.5, {"blocks.0.mixer.lif": 0.12}),
                                      ("vim", 0.7, 3.0, {})):
        for seed in (0, 1, 2):
            store.append(_rec(block, seed, acc + 0.01 * seed, energy_uj=energy, spike_rates=rates,
                              spike_rate=0.12 if rates else None, initial_spike_rate=0.05 if rates else None,
                              curve=curve, steps=20, stopped="budget", compile_time_s=1.5,
                              train_energy_uj=3 * energy))
    store.append(_rec("mamba_lti", 0, 0.1, trained=False))
    for seed, acc in ((0, 0.9), (1, 0.92), (2, 0.03)):   # one seed of three stayed at chance
        store.append(_rec("mamba", seed, acc, trained=seed != 2))
    (tmp_path / "plan.json").write_text(json.dumps({
        "experiment": "x", "source": "experiments/x.toml", "config_hashes": ["h"],
        "tasks": {"digits": {"task": "digits", "blocks": []}},
        "skipped": [{"block": "ninformer", "task": "mqar", "reason": "has no causal form"}],
        "session": {"started_at": "2026-01-01 10:00:00", "finished_at": "2026-01-01 10:05:00", "wall_s": 300.0,
                    "trained_runs": 10, "workers": 2,
                    "warm_ups": [{"ops": ["lif"], "block": "spikformer_ssa", "task": "digits", "seconds": 8.31}]}}))
    text = write_report(tmp_path).read_text()
    assert "Experiment file `experiments/x.toml`" in text
    assert "| 1 | softmax_attention | 0.9600 ± 0.0248 | 3 |" in text
    assert "| not trained | mamba_lti | 0.1000 | 1 (1 not trained) |" in text
    assert "| mamba | 0.6167 ± 1.2624 | 3 (1 not trained) |" in text   # ranked: two of its three seeds trained
    assert "- **ninformer** on mqar: has no causal form." in text
    assert "## Known results" in text and "| Every block learns an easy image task |" in text
    assert "| vim | accuracy >= 0.9 | 0.710 ± 0.025 | 3 | **not reproduced** |" in text
    assert "| softmax_attention | accuracy >= 0.9 | 0.960 ± 0.025 | 3 | reproduced |" in text
    assert "0.050 → 0.120" in text                       # spike rate at init and after training
    assert "## Kernel compile time" in text
    assert "| lif | spikformer_ssa / digits | 8.3 |" in text and "8.3 s of worker time" in text
    assert "| softmax_attention | 1.5 |" in text                   # each block's first pass in its runs
    assert "trained 10 runs with 2 worker(s) in 5.0 min" in text
    for png in ("digits_accuracy_vs_energy.png", "digits_accuracy_vs_latency.png", "digits_spike_rates.png",
                "digits_learning_curves.png"):
        assert (tmp_path / png).stat().st_size > 1000
    other = write_report(tmp_path, tmp_path / "elsewhere" / "r.md")
    assert other.exists() and (tmp_path / "elsewhere" / "digits_learning_curves.png").exists()


def test_report_names_the_devices_only_where_a_record_left_the_cpu(tmp_path):
    store = ResultStore(tmp_path)
    store.append(_rec("softmax_attention", 0, 0.9))                        # a record older than "device"
    store.append(_rec("softmax_attention", 1, 0.9, device="cpu", gpu=None))
    assert "Records by device" not in write_report(tmp_path).read_text()
    for seed in (2, 3):
        store.append(_rec("softmax_attention", seed, 0.9, device="cuda:0", gpu="NVIDIA H100 80GB HBM3"))
    text = write_report(tmp_path).read_text()
    assert "Records by device: 2 on cpu, 2 on cuda:0 (NVIDIA H100 80GB HBM3)." in text


def test_scaling_plot_for_a_sweep(tmp_path):
    store = ResultStore(tmp_path)
    for label, pairs in (("mqar_p4", 4), ("mqar_p8", 8)):
        for seed in (0, 1):
            store.append(_rec("softmax_attention", seed, 0.9, task=label,
                              config={"task_options": {"task": "mqar", "num_pairs": pairs, "seq_len": 64}}))
    text = write_report(tmp_path).read_text()
    assert "## Scaling: mqar against num_pairs" in text
    assert (tmp_path / "mqar_scaling_num_pairs.png").stat().st_size > 1000


def test_a_sweep_holds_only_tasks_trained_alike(tmp_path):
    """A task with a longer schedule at one of the lengths is not a point on the others' curve; two
    schedules that each sweep the length give two plots."""
    store = ResultStore(tmp_path)
    runs = (("len48", 48, 5000), ("len256", 256, 5000), ("len256_long", 256, 20000),
            ("len48_long", 48, 20000), ("len96_long", 96, 20000))
    for label, length, steps in runs:
        for seed in (0, 1):
            store.append(_rec("mamba", seed, 0.5, task=label,
                              config={"task_options": {"task": "selective_copy", "seq_len": length},
                                      "train": {"steps": steps}, "backbone": {"dim": 32}}))
    text = write_report(tmp_path).read_text()
    assert "Tasks len256, len48; where" in text
    assert "Tasks len256_long, len48_long, len96_long; where" in text
    assert text.count("## Scaling: selective_copy against seq_len") == 2
    assert (tmp_path / "selective_copy_scaling_seq_len.png").stat().st_size > 1000
    assert (tmp_path / "selective_copy_scaling_seq_len_2.png").stat().st_size > 1000


def test_a_sweep_is_plotted_at_the_swept_values(tmp_path, monkeypatch):
    """The scaling plot's x ticks are the values swept (2 and 4 pairs), not matplotlib's 2.25, 2.5, ..."""
    from neurostep.experiment import report

    ticks = {}
    save = report._save

    def capture(fig, out_dir, file):
        ticks[file] = [float(t) for t in fig.axes[0].get_xticks()]
        return save(fig, out_dir, file)

    monkeypatch.setattr(report, "_save", capture)
    store = ResultStore(tmp_path)
    for label, pairs in (("mqar", 4), ("mqar_pairs2", 2)):
        for seed in (0, 1):
            store.append(_rec("rwkv_timemix", seed, 0.5, task=label,
                              config={"task_options": {"task": "mqar", "num_pairs": pairs}}))
    write_report(tmp_path)
    assert ticks["mqar_scaling_num_pairs.png"] == [2.0, 4.0]


def test_a_sweep_over_a_list_valued_option_keeps_matplotlibs_ticks(tmp_path):
    """Values that are lists (or strings) are not ticks; the plot is drawn all the same."""
    store = ResultStore(tmp_path)
    for label, grid in (("digits", [2, 2]), ("digits_fine", [4, 4])):
        for seed in (0, 1):
            store.append(_rec("vim", seed, 0.9, task=label, config={"task_options": {"task": "digits", "grid": grid}}))
    assert "## Scaling: digits against grid" in write_report(tmp_path).read_text()


def test_report_without_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results"):
        write_report(tmp_path)


def test_known_results_follow_the_experiments_block_order(tmp_path):
    """Two runs that finished their runs in different orders give the same known-results table."""
    blocks = ["softmax_attention", "vim", "mamba", "spikformer_ssa"]
    plan = {"experiment": "x", "config_hashes": ["h"], "tasks": {"digits": {"task": "digits", "blocks": blocks}}}
    orders = []
    for finish in (blocks, blocks[::-1] + ["crate_mssa"]):
        run_dir = tmp_path / f"run{len(orders)}"
        store = ResultStore(run_dir)
        for block in finish:
            for seed in (0, 1, 2):
                store.append(_rec(block, seed, 0.95))
        (run_dir / "plan.json").write_text(json.dumps(plan))
        orders.append([v.block for v in known_results(run_dir) if v.finding.reference is None])
    assert orders[0] == blocks
    assert orders[1] == blocks + ["crate_mssa"]           # a block the plan does not list comes last


def test_selective_copy_section_shows_accuracy_per_copied_token(tmp_path):
    store = ResultStore(tmp_path)
    for seed, first in ((0, 0.9), (1, 0.7)):
        store.append(_rec("s4d", seed, 0.5, task="selective_copy", position_accuracy=[first, 0.2, 0.6]))
    store.append(_rec("mamba", 0, 0.9, task="selective_copy", position_accuracy=[1.0, 0.8, 0.9]))
    store.append(_rec("mamba", 1, 0.9, task="selective_copy"))        # an older record without them
    (tmp_path / "plan.json").write_text(json.dumps({
        "experiment": "x", "source": "experiments/x.toml", "config_hashes": ["h"],
        "tasks": {"selective_copy": {"task": "selective_copy", "blocks": ["mamba", "s4d"]}}, "skipped": []}))
    text = write_report(tmp_path).read_text()
    assert "| block | 1 | 2 | 3 |" in text
    assert "| s4d | 0.80 | 0.20 | 0.60 |" in text
    assert "| mamba |" not in text.split("Accuracy at each answer position")[1].split("\n\n")[1]


def test_learning_curves_plot_training_energy_only_where_it_was_measured(tmp_path):
    from matplotlib.image import imread

    def curve(energy):
        return [{"step": s, "samples": 32 * s, "train_loss": 1.0 / s, "val_metric": 0.1 * s,
                 **({"train_energy_uj": 10.0 * s} if energy else {})} for s in (1, 2, 3)]

    widths = {}
    for energy in (True, False):
        run_dir = tmp_path / str(energy)
        store = ResultStore(run_dir)
        for seed in (0, 1):
            store.append(_rec("mamba", seed, 0.3, curve=curve(energy)))
        write_report(run_dir)
        height, width = imread(run_dir / "digits_learning_curves.png").shape[:2]
        widths[energy] = width / height
    # against steps and against training energy; against steps alone (no empty energy panel)
    assert widths[True] == pytest.approx(11.0 / 4.0, rel=0.05) and widths[False] == pytest.approx(6.0 / 4.0, rel=0.05)
