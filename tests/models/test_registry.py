"""One test over every registered model and mixer (every family's entries, automatically).

Conventions checked here (see docs/mixers.md and docs/design.md, "Registry"):
- model entries give ``small_kwargs`` (a tiny instance) and ``example_input(model, batch)``;
- ``paper_params`` is compared with the full config, instantiated on the meta device (no
  memory, no time); entries whose paper count is the deploy form declare ``paper_params_fused=True``
  and are ``fuse()``-d before counting;
- mixers are built with ``create_mixer(name, DIM, num_heads=..., seq_len=..., grid_size=...)``;
  every mixer rejects bad sizes with a ``ValueError`` naming the argument, and declares
  ``needs_grid`` truthfully.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neurostep.models import REGISTRY, count_params, list_mixers, list_models, model_entry

DIM, HEADS, GRID = 16, 2, (4, 4)


def _floats(out) -> list[torch.Tensor]:
    """Every floating tensor in a model output (tensor, tuple/list, dict or dataclass-like)."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        return [t for v in out.values() for t in _floats(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _floats(v)]
    return []


def _loss(out) -> torch.Tensor:
    tensors = _floats(out)
    assert tensors, f"output of type {type(out).__name__} holds no floating tensor"
    g = torch.Generator().manual_seed(0)
    # random weights: a plain sum can have zero gradient (e.g. through a softmax or a norm)
    return sum((t * torch.randn(t.shape, generator=g)).sum() for t in tensors)


def _check_grads(module: nn.Module, what: str) -> None:
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{what}: parameters without gradient: {missing[:8]}"
    bad = [n for n, p in module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"{what}: non-finite gradients in {bad[:8]}"


@pytest.mark.parametrize("name", list_models())
def test_model_forward_backward_small(name):
    entry = model_entry(name)
    assert entry.example_input is not None, f"model {name!r} must register example_input=fn(model, batch)"
    torch.manual_seed(0)
    model = REGISTRY.create_model(name, **entry.small_kwargs)
    model.train()
    inputs = entry.example_input(model, 2)
    out = model(*inputs) if isinstance(inputs, tuple) else model(inputs)
    _loss(out).backward()
    _check_grads(model, name)


def _full_size(name: str) -> nn.Module:
    try:
        with torch.device("meta"):
            return REGISTRY.create_model(name)
    except (RuntimeError, NotImplementedError):  # a constructor that reads values cannot run on meta
        return REGISTRY.create_model(name)


@pytest.mark.parametrize("name", [n for n in list_models() if model_entry(n).paper_params])
def test_model_paper_params(name):
    entry = model_entry(name)
    model = _full_size(name)
    if entry.paper_params_fused:
        model.eval()
        model.fuse()
    n = count_params(model)
    rel = abs(n - entry.paper_params) / entry.paper_params
    assert rel <= entry.params_rtol, (f"{name}: {n:,} parameters vs paper {entry.paper_params:,.0f} "
                                      f"({rel:.2%} > {entry.params_rtol:.0%})")


@pytest.mark.parametrize("name", list_mixers())
def test_mixer_forward_backward(name):
    torch.manual_seed(0)
    mixer = REGISTRY.create_mixer(name, DIM, num_heads=HEADS, seq_len=GRID[0] * GRID[1], grid_size=GRID)
    mixer.train()
    x = torch.randn(2, GRID[0] * GRID[1], DIM, requires_grad=True)
    y = mixer(x, grid_size=GRID)
    assert isinstance(y, torch.Tensor) and y.shape == x.shape, f"{name}: {tuple(x.shape)} -> {tuple(y.shape)}"
    _loss(y).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    _check_grads(mixer, name)


def test_registry_lists_this_areas_entries():
    models, mixers = set(list_models()), set(list_mixers())
    assert {"ffnet_1", "ffnet_4", "ninformer_cifar", "efficientmod_xxs", "crate_tiny", "crate_large"} <= models
    assert {"softmax_attention", "ffnified_attention", "ninformer", "efficientmod", "crate_mssa"} <= mixers
    with pytest.raises(KeyError, match="unknown mixer"):
        REGISTRY.create_mixer("no_such_mixer", 8)


def _causal_names() -> list[str]:
    from neurostep.models import mixer_causality

    return [n for n in list_mixers() if mixer_causality(n) != "never"]


@pytest.mark.parametrize("name", _causal_names())
def test_causal_mixers_do_not_see_the_future(name):
    """Output at token t must not change when any token after t changes (eval mode: BatchNorm fixed)."""
    torch.manual_seed(0)
    n = GRID[0] * GRID[1]
    mixer = REGISTRY.create_mixer(name, DIM, causal=True, num_heads=HEADS, seq_len=n, grid_size=GRID)
    assert getattr(mixer, "causal", True)
    x = torch.randn(2, n, DIM)
    with torch.no_grad():
        for _ in range(30):          # BatchNorm statistics of real inputs, so that spiking mixers fire in eval mode
            mixer(x, grid_size=GRID)
        mixer.eval()
        y = mixer(x, grid_size=GRID)
        live = False
        for t in (0, n // 2, n - 2):
            z = x.clone()
            z[:, t + 1:] = torch.randn_like(z[:, t + 1:]) * 3
            y2 = mixer(z, grid_size=GRID)
            torch.testing.assert_close(y2[:, :t + 1], y[:, :t + 1], rtol=1e-5, atol=1e-5,
                                       msg=lambda m, t=t: f"{name}: output at <= {t} changed: {m}")
            live = live or not torch.allclose(y2[:, t + 1:], y[:, t + 1:])
    assert live, f"{name}: no output changed with its input (the test would pass vacuously)"


def test_non_causal_mixers_refuse_the_causal_form_and_see_the_future():
    from neurostep.models import mixer_causality

    never = [n for n in list_mixers() if mixer_causality(n) == "never"]
    assert {"vim", "lamamba", "ffnified_attention", "ninformer", "efficientmod"} <= set(never)
    for name in never:
        with pytest.raises(ValueError, match="cannot be causal"):
            REGISTRY.create_mixer(name, DIM, causal=True, num_heads=HEADS, seq_len=16, grid_size=GRID)
    # The softmax baseline without the option is bidirectional: its first output sees the last token.
    attn = REGISTRY.create_mixer("softmax_attention", DIM, num_heads=HEADS).eval()
    x = torch.randn(1, 16, DIM)
    z = x.clone()
    z[:, -1] += 1
    assert not torch.allclose(attn(x)[:, 0], attn(z)[:, 0])


def test_fused_counts_are_declared_on_the_entry_not_the_instance():
    fused = {n for n in list_models() if model_entry(n).paper_params_fused}
    assert fused == {"ffnet_1", "ffnet_2", "ffnet_3", "ffnet_4"}
    assert not hasattr(REGISTRY.create_model("ffnet_1", **model_entry("ffnet_1").small_kwargs),
                       "paper_params_fused")


_BAD_SIZES = [
    ("dim", dict(dim=-4)), ("dim", dict(dim=0)), ("dim", dict(dim=4.5)), ("dim", dict(dim=True)),
    ("dim", dict(dim="16")), ("num_heads", dict(num_heads=0)), ("num_heads", dict(num_heads=2.0)),
    ("seq_len", dict(seq_len=-1)), ("seq_len", dict(seq_len=16.0)), ("grid_size", dict(grid_size=(0, 4))),
    ("grid_size", dict(grid_size=(4, 2.5))), ("grid_size", dict(grid_size=(4, 4, 1))),
    ("grid_size", dict(grid_size=-3)),
]


@pytest.mark.parametrize("name", list_mixers())
def test_mixer_factories_reject_bad_sizes_naming_the_argument(name):
    good = dict(dim=DIM, num_heads=HEADS, seq_len=GRID[0] * GRID[1], grid_size=GRID)
    for arg, bad in _BAD_SIZES:
        kwargs = {**good, **bad}
        with pytest.raises(ValueError, match=f"{arg} must be a positive integer"):
            REGISTRY.create_mixer(name, kwargs.pop("dim"), **kwargs)


def test_mixer_constructors_reject_bad_sizes():
    """The classes behind the mixers check their own sizes too (no raw torch error from nn.Linear)."""
    from neurostep.mixers import MSSA, EfficientModulation, FFNifiedAttention, NiNGating, SoftmaxAttention

    cases = [
        (SoftmaxAttention, dict(dim=-4), "dim"), (SoftmaxAttention, dict(dim=8, num_heads=0), "num_heads"),
        (SoftmaxAttention, dict(dim=8, head_dim=-2), "head_dim"), (MSSA, dict(dim=8.0), "dim"),
        (FFNifiedAttention, dict(dim=0), "dim"), (FFNifiedAttention, dict(dim=8, kernel_size=0), "kernel_size"),
        (EfficientModulation, dict(dim=-1), "dim"), (EfficientModulation, dict(dim=8, kernel_size=2.0), "kernel_size"),
        (NiNGating, dict(dim=8, seq_len=0), "seq_len"), (NiNGating, dict(dim=8, seq_len=4, d_ffn=-1), "d_ffn"),
        (NiNGating, dict(dim=None, seq_len=4), "dim"),
    ]
    for cls, kwargs, arg in cases:
        with pytest.raises(ValueError, match=f"{arg} must be a positive integer"):
            cls(**kwargs)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        EfficientModulation(8, kernel_size=4)


def test_needs_grid_is_declared_for_the_2d_mixers_and_true_to_their_behaviour():
    from neurostep.models import mixer_entry

    needs = {n for n in list_mixers() if mixer_entry(n).needs_grid}
    assert needs == {"ffnified_attention", "efficientmod", "lamamba"}
    x = torch.randn(1, 6, DIM)   # 6 tokens: no square grid
    for name in list_mixers():
        mixer = REGISTRY.create_mixer(name, DIM, num_heads=HEADS).eval()
        if name in needs:
            with pytest.raises(ValueError, match="grid"):
                mixer(x)
            assert mixer(x, grid_size=(2, 3)).shape == x.shape
        else:
            assert mixer(x).shape == x.shape, name   # a 1D mixer runs on any length (ninformer: sized on it)


def test_register_config_builds_the_config_with_overrides():
    from neurostep.registry import Registry

    registry = Registry()
    factory = registry.register_config("lin_4", nn.Linear, dict(in_features=4, out_features=2), family="toy",
                                       paper_params=10, doc="lin_4: a 4 -> 2 linear layer.")
    assert factory.__name__ == "lin_4" and factory.__doc__.startswith("lin_4:")
    assert registry.model_entry("lin_4").paper_params == 10
    assert registry.create_model("lin_4").in_features == 4
    assert registry.create_model("lin_4", in_features=3).weight.shape == (2, 3)
