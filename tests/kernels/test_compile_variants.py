"""Each CPU kernel compiles once per dtype, whatever the layout of the caller's tensors.

Every distinct argument type signature (array layout, dtype, a bool where an int was passed, an
optional None) is a separate numba compile of several seconds on first use (see
``benchmarks/compile_time.py``). The CPU adapters hand the kernels contiguous arrays of one dtype
and fixed scalar types, so calls with transposed, sliced or otherwise laid-out inputs, with and
without optional arguments, must reuse one compiled variant per dtype.
"""

from collections import Counter

import torch

from neurostep.kernels.decayed_linear_attention import cpu as dla_cpu
from neurostep.kernels.decayed_linear_attention import decayed_linear_attention
from neurostep.kernels.lif import cpu as lif_cpu
from neurostep.kernels.lif import lif_scan
from neurostep.kernels.lif.cpu import recompute_backward_function
from neurostep.kernels.lif.surrogates import SURROGATES, sg_block_function
from neurostep.kernels.linear_scan import cpu as linear_scan_cpu
from neurostep.kernels.linear_scan import linear_scan


def _variants_per_dtype(dispatcher) -> Counter:
    return Counter(sig[0].dtype for sig in dispatcher.signatures)


def test_lif_one_variant_per_dtype_across_layouts():
    base = torch.randn(64, 8)
    layouts = [base.t().contiguous(), base.t(), torch.randn(8, 128)[:, ::2]]
    for x in layouts:
        for dtype in (torch.float32, torch.float64):
            xs = x.to(dtype).requires_grad_(True)
            s, _ = lif_scan(xs, tau_inv=0.5, v_threshold=1.0, backend="cpu")
            s.sum().backward()
    counts = _variants_per_dtype(lif_cpu._forward_kernel)
    assert set(counts.values()) == {1}, lif_cpu._forward_kernel.signatures
    for dtype in ("float32", "float64"):   # the backward: a range kernel, compiled for one signature per dtype
        assert len(recompute_backward_function(SURROGATES["sigmoid"].sid, dtype).dispatcher.signatures) == 1


def test_linear_scan_one_variant_per_dtype_across_layouts_and_h0():
    a, b = torch.rand(2, 16, 32), torch.randn(2, 16, 32)
    cases = [(a, b, None), (a.transpose(1, 2).contiguous().transpose(1, 2), b, None),
             (a[:, :, :16], b[:, :, :16], torch.zeros(2, 16))]
    for aa, bb, h0 in cases:
        for dtype in (torch.float32, torch.float64):
            # clone keeps a view's strides: these reach the adapter non-contiguous
            aa_, bb_ = aa.clone().to(dtype).requires_grad_(True), bb.clone().to(dtype).requires_grad_(True)
            h0_ = None if h0 is None else h0.to(dtype)
            linear_scan(aa_, bb_, initial_state=h0_, backend="cpu")[0].sum().backward()
    for kernel in (linear_scan_cpu._forward_kernel, linear_scan_cpu._backward_kernel):
        counts = _variants_per_dtype(kernel)
        assert set(counts.values()) == {1}, (kernel.__name__, kernel.signatures)


def test_lif_backward_kernels_compile_once_for_every_surrogate():
    # the snntorch convention's surrogate reaches its kernel as a function argument of one type, each surrogate's
    # loop compiled on its own; the spikingjelly LIF's recomputing backward is one kernel per surrogate (and
    # flags), compiled once for every layout
    x = torch.randn(6, 32)
    for surrogate in ("sigmoid", "atan", "erf"):
        for convention in ("spikingjelly", "snntorch"):
            for xs in (x.clone(), x.t().contiguous().t()):
                xs.requires_grad_(True)
                s, _ = lif_scan(xs, tau_inv=0.5, v_threshold=1.0, surrogate=surrogate, convention=convention,
                                backend="cpu")
                s.sum().backward()
    counts = _variants_per_dtype(lif_cpu._backward_kernel)
    assert set(counts.values()) == {1}, lif_cpu._backward_kernel.signatures
    for surrogate in ("sigmoid", "atan", "erf"):
        sid = SURROGATES[surrogate].sid
        assert len(recompute_backward_function(sid, "float32").dispatcher.signatures) == 1
        assert len(sg_block_function(sid, "float32").dispatcher.signatures) == 1


def test_decayed_linear_attention_one_variant_per_dtype_with_and_without_options():
    # optional factors and blocks reach the gathers and scatters as contiguous stand-ins, not strided views
    for dtype in (torch.float32, torch.float64):
        for groups, h0 in ((2, None), (1, torch.zeros(1, 2, 4, 3))):
            q, k = torch.randn(1, 10, groups, 4), torch.randn(1, 10, groups, 4)
            v, g = torch.randn(1, 10, 2, 3), -torch.rand(1, 10, 2)
            leaves = [t.to(dtype).requires_grad_(True) for t in (q, k, v, g)]
            o, final = decayed_linear_attention(*leaves, initial_state=None if h0 is None else h0.to(dtype),
                                                output_final_state=True, chunk_size=4, backend="cpu")
            (o.sum() + final.sum()).backward()
    for name in ("_gather", "_scatter", "_mask_scores", "_state_pass", "_dstate_pass", "_row_dots", "_dg_scores"):
        counts = _variants_per_dtype(getattr(dla_cpu, name))
        assert set(counts.values()) == {1}, (name, getattr(dla_cpu, name).signatures)


def _kernel_dispatchers():
    """Every numba function defined at the top level of a module of ``neurostep.kernels``."""
    import importlib
    import pkgutil

    import numba

    import neurostep.kernels as kernels

    for info in pkgutil.walk_packages(kernels.__path__, "neurostep.kernels."):
        if info.name.endswith(("triton", "mamba_ssm_backend", "surrogates_triton")):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if isinstance(value, numba.core.registry.CPUDispatcher) and value.py_func.__module__ == info.name:
                yield f"{info.name}.{name}", value


def test_every_kernel_and_helper_compiles_once_per_dtype_across_variants():
    # every float32 variant forward and backward in one process (from the disk cache when warm); a helper called
    # with a literal constant (True from one kernel, False from another) or a strided view where others pass
    # contiguous arrays would hold a second float32 signature, one more compile on first use
    from neurostep.kernels.precompile import variants

    for name, run in variants().items():
        if name.endswith("float32"):
            torch.manual_seed(0)
            run().sum().backward()
    for name, dispatcher in _kernel_dispatchers():
        float32 = [sig for sig in dispatcher.signatures if "float64" not in str(sig)]
        assert len(float32) <= 1, (name, float32)
