# Copyright (C) 2023, Tri Dao.
"""mamba-ssm's decode-step tests, ported to CPU and run against ``neurostep.compat.mamba_ssm``.

Upstream source: state-spaces/mamba, ``tests/ops/triton/test_selective_state_update.py`` at commit
e9594ce1c732d97440f0332fdc43170a2294dbfa (the file last changed in 7d927b8fa4130833460a8527f870d9ab1f3ffd79);
Apache-2.0. The import is upstream's (``from mamba_ssm.ops.triton.selective_state_update import ...``),
resolved through ``neurostep.compat.install()``. The state is updated in place, as upstream's
kernel does, and every test compares it with the in-place reference.

What changed, and why:

- ``device = "cpu"``; ``itype`` ``[float32, float16, bfloat16]`` -> ``[float32, float64]`` (fp64 takes
  upstream's non-fp32 tolerances); the ROCm tolerance branch is gone.
- ``test_selective_state_update`` and ``..._with_heads`` keep upstream's whole grid otherwise.
- ``..._with_batch_indices``: dim ``[2048, 2048 + 16, 4096]`` -> ``[2048 + 16]``, dstate
  ``[16, 32, 64]`` -> ``[16, 64]``; ``..._with_heads_with_batch_indices``: dim ``[2048, 4096]`` ->
  ``[2048]``, dstate -> ``[16, 64]``. Both keep a state cache of ``2 * batch`` rows instead of
  ``10 * batch`` (the random cache dominated the run time).
- ``einops.repeat`` calls are written as ``expand`` (the same stride-0 views, so ``tie_hdim``
  still passes tied tensors).
"""

import pytest
import torch

import neurostep.compat

neurostep.compat.install(["mamba_ssm", "causal_conv1d"])
try:
    from mamba_ssm.ops.triton.selective_state_update import (  # noqa: E402
        selective_state_update,
        selective_state_update_ref,
    )
finally:
    neurostep.compat.uninstall()


@pytest.mark.parametrize("itype", [torch.float32, torch.float64])
@pytest.mark.parametrize("has_z", [False, True])
@pytest.mark.parametrize("dstate", [16, 32, 64])
@pytest.mark.parametrize("dim", [2048, 2048 + 16, 4096])
def test_selective_state_update(dim, dstate, has_z, itype):
    device = "cpu"
    rtol, atol = (3e-4, 1e-3) if itype == torch.float32 else (5e-3, 1e-2)
    # set seed
    torch.random.manual_seed(0)
    batch_size = 2
    state = torch.randn(batch_size, dim, dstate, dtype=itype, device=device)
    x = torch.randn(batch_size, dim, device=device, dtype=itype)
    dt = torch.randn(batch_size, dim, device=device, dtype=itype)
    dt_bias = torch.rand(dim, device=device) - 4.0
    A = -torch.rand(dim, dstate, device=device) - 1.0
    B = torch.randn(batch_size, dstate, device=device)
    C = torch.randn(batch_size, dstate, device=device)
    D = torch.randn(dim, device=device)
    if has_z:
        z = torch.randn_like(x)
    else:
        z = None
    state_ref = state.detach().clone()
    out = selective_state_update(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=True)
    out_ref = selective_state_update_ref(state_ref, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=True)

    print(f"Output max diff: {(out - out_ref).abs().max().item()}")
    print(f"Output mean diff: {(out - out_ref).abs().mean().item()}")
    assert torch.allclose(state, state_ref, rtol=rtol, atol=atol)
    assert torch.allclose(out, out_ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("itype", [torch.float32, torch.float64])
@pytest.mark.parametrize("has_z", [False, True])
@pytest.mark.parametrize("tie_hdim", [False, True])
@pytest.mark.parametrize("ngroups", [1, 2, 4])
@pytest.mark.parametrize("dstate", [16, 32, 64])
@pytest.mark.parametrize("dim", [2048, 4096])
def test_selective_state_update_with_heads(dim, dstate, ngroups, has_z, tie_hdim, itype):
    device = "cpu"
    rtol, atol = (3e-4, 1e-3) if itype == torch.float32 else (5e-3, 3e-2)
    # set seed
    torch.random.manual_seed(0)
    batch_size = 2
    headdim = 64
    nheads = dim // headdim
    state = torch.randn(batch_size, nheads, headdim, dstate, dtype=itype, device=device)
    x = torch.randn(batch_size, nheads, headdim, device=device, dtype=itype)
    if not tie_hdim:
        dt = torch.randn(batch_size, nheads, headdim, device=device, dtype=itype)
        dt_bias = torch.rand(nheads, headdim, device=device) - 4.0
        A = -torch.rand(nheads, headdim, dstate, device=device) - 1.0
        D = torch.randn(nheads, headdim, device=device)
    else:
        dt = torch.randn(batch_size, nheads, device=device, dtype=itype)[..., None].expand(-1, -1, headdim)
        dt_bias = (torch.rand(nheads, device=device) - 4.0)[:, None].expand(-1, headdim)
        A = (-torch.rand(nheads, device=device) - 1.0)[:, None, None].expand(-1, headdim, dstate)
        D = torch.randn(nheads, device=device)[:, None].expand(-1, headdim)
    B = torch.randn(batch_size, ngroups, dstate, device=device)
    C = torch.randn(batch_size, ngroups, dstate, device=device)
    if has_z:
        z = torch.randn_like(x)
    else:
        z = None
    state_ref = state.detach().clone()
    out = selective_state_update(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=True)
    out_ref = selective_state_update_ref(state_ref, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=True)

    print(f"Output max diff: {(out - out_ref).abs().max().item()}")
    print(f"Output mean diff: {(out - out_ref).abs().mean().item()}")
    assert torch.allclose(state, state_ref, rtol=rtol, atol=atol)
    assert torch.allclose(out, out_ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("itype", [torch.float32, torch.float64])
@pytest.mark.parametrize("has_z", [False, True])
@pytest.mark.parametrize("dstate", [16, 64])
@pytest.mark.parametrize("dim", [2048 + 16])
def test_selective_state_update_with_batch_indices(dim, dstate, has_z, itype):
    device = "cpu"
    rtol, atol = (3e-4, 1e-3) if itype == torch.float32 else (5e-3, 1e-2)
    # set seed
    torch.random.manual_seed(0)
    batch_size = 16

    total_entries = 2 * batch_size
    state = torch.randn(total_entries, dim, dstate, dtype=itype, device=device)
    state_indices = torch.randperm(total_entries)[:batch_size].to(dtype=torch.int32, device=device)

    x = torch.randn(batch_size, dim, device=device, dtype=itype)
    dt = torch.randn(batch_size, dim, device=device, dtype=itype)
    dt_bias = torch.rand(dim, device=device) - 4.0
    A = -torch.rand(dim, dstate, device=device) - 1.0
    B = torch.randn(batch_size, dstate, device=device)
    C = torch.randn(batch_size, dstate, device=device)
    D = torch.randn(dim, device=device)
    if has_z:
        z = torch.randn_like(x)
    else:
        z = None
    state_ref = state[state_indices, :].detach().clone()
    out = selective_state_update(state, x, dt, A, B, C, D=D, z=z,
                                 dt_bias=dt_bias, dt_softplus=True, state_batch_indices=state_indices)
    out_ref = selective_state_update_ref(state_ref, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=True)

    print(f"Output max diff: {(out - out_ref).abs().max().item()}")
    print(f"Output mean diff: {(out - out_ref).abs().mean().item()}")
    assert torch.allclose(state[state_indices, :], state_ref, rtol=rtol, atol=atol)
    assert torch.allclose(out, out_ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("itype", [torch.float32, torch.float64])
@pytest.mark.parametrize("has_z", [False, True])
@pytest.mark.parametrize("tie_hdim", [False, True])
@pytest.mark.parametrize("ngroups", [1, 2, 4])
@pytest.mark.parametrize("dstate", [16, 64])
@pytest.mark.parametrize("dim", [2048])
def test_selective_state_update_with_heads_with_batch_indices(dim, dstate, ngroups, has_z, tie_hdim, itype):
    device = "cpu"
    rtol, atol = (3e-4, 1e-3) if itype == torch.float32 else (5e-3, 3e-2)
    # set seed
    torch.random.manual_seed(0)
    batch_size = 16
    headdim = 64
    nheads = dim // headdim

    total_entries = 2 * batch_size
    state = torch.randn(total_entries, nheads, headdim, dstate, dtype=itype, device=device)
    state_indices = torch.randperm(total_entries)[:batch_size].to(dtype=torch.int32, device=device)

    x = torch.randn(batch_size, nheads, headdim, device=device, dtype=itype)
    if not tie_hdim:
        dt = torch.randn(batch_size, nheads, headdim, device=device, dtype=itype)
        dt_bias = torch.rand(nheads, headdim, device=device) - 4.0
        A = -torch.rand(nheads, headdim, dstate, device=device) - 1.0
        D = torch.randn(nheads, headdim, device=device)
    else:
        dt = torch.randn(batch_size, nheads, device=device, dtype=itype)[..., None].expand(-1, -1, headdim)
        dt_bias = (torch.rand(nheads, device=device) - 4.0)[:, None].expand(-1, headdim)
        A = (-torch.rand(nheads, device=device) - 1.0)[:, None, None].expand(-1, headdim, dstate)
        D = torch.randn(nheads, device=device)[:, None].expand(-1, headdim)
    B = torch.randn(batch_size, ngroups, dstate, device=device)
    C = torch.randn(batch_size, ngroups, dstate, device=device)
    if has_z:
        z = torch.randn_like(x)
    else:
        z = None
    state_ref = state[state_indices, :].detach().clone()
    out = selective_state_update(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=True,
                                 state_batch_indices=state_indices)
    out_ref = selective_state_update_ref(state_ref, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=True)

    print(f"Output max diff: {(out - out_ref).abs().max().item()}")
    print(f"Output mean diff: {(out - out_ref).abs().mean().item()}")
    assert torch.allclose(state[state_indices, :], state_ref, rtol=rtol, atol=atol)
    assert torch.allclose(out, out_ref, rtol=rtol, atol=atol)
