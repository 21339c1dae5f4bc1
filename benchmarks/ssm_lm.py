"""Mamba language model on CPU: neurostep ``MambaLM`` vs Hugging Face ``MambaForCausalLM``, same weights.

Both models are the Mamba-130m configuration (d_model 768, 24 layers, vocab 50280) with random
weights: Hugging Face's model is built from ``MambaConfig`` (no download) and ours is loaded from
its state_dict through ``MambaLM.from_hf``. Measured in the same run, interleaved, fp32,
``torch.inference_mode``:

- prefill: a 512-token prompt, producing the decode state and the last token's logits (what
  generation needs; Hugging Face is called with ``use_cache=True, logits_to_keep=1``);
- greedy decoding: tokens/s of the decode loop, ``(N - 1) / (t(generate N) - t(generate 1))``
  from each library's own ``generate`` (so the prefill is excluded for both); the generated
  tokens must be identical (asserted);
- the same decoding with neurostep's bf16 and int8 decode weights (``MambaLM.prepare_decode``:
  ``in_proj``, ``out_proj`` and the head converted once, the state and the small projections fp32).

The roofline of decoding is the weight stream: every token reads all decode weights once, 516 MB
in fp32 and fewer bytes in bf16 and int8 (``MambaDecodeWeights.nbytes``). Each dtype's bound is
those bytes over the copy bandwidth, measured in the same run (numpy copy of 256 MB, read and
write counted, best of 5, as docs/reference.md's "Measured machine facts" define it).

The reduced-precision tokens are compared with fp32's but not asserted: a random-weight model of
this depth is so sensitive that rounding its weights to bf16 moves the logits by several units
within a few tokens, more than its top-2 margins, so its tokens part ways after a few steps. The
tests check greedy-token identity on trained models, where the margins are real.

    .venv/bin/python benchmarks/ssm_lm.py            # full run
    .venv/bin/python benchmarks/ssm_lm.py --quick    # a short run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import load_average, ratio, summary_row, table, write_result  # noqa: E402

from neurostep.models import count_params  # noqa: E402
from neurostep.ssm import MambaLM  # noqa: E402

COPY_BANDWIDTH_REFERENCE = 29e9  # bytes/s, numpy copy on a 2-core machine (docs/reference.md, measured machine facts)
REDUCED = ("bf16", "int8")


def copy_bandwidth(n_bytes: int = 256 * 2 ** 20, repeats: int = 5) -> float:
    """Bytes/s of a numpy copy of ``n_bytes`` (read and write counted), best of ``repeats``."""
    import numpy as np

    src = np.ones(n_bytes // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def _same_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading positions of two ``(1, L)`` token rows agree."""
    diff = (a[0] != b[0]).nonzero()
    return int(diff[0, 0]) if len(diff) else a.shape[1]


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_mamba(args: argparse.Namespace) -> dict:
    """Prefill and greedy decoding of Mamba-130m: neurostep vs transformers."""
    import transformers

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    cfg = transformers.MambaConfig(vocab_size=50280, hidden_size=768, num_hidden_layers=args.layers,
                                   state_size=16, pad_token_id=0, eos_token_id=0)
    hf = transformers.MambaForCausalLM(cfg).eval()
    ours = MambaLM.from_hf(hf).eval()
    params = count_params(ours)
    prompt = torch.randint(1, cfg.vocab_size, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    short = prompt[:, :args.decode_prompt]
    n_new = args.new_tokens

    def hf_prefill():
        return hf(prompt, use_cache=True, logits_to_keep=1).logits[:, -1]

    def ours_prefill():
        return ours.scan(prompt, last_only=True)[0][:, -1]

    def hf_generate(n):
        return hf.generate(short, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    def ours_generate(n):
        return ours.generate(short, n)

    prepare_s: dict[str, float] = {}
    weights = {"fp32": ours.prepare_decode("fp32")}
    for dtype in REDUCED:
        prepare_s[dtype], weights[dtype] = _timed(lambda dtype=dtype: ours.prepare_decode(dtype))

    def reduced_generate(dtype):
        return lambda n: ours.generate(short, n, decode_weights=weights[dtype])

    decoders = [("hf_decode", hf_generate), ("ours_decode", ours_generate)]
    decoders += [(f"ours_decode_{d}", reduced_generate(d)) for d in REDUCED]
    results: dict[str, list[float]] = {k: [] for k in ("hf_prefill", "ours_prefill", *(n for n, _ in decoders))}
    with torch.inference_mode():
        # warm-up (numba compilation, allocator) and correctness checks
        a, b = hf_prefill(), ours_prefill()
        max_err = float((a - b).abs().max())
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3 * float(a.abs().max()))
        g_hf, g_ours = hf_generate(n_new), ours_generate(n_new)
        assert g_hf.tolist() == g_ours.tolist(), f"greedy tokens differ:\n{g_hf.tolist()}\n{g_ours.tolist()}"
        agree = {d: _same_prefix(reduced_generate(d)(n_new), g_ours) - short.shape[1] for d in REDUCED}
        for _ in range(args.repeats):
            results["hf_prefill"].append(_timed(hf_prefill)[0])
            results["ours_prefill"].append(_timed(ours_prefill)[0])
            for name, gen in decoders:
                t1, _ = _timed(lambda gen=gen: gen(1))
                tn, _ = _timed(lambda gen=gen: gen(n_new))
                results[name].append(max(tn - t1, 1e-9) / (n_new - 1))
    bandwidth = copy_bandwidth()
    med = {k: statistics.median(v) for k, v in results.items()}
    per_dtype = {}
    for dtype, w in weights.items():
        key = "ours_decode" if dtype == "fp32" else f"ours_decode_{dtype}"
        bound_s = w.nbytes / bandwidth
        per_dtype[dtype] = {
            "weight_bytes_per_token": w.nbytes,
            "tokens_per_s": 1 / med[key],
            "vs_hf_fp32": med["hf_decode"] / med[key],
            "weight_stream_bound_tokens_per_s": 1 / bound_s,
            "fraction_of_bound": bound_s / med[key],
            "new_tokens_equal_to_fp32": n_new if dtype == "fp32" else agree[dtype],
            "prepare_s": prepare_s.get(dtype, 0.0),
        }
    fp32 = per_dtype["fp32"]
    return {
        "params": params,
        "prompt_tokens": args.prompt,
        "new_tokens": n_new,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "copy_bandwidth_reference_bytes_per_s": COPY_BANDWIDTH_REFERENCE,
        "prefill_tokens_per_s": {"hf": args.prompt / med["hf_prefill"], "neurostep": args.prompt / med["ours_prefill"]},
        "decode_tokens_per_s": {"hf": 1 / med["hf_decode"], "neurostep": fp32["tokens_per_s"]},
        "prefill_speedup": med["hf_prefill"] / med["ours_prefill"],
        "decode_speedup": fp32["vs_hf_fp32"],
        "decode_weight_stream_bound_tokens_per_s": fp32["weight_stream_bound_tokens_per_s"],
        "decode_fraction_of_bound": fp32["fraction_of_bound"],
        "decode_by_weight_dtype": per_dtype,
        "prefill_last_logit_max_abs_diff": max_err,
        "greedy_tokens_identical": True,
        "raw_seconds": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=512, help="prefill length")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens generated")
    parser.add_argument("--decode-prompt", type=int, default=16, help="prompt length for the decoding runs")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and numba threads for both libraries (default: torch's default); on a shared "
                             "machine 1 thread is far less disturbed by other jobs")
    parser.add_argument("--quick", action="store_true", help="2 repeats, 16 new tokens")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "ssm_lm.json"))
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.new_tokens = 2, 16
    if args.new_tokens < 2:
        parser.error("--new-tokens must be >= 2")
    if args.threads is not None:
        from neurostep.kernels.numba_launch import set_threads

        set_threads(args.threads)

    load_before = load_average()
    res = bench_mamba(args)
    load_after = load_average()

    pre, dec = res["prefill_tokens_per_s"], res["decode_tokens_per_s"]
    by_dtype = res["decode_by_weight_dtype"]
    bw = res["copy_bandwidth_bytes_per_s"]
    threads = torch.get_num_threads()
    print(f"Mamba-130m config ({res['params'] / 1e6:.1f}M params), {threads} threads, medians of {args.repeats}")
    print(f"{'':28s}{'HF transformers':>18s}{'neurostep':>14s}{'ratio':>9s}")
    print(f"{'prefill ' + str(args.prompt) + ' tokens (tok/s)':28s}{pre['hf']:18.1f}{pre['neurostep']:14.1f}"
          f"{res['prefill_speedup']:8.2f}x")
    print(f"{'greedy decoding (tok/s)':28s}{dec['hf']:18.1f}{dec['neurostep']:14.1f}{res['decode_speedup']:8.2f}x")
    print(f"copy bandwidth (numpy, read + write): {bw / 1e9:.1f} GB/s "
          f"(docs/reference.md: {COPY_BANDWIDTH_REFERENCE / 1e9:.0f} GB/s)")
    dtype_columns = ["decode weights", "MB per token", "neurostep tok/s", "vs transformers fp32",
                     "roofline tok/s", "of roofline", f"tokens equal to fp32 (of {args.new_tokens})"]
    dtype_rows = [[d, f"{r['weight_bytes_per_token'] / 1e6:.0f}", f"{r['tokens_per_s']:.1f}",
                   f"{r['vs_hf_fp32']:.2f}x", f"{r['weight_stream_bound_tokens_per_s']:.1f}",
                   f"{r['fraction_of_bound']:.0%}", str(r["new_tokens_equal_to_fp32"])] for d, r in by_dtype.items()]
    print("  ".join(f"{c:>14s}" for c in dtype_columns))
    for row in dtype_rows:
        print("  ".join(f"{c:>14s}" for c in row))
    print(f"greedy tokens identical (fp32 vs transformers): yes; prefill last-logit max |diff| "
          f"{res['prefill_last_logit_max_abs_diff']:.2e}")
    print(f"load average before: {load_before}\nload average after:  {load_after}")

    payload = {"benchmark": "ssm_lm/mamba", "args": vars(args), "threads": threads, **res}
    title = (f"Mamba-130m configuration ({res['params'] / 1e6:.1f}M parameters), random weights, fp32, {threads} "
             f"threads, medians of {args.repeats}; greedy tokens identical")
    rows = [[f"prefill {args.prompt} tokens (tok/s)", f"{pre['hf']:.1f}", f"{pre['neurostep']:.1f}",
             f"{res['prefill_speedup']:.2f}x"],
            ["greedy decoding (tok/s)", f"{dec['hf']:.1f}", f"{dec['neurostep']:.1f}", f"{res['decode_speedup']:.2f}x"]]
    dtype_title = (f"Greedy decoding by decode-weight dtype (batch 1, {args.new_tokens} tokens); roofline = weight "
                   f"bytes per token over the copy bandwidth measured in the run, {bw / 1e9:.1f} GB/s; the "
                   f"reduced-precision tokens are compared with fp32's on random weights, where they part ways "
                   f"(the tests check identity on trained models)")
    summary = [
        summary_row("Mamba-130m prefill", f"{args.prompt}-token prompt, random weights, fp32",
                    f"{pre['neurostep']:.1f} tok/s", f"transformers {ratio(res['prefill_speedup'])}"),
        summary_row("Mamba-130m greedy decoding", "batch 1, random weights, fp32",
                    f"{dec['neurostep']:.1f} tok/s", f"transformers {ratio(res['decode_speedup'])}"),
    ]
    summary += [summary_row(f"Mamba-130m greedy decoding, {d} weights",
                            f"batch 1, random weights, fp32 state; {by_dtype[d]['fraction_of_bound']:.0%} of its "
                            "weight-stream roofline",
                            f"{by_dtype[d]['tokens_per_s']:.1f} tok/s",
                            f"transformers (fp32) {ratio(by_dtype[d]['vs_hf_fp32'])}") for d in REDUCED]
    out = write_result(args.out, payload, load_before=load_before,
                       tables=[table(title, ["", "HF transformers", "neurostep", "ratio"], rows),
                               table(dtype_title, dtype_columns, dtype_rows)], summary=summary)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
