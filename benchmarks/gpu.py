"""The Triton kernels on a CUDA GPU: correctness against float64 references, then timings against peers.

The test suite runs the Triton kernels under Triton's interpreter on CPU tensors; the interpreter
does not compile them, so what only a GPU shows (a block shape the compiler refuses, a race between
programs, a precision mode) needs this script on a GPU.

1. **Checks.** Every op that has a ``triton`` backend (``lif_scan``, ``linear_scan``, ``causal_conv1d``,
   ``selective_scan``, ``wkv``, ``decayed_linear_attention``) runs forward and backward on fresh random
   inputs of uneven sizes (not multiples of any block), in float32 and bfloat16, and is compared with
   the ``reference`` backend run on the same inputs upcast to float64, as ``|out - ref| / |ref|`` (norms
   over the whole tensor) for the output, the final state and every gradient. LIF's spikes are a step
   function of the membrane, so LIF is compared with the reference in the same dtype (spikes that differ,
   and the relative error of the membrane and of the input gradient).
2. **Timings.** Forward+backward (the gradients of every input), medians of ``triton.testing.do_bench``
   (CUDA events), against what a user of the GPU peers would run: spikingjelly's own ``LIFNode`` on CUDA,
   flash-linear-attention's ``chunk_simple_gla`` (the same decayed linear attention), transformers'
   Mamba-2 torch path, torch's ``conv1d`` for the causal convolution, and the step-by-step reference;
   LIF also against a copy roofline (two copies of the ``(T, N)`` tensor, the least a fused
   forward+backward moves), and its two kernels alone at each block size and warp count (all must
   give the same bits). The decayed linear attention runs first; ``--only`` picks workloads by name.

    python benchmarks/gpu.py                    # on a CUDA machine; writes benchmarks/results/gpu.json
    python benchmarks/gpu.py --quick            # small sizes
    TRITON_INTERPRET=1 python benchmarks/gpu.py --device cpu --quick   # the script's own logic, on CPU

Peers that are not installed are reported as not measured.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import load_average, ratio, summary_row, table, write_result  # noqa: E402

from neurostep.kernels.causal_conv1d import causal_conv1d  # noqa: E402
from neurostep.kernels.decayed_linear_attention import decayed_linear_attention  # noqa: E402
from neurostep.kernels.lif import lif_scan  # noqa: E402
from neurostep.kernels.linear_scan import linear_scan  # noqa: E402
from neurostep.kernels.selective_scan import selective_scan  # noqa: E402
from neurostep.kernels.wkv import wkv  # noqa: E402

FP32_TOL, BF16_TOL = 1e-4, 3e-2


def rel_err(x: torch.Tensor | None, ref: torch.Tensor | None) -> float:
    """``|x - ref| / |ref|`` over the whole tensor (inf for NaN or a missing tensor)."""
    if x is None or ref is None:
        return 0.0 if x is None and ref is None else math.inf
    x, ref = x.detach().double(), ref.detach().double()
    if not torch.isfinite(x).all():
        return math.inf
    return float((x - ref).norm() / ref.norm().clamp_min(1e-300))


def timer(device: str) -> Callable[[Callable[[], object], int], float]:
    """A median-of-repeats timer in ms: CUDA events through ``triton.testing.do_bench`` on a GPU,
    ``perf_counter`` elsewhere."""
    if device == "cuda":
        from triton.testing import do_bench

        return lambda fn, rep_ms: do_bench(fn, warmup=max(5, rep_ms // 4), rep=rep_ms, return_mode="median")

    def cpu(fn, rep_ms):
        fn()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
        return statistics.median(times)
    return cpu


def fwd_bwd(call: Callable[..., object], leaves: list[torch.Tensor], grads: Callable[[object], list]):
    """A closure running ``call(*leaves)`` and the gradients of every leaf (``grads`` picks the outputs
    and their incoming gradients)."""
    def fn():
        out = call(*leaves)
        outs, gouts = grads(out)
        return out, torch.autograd.grad(outs, leaves, gouts, allow_unused=True)
    return fn


def _leaves(tensors: list[torch.Tensor | None], dtype: torch.dtype) -> list[torch.Tensor]:
    return [t.to(dtype).detach().requires_grad_() for t in tensors if t is not None]


def _compare(name: str, dtype: torch.dtype, got, want, names: list[str]) -> dict:
    """One check row: the relative error of each output and gradient, and whether all are within tolerance."""
    (out, grads), (out_ref, grads_ref) = got, want
    outs = out if isinstance(out, (tuple, list)) else (out,)
    outs_ref = out_ref if isinstance(out_ref, (tuple, list)) else (out_ref,)
    errors = {f"out{i}": rel_err(a, b) for i, (a, b) in enumerate(zip(outs, outs_ref)) if b is not None}
    errors.update({f"d{n}": rel_err(a, b) for n, a, b in zip(names, grads, grads_ref)})
    return _check_row(name, dtype, errors)


def _check_row(name: str, dtype: torch.dtype, errors: dict[str, float]) -> dict:
    """A check's row: its errors, the worst, and whether that is within the dtype's tolerance."""
    worst = max(errors.values())
    tol = BF16_TOL if dtype == torch.bfloat16 else FP32_TOL
    return {"op": name, "dtype": str(dtype).removeprefix("torch."), "errors": errors, "worst": worst,
            "ok": worst <= tol}


# ----- checks -------------------------------------------------------------------------------------------

def _check_float64(name, make, call, names, out_grads, device, dtypes=(torch.float32, torch.bfloat16)):
    """Run ``call`` on the triton backend in each dtype and on the reference in float64; compare."""
    tensors = make()
    rows = []
    ref = fwd_bwd(lambda *a: call(*a, backend="reference"), _leaves(tensors, torch.float64), out_grads)()
    for dtype in dtypes:
        got = fwd_bwd(lambda *a: call(*a, backend="triton"), _leaves(tensors, dtype), out_grads)()
        rows.append(_compare(name, dtype, got, ref, names))
    return rows


def checks(device: str, quick: bool) -> list[dict]:
    g = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(device)

    def rand(*shape, lo=0.0, hi=1.0):
        return (lo + (hi - lo) * torch.rand(*shape, generator=g)).to(device)

    L = 97 if quick else 777       # no multiple of any block or chunk
    rows: list[dict] = []

    def both(out):
        o, s = out
        return [o, s], [torch.ones_like(o), torch.ones_like(s)]

    # linear_scan: h_t = a_t h_{t-1} + b_t
    rows += _check_float64(
        "linear_scan", lambda: [rand(3, L, 5, 67, lo=0.5, hi=1.0), randn(3, L, 5, 67), randn(3, 5, 67)],
        lambda a, b, h0, backend: linear_scan(a, b, h0, output_final_state=True, backend=backend),
        ["a", "b", "h0"], both, device)

    # causal_conv1d with SiLU, an initial state and the final state
    rows += _check_float64(
        "causal_conv1d", lambda: [randn(2, 70, L), randn(70, 4, scale=0.5), randn(70), randn(2, 70, 3)],
        lambda x, w, b, s0, backend: causal_conv1d(x, w, b, "silu", initial_state=s0, output_final_state=True,
                                                   backend=backend),
        ["x", "w", "bias", "s0"], both, device)

    # selective_scan with per-step B and C, D, z, delta_bias, softplus, initial and final state
    D, N = 40, 16
    rows += _check_float64(
        "selective_scan", lambda: [randn(2, D, L), randn(2, D, L, scale=0.5), -rand(D, N, lo=0.5, hi=4.0),
                                   randn(2, N, L), randn(2, N, L), randn(D), randn(2, D, L), randn(D, scale=0.5),
                                   randn(2, D, N)],
        lambda u, dt, A, B, C, Dv, z, db, h0, backend: selective_scan(
            u, dt, A, B, C, Dv, z, db, True, initial_state=h0, output_final_state=True, backend=backend),
        ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0"], both, device)

    # selective_scan with grouped B and C (Mamba-2 style groups, Vim's layout)
    rows += _check_float64(
        "selective_scan, 2 groups", lambda: [randn(2, D, L), randn(2, D, L, scale=0.5), -rand(D, N, lo=0.5, hi=4.0),
                                             randn(2, 2, N, L), randn(2, 2, N, L)],
        lambda u, dt, A, B, C, backend: selective_scan(u, dt, A, B, C, delta_softplus=True, backend=backend),
        ["u", "delta", "A", "B", "C"], lambda o: ([o[0]], [torch.ones_like(o[0])]), device)

    # wkv (RWKV-4) with a state in and out
    C = 75
    rows += _check_float64(
        "wkv", lambda: [randn(C, scale=0.5), randn(C, scale=0.5), randn(2, L, C), randn(2, L, C),
                        randn(2, C, scale=0.1), rand(2, C, lo=0.5, hi=1.5), randn(2, C, scale=0.1)],
        lambda w, u, k, v, aa, bb, pp, backend: _wkv_flat(w, u, k, v, (aa, bb, pp), backend),
        ["w", "u", "k", "v", "aa", "bb", "pp"], lambda o: (list(o), [torch.ones_like(t) for t in o]), device)

    # decayed linear attention: input-dependent decays, an initial state, every chunk size the GPU may use
    for chunk in (16, 32, 64, 128):
        rows += _check_float64(
            f"decayed_linear_attention, chunk {chunk}",
            lambda: [randn(2, L, 3, 80), randn(2, L, 3, 80), randn(2, L, 3, 72), -rand(2, L, 3, lo=0.0, hi=0.3),
                     randn(2, 3, 80, 72, scale=0.1)],
            lambda q, k, v, ld, h0, backend, chunk=chunk: decayed_linear_attention(
                q, k, v, ld, initial_state=h0, output_final_state=True,
                chunk_size=chunk if backend == "triton" else None, backend=backend),
            ["q", "k", "v", "log_decay", "h0"], both, device)
    # ... and groups of q and k shared by heads (Mamba-2's ngroups)
    rows += _check_float64(
        "decayed_linear_attention, 1 group",
        lambda: [randn(2, L, 1, 64), randn(2, L, 1, 64), randn(2, L, 4, 32), -rand(2, L, 4, lo=0.0, hi=0.3)],
        lambda q, k, v, ld, backend: decayed_linear_attention(q, k, v, ld, backend=backend),
        ["q", "k", "v", "log_decay"], lambda o: ([o[0]], [torch.ones_like(o[0])]), device)

    rows += _lif_checks(randn, device, quick)
    return rows


def _wkv_flat(w, u, k, v, state, backend):
    y, s = wkv(w, u, k, v, state, output_final_state=True, backend=backend)
    return y, s.aa, s.bb, s.pp


def _lif_checks(randn, device: str, quick: bool) -> list[dict]:
    """LIF against the reference in the same dtype: the spikes that differ, then the membrane and the
    input gradient (and the gradients of a learnable time constant and threshold)."""
    T, lanes = 16, (5, 999 if quick else 9999)
    rows = []
    for label, kwargs in [
        ("lif_scan, hard reset", dict(v_reset=0.0)),
        ("lif_scan, soft reset, learnable tau and threshold", dict(v_reset=None, learn=True)),
        ("lif_scan, snntorch", dict(convention="snntorch")),
    ]:
        kwargs = dict(kwargs)
        learn = kwargs.pop("learn", False)
        x = randn(T, *lanes, scale=1.5)
        for dtype in (torch.float32, torch.bfloat16):
            results = {}
            for backend in ("reference", "triton"):
                xs = x.to(dtype).requires_grad_()
                tau = torch.tensor(0.5, device=device, requires_grad=True) if learn else 0.5
                th = torch.tensor(1.0, device=device, requires_grad=True) if learn else 1.0
                (s, v), _ = lif_scan(xs, tau_inv=tau, v_threshold=th, return_v_seq=True, backend=backend, **kwargs)
                leaves = [xs] + ([tau, th] if learn else [])
                grads = torch.autograd.grad((s, v), leaves, (torch.ones_like(s), torch.ones_like(v)))
                results[backend] = (s, v, grads)
            s_ref, v_ref, g_ref = results["reference"]
            s, v, gr = results["triton"]
            errors = {"spikes differing": float((s != s_ref).float().mean()), "v": rel_err(v, v_ref)}
            errors.update({f"d{n}": rel_err(a, b) for n, a, b in zip(["x", "tau_inv", "v_threshold"], gr, g_ref)})
            rows.append(_check_row(label, dtype, errors))
    return rows


# ----- timings ------------------------------------------------------------------------------------------

def _time_cases(cases: dict[str, Callable[[], object]], bench, rep_ms: int, slow: set[str]) -> dict[str, dict]:
    """Each case's median ms (cases in ``slow`` with a short repeat); a case that raises is reported."""
    out = {}
    for name, fn in cases.items():
        try:
            fn()                                   # compile, allocate
            out[name] = {"ms": bench(fn, 30 if name in slow else rep_ms)}
            print(f"    {name}: {out[name]['ms']:.3f} ms", flush=True)
        except Exception as exc:  # a peer that fails on this machine is reported, not fatal
            out[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
            print(f"    {name}: {out[name]['error']}", flush=True)
    return out


def _grad_all(out_fn, leaves, gouts):
    """:func:`fwd_bwd` of a closure ``out_fn()`` over ``leaves``, with fixed output gradients ``gouts``."""
    return fwd_bwd(lambda *_: out_fn(), leaves, lambda out: (out, gouts))


def timings(device: str, quick: bool, bench, rep_ms: int, only: str | None = None,
            batches: tuple[int, ...] = (1, 8), on_record: Callable[[dict], object] = lambda row: None) -> None:
    """Time every workload (the chunked decayed linear attention first); ``on_record`` receives each
    workload's row as soon as it is measured. ``only``: the workloads whose name starts with it."""
    torch.manual_seed(0)
    dev = dict(device=device)

    def record(name, workload, cases, slow=(), note=""):
        print(f"{name} ({workload}):", flush=True)
        on_record({"name": name, "workload": workload, "cases": _time_cases(cases, bench, rep_ms, set(slow)),
                   "note": note})

    for name, run in WORKLOADS.items():
        if only is None or name.startswith(only):
            run(record, dev, quick, batches)


def _time_dla(record, dev: dict, quick: bool, batches: tuple[int, ...] = (1,)) -> None:
    """Decayed linear attention at the CPU benchmark's size (one Mamba-2 layer's SSD) and at batch 8."""
    device = dev["device"]
    # decayed linear attention at the CPU benchmark's size (one Mamba-2 layer's SSD), and at batch 8
    H, K, V, L = (4, 64, 32, 256) if quick else (24, 128, 64, 2048)
    for B in ((1,) if quick else batches):
        for dtype in (torch.float32, torch.bfloat16):
            q, k = torch.randn(B, L, H, K, **dev) / math.sqrt(K), torch.randn(B, L, H, K, **dev)
            v, gdo = torch.randn(B, L, H, V, **dev), torch.randn(B, L, H, V, **dev)
            dt = torch.exp(torch.empty(B, L, H, **dev).uniform_(math.log(0.001), math.log(0.1)))
            ld = dt * -torch.empty(H, **dev).uniform_(1, 16)
            leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)] + [ld.clone().requires_grad_()]
            gd = gdo.to(dtype)
            cases = {}
            for chunk in (32, 64, 128):
                cases[f"neurostep triton, chunk {chunk}"] = _grad_all(
                    lambda c=chunk, lv=leaves: decayed_linear_attention(*lv, scale=1.0, chunk_size=c,
                                                                        backend="triton")[0],
                    leaves, [gd])
            try:
                from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan

                # the same function in Mamba-2's leaves: x = v / dt, A per head, B = k, C = q
                cases["transformers mamba2_chunk_scan (torch), chunk 256"] = _transformers_ssd(
                    mamba2_chunk_scan, B, L, H, K, V, dtype, device, gd)
            except Exception as exc:
                print(f"transformers' Mamba-2 path not measured: {exc}")
            if dtype == torch.float32 and B == 1:
                cases["reference (token loop)"] = _grad_all(
                    lambda lv=leaves: decayed_linear_attention(*lv, scale=1.0, backend="reference")[0], leaves, [gd])
            note = ""
            try:
                from fla.ops.simple_gla import chunk_simple_gla

                cases["flash-linear-attention chunk_simple_gla"] = _grad_all(
                    lambda lv=leaves: chunk_simple_gla(*lv[:3], g=lv[3], scale=1.0)[0], leaves, [gd])
                # the same function first: flash-linear-attention's output and gradients against ours
                pick = lambda o, gd=gd: ([o], [gd])  # noqa: E731
                o_ours, ours = fwd_bwd(lambda *lv: decayed_linear_attention(*lv, scale=1.0, chunk_size=64,
                                                                            backend="triton")[0], leaves, pick)()
                o_theirs, theirs = fwd_bwd(lambda *lv: chunk_simple_gla(*lv[:3], g=lv[3], scale=1.0)[0], leaves,
                                           pick)()
                diffs = [rel_err(o_theirs, o_ours)] + [rel_err(a, b) for a, b in zip(theirs, ours)]
                note = ("flash-linear-attention against neurostep (relative error of the output and of the "
                        f"q, k, v, log-decay gradients): {', '.join(f'{d:.1e}' for d in diffs)}")
            except Exception as exc:
                print(f"flash-linear-attention not measured: {exc}")
            record("decayed_linear_attention forward+backward", f"B={B}, H={H}, K={K}, V={V}, L={L}, {str(dtype)[6:]}",
                   cases, slow={"reference (token loop)", "transformers mamba2_chunk_scan (torch), chunk 256"},
                   note=note)


def _time_lif(record, dev: dict, quick: bool, batches: tuple[int, ...] = (1,)) -> None:
    """LIF at T=32 against spikingjelly on CUDA and two copies of the tensor."""
    # LIF, T=32
    T, Nn = (8, 1 << 16) if quick else (32, 1 << 22)
    x = torch.randn(T, Nn, **dev) * 1.5
    gs = torch.randn(T, Nn, **dev)

    def lif(backend):
        xs = x.detach().requires_grad_()
        return _grad_all(lambda: lif_scan(xs, tau_inv=0.5, v_threshold=1.0, v_reset=0.0, surrogate="sigmoid",
                                          alpha=4.0, backend=backend)[0], [xs], [gs])
    cases = {"neurostep triton": lif("triton"), "reference (torch loop)": lif("reference")}
    try:
        from spikingjelly.activation_based import neuron, surrogate

        node = neuron.LIFNode(tau=2.0, v_threshold=1.0, v_reset=0.0, surrogate_function=surrogate.Sigmoid(4.0),
                              step_mode="m")

        def sj():
            node.reset()
            xs = x.detach().requires_grad_()
            return torch.autograd.grad(node(xs), [xs], [gs])
        cases["spikingjelly 2.0 LIFNode (m)"] = sj
    except Exception as exc:
        print(f"spikingjelly not measured: {exc}")
    y1, y2 = torch.empty_like(x), torch.empty_like(x)
    cases["roofline (two copies of (T, N))"] = lambda: (y1.copy_(x), y2.copy_(gs))
    record("LIF forward+backward", f"T={T}, N={Nn}, fp32", cases, slow={"reference (torch loop)"})


def _time_lif_blocks(record, dev: dict, quick: bool, batches: tuple[int, ...] = (1,)) -> None:
    """The LIF Triton kernels alone at each block size and warp count (the op's own is BLOCK 256, 4 warps)."""
    import triton

    from neurostep.kernels.lif import triton as lif_triton

    T, N = (8, 1 << 12) if quick else (32, 1 << 22)
    x = torch.randn(T, N, **dev) * 1.5
    gs = torch.randn(T, N, **dev)
    v0 = torch.zeros(N, **dev)
    s, h, out = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
    last, dummy = torch.empty(N, **dev), torch.empty(1, **dev)
    par = torch.tensor([0.5, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0, 4.0], **dev)
    configs = [(256, 4), (1024, 4)] if quick else [(b, w) for b in (256, 512, 1024, 2048) for w in (4, 8)]
    cases, baseline, differ = {}, None, []
    for block, warps in configs:
        grid = (triton.cdiv(N, block),)
        part = torch.empty(grid[0], **dev)

        def fwd(block=block, warps=warps, grid=grid):
            lif_triton._lif_fwd_kernel[grid](x, v0, v0, s, h, dummy, dummy, last, dummy, par, T, N, HARD=True,
                                             DECAY=True, SNN=False, SNN_RESET=0, ADAPTIVE=False, WRITE_VSEQ=False,
                                             BLOCK=block, num_warps=warps, **lif_triton._launch_opts())

        def bwd(block=block, warps=warps, grid=grid, part=part):
            lif_triton._lif_bwd_kernel[grid](dummy, v0, h, dummy, gs, dummy, dummy, dummy, out, last, dummy, part,
                                             part, par, T, N, (T - 1) * N, HARD=True, DECAY=True, DETACH=False,
                                             SNN=False, SNN_RESET=0, ADAPTIVE=False, HAS_GS=True, HAS_GVSEQ=False,
                                             HAS_GVLAST=False, HAS_GALAST=False, NEED_K=False, SID=0, BLOCK=block,
                                             num_warps=warps, **lif_triton._launch_opts())
        fwd()
        bwd()
        got = (s.clone(), h.clone(), out.clone())
        if baseline is None:
            baseline = got
        elif not all(torch.equal(a, b) for a, b in zip(got, baseline)):
            differ.append(f"BLOCK {block}, {warps} warps")
        cases[f"neurostep forward kernel, BLOCK {block}, {warps} warps"] = fwd
        cases[f"neurostep backward kernel, BLOCK {block}, {warps} warps"] = bwd
    cases["roofline (one copy of (T, N))"] = lambda: out.copy_(x)
    record("LIF Triton kernels", f"T={T}, N={N}, fp32, hard reset, sigmoid surrogate", cases,
           note="forward moves three (T, N) tensors (x in, spikes and h out), backward three (h and the "
                "spike gradient in, the input gradient out): 1.5 copies each. "
                + (f"Results differ from the first configuration's: {', '.join(differ)}" if differ else
                   "Every configuration gives the same spikes, h and gradient, bit for bit."))


def _time_linear_scan(record, dev: dict, quick: bool, batches: tuple[int, ...] = (1,)) -> None:
    """The linear scan at batch 8, Mamba-130m-sized lanes."""
    # linear scan
    B, L, lanes = (2, 128, 256) if quick else (8, 1024, 1536 * 16)
    a = torch.rand(B, L, lanes, **dev) * 0.5 + 0.5
    b = torch.randn(B, L, lanes, **dev)
    gh = torch.randn(B, L, lanes, **dev)

    def ls(backend):
        la, lb = a.detach().requires_grad_(), b.detach().requires_grad_()
        return _grad_all(lambda: linear_scan(la, lb, backend=backend)[0], [la, lb], [gh])
    record("linear_scan forward+backward", f"B={B}, L={L}, lanes={lanes}, fp32",
           {"neurostep triton": ls("triton"), "reference (torch loop)": ls("reference")},
           slow={"reference (torch loop)"})


def _time_causal_conv1d(record, dev: dict, quick: bool, batches: tuple[int, ...] = (1,)) -> None:
    """Mamba's causal convolution (width 4, SiLU) against torch's conv1d."""
    # causal conv1d (Mamba's: width 4, SiLU)
    B, Dm, L = (2, 64, 128) if quick else (8, 1536, 1024)
    xc = torch.randn(B, Dm, L, **dev)
    wc = torch.randn(Dm, 4, **dev) * 0.5
    bc = torch.randn(Dm, **dev)
    gc = torch.randn(B, Dm, L, **dev)
    for dtype in (torch.float32, torch.bfloat16):
        leaves = [t.to(dtype).requires_grad_() for t in (xc, wc, bc)]
        gcd = gc.to(dtype)
        conv = _grad_all(lambda lv=leaves: causal_conv1d(*lv, "silu", backend="triton")[0], leaves, [gcd])
        torch_conv = _grad_all(lambda lv=leaves: torch.nn.functional.silu(torch.nn.functional.conv1d(
            lv[0], lv[1][:, None], lv[2], padding=3, groups=Dm)[..., :L]), leaves, [gcd])
        record("causal_conv1d forward+backward", f"B={B}, D={Dm}, L={L}, W=4, SiLU, {str(dtype)[6:]}",
               {"neurostep triton": conv, "torch conv1d + silu (transformers' path)": torch_conv})


def _time_selective_scan(record, dev: dict, quick: bool, batches: tuple[int, ...] = (1,)) -> None:
    """One Mamba-130m layer of the selective scan."""
    # selective scan, one Mamba-130m layer
    B, Dm, N, L = (2, 64, 16, 128) if quick else (8, 1536, 16, 1024)
    ss_in = [torch.randn(B, Dm, L, **dev), torch.randn(B, Dm, L, **dev) * 0.5 - 1,
             -torch.rand(Dm, N, **dev) * 15 - 1, torch.randn(B, N, L, **dev), torch.randn(B, N, L, **dev),
             torch.randn(Dm, **dev), torch.randn(B, Dm, L, **dev)]
    gy = torch.randn(B, Dm, L, **dev)
    for dtype in (torch.float32, torch.bfloat16):
        def ss(backend, dtype=dtype):
            leaves = [t.to(dtype if i != 2 else torch.float32).requires_grad_() for i, t in enumerate(ss_in)]
            return _grad_all(lambda: selective_scan(*leaves, delta_softplus=True, backend=backend)[0], leaves,
                             [gy.to(dtype)])
        record("selective_scan forward+backward", f"B={B}, D={Dm}, N={N}, L={L}, {str(dtype)[6:]}",
               {"neurostep triton": ss("triton"), "reference (torch loop)": ss("reference")},
               slow={"reference (torch loop)"})


def _time_wkv(record, dev: dict, quick: bool, batches: tuple[int, ...] = (1,)) -> None:
    """One RWKV-4 layer's WKV."""
    # wkv, one RWKV-4 layer
    B, L, C = (2, 128, 64) if quick else (8, 1024, 768)
    wk = [torch.randn(C, **dev) * 0.5, torch.randn(C, **dev) * 0.5, torch.randn(B, L, C, **dev),
          torch.randn(B, L, C, **dev)]
    gw = torch.randn(B, L, C, **dev)

    def wk_run(backend):
        leaves = [t.detach().requires_grad_() for t in wk]
        return _grad_all(lambda: wkv(*leaves, backend=backend)[0], leaves, [gw])
    record("wkv forward+backward", f"B={B}, T={L}, C={C}, fp32",
           {"neurostep triton": wk_run("triton"), "reference (torch loop)": wk_run("reference")},
           slow={"reference (torch loop)"})


WORKLOADS = {
    "decayed_linear_attention": _time_dla,
    "LIF forward+backward": _time_lif,
    "LIF Triton kernels": _time_lif_blocks,
    "linear_scan": _time_linear_scan,
    "causal_conv1d": _time_causal_conv1d,
    "selective_scan": _time_selective_scan,
    "wkv": _time_wkv,
}
"""The timed workloads in the order they run; ``--only`` picks by prefix of these names."""


def _transformers_ssd(scan, B, L, H, N, P, dtype, device, grad):
    x = torch.randn(B, L, H, P, device=device, dtype=dtype).requires_grad_()
    dt = torch.exp(torch.empty(B, L, H, device=device).uniform_(math.log(0.001), math.log(0.1))).requires_grad_()
    A = (-torch.empty(H, device=device).uniform_(1, 16)).requires_grad_()
    Bm = torch.randn(B, L, H, N, device=device, dtype=dtype).requires_grad_()
    Cm = torch.randn(B, L, H, N, device=device, dtype=dtype).requires_grad_()
    leaves = [x, dt, A, Bm, Cm]
    return _grad_all(lambda: scan(x, dt, A, Bm, Cm, chunk_size=256), leaves, [grad])


# ----- report -------------------------------------------------------------------------------------------

def gpu_info(device: str) -> dict:
    if device != "cuda":
        return {"device": device}
    import triton

    p = torch.cuda.get_device_properties(0)
    info = {"gpu": p.name, "multiprocessors": p.multi_processor_count, "memory_gib": round(p.total_memory / 2**30, 1),
            "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__}
    big = torch.empty(1 << 28, device="cuda")           # 1 GiB: several times the L2
    dst = torch.empty_like(big)
    from triton.testing import do_bench

    ms = do_bench(lambda: dst.copy_(big), return_mode="median")
    info["copy_gb_per_s"] = round(2 * big.numel() * 4 / (ms * 1e-3) / 1e9)
    return info


def result_tables(check_rows: list[dict], timing_rows: list[dict]) -> list[dict]:
    """The checks as one table, then one table per timed workload with each contender's time over
    neurostep's best."""
    tables = [table("Triton backends against the float64 reference (|out - ref| / |ref|, worst over outputs and "
                    "gradients; LIF: against the reference in the same dtype)",
                    ["op", "dtype", "worst", "within tolerance"],
                    [[r["op"], r["dtype"], f"{r['worst']:.1e}", "yes" if r["ok"] else "no"] for r in check_rows])]
    for t in timing_rows:
        ours = [v["ms"] for k, v in t["cases"].items() if k.startswith("neurostep") and "ms" in v]
        best = min(ours) if ours else None
        rows = []
        for name, v in t["cases"].items():
            if "ms" in v:
                rows.append([name, f"{v['ms']:.3f} ms",
                             ratio(v["ms"] / best) if best and not name.startswith("neurostep") else ""])
            else:
                rows.append([name, "not measured", v["error"]])
        tables.append(table(f"{t['name']}, {t['workload']}", ["contender", "median", "time / neurostep's best"],
                            rows))
    return tables


def summary_rows(timing_rows: list[dict], gpu: str) -> list[dict]:
    """The README's rows: each float32 workload, neurostep's best time and every other contender's ratio
    (the roofline excluded)."""
    rows = []
    for t in timing_rows:
        if "bfloat16" in t["workload"]:
            continue
        ours = {k: v["ms"] for k, v in t["cases"].items() if k.startswith("neurostep") and "ms" in v}
        if not ours:
            continue
        best = min(ours.values())
        peers = ", ".join(f"{k} {ratio(v['ms'] / best)}" for k, v in t["cases"].items()
                          if not k.startswith(("neurostep", "roofline")) and "ms" in v)
        if peers:
            rows.append(summary_row(f"{t['name']} on {gpu}", t["workload"], f"{best:.2f} ms", peers))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument("--skip-timings", action="store_true")
    parser.add_argument("--only", help="time only the workloads whose name starts with this (e.g. lif_scan)")
    parser.add_argument("--batches", default="1,8", help="batch sizes of the decayed linear attention timings")
    parser.add_argument("--rep-ms", type=int, default=200, help="milliseconds of repeats per timed case")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu.json"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu under TRITON_INTERPRET=1 to test the script")
    load_before = load_average()
    info = gpu_info(args.device)
    print(json.dumps(info), flush=True)
    check_rows: list[dict] = []
    timing_rows: list[dict] = []

    def save(complete: bool = False) -> Path:
        # written after every section and every timed workload: a run stopped at a time limit keeps what it measured
        return write_result(args.out, {"gpu": info, "checks": check_rows, "timings": timing_rows,
                                       "complete": complete}, load_before=load_before,
                            tables=result_tables(check_rows, timing_rows),
                            summary=summary_rows(timing_rows, info.get("gpu", args.device)))

    if not args.skip_checks:
        try:
            check_rows.extend(checks(args.device, args.quick))
        except Exception:
            traceback.print_exc()
        for r in check_rows:
            print(f"{'ok ' if r['ok'] else 'BAD'} {r['op']:<52} {r['dtype']:<9} worst {r['worst']:.2e}  "
                  + " ".join(f"{k}={v:.1e}" for k, v in r["errors"].items()), flush=True)
        save()
    if not args.skip_timings:
        batches = tuple(int(b) for b in args.batches.split(","))
        timings(args.device, args.quick, timer(args.device), args.rep_ms, args.only, batches,
                on_record=lambda row: (timing_rows.append(row), save()))
    path = save(complete=True)
    for t in result_tables(check_rows, timing_rows)[1:]:
        print(t["title"])
        for row in t["rows"]:
            print("   ", " | ".join(row))
    bad = [r for r in check_rows if not r["ok"]]
    print(f"{len(check_rows) - len(bad)}/{len(check_rows)} checks within tolerance; wrote {path}")


if __name__ == "__main__":
    main()
