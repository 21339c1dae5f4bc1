"""Shared layers: each exists once in neurostep.layers and keeps the behaviour of the copies it replaced."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.parameter import is_lazy

from neurostep.layers import (
    MLP,
    DropPath,
    LazyMLP,
    as_grid,
    check_images,
    check_size,
    check_tokens,
    resolve_grid,
    to_2tuple,
)


def test_check_size_accepts_integers_only():
    assert check_size("dim", 3) == 3 and check_size("dim", np.int64(5)) == 5 and check_size("dim", torch.tensor(2)) == 2
    for bad in (0, -1, 2.0, 2.5, True, "4", None, torch.tensor(2.0)):
        with pytest.raises(ValueError, match="dim must be a positive integer"):
            check_size("dim", bad)


def test_to_2tuple_and_as_grid():
    assert to_2tuple(4) == (4, 4) and to_2tuple((2, 3)) == (2, 3) and to_2tuple(torch.Size([5, 6])) == (5, 6)
    assert as_grid(None) is None and as_grid([3, 4]) == (3, 4)
    for bad in ((2,), (2, 3, 4), (2, 0), (2.5, 2), "22", -1):
        with pytest.raises(ValueError, match="patch_size must be a positive integer or a pair"):
            to_2tuple(bad, "patch_size")


def test_resolve_grid_order_and_errors():
    assert resolve_grid(12, (3, 4)) == (3, 4)
    assert resolve_grid(12, None, default=(2, 6)) == (2, 6)
    assert resolve_grid(16, None, default=(2, 6)) == (4, 4)         # the default does not fit: square
    with pytest.raises(ValueError, match="not a square.*grid_size"):
        resolve_grid(12, None)
    with pytest.raises(ValueError, match="15 cells, which does not match the 12 tokens"):
        resolve_grid(12, (3, 5), who="LaMamba")


def test_token_and_image_checks_name_the_shape():
    with pytest.raises(ValueError, match=r"\(B, N, 8\) \(C=8"):
        check_tokens(torch.zeros(1, 3, 7), 8)
    with pytest.raises(ValueError, match="0 tokens"):
        check_tokens(torch.zeros(1, 0, 8), 8)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        check_images(torch.zeros(1, 1, 8, 8), 3)
    with pytest.raises(ValueError, match=r"\(B, 3, 8, 8\)"):
        check_images(torch.zeros(1, 3, 8, 9), 3, 8)


def test_mlp_hidden_width_from_ratio_matches_the_backbone_rule():
    # The experiment backbone's MLP used hidden = max(1, int(round(dim * ratio))); state_dict keys fc1, fc2.
    for dim, ratio in ((32, 2.0), (10, 0.35), (3, 0.01)):
        mlp = MLP(dim, mlp_ratio=ratio)
        assert mlp.fc1.out_features == max(1, int(round(dim * ratio)))
        assert list(mlp.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    with pytest.raises(ValueError, match="exactly one of hidden and mlp_ratio"):
        MLP(8, 16, mlp_ratio=2.0)
    with pytest.raises(ValueError, match="hidden must be a positive integer"):
        MLP(8, 0)


def test_lazy_mlp_initializes_as_mlp_would():
    torch.manual_seed(0)
    lazy = LazyMLP(5)
    assert all(is_lazy(p) for n, p in lazy.named_parameters())
    x = torch.randn(2, 7)
    torch.manual_seed(1)
    y = lazy(x)
    torch.manual_seed(1)
    eager = MLP(7, 5)
    assert type(lazy) is MLP and y.shape == (2, 7)
    for (name, a), (_, b) in zip(lazy.named_parameters(), eager.named_parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_drop_path():
    torch.manual_seed(0)
    drop = DropPath(0.5)
    x = torch.ones(1000, 3)
    y = drop(x)
    kept = (y != 0).all(1)
    assert torch.equal(y[kept], torch.full_like(y[kept], 2.0)) and 300 < int(kept.sum()) < 700
    assert torch.equal(drop.eval()(x), x)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        DropPath(1.0)


def test_each_shared_layer_is_defined_once():
    """The blocks import these layers; no block module defines its own copy."""
    import neurostep.experiment.backbone as backbone
    import neurostep.mixers.ninformer as ninformer
    import neurostep.ssm.lamamba as lamamba
    import neurostep.ssm.vision_mamba as vision_mamba

    assert backbone.MLP is MLP and ninformer.MLP is MLP
    assert vision_mamba.DropPath is DropPath and lamamba.DropPath is DropPath
    assert not hasattr(lamamba, "_grid") and not hasattr(lamamba, "_check_tokens")
