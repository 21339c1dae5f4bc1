"""The counting helpers of benchmarks/mixers.py (corrected conv-backward and CPU SDPA formulas, memory)."""

import torch
from repo_scripts import load_script

bench = load_script("benchmarks/mixers.py", "bench_mixers")


def test_depthwise_conv_backward_counts_two_forwards():
    conv = torch.nn.Conv2d(16, 16, 7, padding=3, groups=16)
    x = torch.randn(1, 16, 6, 6, requires_grad=True)
    with bench._counter() as counter:
        conv(x).sum().backward()
    forward = 16 * 36 * 49  # MACs: one 7x7 window per output element
    assert counter.get_total_flops() // 2 == 3 * forward


def test_cpu_sdpa_is_counted():
    from neurostep.mixers.attention import SoftmaxAttention

    m = SoftmaxAttention(16, 2)
    x = torch.randn(1, 10, 16, requires_grad=True)
    fwd, _ = bench._macs(m, x, (2, 5))
    assert fwd == 4 * 16 * 16 * 10 + 2 * 10 * 10 * 16   # projections + QK^T + AV


def test_live_tensor_memory_excludes_weights_and_counts_grads():
    lin = torch.nn.Linear(256, 256, bias=False)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x, grid_size=None):
            return self.lin(x)

    x = torch.randn(4, 256, requires_grad=True)
    peak = bench._peak_mib(M(), x, (1, 1)) * 2 ** 20
    grad_w = 256 * 256 * 4
    assert grad_w <= peak < grad_w + 64 * 1024
