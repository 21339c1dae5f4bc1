"""Train a small SpikeGPT on character-level language modelling of the Python standard library.

The text is this interpreter's own standard-library source (``sysconfig.get_paths()["stdlib"]``),
so nothing is downloaded. Prints the training loss, the held-out loss before and after, a sample,
and writes a JSON summary (default ``runs/spikegpt_char.json``).

    .venv/bin/python experiments/train_spikegpt_char.py --steps 300
    .venv/bin/python experiments/train_spikegpt_char.py --steps 40 --n-embd 32 --n-layer 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

# GNU OpenMP threads busy-wait after each parallel region by default; numba's kernels and
# torch's ops each have such a pool, and on a 2-core machine the spinning pool of one starves
# the other (measured: a tiny SpikeGPT training step went from 35 ms to 700 ms). Passive waiting
# must be chosen before either runtime starts, hence before importing torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neurostep.neuro.spikegpt import train_char_lm  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--ctx-len", type=int, default=64)
    parser.add_argument("--n-embd", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max-chars", type=int, default=500_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--sample", type=int, default=200, help="characters to sample after training (0: none)")
    parser.add_argument("--out", default="runs/spikegpt_char.json")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    result = train_char_lm(steps=args.steps, batch_size=args.batch_size, ctx_len=args.ctx_len, n_embd=args.n_embd,
                           n_layer=args.n_layer, lr=args.lr, max_chars=args.max_chars, seed=args.seed,
                           log_every=args.log_every)
    seconds = time.perf_counter() - t0
    model, vocab, losses = result["model"], result["vocab"], result["losses"]
    bpc = 1 / math.log(2)
    print(f"vocabulary {len(vocab)} characters, {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{args.steps} steps in {seconds:.1f} s")
    print(f"held-out loss {result['val_loss_before']:.3f} -> {result['val_loss_after']:.3f} nats/char "
          f"({result['val_loss_before'] * bpc:.2f} -> {result['val_loss_after'] * bpc:.2f} bits/char)")
    sample = ""
    if args.sample > 0:
        model.eval()
        index = {ch: i for i, ch in enumerate(vocab)}
        prompt = torch.tensor([[index[ch] for ch in "def " if ch in index]])
        out = model.generate(prompt, args.sample, temperature=0.8, generator=torch.Generator().manual_seed(args.seed))
        sample = "".join(vocab[i] for i in out[0].tolist())
        print("sample:\n" + sample)
    summary = {"args": vars(args), "seconds": seconds, "losses": losses, "vocab_size": len(vocab),
               "val_loss_before": result["val_loss_before"], "val_loss_after": result["val_loss_after"],
               "sample": sample}
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(summary, indent=2))
    print(f"wrote {out_path}")
    return summary


if __name__ == "__main__":
    main()
