"""Compile every CPU kernel variant into numba's disk cache ahead of the first call.

A kernel compiles on its first call in a process whose numba cache lacks it: from about 1.5 s (linear scan) to
about 7 s (the selective scan's float64 backward) on a 2-core machine in the stored run
(``benchmarks/results/compile_time.json``; up to 8.5 s in another run, with the machine's speed). Running this
module once on a machine makes every later first call load from the cache instead (under 1 s); all 22 variants
took 106 s of 2 cores (the README names the run), which is why ``make venv`` does not run it. It runs each
op's forward and backward on tiny inputs in every variant the kernels compile separately: float32 and float64,
and the layouts with a compilation of their own (the selective scan's B/C groups that do or do not align with
its channel blocks; the LIF backward that recomputes the membrane and the one that reads a saved one), and for
the LIF the loop of every surrogate gradient, which its backward compiles per surrogate on first use. The
cache lives next to the kernels' source files, or in ``NUMBA_CACHE_DIR`` when that is set, in a directory per
version of the kernel sources; it is keyed on the machine's CPU, numba's version and the contents of every
kernel source file (:mod:`~neurostep.kernels.numba_cache`), so after an upgrade or an edit the kernels compile
again on first use, as without this step.

    python -m neurostep.kernels.precompile            # every variant, two processes at a time
    python -m neurostep.kernels.precompile --list     # the variants
    python -m neurostep.kernels.precompile --only lif --jobs 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

import torch


def _leaf(*shape: int, dtype: torch.dtype, high: float | None = None) -> torch.Tensor:
    """A leaf tensor: standard normal, or uniform in ``(high - 1, high]`` when ``high`` is given."""
    t = torch.randn(*shape, dtype=dtype) if high is None else high - torch.rand(*shape, dtype=dtype)
    return t.requires_grad_()


def _selective_scan(dtype: torch.dtype, groups: int) -> torch.Tensor:
    from neurostep.kernels.selective_scan import selective_scan

    batch, dim, length, n = 2, 48, 40, 4
    u, delta = _leaf(batch, dim, length, dtype=dtype), _leaf(batch, dim, length, dtype=dtype)
    A = _leaf(dim, n, dtype=dtype, high=-0.5)
    B, C = _leaf(batch, groups, n, length, dtype=dtype), _leaf(batch, groups, n, length, dtype=dtype)
    D, z, bias = _leaf(dim, dtype=dtype), _leaf(batch, dim, length, dtype=dtype), _leaf(dim, dtype=dtype)
    return selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True, backend="cpu")[0]


def _lif(dtype: torch.dtype, convention: str) -> torch.Tensor:
    from neurostep.kernels.lif import lif_scan

    x = _leaf(6, 64, dtype=dtype)
    return lif_scan(x, tau_inv=0.5, v_threshold=1.0, convention=convention, backend="cpu")[0]


def _linear_scan(dtype: torch.dtype) -> torch.Tensor:
    from neurostep.kernels.linear_scan import linear_scan

    return linear_scan(_leaf(2, 16, 32, dtype=dtype, high=1.0), _leaf(2, 16, 32, dtype=dtype), backend="cpu")[0]


def _causal_conv1d(dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    from neurostep.kernels.causal_conv1d import causal_conv1d

    # channels last: the transpose of a token-major (B, L, D) block, as Mamba-2 passes it
    x = _leaf(2, 32, 16, dtype=dtype).transpose(1, 2) if channels_last else _leaf(2, 16, 32, dtype=dtype)
    w, b = _leaf(16, 4, dtype=dtype), _leaf(16, dtype=dtype)
    return causal_conv1d(x, w, b, activation="silu", backend="cpu")[0]


def _wkv(dtype: torch.dtype) -> torch.Tensor:
    from neurostep.kernels.wkv import wkv

    w, u = _leaf(32, dtype=dtype, high=1.0), _leaf(32, dtype=dtype)
    return wkv(w, u, _leaf(2, 16, 32, dtype=dtype), _leaf(2, 16, 32, dtype=dtype), backend="cpu")[0]


def _decayed_linear_attention(dtype: torch.dtype) -> torch.Tensor:
    from neurostep.kernels.decayed_linear_attention import decayed_linear_attention

    q, k, v = (_leaf(2, 80, 2, 8, dtype=dtype) for _ in range(3))
    g = _leaf(2, 80, 2, dtype=dtype, high=0.0)
    # with a v_scale, as Mamba-2 calls it: its backward's pass for v and the scale compiles too, and the
    # calls without one use the same kernels otherwise
    return decayed_linear_attention(q, k, v, g, v_scale=_leaf(2, 80, 2, dtype=dtype, high=1.0), backend="cpu")[0]


def _spike_linear(dtype: torch.dtype) -> torch.Tensor:
    from neurostep.kernels.spike_linear import MIN_WIDTH, spike_linear

    spikes = (torch.rand(16, MIN_WIDTH) < 0.05).to(dtype).requires_grad_(True)   # sparse: the event-driven kernels
    return spike_linear(spikes, _leaf(MIN_WIDTH, MIN_WIDTH, dtype=dtype), _leaf(MIN_WIDTH, dtype=dtype), backend="cpu")


def _spike_conv2d(dtype: torch.dtype) -> torch.Tensor:
    from neurostep.kernels.spike_conv2d import spike_conv2d

    spikes = (torch.rand(2, 4, 6, 6) < 0.05).to(dtype).requires_grad_(True)   # sparse: the event-driven kernels
    return spike_conv2d(spikes, _leaf(8, 4, 3, 3, dtype=dtype), _leaf(8, dtype=dtype), backend="cpu")


def variants() -> dict[str, Callable[[], torch.Tensor]]:
    """Each variant's name and a function whose output's sum, differentiated, runs its kernels; the
    longest compiles first, so that two processes finish together."""
    table: dict[str, Callable[[], torch.Tensor]] = {}
    for dtype, tag in ((torch.float32, "float32"), (torch.float64, "float64")):
        # one group: every block of 16 channels reads one B/C group; 6 groups of 8 of the 48 channels:
        # blocks straddle groups (the kernels' "mixed" layout, compiled on its own)
        table[f"selective_scan {tag}"] = lambda d=dtype: _selective_scan(d, 1)
        table[f"selective_scan mixed groups {tag}"] = lambda d=dtype: _selective_scan(d, 6)
    for dtype, tag in ((torch.float32, "float32"), (torch.float64, "float64")):
        table[f"decayed_linear_attention {tag}"] = lambda d=dtype: _decayed_linear_attention(d)
        table[f"lif {tag}"] = lambda d=dtype: _lif(d, "spikingjelly")
        table[f"lif snntorch {tag}"] = lambda d=dtype: _lif(d, "snntorch")
        table[f"wkv {tag}"] = lambda d=dtype: _wkv(d)
        table[f"causal_conv1d {tag}"] = lambda d=dtype: _causal_conv1d(d, False)
        table[f"causal_conv1d channels-last {tag}"] = lambda d=dtype: _causal_conv1d(d, True)
        table[f"linear_scan {tag}"] = lambda d=dtype: _linear_scan(d)
        table[f"spike_linear {tag}"] = lambda d=dtype: _spike_linear(d)
        table[f"spike_conv2d {tag}"] = lambda d=dtype: _spike_conv2d(d)
    return table


def _lif_surrogates(name: str) -> None:
    """For a LIF variant, what its backward compiles per surrogate, for every surrogate (the variant itself runs
    the default one): the snntorch convention's surrogate functions, the spikingjelly LIF's recomputing backward
    (with its default flags), each compiled on first use like a variant."""
    from neurostep.kernels.lif.cpu import recompute_backward_function
    from neurostep.kernels.lif.surrogates import SURROGATES, sg_block_function

    dtype = name.rsplit(" ", 1)[1]
    function = sg_block_function if "snntorch" in name else recompute_backward_function
    for surrogate in SURROGATES.values():
        function(surrogate.sid, dtype)


def compile_variant(name: str) -> float:
    """Run variant ``name`` forward and backward (compiling or loading its kernels), and compile what its
    kernels take per option (the LIF's surrogates); returns its seconds."""
    torch.manual_seed(0)
    start = time.perf_counter()
    variants()[name]().sum().backward()
    if name.startswith("lif"):
        _lif_surrogates(name)
    return time.perf_counter() - start


def precompile(names: list[str], jobs: int = 2, log: Callable[[str], None] = print) -> dict[str, float]:
    """Compile the variants ``names`` in ``jobs`` fresh processes (each runs with one torch thread);
    returns each one's seconds."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    seconds: dict[str, float] = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        futures = {pool.submit(compile_variant, name): name for name in names}
        for fut in as_completed(futures):
            name = futures[fut]
            seconds[name] = fut.result()
            log(f"  {name}: {seconds[name]:.1f} s")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neurostep.kernels.precompile",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes compiling at a time (default: 2, or 1 on a 1-core machine)")
    parser.add_argument("--only", default="", help="the variants whose name starts with this")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    args = parser.parse_args(argv)
    names = [name for name in variants() if name.startswith(args.only)]
    if not names:
        parser.error(f"no variant starts with {args.only!r}; see --list")
    if args.list:
        print("\n".join(names))
        return 0
    start = time.perf_counter()
    print(f"compiling {len(names)} CPU kernel variants into numba's cache ({args.jobs} at a time)", flush=True)
    precompile(names, args.jobs, log=lambda line: print(line, flush=True))
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
