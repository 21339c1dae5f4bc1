import pytest
import torch

from neurostep.mixers.attention import SoftmaxAttention
from neurostep.models import create_mixer


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_matches_reference(causal):
    torch.manual_seed(0)
    m = SoftmaxAttention(12, 3, causal=causal)
    x = torch.randn(2, 7, 12)
    torch.testing.assert_close(m(x), m.reference_forward(x), rtol=1e-5, atol=1e-6)


def test_causal_does_not_see_future():
    torch.manual_seed(0)
    m = SoftmaxAttention(8, 2, causal=True)
    x = torch.randn(1, 6, 8)
    x2 = x.clone()
    x2[:, 4:] += 1.0
    torch.testing.assert_close(m(x)[:, :4], m(x2)[:, :4])
    assert not torch.allclose(m(x)[:, 4:], m(x2)[:, 4:])


def test_head_dim_override_and_factory():
    m = SoftmaxAttention(16, 8, head_dim=32, qkv_bias=False)
    assert m.qkv.weight.shape == (3 * 8 * 32, 16) and m.qkv.bias is None
    assert m(torch.randn(2, 5, 16)).shape == (2, 5, 16)
    f = create_mixer("softmax_attention", 64, num_heads=4, seq_len=10, grid_size=(2, 5))
    assert isinstance(f, SoftmaxAttention) and f.num_heads == 4


def test_bad_input():
    m = SoftmaxAttention(8, 2)
    with pytest.raises(ValueError, match=r"\(B, N, 8\)"):
        m(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match="3 dims"):
        m(torch.randn(5, 8))
    with pytest.raises(TypeError, match="dtype"):
        m(torch.ones(2, 5, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="0 tokens"):
        m(torch.randn(2, 0, 8))
    with pytest.raises(ValueError, match="divisible"):
        SoftmaxAttention(10, 3)


def test_nan_propagates():
    m = SoftmaxAttention(8, 2)
    x = torch.randn(1, 4, 8)
    x[0, 1, 0] = float("nan")
    assert torch.isnan(m(x)).any()
