"""Vision Mamba: both directions always run, each direction's scan == step, configs' counts."""

from __future__ import annotations

import pytest
import torch

from neurostep.models import count_params
from neurostep.ssm import VIM_CONFIGS, BidirectionalMamba, BidirectionalMambaState, VisionMamba

BACKWARD_NAMES = {"A_b_log", "D_b", "conv1d_b.weight", "conv1d_b.bias", "x_proj_b.weight", "dt_proj_b.weight",
                  "dt_proj_b.bias"}


def test_parameter_names_follow_vim():
    m = BidirectionalMamba(16, d_state=4)
    names = set(dict(m.named_parameters()))
    assert BACKWARD_NAMES <= names
    assert {"in_proj.weight", "out_proj.weight", "A_log", "D"} <= names
    assert m.A_b_log.shape == m.A_log.shape and m.conv1d_b.weight.shape == m.conv1d.weight.shape


def test_output_is_mean_of_both_directions():
    torch.manual_seed(0)
    m = BidirectionalMamba(12, d_state=4)
    x = torch.randn(2, 9, 12)
    y = m(x)
    y_f, st_f = m.scan_direction(x)
    y_b, st_b = m.scan_direction(x, backward=True)
    torch.testing.assert_close(y, (y_f + y_b) / 2, rtol=1e-5, atol=1e-6)
    _, state = m.scan(x)
    assert isinstance(state, BidirectionalMambaState)
    torch.testing.assert_close(state.forward.ssm_state, st_f.ssm_state)
    torch.testing.assert_close(state.backward.ssm_state, st_b.ssm_state)
    # Non-causal: the first output depends on the last token (the backward direction ran).
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert (m(x2)[:, 0] - y[:, 0]).abs().max() > 1e-6


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("length", [1, 6])
def test_each_direction_scan_equals_step(backward, length):
    torch.manual_seed(1)
    m = BidirectionalMamba(8, d_state=3).double()
    x = torch.randn(2, length, 8, dtype=torch.float64)
    y, st = m.scan_direction(x, backward=backward)
    state = m.init_state(2, dtype=torch.float64)
    order = range(length - 1, -1, -1) if backward else range(length)
    outs = {}
    for t in order:
        outs[t], state = m.step_direction(x[:, t], state, backward=backward)
    y_ref = torch.stack([outs[t] for t in range(length)], dim=1)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(st.ssm_state, state.ssm_state, rtol=1e-10, atol=1e-10)


def test_flip_equivariance_with_tied_directions():
    # With the backward parameters equal to the forward ones, flipping the input flips the output:
    # this holds only if x AND z are flipped for the backward direction and flipped back after.
    torch.manual_seed(2)
    m = BidirectionalMamba(8, d_state=3)
    with torch.no_grad():
        for suffix_name in ("conv1d", "x_proj", "dt_proj"):
            getattr(m, f"{suffix_name}_b").load_state_dict(getattr(m, suffix_name).state_dict())
        m.A_b_log.copy_(m.A_log)
        m.D_b.copy_(m.D)
    x = torch.randn(1, 7, 8)
    torch.testing.assert_close(m(x.flip(1)), m(x).flip(1), rtol=1e-5, atol=1e-6)


def test_step_and_stateful_scan_raise():
    m = BidirectionalMamba(8, d_state=2)
    with pytest.raises(NotImplementedError, match="step_direction"):
        m.step(torch.randn(1, 8), m.init_state(1))
    with pytest.raises(NotImplementedError, match="step_direction"):
        m.decode_step_(torch.randn(1, 8), m.init_state(1), -torch.exp(m.A_log))
    with pytest.raises(ValueError, match="cannot resume"):
        m.scan(torch.randn(1, 3, 8), state=m.init_state(1))


def test_vim_middle_class_token_and_shapes():
    torch.manual_seed(3)
    model = VisionMamba(img_size=32, patch_size=8, embed_dim=16, depth=2, d_state=4, num_classes=7)
    assert model.num_patches == 16 and model.cls_position == 8
    images = torch.randn(2, 3, 32, 32)
    out = model(images)
    assert out.shape == (2, 7)
    out.square().sum().backward()
    assert model.cls_token.grad is not None and model.layers[0].mixer.A_b_log.grad is not None
    with pytest.raises(ValueError, match="images"):
        model(torch.randn(2, 3, 16, 16))


@pytest.mark.parametrize("name,expected", [("vim_tiny", 7_148_008), ("vim_small", 25_796_584),
                                           ("vim_base", 97_598_440)])
def test_vim_param_counts(name, expected):
    with torch.device("meta"):
        model = VisionMamba(**VIM_CONFIGS[name])
    n = count_params(model)
    assert n == expected  # the recounts in docs/reference.md: 7.15M / 25.8M / 97.6M
    paper = {"vim_tiny": 7e6, "vim_small": 26e6, "vim_base": 98e6}[name]
    assert abs(n - paper) / paper < 0.025
