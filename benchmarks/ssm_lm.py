"""Mamba language model on CPU: neurostep ``MambaLM`` vs Hugging Face ``MambaForCausalLM``, same weights.

Both models are the Mamba-130m configuration (d_model 768, 24 layers, vocab 50280) with random
weights: Hugging Face's model is built from ``MambaConfig`` (no download) and ours is loaded from
its state_dict through ``MambaLM.from_hf``. Measured in the same run, interleaved, fp32,
``torch.inference_mode``:

- prefill: a 512-token prompt, producing the decode state and the last token's logits (what
  generation needs; Hugging Face is called with ``use_cache=True, logits_to_keep=1``);
- greedy decoding: tokens/s of the decode loop, ``(N - 1) / (t(generate N) - t(generate 1))``
  from each library's own ``generate`` (so the prefill is excluded for both); the generated
  tokens must be identical (asserted).

The roofline of decoding is the weight stream: every token reads all fp32 weights once; the table
prints the measured rate over that bound at the copy bandwidth in docs/reference.md ("Measured
machine facts").

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

COPY_BANDWIDTH = 29e9  # bytes/s, numpy copy on a 2-core machine (docs/reference.md, measured machine facts)


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

    results: dict[str, list[float]] = {k: [] for k in ("hf_prefill", "ours_prefill", "hf_decode", "ours_decode")}
    with torch.inference_mode():
        # warm-up (numba compilation, allocator) and correctness checks
        a, b = hf_prefill(), ours_prefill()
        max_err = float((a - b).abs().max())
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3 * float(a.abs().max()))
        g_hf, g_ours = hf_generate(n_new), ours_generate(n_new)
        assert g_hf.tolist() == g_ours.tolist(), f"greedy tokens differ:\n{g_hf.tolist()}\n{g_ours.tolist()}"
        for _ in range(args.repeats):
            results["hf_prefill"].append(_timed(hf_prefill)[0])
            results["ours_prefill"].append(_timed(ours_prefill)[0])
            for name, gen in (("hf_decode", hf_generate), ("ours_decode", ours_generate)):
                t1, _ = _timed(lambda gen=gen: gen(1))
                tn, _ = _timed(lambda gen=gen: gen(n_new))
                results[name].append(max(tn - t1, 1e-9) / (n_new - 1))
    med = {k: statistics.median(v) for k, v in results.items()}
    weight_bytes = params * 4
    bound_s = weight_bytes / COPY_BANDWIDTH
    return {
        "params": params,
        "prompt_tokens": args.prompt,
        "new_tokens": n_new,
        "prefill_tokens_per_s": {"hf": args.prompt / med["hf_prefill"], "neurostep": args.prompt / med["ours_prefill"]},
        "decode_tokens_per_s": {"hf": 1 / med["hf_decode"], "neurostep": 1 / med["ours_decode"]},
        "prefill_speedup": med["hf_prefill"] / med["ours_prefill"],
        "decode_speedup": med["hf_decode"] / med["ours_decode"],
        "decode_weight_stream_bound_tokens_per_s": 1 / bound_s,
        "decode_fraction_of_bound": bound_s / med["ours_decode"],
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
        import numba

        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)

    load_before = load_average()
    res = bench_mamba(args)
    load_after = load_average()

    pre, dec = res["prefill_tokens_per_s"], res["decode_tokens_per_s"]
    print(f"Mamba-130m config ({res['params'] / 1e6:.1f}M params), fp32, {torch.get_num_threads()} threads, "
          f"medians of {args.repeats}")
    print(f"{'':28s}{'HF transformers':>18s}{'neurostep':>14s}{'ratio':>9s}")
    print(f"{'prefill ' + str(args.prompt) + ' tokens (tok/s)':28s}{pre['hf']:18.1f}{pre['neurostep']:14.1f}"
          f"{res['prefill_speedup']:8.2f}x")
    print(f"{'greedy decoding (tok/s)':28s}{dec['hf']:18.1f}{dec['neurostep']:14.1f}{res['decode_speedup']:8.2f}x")
    print(f"decode roofline (fp32 weights streamed once per token at {COPY_BANDWIDTH / 1e9:.0f} GB/s): "
          f"{res['decode_weight_stream_bound_tokens_per_s']:.1f} tok/s; neurostep at "
          f"{res['decode_fraction_of_bound']:.0%} of it")
    print(f"greedy tokens identical: yes; prefill last-logit max |diff| {res['prefill_last_logit_max_abs_diff']:.2e}")
    print(f"load average before: {load_before}\nload average after:  {load_after}")

    threads = torch.get_num_threads()
    payload = {"benchmark": "ssm_lm/mamba", "args": vars(args), "threads": threads, **res}
    title = (f"Mamba-130m configuration ({res['params'] / 1e6:.1f}M parameters), random weights, fp32, {threads} "
             f"threads, medians of {args.repeats}; decoding roofline (weights streamed once per token at "
             f"{COPY_BANDWIDTH / 1e9:.0f} GB/s) {res['decode_weight_stream_bound_tokens_per_s']:.1f} tok/s, "
             f"neurostep at {res['decode_fraction_of_bound']:.0%} of it; greedy tokens identical")
    rows = [[f"prefill {args.prompt} tokens (tok/s)", f"{pre['hf']:.1f}", f"{pre['neurostep']:.1f}",
             f"{res['prefill_speedup']:.2f}x"],
            ["greedy decoding (tok/s)", f"{dec['hf']:.1f}", f"{dec['neurostep']:.1f}", f"{res['decode_speedup']:.2f}x"]]
    summary = [
        summary_row("Mamba-130m prefill", f"{args.prompt}-token prompt, random weights, fp32",
                    f"{pre['neurostep']:.1f} tok/s", f"transformers {ratio(res['prefill_speedup'])}"),
        summary_row("Mamba-130m greedy decoding", "batch 1, random weights, fp32",
                    f"{dec['neurostep']:.1f} tok/s", f"transformers {ratio(res['decode_speedup'])}"),
    ]
    out = write_result(args.out, payload, load_before=load_before,
                       tables=[table(title, ["", "HF transformers", "neurostep", "ratio"], rows)], summary=summary)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
