"""``neurostep energy MODEL_NAME``: count a registered model's operations and energy.

``neurostep.cli`` calls :func:`cli_main` with the arguments after ``energy``.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence
from typing import Any

import torch

from neurostep.energy.profiles import PROFILES
from neurostep.energy.report import MODES


def _parse_kv(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw  # a bare word stays a string: --set norm_layer=layernorm
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neurostep energy",
        description="Count MACs, ACs on spikes, elementwise ops, memory bytes and energy of a registered model "
                    "on its example input.")
    p.add_argument("model", help="registered model name (see `neurostep list`)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the example input (default 1)")
    p.add_argument("--profile", default="45nm_fp32",
                   help=f"preset ({', '.join(sorted(PROFILES))}) or a .toml file (default 45nm_fp32)")
    p.add_argument("--mode", choices=MODES, default="ops",
                   help="ops: every op at its price; spikformer: the paper's first-layer MAC + SOP convention")
    p.add_argument("--first-layer", default=None, help="module path of the first layer (spikformer mode)")
    p.add_argument("--small", action="store_true", help="use the registry's small test configuration")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="model constructor keyword (repeatable), e.g. --set T=4")
    p.add_argument("--device", default="cpu", help="device to run on (default cpu)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random weights and example input (default 0); spike counts depend on it")
    p.add_argument("--max-depth", type=int, default=None, help="deepest module level shown in the table")
    p.add_argument("--csv", default=None, help="also write the per-module table as CSV")
    p.add_argument("--json", default=None, help="also write the full report as JSON")
    return p


def cli_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``neurostep energy``; returns the process exit code.

    A usage mistake (unknown model or profile, a bad ``--set``, a device this machine lacks, an
    unwritable output path) is one line on stderr and exit code 2, never a traceback.
    """
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return _run(args)
    except (KeyError, ValueError, TypeError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"neurostep energy: error: {message}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from neurostep.energy.counter import count
    from neurostep.energy.profiles import get_profile
    from neurostep.models import REGISTRY, create_model, list_models

    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    list_models()  # imports the model families so the registry is filled
    entry = REGISTRY.model_entry(args.model)
    kwargs = dict(entry.small_kwargs) if args.small else {}
    kwargs.update(_parse_kv(args.overrides))
    profile = get_profile(args.profile)
    if entry.example_input is None:
        raise ValueError(f"model {args.model!r} registers no example input; count it from Python with "
                         "neurostep.energy.count(model, x)")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available on this machine (use cpu or meta)")
    torch.manual_seed(args.seed)
    try:
        model = create_model(args.model, **kwargs).to(device).eval()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot build {args.model!r} with {kwargs}: {exc}") from exc
    example = entry.example_input(model, args.batch)
    inputs = example if isinstance(example, tuple) else (example,)
    inputs = tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in inputs)
    report = count(model, *inputs, profile=profile, mode=args.mode, first_layer=args.first_layer)
    print(report.table(max_depth=args.max_depth))
    if args.csv:
        print(f"wrote {report.to_csv(args.csv)}")
    if args.json:
        print(f"wrote {report.to_json(args.json)}")
    return 0
