"""Selective scan forward+backward on CPU: neurostep vs mambapy's parallel scan vs mamba-ssm's reference formula.

Default shape: batch 1, dim 1536, L 1024, N 16, fp32 (Mamba-130m's inner width at a 1k context),
with the full Mamba usage: D, z gate, delta_bias and softplus, per-step B and C. All contenders get
the same inputs, each in its native layout (untimed), and are timed forward+backward (gradients of
u, delta, A, B, C, D, z). Peers:

- mambapy: ``MambaBlock.selective_scan`` (``mambapy.pscan``; it materializes ``(B, L, D, N)``
  tensors), with softplus/bias before and the SiLU gate after, as its ``Mamba`` runs it on CPU.
- selective_scan_ref: mamba-ssm's reference formula (one torch op chain per step, autograd for the
  backward), transcribed here from its equations. It is timed once at full L (about 70 s). Its
  time grows faster than L: the backward of every per-step slice ``decay[:, :, i]`` allocates and
  adds a zero-filled gradient of the whole ``(batch, dim, L, N)`` tensor, so the backward moves
  O(L^2 N dim) bytes. Timing it at a short ``--ref-length`` and scaling linearly (the earlier
  default) underestimated it 13-fold (5.3 s against 68 s measured at L = 1024).

The roofline bounds the fused kernel from below by memory traffic (inputs read and gradients written
once, at the measured copy bandwidth) and by exponentials (two passes of L*D*N exps, at the measured
vectorized exp rate: the forward's, and the backward's recomputation, since storing the decays would
move 2 x 100 MB instead); the table prints measured / bound.

    .venv/bin/python benchmarks/ssm.py            # full run
    .venv/bin/python benchmarks/ssm.py --quick    # a short run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import load_average, ratio, summary_row, table, write_result  # noqa: E402

from neurostep.kernels.selective_scan import selective_scan_fn  # noqa: E402


def _time(fn, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def selective_scan_ref_formula(u, delta, A, B, C, D, z, delta_bias):
    """mamba-ssm's ``selective_scan_ref`` math, written from its equations: B, C ``(batch, N, L)``."""
    delta = F.softplus(delta + delta_bias[..., None])
    decay = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    drive = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    x = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        x = decay[:, :, i] * x + drive[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    y = torch.stack(ys, dim=2)
    return (y + u * D[:, None]) * F.silu(z)


def _inputs(batch, dim, length, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, dim, length, generator=g)
    delta = torch.randn(batch, dim, length, generator=g) * 0.5 - 2.0
    A = -torch.exp(torch.log(torch.arange(1, n + 1, dtype=torch.float32)))[None].repeat(dim, 1)
    B = torch.randn(batch, n, length, generator=g)
    C = torch.randn(batch, n, length, generator=g)
    D = torch.ones(dim)
    z = torch.randn(batch, dim, length, generator=g)
    bias = torch.rand(dim, generator=g) * 0.1
    grad = torch.randn(batch, dim, length, generator=g)
    return u, delta, A, B, C, D, z, bias, grad


def _leaves(*ts):
    return [t.detach().clone().requires_grad_() for t in ts]


def run_neurostep(inputs, backend="cpu"):
    u, delta, A, B, C, D, z, bias, grad = inputs
    leaves = _leaves(u, delta, A, B, C, D, z)

    def fn():
        lu, ld, lA, lB, lC, lD, lz = leaves
        out = selective_scan_fn(lu, ld, lA, lB, lC, lD, lz, bias, delta_softplus=True, backend=backend)
        torch.autograd.grad(out, leaves, grad)
    return fn


def run_mambapy(inputs):
    from mambapy.mamba import MambaBlock

    u, delta, A, B, C, D, z, bias, grad = inputs
    # mambapy's native layout: (batch, L, channels)
    leaves = _leaves(u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), D,
                     z.transpose(1, 2))
    grad_t = grad.transpose(1, 2).contiguous()

    def fn():
        lu, ld, lA, lB, lC, lD, lz = leaves
        dt = F.softplus(ld + bias)
        y = MambaBlock.selective_scan(None, lu, dt, lA, lB, lC, lD) * F.silu(lz)
        torch.autograd.grad(y, leaves, grad_t)
    return fn


def run_ref(inputs):
    u, delta, A, B, C, D, z, bias, grad = inputs
    leaves = _leaves(u, delta, A, B, C, D, z)

    def fn():
        out = selective_scan_ref_formula(*leaves[:6], leaves[6], bias)
        torch.autograd.grad(out, leaves, grad)
    return fn


def measure_copy_bandwidth() -> float:
    x = torch.empty(64 * 2**20 // 4 * 4)  # 256 MB of fp32
    x.fill_(1.0)
    y = torch.empty_like(x)
    times = _time(lambda: y.copy_(x), 5, 1)
    return 2 * x.numel() * 4 / min(times)  # read + write


def measure_exp_rate() -> dict[str, float]:
    import numba
    import numpy as np

    from neurostep.kernels.numba_exp import vexp

    @numba.njit(parallel=True)
    def vexp_all(x, out):
        for i in numba.prange(x.shape[0]):
            for j in range(x.shape[1]):
                out[i, j] = vexp(x[i, j])

    x = torch.rand(2048, 4096) * -8
    out = torch.empty_like(x)
    t_torch = min(_time(lambda: torch.exp(x, out=out), 5, 1))
    xn, on = x.numpy(), np.empty_like(x.numpy())
    t_vexp = min(_time(lambda: vexp_all(xn, on), 5, 1))
    return {"torch_exp_per_s": x.numel() / t_torch, "numba_vexp_per_s": x.numel() / t_vexp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ref-length", type=int, default=None,
                        help="time selective_scan_ref at this L and scale linearly (an underestimate; default: "
                             "full L, about 70 s)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "ssm.json"))
    args = parser.parse_args()

    from neurostep.kernels.numba_launch import set_threads

    set_threads(args.threads)
    batch, dim, length, n = args.batch, args.dim, args.length, args.state
    repeats = 3 if args.quick else 10
    peer_repeats = 1 if args.quick else 3
    inputs = _inputs(batch, dim, length, n)
    load_before = load_average()

    results: dict[str, dict] = {}
    t = _time(run_neurostep(inputs, "cpu"), repeats, 2)
    results["neurostep cpu"] = {"median_s": statistics.median(t), "min_s": min(t), "times": t}
    t = _time(run_mambapy(inputs), peer_repeats, 1)
    results["mambapy pscan"] = {"median_s": statistics.median(t), "min_s": min(t), "times": t}
    ref_length = length if args.ref_length is None else min(args.ref_length, length)
    ref_inputs = inputs if ref_length == length else _inputs(batch, dim, ref_length, n)
    t = _time(run_ref(ref_inputs), 1, 0)
    scale = length / ref_length
    results["selective_scan_ref"] = {"median_s": statistics.median(t) * scale, "min_s": min(t) * scale, "times": t,
                                     "measured_at_length": ref_length, "scaled_by": scale}

    bandwidth = measure_copy_bandwidth()
    exp_rates = measure_exp_rate()
    elems = batch * dim * length
    # forward reads u, delta, z, B, C and writes out; backward reads them and grad_out again and writes
    # du, ddelta, dz, dB, dC (dA, dD are small): 12 passes over (batch, dim, L)-sized fp32 tensors
    bytes_moved = 12 * elems * 4 + 4 * 2 * batch * n * length * 4
    exps = 2 * elems * n  # forward, and the backward's recomputation of the decays
    bound_mem = bytes_moved / bandwidth
    bound_exp = exps / exp_rates["numba_vexp_per_s"]
    ns = results["neurostep cpu"]["median_s"]
    load_after = load_average()

    print(f"selective scan fwd+bwd, batch {batch}, dim {dim}, L {length}, N {n}, fp32, {args.threads} threads")
    print(f"load average before: {load_before}\nload average after:  {load_after}")
    print(f"{'contender':<22}{'median ms':>12}{'x neurostep':>14}")
    rows = []
    for name, r in results.items():
        note = f"  (timed at L={r['measured_at_length']}, scaled x{r['scaled_by']:.0f})" if r.get("scaled_by", 1) != 1 \
            else ""
        print(f"{name:<22}{1e3 * r['median_s']:>12.1f}{r['median_s'] / ns:>14.1f}{note}")
        rows.append([name + note, f"{1e3 * r['median_s']:.1f}", f"{r['median_s'] / ns:.1f}x"])
    roofline = (f"roofline: copy bandwidth {bandwidth / 1e9:.1f} GB/s -> memory bound {1e3 * bound_mem:.2f} ms; "
                f"vexp {exp_rates['numba_vexp_per_s'] / 1e9:.2f} G/s "
                f"(torch.exp {exp_rates['torch_exp_per_s'] / 1e9:.2f} G/s) -> "
                f"{exps / 1e6:.0f} M exps bound {1e3 * bound_exp:.1f} ms; "
                f"measured / max(bounds) = {ns / max(bound_mem, bound_exp):.1f}")
    print(roofline)

    record = {
        "benchmark": "selective_scan_fwd_bwd",
        "shape": {"batch": batch, "dim": dim, "length": length, "state": n},
        "threads": args.threads,
        "quick": args.quick,
        "results": results,
        "ratios_vs_neurostep": {k: v["median_s"] / ns for k, v in results.items()},
        "roofline": {"copy_bandwidth_Bps": bandwidth, **exp_rates, "bytes_moved": bytes_moved, "exps": exps,
                     "bound_memory_s": bound_mem, "bound_exp_s": bound_exp,
                     "measured_over_bound": ns / max(bound_mem, bound_exp)},
    }
    title = (f"selective scan forward+backward, batch {batch}, dim {dim}, L {length}, N {n}, fp32, "
             f"{args.threads} threads; {roofline}")
    peers = ", ".join(f"{name.replace(' pscan', '')} {ratio(r['median_s'] / ns)}" for name, r in results.items()
                      if name != "neurostep cpu")
    summary = [summary_row("Selective scan, forward+backward", f"({batch}, {dim}, {length}), N={n}, fp32",
                           f"{1e3 * ns:.1f} ms", peers)]
    out = write_result(args.out, record, load_before=load_before,
                       tables=[table(title, ["contender", "median ms", "vs neurostep"], rows)], summary=summary)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
