"""Delegation to mamba-ssm's CUDA selective scan (imported only when this backend is chosen)."""

from __future__ import annotations

import torch


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    return_last_state: bool,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Call ``mamba_ssm``'s ``selective_scan_fn`` with the same arguments (CUDA tensors, no initial state)."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as mamba_selective_scan_fn

    return mamba_selective_scan_fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                   delta_softplus=delta_softplus, return_last_state=return_last_state)
