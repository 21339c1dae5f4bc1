import pytest
import torch
from torch import nn

from neurostep.mixers.ffnet import FFNet, FFNifiedAttention, RepDWConv, reparameterize
from neurostep.models import count_params, create_mixer


def _randomize_bn(module: nn.Module) -> None:
    """Non-trivial BN statistics and affine terms so that folding is actually exercised."""
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)


@pytest.mark.parametrize("stride,out_mult", [(1, 1), (2, 2)])
def test_repdwconv_fuses_to_one_7x7(stride, out_mult):
    torch.manual_seed(0)
    m = RepDWConv(4, 4 * out_mult, 7, 3, stride=stride)
    _randomize_bn(m)
    m.eval()
    x = torch.randn(2, 4, 9, 11)
    fused = m.fused()
    assert isinstance(fused, nn.Conv2d) and fused.kernel_size == (7, 7) and fused.bias is not None
    torch.testing.assert_close(fused(x), m(x), rtol=1e-5, atol=1e-5)


def test_ffnified_attention_fuse_identical_and_token_interface():
    torch.manual_seed(0)
    m = FFNifiedAttention(6, 7, grid_size=(3, 5))
    _randomize_bn(m)
    m.eval()
    x = torch.randn(2, 15, 6)
    before = m(x)
    n_before = count_params(m)
    m.fuse()
    assert not any(isinstance(s, (nn.BatchNorm2d, RepDWConv)) for s in m.modules())
    assert count_params(m) < n_before
    torch.testing.assert_close(m(x), before, rtol=1e-5, atol=1e-5)
    # the token path equals the map path on the reshaped grid
    xm = x.transpose(1, 2).reshape(2, 6, 3, 5)
    torch.testing.assert_close(m.forward_map(xm).flatten(2).transpose(1, 2), m(x))


def test_ffnified_attention_matches_formula_k3():
    torch.manual_seed(0)
    m = FFNifiedAttention(4, 3).eval()
    _randomize_bn(m)
    x = torch.randn(1, 4, 5, 5)
    bn = m.fc.bn
    h = nn.functional.conv2d(x, m.fc.conv.weight)
    h = (h - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    h = h * bn.weight[:, None, None] + bn.bias[:, None, None]
    h = nn.functional.conv2d(h, m.dw1.weight, m.dw1.bias, padding=1, groups=4)
    h = nn.functional.conv2d(nn.functional.gelu(h), m.dw2.weight, m.dw2.bias, padding=1, groups=4)
    torch.testing.assert_close(m.forward_map(x), h, rtol=1e-5, atol=1e-6)


def test_ffnet_fuse_identical_outputs():
    torch.manual_seed(0)
    model = FFNet((1, 1, 2, 1), (8, 16, 16, 32), stem_dim=8, num_classes=3, layer_scale=0.5,
                  channel_kernels=(3, 7, 7, 7))
    _randomize_bn(model)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    before = model(x)
    n_before = count_params(model)
    model.fuse()
    assert not any(isinstance(s, nn.BatchNorm2d) for s in model.modules())
    assert count_params(model) < n_before
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-4)


def test_grid_errors_and_factory():
    m = create_mixer("ffnified_attention", 4, kernel_size=3)
    assert m(torch.randn(1, 16, 4)).shape == (1, 16, 4)   # square grid inferred
    assert m(torch.randn(1, 6, 4), grid_size=(2, 3)).shape == (1, 6, 4)
    with pytest.raises(ValueError, match="not a square"):
        m(torch.randn(1, 6, 4))
    with pytest.raises(ValueError, match="cells"):
        m(torch.randn(1, 6, 4), grid_size=(2, 2))
    with pytest.raises(ValueError, match="odd"):
        FFNifiedAttention(4, 4)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        FFNet((1,), (8,), token_kernels=(3,), channel_kernels=(3,))(torch.randn(1, 1, 8, 8))


def test_reparameterize_is_noop_without_fusable_modules():
    m = nn.Sequential(nn.Linear(2, 2))
    assert reparameterize(m) is m
