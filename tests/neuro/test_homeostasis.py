import pytest
import torch
from torch import nn

from neurostep.neuro.homeostasis import HomeostaticLR, threshold_signs


def _setup(rule, eta0=0.1, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ELU(), nn.Linear(8, 10))
    opt = torch.optim.SGD(model.parameters(), lr=eta0)
    return model, opt, HomeostaticLR(opt, model, rule=rule, eta0=eta0, **kw)


def test_threshold_signs():
    assert threshold_signs(10, 5).tolist() == [-1.0] * 5 + [1.0] * 5


def test_constant_rule_is_plain_sgd():
    model, opt, h = _setup("constant")
    ref = nn.Sequential(nn.Linear(4, 8), nn.ELU(), nn.Linear(8, 10))
    ref.load_state_dict(model.state_dict())
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(5):
        x, y = torch.randn(10, 4), torch.randint(0, 10, (10,))
        h.step(x, y)
        ref_opt.zero_grad()
        nn.functional.cross_entropy(ref(x), y).backward()
        ref_opt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q)
    assert h.history == [0.1] * 5


def test_random_rule_moves_by_true_label_and_floors():
    _, _, h = _setup("random", eta0=0.1, p_change=1.0, interval=10)
    y_exc = torch.full((10,), 7)
    h.step(torch.randn(10, 4), y_exc)           # sample 0 is not a decision point
    assert h.eta == pytest.approx(0.1)
    h.step(torch.randn(10, 4), y_exc)           # sample 10: excitatory label, p = 1
    assert h.eta == pytest.approx(0.11)
    for _ in range(30):
        h.step(torch.randn(10, 4), torch.zeros(10, dtype=torch.long))
    assert h.eta == pytest.approx(1e-8)          # inhibitory labels push it to the floor
    _, _, never = _setup("random", p_change=0.0)
    for _ in range(4):
        never.step(torch.randn(10, 4), y_exc)
    assert never.eta == pytest.approx(0.1)


def test_homeostatic_decision_uses_prediction_for_lookahead_and_truth_for_update(monkeypatch):
    _, _, h = _setup("homeostatic", eta0=0.1, memory=20, interval=10)
    looked = []

    def fake_lookahead(lr):
        looked.append(lr)
        return 1.0 if lr != h.eta else 0.0     # changing always looks better

    monkeypatch.setattr(h, "_lookahead", fake_lookahead)
    x = torch.randn(10, 4)
    h.step(x, torch.full((10,), 2))              # no memory yet: no decision
    h.step(x, torch.full((10,), 2))
    assert looked == []
    # Force the prediction to an excitatory class while the true label is inhibitory.
    monkeypatch.setattr(h.model[2].bias, "data", torch.tensor([0.0] * 9 + [1e3]))
    h.step(x, torch.full((10,), 2))
    assert looked == [pytest.approx(0.1), pytest.approx(0.11)]   # keep vs change by the PREDICTED label (9 >= 5)
    assert h.eta == pytest.approx(0.09)                           # accepted, but moved by the TRUE label (2 < 5)


def test_homeostatic_lookahead_restores_parameters_and_rejects_when_not_better():
    model, opt, h = _setup("homeostatic", eta0=0.1)
    for _ in range(3):
        h.step(torch.randn(10, 4), torch.randint(0, 10, (10,)))
    before = [p.detach().clone() for p in model.parameters()]
    nn.functional.cross_entropy(model(torch.randn(10, 4)), torch.randint(0, 10, (10,))).backward()
    acc = h._lookahead(0.5)
    assert 0.0 <= acc <= 1.0
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    assert model.training


def test_bad_arguments():
    model = nn.Linear(4, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="rule must be one of"):
        HomeostaticLR(opt, model, rule="adaptive")
    with pytest.raises(TypeError, match="optimizer must be"):
        HomeostaticLR(model, model)
    h = HomeostaticLR(opt, model)
    with pytest.raises(TypeError, match=r"y must be an int tensor \(B,\)"):
        h.step(torch.randn(3, 4), torch.zeros(3))
    with pytest.raises(ValueError, match="B = len"):
        h.step(torch.randn(2, 4), torch.zeros(3, dtype=torch.long))


def test_callable_class_signs():
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    h = HomeostaticLR(opt, model, rule="random", p_change=1.0, class_signs=lambda c: 1.0 if c == 0 else -1.0)
    h.step(torch.randn(10, 4), torch.zeros(10, dtype=torch.long))
    h.step(torch.randn(10, 4), torch.zeros(10, dtype=torch.long))
    assert h.eta == pytest.approx(0.11)
