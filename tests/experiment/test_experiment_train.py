import pytest
import torch
from torch import nn

from neurostep.experiment import build_task, load_config, run_experiment
from neurostep.experiment.backbone import Backbone
from neurostep.experiment.results import ResultStore
from neurostep.experiment.train import SpikeMonitor


@pytest.mark.parametrize("readout,shape", [("mean", (3, 5)), ("last", (3, 5)), ("last_k", (3, 2, 5))])
def test_backbone_shapes(readout, shape):
    torch.manual_seed(0)
    model = Backbone("softmax_attention", num_classes=5, seq_len=6, dim=8, depth=1, num_heads=2, vocab_size=9,
                     readout=readout, readout_k=2)
    logits = model(torch.randint(0, 9, (3, 6)))
    assert logits.shape == shape
    logits.sum().backward()
    assert model.embed.weight.grad is not None


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
    for key in ("metric", "accuracy", "test_loss", "params", "macs", "acs", "energy_uj", "latency_ms",
                "throughput_sps", "train_time_s", "spike_rate", "spike_rates", "config_hash"):
        assert key in r, key
    assert 0.0 <= r["metric"] <= 1.0 and r["params"] > 0 and r["macs"] > 0 and r["energy_uj"] > 0
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


def test_training_learns_digits():
    from neurostep.experiment.train import DistContext, evaluate, train_model

    task = build_task("digits", {"patch": 4})
    torch.manual_seed(0)
    model = Backbone("softmax_attention", num_classes=10, seq_len=4, dim=16, depth=1, num_heads=2,
                     in_features=16, grid_size=(2, 2))
    before = evaluate(model, task, 512)["accuracy"]
    train = {"batch_size": 32, "epochs": 1, "max_steps": 0, "lr": 1e-2, "weight_decay": 0.0, "grad_clip": 1.0}
    stats = train_model(model, task, train, 0, DistContext(), progress=False)
    after = evaluate(model, task, 512)
    assert stats["steps"] == task.x_train.shape[0] // 32
    assert after["accuracy"] > max(0.5, before + 0.3)
