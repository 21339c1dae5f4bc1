"""Homeostatic regulation of the learning rate ("Need is All You Need", Man, Damasio & Neven 2022).

The learning rate ``eta`` is the learner's internal state, and what it learns about acts on it:
samples of excitatory classes (by default labels >= 5) push ``eta`` up by ``eta0/10``,
inhibitory ones (< 5) push it down, floored at ``1e-8``. Every ``interval`` samples the
homeostatic learner weighs two one-step look-aheads on its ``memory`` most recent samples:
keep ``eta``, or change it in the direction its *predicted* label for the current sample
implies. If changing scores better (strictly higher accuracy on the memory) it accepts, but
``eta`` then moves by the *true* label, so a misclassification hurts the learner itself.

Baselines: ``random`` (at the same decision points, with probability ``p_change`` move ``eta``
by the true label's sign, as in the paper's code) and ``constant``.

:class:`HomeostaticLR` wraps any ``torch.optim`` optimizer and model. Homeostatic *neurons*
(adaptive thresholds) are :class:`neurostep.neuro.AdaptiveLIF`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

RULES = ("homeostatic", "random", "constant")


def threshold_signs(num_classes: int = 10, threshold: int = 5) -> torch.Tensor:
    """Class-to-sign map ``(num_classes,)``: +1 (excitatory) for classes >= ``threshold``, else -1."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    signs = -torch.ones(num_classes)
    signs[threshold:] = 1.0
    return signs


@dataclass
class HomeostaticStep:
    """What one :meth:`HomeostaticLR.step` did."""

    loss: float
    correct: int
    eta: float
    decisions: int   # decision points met in this minibatch
    changes: int     # of which changed eta


class HomeostaticLR:
    """Learning-rate homeostasis as an optimizer wrapper.

    Args:
        optimizer: any ``torch.optim`` optimizer over ``model``'s parameters; its ``lr`` is
            overwritten with ``eta`` before every step.
        model: maps inputs ``(B, ...)`` to logits ``(B, num_classes)``.
        rule: ``"homeostatic"``, ``"random"`` or ``"constant"``.
        eta0: initial learning rate (default: the optimizer's current ``lr``).
        step_size: change of ``eta`` per accepted decision (default ``eta0 / 10``).
        floor: smallest ``eta`` (a change that would go below it lands on it).
        interval: samples between decision points.
        memory: recent samples the look-aheads are scored on.
        class_signs: +1/-1 per class (sequence or tensor ``(num_classes,)``) or a callable
            ``label -> sign``; default :func:`threshold_signs` (``>= 5`` excitatory).
        p_change: probability of a change at a decision point for the ``random`` rule.
        loss_fn: ``(logits, targets) -> scalar``; default cross-entropy.
        generator: random source of the ``random`` rule.

    Call :meth:`step` with each minibatch ``(x (B, ...), y (B,))`` instead of ``optimizer.step``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module, *, rule: str = "homeostatic",
                 eta0: float | None = None, step_size: float | None = None, floor: float = 1e-8,
                 interval: int = 10, memory: int = 20,
                 class_signs: Sequence[float] | torch.Tensor | Callable[[int], float] | None = None,
                 p_change: float = 0.5, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 generator: torch.Generator | None = None) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if interval < 1 or memory < 1:
            raise ValueError(f"interval and memory must be >= 1, got interval={interval}, memory={memory}")
        if not 0.0 <= p_change <= 1.0:
            raise ValueError(f"p_change must be in [0, 1], got {p_change}")
        self.optimizer, self.model, self.rule = optimizer, model, rule
        self.eta0 = float(optimizer.param_groups[0]["lr"] if eta0 is None else eta0)
        if self.eta0 <= 0:
            raise ValueError(f"eta0 must be > 0, got {self.eta0}")
        self.step_size = self.eta0 / 10.0 if step_size is None else float(step_size)
        self.floor, self.interval, self.memory, self.p_change = float(floor), interval, memory, p_change
        self.loss_fn = loss_fn or F.cross_entropy
        self.generator = generator
        if class_signs is None:
            class_signs = threshold_signs()
        if callable(class_signs) and not isinstance(class_signs, torch.Tensor):
            self._sign = lambda label: float(class_signs(int(label)))
        else:
            table = torch.as_tensor(class_signs, dtype=torch.float32).flatten()
            self._sign = lambda label: float(table[int(label)])
        self.eta = self.eta0
        self.seen = 0
        self.history: list[float] = []
        self._mem_x: torch.Tensor | None = None
        self._mem_y: torch.Tensor | None = None

    def _moved(self, eta: float, sign: float) -> float:
        return max(self.floor, eta + sign * self.step_size)

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @torch.no_grad()
    def _memory_accuracy(self) -> float:
        assert self._mem_x is not None and self._mem_y is not None
        pred = self.model(self._mem_x).argmax(-1)
        return float((pred == self._mem_y).float().mean())

    def _lookahead(self, lr: float) -> float:
        """Accuracy on the memory after one optimizer step at ``lr``; parameters and optimizer restored."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        saved = [p.detach().clone() for p in params]
        state = copy.deepcopy(self.optimizer.state_dict())
        was_training = self.model.training
        try:
            self._set_lr(lr)
            self.optimizer.step()
            # eval mode: scoring must not update normalisation statistics
            self.model.eval()
            return self._memory_accuracy()
        finally:
            self.model.train(was_training)
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
            self.optimizer.load_state_dict(state)

    def _decide(self, predicted: int, true: int) -> bool:
        if self.rule == "constant":
            return False
        if self.rule == "random":
            if float(torch.rand((), generator=self.generator)) >= self.p_change:
                return False
            self.eta = self._moved(self.eta, self._sign(true))
            return True
        if self._mem_x is None or self._mem_x.shape[0] < self.memory:
            return False
        keep = self._lookahead(self.eta)
        change = self._lookahead(self._moved(self.eta, self._sign(predicted)))
        if change > keep:
            self.eta = self._moved(self.eta, self._sign(true))
            return True
        return False

    def step(self, x: torch.Tensor, y: torch.Tensor) -> HomeostaticStep:
        """Train on one minibatch ``x (B, ...)``, ``y (B,)`` int labels; returns what happened.

        The gradient of the minibatch is computed once; decision points falling in this
        minibatch use it for their look-aheads, then the real step runs at the resulting ``eta``.
        """
        if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"y must be an int tensor (B,), got {getattr(y, 'dtype', type(y))} "
                            f"{tuple(getattr(y, 'shape', ()))}")
        if not isinstance(x, torch.Tensor) or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(f"x must be a tensor (B, ...) with B = len(y) = {y.shape[0]} > 0, "
                             f"got {tuple(getattr(x, 'shape', ()))}")
        self.model.train()
        logits = self.model(x)
        loss = self.loss_fn(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        pred = logits.detach().argmax(-1)
        decisions = changes = 0
        for i in range(x.shape[0]):
            if (self.seen + i) % self.interval == 0 and self.seen + i > 0:
                decisions += 1
                changes += self._decide(int(pred[i]), int(y[i]))
        self._set_lr(self.eta)
        self.optimizer.step()
        self._remember(x.detach(), y.detach())
        self.seen += x.shape[0]
        self.history.append(self.eta)
        return HomeostaticStep(float(loss.detach()), int((pred == y).sum()), self.eta, decisions, changes)

    def _remember(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self._mem_x is None:
            self._mem_x, self._mem_y = x[-self.memory:], y[-self.memory:]
        else:
            self._mem_x = torch.cat([self._mem_x, x])[-self.memory:]
            self._mem_y = torch.cat([self._mem_y, y])[-self.memory:]

    def state_dict(self) -> dict[str, float | int]:
        return {"eta": self.eta, "seen": self.seen}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.eta, self.seen = float(state["eta"]), int(state["seen"])
