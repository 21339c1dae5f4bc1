"""LaMamba: SS2D scan == step, direction bookkeeping, window attention vs brute force, adaLN-Zero."""

from __future__ import annotations

import math

import pytest
import torch

from neurostep.models import create_mixer
from neurostep.ssm import SS2D, LaMamba, LaMambaNet, WindowAttention


@pytest.mark.parametrize("grid", [(3, 4), (1, 5), (4, 4)])
def test_ss2d_scan_equals_step(grid):
    torch.manual_seed(0)
    m = SS2D(8, d_state=2).double()
    x = torch.randn(2, grid[0] * grid[1], 8, dtype=torch.float64)
    torch.testing.assert_close(m(x, grid), m(x, grid, by_steps=True), rtol=1e-10, atol=1e-10)


def test_ss2d_direction_orders_round_trip():
    m = SS2D(4)
    H, W = 3, 5
    x = torch.randn(2, 6, H, W)
    seqs = m._directions(x, H, W)
    # column-major order of a (H, W) map: position l = w * H + h
    assert torch.equal(seqs[:, 1, :, 1], x[:, :, 1, 0])
    assert torch.equal(seqs[:, 2], seqs[:, 0].flip(-1))
    torch.testing.assert_close(m._merge(seqs, H, W), 4 * x.flatten(2))


def test_ss2d_is_global():
    torch.manual_seed(1)
    m = SS2D(8, d_state=2, backend="reference")
    x = torch.randn(1, 20, 8, requires_grad=True)
    y = m(x, (4, 5))
    # Every output position sees every input position through one of the four scans.
    for p in (0, 9, 19):
        (g,) = torch.autograd.grad(y[0, p].sum(), x, retain_graph=True)
        assert (g[0].abs().sum(-1) > 0).all()


def _brute_window_attention(attn: WindowAttention, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Per query: softmax over keys in the same (shifted, padded) window and the same Swin region."""
    b, n, c = x.shape
    ws = attn.window_size
    if H <= ws and W <= ws:
        wh, ww, shift = H, W, 0
    else:
        wh = ww = ws
        shift = attn.shift
    Hp, Wp = math.ceil(H / wh) * wh, math.ceil(W / ww) * ww

    def key(i: int, j: int) -> tuple:
        # coordinates in the rolled frame, then (window, region along each axis)
        r, s = (i - shift) % Hp, (j - shift) % Wp

        def region(v: int, size: int) -> int:
            return 0 if v < size - wh else (1 if v < size - shift else 2) if shift else 0

        return (r // wh, s // ww, region(r, Hp), region(s, Wp))

    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, c // attn.num_heads)
    q, k, v = qkv.unbind(2)
    out = torch.zeros(b, n, attn.num_heads, c // attn.num_heads)
    keys = [key(i, j) for i in range(H) for j in range(W)]
    for p in range(n):
        idx = [t for t in range(n) if keys[t] == keys[p]]
        scores = torch.einsum("bhd,bthd->bht", q[:, p], k[:, idx]) / math.sqrt(c // attn.num_heads)
        out[:, p] = torch.einsum("bht,bthd->bhd", scores.softmax(-1), v[:, idx])
    return attn.proj(out.reshape(b, n, c))


@pytest.mark.parametrize("grid,shift", [((8, 8), 0), ((8, 8), 2), ((6, 7), 2), ((3, 5), 2), ((5, 9), 0)])
def test_window_attention_matches_brute_force(grid, shift):
    torch.manual_seed(2)
    attn = WindowAttention(8, num_heads=2, window_size=4, shift=shift)
    x = torch.randn(2, grid[0] * grid[1], 8)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, grid), _brute_window_attention(attn, x, *grid), rtol=1e-5, atol=1e-5)


def test_window_attention_is_local_and_global_when_small():
    torch.manual_seed(3)
    attn = WindowAttention(8, num_heads=2, window_size=4)
    x = torch.randn(1, 64, 8)
    y = attn(x, (8, 8))
    x2 = x.clone()
    x2[0, 0] += 1.0  # token (0, 0) lies in the top-left window only
    diff = (attn(x2, (8, 8)) - y).abs().sum(-1).reshape(8, 8)
    assert diff[:4, :4].max() > 0 and diff[4:].max() == 0 and diff[:, 4:].max() == 0
    # map <= window: one global window, even with a shift configured
    shifted = WindowAttention(8, num_heads=2, window_size=8, shift=4)
    shifted.load_state_dict(attn.state_dict())
    x3 = torch.randn(1, 12, 8)
    with torch.no_grad():
        full = _brute_window_attention(WindowAttention(8, 2, window_size=64), x3, 3, 4)
        full_ref = torch.nn.functional.scaled_dot_product_attention(
            *shifted.qkv(x3).reshape(1, 12, 3, 2, 4).permute(2, 0, 3, 1, 4)).transpose(1, 2).reshape(1, 12, 8)
        torch.testing.assert_close(shifted(x3, (3, 4)), shifted.proj(full_ref), rtol=1e-5, atol=1e-5)
    assert full.shape == (1, 12, 8)


def test_adaln_zero_block_starts_as_identity_and_uses_cond():
    torch.manual_seed(4)
    block = LaMamba(16, num_heads=2, window_size=4, shift=2, cond_dim=6)
    x = torch.randn(2, 30, 16)
    cond = torch.randn(2, 6)
    torch.testing.assert_close(block(x, (5, 6), cond=cond), x)
    with torch.no_grad():
        block.adaLN_modulation[1].weight.normal_(0, 0.3)
    y1 = block(x, (5, 6), cond=cond)
    y2 = block(x, (5, 6), cond=cond + 1)
    assert (y1 - x).abs().max() > 1e-3 and (y1 - y2).abs().max() > 1e-3
    assert block.norm1.weight is None  # modulated norms carry no affine parameters
    with pytest.raises(ValueError, match="cond"):
        block(x, (5, 6))


def test_block_composition_unconditioned():
    torch.manual_seed(5)
    block = LaMamba(16, num_heads=2, window_size=4)
    x = torch.randn(1, 16, 16)
    h = x + block.ss2d(block.norm1(x), (4, 4))
    h = h + block.attn(block.norm2(h), (4, 4))
    h = h + block.mlp(block.norm3(h))
    torch.testing.assert_close(block(x), h)  # square grid inferred
    mixer = create_mixer("lamamba", 16, num_heads=2, grid_size=(4, 4))
    assert mixer.mlp is None and not mixer.residual
    y = mixer(x, grid_size=(4, 4))
    h = x + mixer.ss2d(mixer.norm1(x), (4, 4))
    torch.testing.assert_close(y, h + mixer.attn(mixer.norm2(h), (4, 4)) - x, rtol=1e-5, atol=1e-6)
    # a construction-time grid is used when the call gives none (16 tokens as 2 x 8, not 4 x 4)
    wide = create_mixer("lamamba", 16, num_heads=2, grid_size=(2, 8))
    wide.load_state_dict(mixer.state_dict())
    torch.testing.assert_close(wide(x), mixer(x, grid_size=(2, 8)))
    assert (wide(x) - y).abs().max() > 1e-6


def test_bad_grid_and_input():
    block = LaMamba(8, num_heads=2)
    with pytest.raises(ValueError, match="grid_size"):
        block(torch.randn(1, 12, 8))
    with pytest.raises(ValueError, match="does not match"):
        block(torch.randn(1, 12, 8), (3, 5))
    with pytest.raises(ValueError, match="C=8"):
        block(torch.randn(1, 12, 7), (3, 4))
    with pytest.raises(ValueError, match="divisible"):
        WindowAttention(10, num_heads=3)


def test_backbone_forward_backward():
    torch.manual_seed(6)
    net = LaMambaNet(num_classes=4, dims=(8, 16), depths=(2, 1), head_dim=4, window_size=4)
    out = net(torch.randn(2, 3, 32, 40))
    assert out.shape == (2, 4)
    out.square().sum().backward()
    assert all(p.grad is not None for p in net.parameters())
