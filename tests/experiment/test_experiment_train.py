import pytest
import torch
from torch import nn

from neurostep.experiment import build_task, load_config, run_experiment
from neurostep.experiment.backbone import Backbone, build_backbone
from neurostep.experiment.config import BACKBONE_DEFAULTS
from neurostep.experiment.results import ResultStore
from neurostep.experiment.train import SpikeMonitor, evaluate, train_model

TRAIN = {"steps": 40, "batch_size": 32, "lr": 1e-2, "weight_decay": 0.0, "grad_clip": 1.0, "warmup": 0.05,
         "eval_every": 10, "eval_batch_size": 256, "target": 0.0, "patience": 0, "min_delta": 0.0}


@pytest.mark.parametrize("readout,shape", [("mean", (3, 5)), ("last", (3, 5)), ("all", (3, 6, 5))])
def test_backbone_shapes(readout, shape):
    torch.manual_seed(0)
    model = Backbone("softmax_attention", num_classes=5, seq_len=6, dim=8, depth=1, num_heads=2, vocab_size=9,
                     readout=readout)
    logits = model(torch.randint(0, 9, (3, 6)))
    assert logits.shape == shape
    logits.sum().backward()
    assert model.embed.weight.grad is not None


def test_backbone_initialises_embeddings_as_the_docs_say():
    # docs/experiments.md: tokens from torch's N(0, 1), positions from N(0, 0.02); the scale of the
    # token embedding decides whether Mamba learns selective copying in the main job's budget
    torch.manual_seed(0)
    model = Backbone("softmax_attention", num_classes=4, seq_len=256, dim=64, depth=1, num_heads=2, vocab_size=256)
    assert model.embed.weight.std().item() == pytest.approx(1.0, abs=0.02)
    assert model.pos.std().item() == pytest.approx(0.02, abs=0.001)


def test_backbone_errors():
    with pytest.raises(ValueError, match="unknown block 'transformerxl'; registered mixers: .*softmax_attention"):
        Backbone("transformerxl", num_classes=2, seq_len=4, in_features=3)
    model = Backbone("softmax_attention", num_classes=2, seq_len=4, dim=8, num_heads=2, in_features=3)
    with pytest.raises(ValueError, match=r"float features \(B, N=4, 3\)"):
        model(torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="seq_len=4"):
        model(torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="exactly one of in_features"):
        Backbone("softmax_attention", num_classes=2, seq_len=4)
    with pytest.raises(ValueError, match="mixer 'vim' cannot be causal"):
        Backbone("vim", num_classes=2, seq_len=4, dim=8, vocab_size=5, causal=True)


def test_spike_monitor_counts_each_call_once():
    from neurostep.neuro import LIF

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = LIF()
            self.b = LIF()

        def forward(self, x):
            s, _ = self.a.scan(x)
            return self.b(s * 3.0)

    net = Net()
    x = torch.full((4, 2, 3), 1.5)             # spikingjelly defaults: spikes 0,1,0,1 -> rate 0.5
    with SpikeMonitor(net) as mon:
        net(x)
    rates = mon.rates()
    assert rates["a"] == pytest.approx(0.5) and set(rates) == {"a", "b"}
    assert mon.elements["a"] == x.numel()      # forward -> scan inside counted once
    assert "scan" not in net.a.__dict__         # wrappers removed


def test_run_records_everything_and_skips_done_runs(make_toml, capsys):
    cfg = load_config(make_toml(energy=True))
    run_dir = run_experiment(cfg)
    recs = ResultStore(run_dir).load()
    assert len(recs) == 1
    r = recs[0]
    for key in ("metric", "accuracy", "test_loss", "params", "macs", "acs", "energy_uj", "train_energy_uj",
                "latency_ms", "throughput_sps", "train_time_s", "compile_time_s", "spike_rate", "spike_rates",
                "config_hash", "config", "curve", "stopped", "trained", "chance", "chance_loss", "device", "gpu"):
        assert key in r, key
    assert r["device"] == "cpu" and r["gpu"] is None
    assert 0.0 <= r["metric"] <= 1.0 and r["params"] > 0 and r["macs"] > 0 and r["energy_uj"] > 0
    assert r["train_energy_uj"] > r["energy_uj"] and r["steps"] == 4 and r["stopped"] == "budget"
    assert [p["step"] for p in r["curve"]] == [2, 4]
    assert r["curve"][-1]["train_energy_uj"] == pytest.approx(4 * 32 * r["train_energy_uj"])
    assert (run_dir / "report.md").exists() and (run_dir / "experiment.toml").exists()
    out = capsys.readouterr().out
    assert "report:" in out and str(run_dir / "report.md") in out
    run_experiment(cfg)                           # everything done: nothing retrained
    assert len(ResultStore(run_dir).load()) == 1
    assert "done before, skipped" in capsys.readouterr().out


def test_unknown_block_lists_registered(make_toml):
    cfg = load_config(make_toml(blocks='["softmax_attention", "nope"]'))
    with pytest.raises(ValueError, match=r"unknown block\(s\) \['nope'\]; registered mixers: \[.*'softmax_attention'"):
        run_experiment(cfg)


def test_training_learns_digits_and_stops_at_target():
    task = build_task("digits", {"patch": 4})
    torch.manual_seed(0)
    model = Backbone("softmax_attention", num_classes=10, seq_len=4, dim=16, depth=1, num_heads=2,
                     in_features=16, grid_size=(2, 2))
    before = evaluate(model, task, 512)["accuracy"]
    stats = train_model(model, task, {**TRAIN, "steps": 300, "target": 0.8}, seed=0)
    after = evaluate(model, task, 512)
    assert after["accuracy"] > max(0.6, before + 0.3)
    assert stats["stopped"] == "target" and stats["steps"] < 300 and stats["steps"] % 10 == 0
    assert stats["curve"][-1]["val_metric"] >= 0.8 and stats["compile_time_s"] > 0


def test_training_uses_fused_adamw_where_it_applies(monkeypatch):
    from neurostep.experiment import train as train_module

    built = []

    class Recording(torch.optim.AdamW):
        def __init__(self, params, **kwargs):
            built.append(kwargs)
            super().__init__(params, **kwargs)

    monkeypatch.setattr(train_module.torch.optim, "AdamW", Recording)
    task = build_task("digits", {"patch": 8})
    model = Backbone("softmax_attention", num_classes=10, seq_len=1, dim=8, depth=1, num_heads=2, in_features=64)
    train_model(model, task, {**TRAIN, "steps": 2}, seed=0)
    assert built == [{"lr": TRAIN["lr"], "fused": True}]
    assert not train_module.fused_adamw_ok(nn.Linear(2, 2, device="meta"))
    assert not train_module.fused_adamw_ok(nn.Identity())


def test_training_clips_gradients_in_one_foreach_pass(monkeypatch):
    clip, calls = torch.nn.utils.clip_grad_norm_, []

    def recording(params, max_norm, **kwargs):
        calls.append((max_norm, kwargs))
        return clip(params, max_norm, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    task = build_task("digits", {"patch": 8})
    model = Backbone("softmax_attention", num_classes=10, seq_len=1, dim=8, depth=1, num_heads=2, in_features=64)
    train_model(model, task, {**TRAIN, "steps": 2}, seed=0)
    assert calls == [(TRAIN["grad_clip"], {"foreach": True})] * 2


def test_plateau_stop():
    task = build_task("digits", {"patch": 8})
    torch.manual_seed(0)
    model = Backbone("softmax_attention", num_classes=10, seq_len=1, dim=8, depth=1, num_heads=2, in_features=64)
    # lr 0: nothing changes, so the metric never improves and the run stops after `patience` evaluations.
    stats = train_model(model, task, {**TRAIN, "lr": 0.0, "steps": 200, "patience": 3}, seed=0)
    assert stats["stopped"] == "plateau" and stats["steps"] == 40


def test_warm_up_leaves_model_and_rng_untouched():
    from neurostep.experiment.train import warm_up

    torch.manual_seed(0)
    model = Backbone("spikformer_ssa", num_classes=3, seq_len=4, dim=8, num_heads=2, in_features=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.rand(5, 4, 2), torch.randint(0, 3, (5,))
    state = torch.get_rng_state()
    seconds = warm_up(model, x, y)
    assert seconds > 0 and torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # BN statistics included
    assert all(p.grad is None for p in model.parameters())


def test_sequence_task_loss_ignores_unscored_positions():
    task = build_task("selective_copy", {"seq_len": 12, "num_tokens": 3, "vocab": 4, "num_test": 16, "num_val": 8})
    torch.manual_seed(0)
    model = Backbone("mamba", num_classes=4, seq_len=12, dim=8, depth=1, num_heads=2, vocab_size=6,
                     readout="all", causal=True)
    ev = evaluate(model, task, 8)
    assert 0.0 <= ev["accuracy"] <= 1.0 and ev["test_loss"] > 0


class _Copier(torch.nn.Module):
    """Predicts the answer at chosen answer positions and class 0 elsewhere: a hand-checked model."""

    def __init__(self, task, right):
        super().__init__()
        self.task, self.right = task, right

    def forward(self, x):
        n, length = x.shape
        k, vocab = len(self.task.answer_positions), self.task.num_classes
        data = x[(x > 0) & (x <= vocab)].view(n, k) - 1          # the data tokens, in order
        pred = torch.zeros(n, length, dtype=torch.int64)
        for p in self.right:
            pred[:, p] = data[:, p - (length - k)]
        return torch.nn.functional.one_hot(pred, vocab).float()


def test_selective_copy_reports_accuracy_per_copied_token():
    task = build_task("selective_copy", {"seq_len": 12, "num_tokens": 3, "vocab": 4, "num_test": 64, "num_val": 8})
    assert task.answer_positions == (9, 10, 11)
    model = _Copier(task, right=(9, 11))        # the first and the last token right, the middle one by luck
    ev = evaluate(model, task, 16)
    middle = float((task.y_test[:, 10] == 0).double().mean())
    assert ev["position_accuracy"] == pytest.approx([1.0, middle, 1.0])
    assert ev["accuracy"] == pytest.approx((2.0 + middle) / 3)
    digits = build_task("digits", {})
    assert digits.answer_positions is None


@pytest.mark.parametrize("target_evals,stop_step", [(1, 10), (2, 50), (3, 60)])
def test_target_stop_needs_evaluations_in_a_row(monkeypatch, target_evals, stop_step):
    from neurostep.experiment import train as train_module

    # scripted validation scores: one lucky 0.9, a drop, then the target held
    scores = iter([0.9, 0.5, 0.6, 0.9, 0.95, 0.9, 0.9, 0.9])
    monkeypatch.setattr(train_module, "evaluate",
                        lambda *args, **kwargs: {"metric": next(scores), "test_loss": 1.0})
    task = build_task("digits", {"patch": 8})
    model = Backbone("softmax_attention", num_classes=10, seq_len=1, dim=8, depth=1, num_heads=2, in_features=64)
    stats = train_model(model, task, {**TRAIN, "steps": 80, "target": 0.8, "target_evals": target_evals}, seed=0)
    assert stats["stopped"] == "target" and stats["steps"] == stop_step


# ----------------------------------------------------------------------------- [train] device
def test_device_is_checked_when_the_file_is_read_and_left_out_of_the_hash():
    from neurostep.experiment import parse_config

    def config(device, task_device=None):
        tasks = {"digits": {"train": {"device": task_device}}} if task_device else {}
        return parse_config({"experiment": {"name": "d", "blocks": ["mamba"], "tasks": ["digits"]},
                             "train": {"device": device}, "tasks": tasks})

    for bad in ("gpu", "cuda:", "cuda:x", "CUDA", "mps"):
        with pytest.raises(ValueError, match=r'\[train\] device must be "cpu", "cuda" or "cuda:<n>"'):
            config(bad)
    with pytest.raises(ValueError, match=r"\[tasks.digits.train\] device must be"):
        config("cpu", task_device="tpu")
    # reading a file probes no device: "cuda:3" parses on a machine without one
    cpu, gpu = config("cpu"), config("cuda:3")
    assert gpu.train_for("digits")["device"] == "cuda:3"
    # where a run computes changes its rounding, not what it computes: its records group with the CPU's
    assert cpu.config_hash("mamba", "digits") == gpu.config_hash("mamba", "digits")


def test_run_device_is_the_process_own_gpu(monkeypatch):
    from neurostep.experiment.train import DistContext, run_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    second = DistContext(rank=3, world_size=4, local_rank=1)     # the second process on the second machine
    assert run_device("cuda") == torch.device("cuda", 0)
    assert run_device("cuda", second) == torch.device("cuda", 1)
    assert run_device("cuda:0", second) == torch.device("cuda", 0)   # an explicit index wins
    assert run_device("cpu", second) == torch.device("cpu")
    with pytest.raises(RuntimeError, match=r"asks for cuda:2 in process 0, but torch sees 2 CUDA device"):
        run_device("cuda:2")
    with pytest.raises(RuntimeError, match=r"asks for cuda:2 in process 3"):
        run_device("cuda", DistContext(rank=3, world_size=4, local_rank=2))


def test_runner_refuses_a_device_this_machine_lacks_before_anything_trains(make_toml, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = make_toml()
    path.write_text(path.read_text().replace("[train]", '[train]\ndevice = "cuda"'))
    cfg = load_config(path)
    with pytest.raises(RuntimeError, match=r'device = .cuda., but torch .* sees no CUDA device.*set device = "cpu"'):
        run_experiment(cfg)
    assert not cfg.run_dir.exists()     # refused before the lock, the plan or a model


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_run_trains_evaluates_and_measures_on_the_gpu(make_toml):
    # the same model evaluated on the CPU and on the GPU; then a whole run on the GPU
    task = build_task("selective_copy", {"seq_len": 16, "num_tokens": 4, "vocab": 8, "num_test": 64, "num_val": 32})
    torch.manual_seed(0)
    model = build_backbone("mamba", task, {**BACKBONE_DEFAULTS, "dim": 16, "depth": 1}, {})
    on_cpu = evaluate(model, task, 32)
    on_gpu = evaluate(model.cuda(), task, 32)
    assert on_gpu["accuracy"] == pytest.approx(on_cpu["accuracy"], abs=2 / 64)
    assert on_gpu["test_loss"] == pytest.approx(on_cpu["test_loss"], rel=1e-4)
    assert on_gpu["position_accuracy"] == pytest.approx(on_cpu["position_accuracy"], abs=2 / 64)
    path = make_toml(blocks='["mamba"]', energy=True)
    path.write_text(path.read_text().replace("[train]", '[train]\ndevice = "cuda"'))
    record = ResultStore(run_experiment(load_config(path))).load()[0]
    assert record["device"] == "cuda:0" and record["gpu"] and record["steps"] == 4
    assert 0.0 <= record["metric"] <= 1.0 and record["macs"] > 0 and record["latency_ms"] > 0
