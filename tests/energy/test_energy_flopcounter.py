"""Dense counts agree with torch's own ``FlopCounterMode`` (FLOPs = 2 x MACs) on dense inputs.

One pinned difference: torch 2.14's FlopCounterMode has formulas for the CUDA fused-attention
ops but none for ``aten._scaled_dot_product_flash_attention_for_cpu``, the op that
``F.scaled_dot_product_attention`` runs on CPU, so it counts CPU attention as zero FLOPs.
We count its two products (``q k^T`` and ``p v``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from neurostep.energy import count


class _Dense(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.deconv = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.qkv = nn.Linear(4, 12)
        self.out = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.deconv(torch.relu(self.conv(x)))           # (B, 4, H, W)
        tokens = y.flatten(2).transpose(1, 2)                # (B, HW, 4)
        q, k, v = self.qkv(tokens).unflatten(-1, (3, 2, 2)).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)          # (B, 2 heads, HW, 2)
        a = a.transpose(1, 2).flatten(2)
        g = torch.einsum("bnc,bmc->bnm", a, a)               # a bmm
        return self.out(g @ a)


def test_macs_equal_torch_flop_counter():
    model = _Dense().eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    r = count(model, x)
    assert r.total.acs == 0
    batch, heads, length, head_dim = 2, 2, 8 * 8, 2
    sdpa_macs = batch * heads * length * length * head_dim * 2          # q k^T and p v
    cpu_sdpa = "aten::_scaled_dot_product_flash_attention_for_cpu"
    assert r.ops[cpu_sdpa].macs == sdpa_macs
    assert "_scaled_dot_product_flash_attention_for_cpu" not in {str(k) for k in fc.get_flop_counts()["Global"]}
    assert 2 * (r.total.macs - sdpa_macs) == fc.get_total_flops()
    for packet, flops in fc.get_flop_counts()["Global"].items():   # op by op
        ours = sum(c.macs for name, c in r.ops.items() if name.split(".")[0] == packet._qualified_op_name)
        assert 2 * ours == flops, packet
