"""The prefill floor of benchmarks/mamba2.py: the model's own projections, each once per layer, and the head."""

import torch
from repo_scripts import load_script

from neurostep.models import create_model

bench = load_script("benchmarks/mamba2.py", "bench_mamba2")


def test_projection_floor_runs_each_projection_once_on_the_prompt_length():
    model = create_model("mamba2_tiny").eval()
    prompt = torch.zeros(2, 7, dtype=torch.long)
    seen: dict[str, list[tuple[int, ...]]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            handles.append(module.register_forward_hook(
                lambda m, args, out, name=name: seen.setdefault(name, []).append(tuple(args[0].shape))))
    with torch.inference_mode():
        bench.projection_floor(model, prompt)()
    for h in handles:
        h.remove()
    layers = len(model.backbone.layers)
    d_inner = model.backbone.layers[0].mixer.d_inner
    assert seen.pop("lm_head") == [(2, model.d_model)]             # the last token of each row only
    assert len(seen) == 2 * layers                                  # every in_proj and out_proj, nothing else
    for name, shapes in seen.items():
        width = model.d_model if name.endswith("in_proj") else d_inner
        assert shapes == [(2, 7, width)], name
