"""The convolution form of an LTI diagonal SSM (direct and FFT) against its recurrence, and the bare
S4D layer built on it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neurostep.ssm import S4D
from neurostep.ssm.s4d import DIRECT_MAX_LENGTH, causal_convolution, lti_convolution


def _recurrence(u, dt, A, B, C, D, h):
    """h_l = exp(dt A) h_{l-1} + dt B u_l ; y_l = <h_l, C> + D u_l, one token at a time."""
    dA, dtB = torch.exp(dt[:, None] * A), dt[:, None] * B
    ys = []
    for t in range(u.shape[-1]):
        h = dA * h + dtB * u[..., t, None]
        ys.append((h * C).sum(-1) + D * u[..., t])
    return torch.stack(ys, -1), h


# 11 and DIRECT_MAX_LENGTH tokens take the Toeplitz product, DIRECT_MAX_LENGTH + 1 the FFT
@pytest.mark.parametrize("length", [11, DIRECT_MAX_LENGTH, DIRECT_MAX_LENGTH + 1])
@pytest.mark.parametrize("with_state", [False, True])
def test_lti_convolution_equals_the_recurrence_with_gradients(with_state, length):
    torch.manual_seed(0)
    batch, channels, n = 2, 3, 4
    u = torch.randn(batch, channels, length, dtype=torch.float64, requires_grad=True)
    dt = torch.rand(channels, dtype=torch.float64).add(0.1).requires_grad_()
    A = -torch.rand(channels, n, dtype=torch.float64).add(0.2).requires_grad_()
    B, C = (torch.randn(channels, n, dtype=torch.float64, requires_grad=True) for _ in range(2))
    D = torch.randn(channels, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(batch, channels, n, dtype=torch.float64, requires_grad=True) if with_state else None
    y, last = lti_convolution(u, dt, A, B, C, D, h0)
    y_ref, last_ref = _recurrence(u, dt, A, B, C, D, torch.zeros(batch, channels, n, dtype=torch.float64)
                                  if h0 is None else h0)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(last, last_ref)
    leaves = [u, dt, A, B, C, D] + ([h0] if with_state else [])
    grads = torch.autograd.grad((y * y_ref.detach()).sum() + last.square().sum(), leaves)
    grads_ref = torch.autograd.grad((y_ref * y_ref.detach()).sum() + last_ref.square().sum(), leaves)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref)


@pytest.mark.parametrize("length", [1, 5, DIRECT_MAX_LENGTH, DIRECT_MAX_LENGTH + 3])
def test_causal_convolution_is_the_sum_over_past_tokens(length):
    torch.manual_seed(1)
    u = torch.randn(3, 2, length, dtype=torch.float64)
    kernel = torch.randn(2, length, dtype=torch.float64)
    expected = torch.zeros_like(u)
    for t in range(length):
        for s in range(t + 1):
            expected[..., t] += kernel[:, t - s] * u[..., s]
    torch.testing.assert_close(causal_convolution(u, kernel), expected)


def test_s4d_is_the_ssm_then_gelu_then_a_linear_and_resumes_from_its_state():
    torch.manual_seed(0)
    layer = S4D(6, d_state=4)
    with torch.no_grad():
        layer.dt_bias.fill_(0.5)   # decays well below 1 over the sequence, so the carried state matters
    x = torch.randn(2, 10, 6)
    y, final = layer.scan(x)
    u = x.transpose(1, 2)
    ssm, h = _recurrence(u, F.softplus(layer.dt_bias), -torch.exp(layer.A_log), layer.B, layer.C, layer.D,
                         layer.init_state(2))
    torch.testing.assert_close(y, layer.out_proj(F.gelu(ssm).transpose(1, 2)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final, h, rtol=1e-5, atol=1e-5)
    _, mid = layer.scan(x[:, :4])
    torch.testing.assert_close(layer.scan(x[:, 4:], mid)[0], y[:, 4:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x), y)


def test_s4d_has_no_gate_and_no_input_dependent_coefficients():
    layer = S4D(8, d_state=4)
    names = {n for n, _ in layer.named_parameters()}
    assert names == {"A_log", "dt_bias", "B", "C", "D", "out_proj.weight", "out_proj.bias"}
    assert torch.equal(-torch.exp(layer.A_log[0]), -torch.arange(1.0, 5.0))   # S4D-Real
    assert "gate=False" in repr(layer)


def test_s4d_rejects_bad_input_with_clear_messages():
    layer = S4D(8, d_state=4)
    with pytest.raises(ValueError, match="d_model=8"):
        layer(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="state"):
        layer.scan(torch.randn(2, 5, 8), torch.zeros(2, 8, 3))
    with pytest.raises(ValueError, match="d_state must be a positive integer"):
        S4D(8, d_state=0)
    with pytest.raises(ValueError, match="dt_min <= dt_max"):
        S4D(8, dt_min=0.1, dt_max=0.01)


def test_the_drop_in_forward_computes_no_final_state(monkeypatch):
    """``forward`` is ``scan`` without the final state, and asks the convolution for none (it costs a
    product over the sequence that the mixer would drop)."""
    import neurostep.ssm.s4d as s4d

    asked = []

    def watched(*args, **kwargs):
        asked.append(kwargs.get("output_final_state", True))
        return lti_convolution(*args, **kwargs)

    monkeypatch.setattr(s4d, "lti_convolution", watched)
    torch.manual_seed(0)
    layer, x = S4D(8, d_state=4), torch.randn(2, 7, 8)
    y, last = layer.scan(x)
    assert torch.equal(layer(x), y) and last.shape == (2, 8, 4)
    assert asked == [True, False]
    u = torch.randn(2, 3, 5)
    dt, A, B, C, D = torch.rand(3) + 0.1, -torch.rand(3, 4) - 0.2, torch.randn(3, 4), torch.randn(3, 4), torch.randn(3)
    h0 = torch.randn(2, 3, 4)
    y_only, none = lti_convolution(u, dt, A, B, C, D, h0, output_final_state=False)
    assert none is None and torch.equal(y_only, lti_convolution(u, dt, A, B, C, D, h0)[0])
