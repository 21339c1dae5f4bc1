"""Shared helpers of the experiment tests: tiny TOML experiments that train in seconds."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

TINY = """
[experiment]
name = "{name}"
seeds = {seeds}
blocks = {blocks}
tasks = ["digits"]
out_dir = "{out}"

[backbone]
dim = {dim}
depth = 1
num_heads = 2
mlp_ratio = 1.0

[train]
steps = {steps}
batch_size = 32
eval_every = 2
progress = false
threads = {threads}

[measure]
energy = {energy}
latency_reps = 1
throughput_batch = 8
"""


def tiny_toml(tmp: Path, *, name: str = "tiny", seeds: str = "[0]", blocks: str = '["softmax_attention"]',
              steps: int = 4, energy: bool = False, threads: int = 0, dim: int = 16, extra: str = "") -> Path:
    path = tmp / f"{name}.toml"
    text = TINY.format(name=name, seeds=seeds, blocks=blocks, out=(tmp / "runs").as_posix(), steps=steps,
                       energy=str(energy).lower(), threads=threads, dim=dim)
    path.write_text(text + textwrap.dedent(extra))
    return path


@pytest.fixture
def make_toml(tmp_path: Path):
    def make(**kwargs) -> Path:
        return tiny_toml(tmp_path, **kwargs)

    return make
