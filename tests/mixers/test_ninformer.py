import pytest
import torch
import torch.nn.functional as F

from neurostep.mixers.ninformer import NiNBlock, NiNformer, NiNGating
from neurostep.models import count_params, create_mixer


def _ln(x, norm):
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)


def _mlp(x, mlp):
    return F.linear(F.gelu(F.linear(x, mlp.fc1.weight, mlp.fc1.bias)), mlp.fc2.weight, mlp.fc2.bias)


def test_gating_matches_equation():
    torch.manual_seed(0)
    m = NiNGating(6, seq_len=5, d_ffn=7)
    x = torch.randn(3, 5, 6)
    mb = m.mixer
    y = x + _mlp(_ln(x, mb.norm_tokens).transpose(1, 2), mb.token_mlp).transpose(1, 2)
    y = y + _mlp(_ln(y, mb.norm_channels), mb.channel_mlp)
    expected = F.linear(x, m.gate.weight, m.gate.bias) * y   # no sigmoid on the gate
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-6)


def test_block_residual_structure():
    torch.manual_seed(0)
    b = NiNBlock(4, 3, 8)
    x = torch.randn(2, 3, 4)
    h = x + b.gating(_ln(x, b.norm1))
    torch.testing.assert_close(b(x), h + _mlp(_ln(h, b.norm2), b.ffn))


def test_token_mixing_is_position_dependent():
    torch.manual_seed(0)
    m = NiNGating(4, seq_len=6)
    x = torch.randn(1, 6, 4)
    perm = torch.tensor([1, 0, 2, 3, 4, 5])
    assert not torch.allclose(m(x)[:, perm], m(x[:, perm]))


def test_cifar_default_params_and_forward():
    model = NiNformer()
    n = count_params(model)
    assert abs(n - 2.65e6) / 2.65e6 < 0.01
    small = NiNformer(img_size=8, patch_size=4, dim=8, d_ffn=8, depth=1)
    assert small(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_errors():
    m = create_mixer("ninformer", 4, seq_len=5)
    with pytest.raises(ValueError, match="seq_len=5"):
        m(torch.randn(1, 6, 4))
    with pytest.raises(ValueError, match="seq_len"):
        create_mixer("ninformer", 4)
    assert create_mixer("ninformer", 4, grid_size=(2, 3)).seq_len == 6
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        NiNformer()(torch.randn(1, 3, 16, 16))
