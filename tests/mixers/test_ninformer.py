import pytest
import torch
import torch.nn.functional as F
from torch.nn.parameter import is_lazy

from neurostep.layers import MLP
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
    assert create_mixer("ninformer", 4, grid_size=(2, 3)).seq_len == 6
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        NiNformer()(torch.randn(1, 3, 16, 16))


def test_with_seq_len_the_token_mlp_is_sized_at_construction():
    m = create_mixer("ninformer", 4, seq_len=6, d_ffn=8)
    assert type(m.mixer.token_mlp) is MLP and not any(is_lazy(p) for p in m.parameters())
    assert m.mixer.token_mlp.fc1.weight.shape == (8, 6)
    gate, norms, token_mlp, channel_mlp = 4 * 4 + 4, 2 * (4 + 4), 6 * 8 + 8 + 8 * 6 + 6, 4 * 8 + 8 + 8 * 4 + 4
    assert count_params(m) == gate + norms + token_mlp + channel_mlp


def test_without_seq_len_the_token_mlp_is_sized_on_the_first_batch():
    torch.manual_seed(0)
    lazy = create_mixer("ninformer", 4, d_ffn=8)
    assert lazy.seq_len is None and any(is_lazy(p) for p in lazy.parameters())
    opt = torch.optim.SGD(lazy.parameters(), lr=0.1)    # built before the sizes are known, as with nn.LazyLinear
    x = torch.randn(2, 6, 4)
    y = lazy(x)
    assert y.shape == x.shape and lazy.seq_len == 6 and type(lazy.mixer.token_mlp) is MLP
    before = lazy.mixer.token_mlp.fc1.weight.detach().clone()
    y.square().sum().backward()
    opt.step()
    assert not torch.equal(lazy.mixer.token_mlp.fc1.weight, before)
    with pytest.raises(ValueError, match="seq_len=6"):
        lazy(torch.randn(2, 7, 4))
    # The same computation and state_dict as a mixer built for 6 tokens.
    eager = create_mixer("ninformer", 4, seq_len=6, d_ffn=8)
    assert list(eager.state_dict()) == list(lazy.state_dict())
    eager.load_state_dict(lazy.state_dict())
    torch.testing.assert_close(eager(x), lazy(x))


def test_lazy_mixer_loads_a_sized_state_and_follows_dtype():
    torch.manual_seed(1)
    eager = create_mixer("ninformer", 4, seq_len=5)
    lazy = create_mixer("ninformer", 4)
    lazy.load_state_dict(eager.state_dict())            # materializes from the loaded shapes, no dry run
    assert lazy.seq_len == 5
    x = torch.randn(3, 5, 4)
    torch.testing.assert_close(lazy(x), eager(x))
    lazy64 = create_mixer("ninformer", 4).double()
    assert lazy64(x.double()).dtype == torch.float64 and lazy64.mixer.token_mlp.fc2.weight.dtype == torch.float64
