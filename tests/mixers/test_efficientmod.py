import pytest
import torch
import torch.nn.functional as F

from neurostep.mixers.efficientmod import AttentionBlock, EfficientMod, EfficientModBlock, EfficientModulation
from neurostep.models import create_mixer


@pytest.mark.parametrize("ratio", [1, 3])
def test_modulation_matches_equation(ratio):
    torch.manual_seed(0)
    m = EfficientModulation(4, mlp_ratio=ratio)
    x = torch.randn(2, 6, 4)
    h, w = 2, 3
    c = F.linear(x, m.ctx_in.weight, m.ctx_in.bias).transpose(1, 2).reshape(2, 4, h, w)
    c = F.gelu(F.conv2d(c, m.ctx_conv.weight, m.ctx_conv.bias, padding=3, groups=4))
    c = F.linear(c.flatten(2).transpose(1, 2), m.ctx_out.weight, m.ctx_out.bias)
    v = F.linear(x, m.v.weight, m.v.bias)
    if ratio > 1:
        v = F.gelu(v)
    expected = F.linear(v * torch.cat([c] * ratio, -1), m.proj.weight, m.proj.bias)
    torch.testing.assert_close(m(x, grid_size=(h, w)), expected, rtol=1e-5, atol=1e-6)


def test_context_is_local_on_the_grid():
    torch.manual_seed(0)
    m = EfficientModulation(3, kernel_size=3)
    x = torch.randn(1, 25, 3)
    x2 = x.clone()
    x2[0, 0] += 1.0                       # change the top-left token
    d = (m(x) - m(x2)).abs().sum(-1).reshape(5, 5)
    assert d[0, 0] > 0 and d[1, 1] > 0
    assert d[3:, :].max() == 0 and d[:, 3:].max() == 0   # a 3x3 context reaches one cell away


def test_block_layer_scale_init():
    b = EfficientModBlock(4, 2)
    assert torch.all(b.gamma == 1e-4)
    x = torch.randn(1, 4, 4)
    assert (b(x, (2, 2)) - x).abs().max() < 1e-2


def test_attention_block_head_dim():
    b = AttentionBlock(128)
    assert b.attn.head_dim == 32 and b.attn.qkv.bias is None


def test_model_forward_and_errors():
    model = EfficientMod((1, 1, 1, 1), (8, 8, 16, 16), (0, 0, 1, 1), num_classes=3)
    assert model(torch.randn(2, 3, 64, 48)).shape == (2, 3)
    with pytest.raises(ValueError, match="one entry per stage"):
        EfficientMod((1, 1), (8,), (0, 0))
    with pytest.raises(ValueError, match="positive integer"):
        EfficientModulation(4, mlp_ratio=1.5)
    with pytest.raises(ValueError, match="not a square"):
        create_mixer("efficientmod", 4)(torch.randn(1, 5, 4))
