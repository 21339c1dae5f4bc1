"""Concept-shift experiment for homeostatic learners (docs/reference.md, homeostatic learners), scaled to digits.

An MLP 64-h1-h2-10 (ELU) is trained with SGD minibatches of 10 on scikit-learn's digits.
The labels of two random classes are swapped ``swaps_per_epoch`` times per epoch: the swaps
split each epoch into equal segments, and each segment trains under one label mapping. At the
end of every segment the held-out digits are scored under the mapping that segment trained
on, so a learner is never tested on a mapping it has not seen. Learners differ only in how
they regulate the learning rate (:class:`neurostep.neuro.homeostasis.HomeostaticLR`). For a
given seed and shift rate every learner sees the same initial weights, sample order and swap
sequence, so differences between learners are paired.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from neurostep.experiment.config import ExperimentConfig
from neurostep.experiment.tasks import concept_shift_segments, load_digits_arrays, split_indices, swap_two_classes
from neurostep.layers import resolve_act
from neurostep.neuro.homeostasis import HomeostaticLR, threshold_signs


def concept_shift_runs(cfg: ExperimentConfig) -> list[str]:
    """Task labels, one per shift rate: ``swaps_<n>``."""
    return [f"swaps_{r}" for r in cfg.concept_shift["swaps_per_epoch"]]


def prepare_concept_shift(cfg: ExperimentConfig) -> dict[str, torch.Tensor]:
    """Flattened digits ``(N, 64)`` in [0, 1] and labels, split once (data seed 0)."""
    images, labels = load_digits_arrays()
    train, test = split_indices(labels, cfg.concept_shift["test_fraction"], 0)
    x = torch.from_numpy(images.reshape(len(images), -1))
    y = torch.from_numpy(labels)
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


def make_mlp(sizes: list[int], activation: str = "elu") -> nn.Sequential:
    """MLP with the given layer sizes (``[64, 80, 60, 10]``) and an activation between layers."""
    act = resolve_act(activation)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def _subsample(values: list[float], points: int) -> list[float]:
    if len(values) <= points:
        return list(values)
    idx = np.linspace(0, len(values) - 1, points).round().astype(int)
    return [values[i] for i in idx]


def concept_shift_run(cfg: ExperimentConfig, learner: str, task_label: str, seed: int,
                      data: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Train one learner under one shift rate; returns the result record with accuracy curves."""
    threads = torch.get_num_threads()
    # A 64-80-60-10 MLP on minibatches of 10 is far too small for intra-op threads: they only
    # add synchronisation (measured 2.5 ms/step on 1 thread vs ~100 ms on 2 busy cores).
    torch.set_num_threads(1)
    try:
        return _concept_shift_run(cfg, learner, task_label, seed, data)
    finally:
        torch.set_num_threads(threads)


def _concept_shift_run(cfg: ExperimentConfig, learner: str, task_label: str, seed: int,
                       data: dict[str, torch.Tensor]) -> dict[str, Any]:
    cs = cfg.concept_shift
    rate = int(task_label.split("_", 1)[1])
    torch.manual_seed(seed)
    model = make_mlp([data["x_train"].shape[1], *cs["hidden"], 10], cs["activation"])
    opt = torch.optim.SGD(model.parameters(), lr=cs["eta0"])
    homeo = HomeostaticLR(
        opt, model, rule=learner, eta0=cs["eta0"], interval=cs["interval"], memory=cs["memory"],
        class_signs=threshold_signs(10, cs["excitatory_from"]), p_change=cs["p_change"],
        generator=torch.Generator().manual_seed(10_000 + seed),
    )
    order = torch.Generator().manual_seed(seed)
    swaps = np.random.default_rng([seed, rate])
    mapping = np.arange(10)
    x_tr, y_tr, x_te, y_te = data["x_train"], data["y_train"], data["x_test"], data["y_test"]
    m = cs["minibatch"]
    batches = x_tr.shape[0] // m
    starts = set(concept_shift_segments(batches, rate)) if rate > 0 else set()  # swap before these minibatches
    segment_acc, test_curve, online_curve, etas = [], [], [], []
    n_swaps = 0
    y_te_np = y_te.numpy()

    def test_accuracy() -> float:
        with torch.no_grad():
            pred = model(x_te).argmax(-1).numpy()
        return float((pred == mapping[y_te_np]).mean())

    start = time.perf_counter()
    for _ in range(cs["epochs"]):
        perm = torch.randperm(x_tr.shape[0], generator=order)
        correct = 0
        for j in range(batches):
            if j in starts:
                if j > 0:  # close the segment that trained on the old mapping
                    segment_acc.append(test_accuracy())
                swap_two_classes(mapping, swaps)
                n_swaps += 1
            idx = perm[j * m:(j + 1) * m]
            y = torch.from_numpy(mapping[y_tr[idx].numpy()])
            out = homeo.step(x_tr[idx], y)
            correct += out.correct
            etas.append(out.eta)
        online_curve.append(correct / (batches * m))
        test_curve.append(test_accuracy())   # the mapping of the epoch's last segment, which it trained on
        segment_acc.append(test_curve[-1])
    mean_segment = float(np.mean(segment_acc))
    return {
        "experiment": cfg.name, "block": learner, "task": task_label, "seed": seed,
        "config_hash": cfg.config_hash(learner, task_label), "metric_name": "mean_test_accuracy",
        "metric": mean_segment, "mean_test_accuracy": mean_segment, "final_test_accuracy": test_curve[-1],
        "mean_online_accuracy": float(np.mean(online_curve)), "swaps_per_epoch": rate, "swaps": n_swaps,
        "segments": len(segment_acc), "test_curve": test_curve, "online_curve": online_curve,
        "eta_curve": _subsample(etas, cs["curve_points"]), "final_eta": homeo.eta,
        "train_time_s": time.perf_counter() - start, "finished_at": time.time(),
    }
