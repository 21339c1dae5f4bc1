import pytest
import torch
import torch.nn.functional as F

from neurostep.mixers.crate import CRATE, ISTA, MSSA, CRATELayer
from neurostep.models import create_mixer


def test_mssa_shares_qkv_and_matches_reference():
    torch.manual_seed(0)
    m = MSSA(12, 3)
    assert m.qkv.bias is None and m.qkv.weight.shape == (12, 12) and m.out.bias is not None
    x = torch.randn(2, 5, 12)
    torch.testing.assert_close(m(x), m.reference_forward(x), rtol=1e-5, atol=1e-6)
    # explicit per-head formula softmax(w w^T / sqrt(p)) w
    w = (x @ m.qkv.weight.T).reshape(2, 5, 3, 4).transpose(1, 2)
    y = ((w @ w.transpose(-1, -2)) / 2.0).softmax(-1) @ w
    torch.testing.assert_close(m(x), F.linear(y.transpose(1, 2).reshape(2, 5, 12), m.out.weight, m.out.bias),
                               rtol=1e-5, atol=1e-6)


def test_ista_square_step_formula():
    torch.manual_seed(0)
    ista = ISTA(6)
    z = torch.randn(2, 4, 6)
    d = ista.weight  # D, d x d; tokens are rows so D z -> z D^T
    expected = F.relu(z + 0.1 * (z - z @ d.T) @ d - 0.1 * 0.1)
    torch.testing.assert_close(ista(z), expected)


def test_ista_overcomplete_two_steps():
    torch.manual_seed(0)
    ista = ISTA(4, overcomplete=4, steps=2)
    z = torch.randn(3, 4)
    d = ista.weight  # 4 x 16
    a = F.relu(0.1 * z @ d - 0.01)
    a = F.relu(a + 0.1 * (z - a @ d.T) @ d - 0.01)
    out = ista(z)
    assert out.shape == (3, 16)
    torch.testing.assert_close(out, a)


def test_layer_structure_nonnegative_and_alpha_residual():
    torch.manual_seed(0)
    layer = CRATELayer(8, 2)
    z = torch.randn(2, 5, 8)
    out = layer(z)
    assert (out >= 0).all()   # no residual around ISTA
    half = z + layer.attn(layer.norm1(z))
    torch.testing.assert_close(out, layer.ista(layer.norm2(half)))
    alpha = CRATELayer(8, 2, overcomplete=4)
    assert alpha.ista.weight.shape == (8, 32) and alpha.ista.steps == 2
    half = z + alpha.attn(alpha.norm1(z))
    torch.testing.assert_close(alpha(z), half + alpha.decoder(alpha.ista(alpha.norm2(half))))


def test_coding_rate_and_sparsity():
    torch.manual_seed(0)
    layer = CRATELayer(8, 2)
    z = torch.randn(3, 6, 8)
    eps = 0.5
    # Sylvester: the p x p form used by coding_rate equals the N x N form of the paper
    w = layer.attn.project(layer.norm1(z))                      # (B, K, N, p)
    n, p = 6, 4
    big = torch.eye(n) + (p / (n * eps ** 2)) * w @ w.transpose(-1, -2)
    expected = 0.5 * torch.logdet(big).sum(-1).mean()
    torch.testing.assert_close(layer.coding_rate(z, eps), expected, rtol=1e-4, atol=1e-4)
    assert float(CRATELayer.sparsity(torch.tensor([0.0, 1.0, 0.0, 2.0]))) == 0.5


def test_model_measures_and_errors():
    torch.manual_seed(0)
    model = CRATE(img_size=8, patch_size=4, dim=8, depth=2, num_heads=2, num_classes=3)
    x = torch.randn(2, 3, 8, 8)
    assert model(x).shape == (2, 3)
    rows = model.measures(x)
    assert len(rows) == 2 and all(set(r) == {"coding_rate", "coding_rate_after_mssa", "sparsity"} for r in rows)
    assert all(0.0 <= r["sparsity"] <= 1.0 and r["coding_rate"] > 0 for r in rows)
    with pytest.raises(ValueError, match=r"\(B, 3, 8, 8\)"):
        model(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="overcomplete"):
        ISTA(4, overcomplete=0)
    assert isinstance(create_mixer("crate_mssa", 16, num_heads=4), MSSA)
