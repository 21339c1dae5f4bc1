"""Mamba-2 language model on CPU: neurostep ``Mamba2LM`` vs Hugging Face ``Mamba2ForCausalLM``, same weights.

Both models are the Mamba-2-130m configuration (state-spaces/mamba2-130m: d_model 768, 24 layers,
d_state 128, 24 heads of 64 channels, 1 group, vocab 50288, tied head) with random weights: Hugging
Face's model is built from ``Mamba2Config`` (no download) and ours is loaded from it through
``Mamba2LM.from_hf``. Hugging Face runs its torch path (no mamba-ssm or causal-conv1d kernels on CPU):
the chunked SSD in einsums (``chunk_size`` 256, the checkpoint's) and a torch decode step. Ours runs
the SSD on the shared ``decayed_linear_attention`` op. Measured in the same run, interleaved, fp32,
``torch.inference_mode``:

- prefill: a 512-token prompt at batch 1, producing the decode state and the last token's logits
  (Hugging Face is called with ``use_cache=True, logits_to_keep=1``);
- the prefill's floor: the same model's projections alone (every layer's ``in_proj`` over the whole
  prompt and ``out_proj`` over its inner width, then the head on the last token), the matrix products
  that both libraries compute alike. ``transformers' prefill / floor`` bounds the speed-up that any
  SSD, convolution or norm could give against transformers;
- greedy decoding: tokens/s of the decode loop, ``(N - 1) / (t(generate N) - t(generate 1))`` from
  each library's own ``generate`` (so the prefill is excluded for both); the generated tokens must be
  identical (asserted).

Each round runs both libraries, alternating which goes first. Rates are medians of wall time; the
ratios are also given in this process's CPU time (all threads), which a shared machine's other jobs
disturb less than wall time (they take cores away, which wall time counts and CPU time does not).

The result's summary rows go into the README with ``python docs/hooks/benchmarks.py --update-readme``.

    .venv/bin/python benchmarks/mamba2.py            # full run
    .venv/bin/python benchmarks/mamba2.py --quick    # a short run
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
from neurostep.ssm import Mamba2LM  # noqa: E402

COPY_BANDWIDTH = 29e9  # bytes/s, numpy copy on a 2-core machine (docs/reference.md, measured machine facts)


def _timed(fn) -> tuple[float, float, object]:
    """Wall seconds, this process's CPU seconds (all threads) and the result of ``fn()``."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def projection_floor(model: Mamba2LM, prompt: torch.Tensor):
    """A callable that runs ``model``'s projections alone on inputs of a ``prompt``'s length: each layer's
    ``in_proj`` on ``(B, L, d_model)`` and ``out_proj`` on ``(B, L, d_inner)``, then the head on one token
    per row; zeros in, outputs discarded."""
    batch, length = prompt.shape
    mixers = [layer.mixer for layer in model.backbone.layers]
    x = torch.zeros(batch, length, model.d_model)
    inner = torch.zeros(batch, length, mixers[0].d_inner)
    last = torch.zeros(batch, model.d_model)

    def run() -> None:
        for mixer in mixers:
            mixer.in_proj(x)
            mixer.out_proj(inner)
        model.lm_head(last)

    return run


def bench_mamba2(args: argparse.Namespace) -> dict:
    """Prefill and greedy decoding of Mamba-2-130m: neurostep vs transformers."""
    import transformers

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    cfg = transformers.Mamba2Config(num_heads=24, head_dim=64, hidden_size=768, state_size=128, n_groups=1,
                                    num_hidden_layers=args.layers, vocab_size=50288, tie_word_embeddings=True,
                                    chunk_size=256, pad_token_id=0, eos_token_id=0)
    hf = transformers.Mamba2ForCausalLM(cfg).eval()
    ours = Mamba2LM.from_hf(hf).eval()
    params = count_params(ours)
    prompt = torch.randint(1, cfg.vocab_size, (args.batch, args.prompt), generator=torch.Generator().manual_seed(1))
    short = prompt[:1, :args.decode_prompt]
    n_new = args.new_tokens

    def hf_prefill():
        return hf(prompt, use_cache=True, logits_to_keep=1).logits[:, -1]

    def ours_prefill():
        return ours.scan(prompt, last_only=True)[0][:, -1]

    floor_prefill = projection_floor(ours, prompt)

    def hf_generate(n):
        return hf.generate(short, attention_mask=torch.ones_like(short), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)

    def ours_generate(n):
        return ours.generate(short, n)

    names = ("hf_prefill", "ours_prefill", "floor_prefill", "hf_decode", "ours_decode")
    results: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    with torch.inference_mode():
        # warm-up (allocator) and correctness checks
        a, b = hf_prefill(), ours_prefill()
        max_err = float((a - b).abs().max())
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3 * float(a.abs().max()))
        g_hf, g_ours = hf_generate(n_new), ours_generate(n_new)
        assert g_hf.tolist() == g_ours.tolist(), f"greedy tokens differ:\n{g_hf.tolist()}\n{g_ours.tolist()}"
        for i in range(args.repeats):
            # alternate which library goes first, so that a burst of load hits both alike
            order = (("hf", hf_prefill, hf_generate), ("ours", ours_prefill, ours_generate))
            for lib, prefill, gen in order if i % 2 == 0 else order[::-1]:
                wall, cpu_s, _ = _timed(prefill)
                results[f"{lib}_prefill"].append(wall)
                cpu[f"{lib}_prefill"].append(cpu_s)
                w1, c1, _ = _timed(lambda gen=gen: gen(1))
                wn, cn, _ = _timed(lambda gen=gen: gen(n_new))
                results[f"{lib}_decode"].append(max(wn - w1, 1e-9) / (n_new - 1))
                cpu[f"{lib}_decode"].append(max(cn - c1, 1e-9) / (n_new - 1))
            wall, cpu_s, _ = _timed(floor_prefill)
            results["floor_prefill"].append(wall)
            cpu["floor_prefill"].append(cpu_s)
    med = {k: statistics.median(v) for k, v in results.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    tokens = args.batch * args.prompt
    bound_s = params * 4 / COPY_BANDWIDTH
    return {
        "params": params,
        "batch": args.batch,
        "prompt_tokens": args.prompt,
        "new_tokens": n_new,
        "prefill_tokens_per_s": {"hf": tokens / med["hf_prefill"], "neurostep": tokens / med["ours_prefill"]},
        "prefill_median_s": {"hf": med["hf_prefill"], "neurostep": med["ours_prefill"],
                             "projection_floor": med["floor_prefill"]},
        "prefill_over_floor": med["ours_prefill"] / med["floor_prefill"],
        "prefill_speedup_bound": med["hf_prefill"] / med["floor_prefill"],
        "decode_tokens_per_s": {"hf": 1 / med["hf_decode"], "neurostep": 1 / med["ours_decode"]},
        "prefill_speedup": med["hf_prefill"] / med["ours_prefill"],
        "decode_speedup": med["hf_decode"] / med["ours_decode"],
        "prefill_speedup_cpu_time": cmed["hf_prefill"] / cmed["ours_prefill"],
        "decode_speedup_cpu_time": cmed["hf_decode"] / cmed["ours_decode"],
        "decode_weight_stream_bound_tokens_per_s": 1 / bound_s,
        "decode_fraction_of_bound": bound_s / med["ours_decode"],
        "prefill_last_logit_max_abs_diff": max_err,
        "greedy_tokens_identical": True,
        "raw_seconds": results,
        "raw_cpu_seconds": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=512, help="prefill length")
    parser.add_argument("--batch", type=int, default=1, help="prefill batch size")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens generated")
    parser.add_argument("--decode-prompt", type=int, default=16, help="prompt length for the decoding runs")
    parser.add_argument("--layers", type=int, default=24, help="number of layers (24: Mamba-2-130m)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (medians are reported)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both libraries (default: torch's default); on a shared machine "
                             "1 thread is far less disturbed by other jobs")
    parser.add_argument("--quick", action="store_true", help="2 repeats, 16 new tokens")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "mamba2.json"),
                        help="where to write the JSON result")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.new_tokens = 2, 16
    if args.new_tokens < 2:
        parser.error("--new-tokens must be >= 2")
    if args.threads is not None:
        from neurostep.kernels.numba_launch import set_threads

        set_threads(args.threads)

    load_before = load_average()
    res = bench_mamba2(args)
    load_after = load_average()

    pre, dec = res["prefill_tokens_per_s"], res["decode_tokens_per_s"]
    threads = torch.get_num_threads()
    print(f"Mamba-2-130m config ({res['params'] / 1e6:.1f}M params), fp32, {threads} threads, "
          f"medians of {args.repeats}")
    print(f"{'':34s}{'HF transformers':>18s}{'neurostep':>14s}{'ratio':>9s}{'CPU-time ratio':>16s}")
    label = f"prefill {args.batch}x{args.prompt} tokens (tok/s)"
    print(f"{label:34s}{pre['hf']:18.1f}{pre['neurostep']:14.1f}{res['prefill_speedup']:8.2f}x"
          f"{res['prefill_speedup_cpu_time']:15.2f}x")
    print(f"{'greedy decoding (tok/s)':34s}{dec['hf']:18.1f}{dec['neurostep']:14.1f}{res['decode_speedup']:8.2f}x"
          f"{res['decode_speedup_cpu_time']:15.2f}x")
    print(f"prefill floor (projections and head alone): {res['prefill_median_s']['projection_floor'] * 1e3:.0f} ms; "
          f"neurostep's prefill {res['prefill_over_floor']:.2f}x it; transformers' prefill / floor "
          f"{res['prefill_speedup_bound']:.2f}x")
    print(f"decode roofline (fp32 weights streamed once per token at {COPY_BANDWIDTH / 1e9:.0f} GB/s): "
          f"{res['decode_weight_stream_bound_tokens_per_s']:.1f} tok/s; neurostep at "
          f"{res['decode_fraction_of_bound']:.0%} of it")
    print(f"greedy tokens identical: yes; prefill last-logit max |diff| {res['prefill_last_logit_max_abs_diff']:.2e}")
    print(f"load average before: {load_before}\nload average after:  {load_after}")

    payload = {"benchmark": "mamba2", "args": vars(args), "threads": threads, **res}
    floor_ms = res["prefill_median_s"]["projection_floor"] * 1e3
    title = (f"Mamba-2-130m configuration ({res['params'] / 1e6:.1f}M parameters), random weights, fp32, {threads} "
             f"threads, medians of {args.repeats}; transformers' torch path; prefill floor (the projections and "
             f"head alone) {floor_ms:.0f} ms, neurostep's prefill {res['prefill_over_floor']:.2f}x it, "
             f"transformers' {res['prefill_speedup_bound']:.2f}x; decoding roofline (weights streamed once per "
             f"token at {COPY_BANDWIDTH / 1e9:.0f} GB/s) {res['decode_weight_stream_bound_tokens_per_s']:.1f} "
             f"tok/s, neurostep at {res['decode_fraction_of_bound']:.0%} of it; greedy tokens identical")
    rows = [[label, f"{pre['hf']:.1f}", f"{pre['neurostep']:.1f}", f"{res['prefill_speedup']:.2f}x",
             f"{res['prefill_speedup_cpu_time']:.2f}x"],
            ["greedy decoding (tok/s)", f"{dec['hf']:.1f}", f"{dec['neurostep']:.1f}", f"{res['decode_speedup']:.2f}x",
             f"{res['decode_speedup_cpu_time']:.2f}x"]]
    columns = ["", "HF transformers", "neurostep", "ratio (wall)", "ratio (CPU time)"]
    summary = [
        summary_row("Mamba-2-130m prefill", f"{args.batch}x{args.prompt}-token prompt, random weights, fp32",
                    f"{pre['neurostep']:.1f} tok/s ({res['prefill_over_floor']:.2f}x its projection floor)",
                    f"transformers {ratio(res['prefill_speedup'])}"),
        summary_row("Mamba-2-130m greedy decoding", "batch 1, random weights, fp32",
                    f"{dec['neurostep']:.1f} tok/s", f"transformers {ratio(res['decode_speedup'])}"),
    ]
    out = write_result(args.out, payload, load_before=load_before, tables=[table(title, columns, rows)],
                       summary=summary)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
