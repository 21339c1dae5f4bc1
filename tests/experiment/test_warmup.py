"""Kernel warm-ups of parallel runs: which fused ops a model calls, one warm-up per op, runs that wait."""

import torch

from neurostep.experiment import load_config, run_experiment
from neurostep.experiment.backbone import build_backbone
from neurostep.experiment.runner import read_plan
from neurostep.experiment.tasks import build_task
from neurostep.experiment.warmup import WarmUp, fused_ops, plan_warm_ups, take_ready

BACKBONE = {"dim": 16, "depth": 1, "num_heads": 2, "mlp_ratio": 1.0, "norm": "layernorm"}


def _model(block):
    task = build_task("selective_copy", {"seq_len": 16, "num_tokens": 2, "vocab": 8})
    return build_backbone(block, task, BACKBONE), task.x_test[:2]


def test_fused_ops_are_found_on_the_meta_device_without_touching_the_model():
    model, x = _model("mamba")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert fused_ops(model, x) == {"selective_scan", "causal_conv1d"}
    assert fused_ops(*_model("rwkv_timemix")) == {"wkv"}
    assert fused_ops(*_model("softmax_attention")) == frozenset()
    after = model.state_dict()
    assert all(after[k].device.type == "cpu" and torch.equal(after[k], v) for k, v in before.items())


def test_each_op_warms_up_once_in_the_first_model_that_calls_it():
    calls = {("mamba", "sc"): frozenset({"selective_scan", "causal_conv1d"}),
             ("attn", "sc"): frozenset(),
             ("mamba_lti", "sc"): frozenset({"causal_conv1d"}),
             ("spikegpt", "digits"): frozenset({"lif", "wkv", "causal_conv1d"}),
             ("spikformer", "digits"): frozenset({"lif"})}
    assert plan_warm_ups(calls) == [
        WarmUp("mamba", "sc", frozenset({"selective_scan", "causal_conv1d"}), frozenset()),
        WarmUp("spikegpt", "digits", frozenset({"lif", "wkv"}), frozenset({"causal_conv1d"})),
    ]


def test_a_job_waits_while_an_op_it_calls_warms_up():
    scan = WarmUp("mamba", "sc", frozenset({"selective_scan"}), frozenset())
    lif = WarmUp("spikformer", "digits", frozenset({"lif"}), frozenset())
    jobs = [(scan.needs, scan), (lif.needs, lif), (frozenset({"selective_scan"}), "mamba run"),
            (frozenset(), "attention run"), (frozenset({"lif"}), "spikformer run")]
    warming: set[str] = set()
    assert take_ready(jobs, warming, 2) == [scan, lif]
    assert warming == {"selective_scan", "lif"}
    assert take_ready(jobs, warming, 1) == ["attention run"]        # the mamba run waits for its kernels
    warming -= lif.ops
    assert take_ready(jobs, warming, 5) == ["spikformer run"]
    warming -= scan.ops
    assert take_ready(jobs, warming, 5) == ["mamba run"] and jobs == []


def test_parallel_runs_warm_up_their_kernels_first(make_toml):
    cfg = load_config(make_toml(name="warm", seeds="[0, 1]", blocks='["rwkv_timemix", "softmax_attention"]'))
    cfg.workers = 2
    lines: list[str] = []
    run_experiment(cfg, log=lines.append, report=False)
    warm = [i for i, line in enumerate(lines) if line.startswith("kernels wkv ready (rwkv_timemix / digits")]
    runs = [i for i, line in enumerate(lines) if "rwkv_timemix / digits / seed" in line]
    assert len(warm) == 1 and len(runs) == 2 and warm[0] < min(runs)
    # the warm-up's time (the compile time on a cold cache) is kept with the session, for the report
    (record,) = read_plan(cfg.run_dir)["session"]["warm_ups"]
    assert record["ops"] == ["wkv"] and (record["block"], record["task"]) == ("rwkv_timemix", "digits")
    assert record["seconds"] > 0
