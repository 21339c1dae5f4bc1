"""The papers' findings that an experiment can check, and how a set of results is judged against them.

Each :class:`Finding` names a task, the blocks it is about and a condition on their mean
metric over seeds (an absolute threshold, or a margin against a reference block). The report's
"known results" table lists every finding whose task and blocks the experiment ran, with the
paper's number, ours with its 95% interval, and whether it is reproduced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    """One claim of a paper, as a condition on the mean metric of ``block`` on ``task``.

    ``op`` is ``">="`` or ``"<="``. Without ``reference`` the mean is compared with
    ``threshold``; with ``reference`` (another block on the same task) the difference
    ``mean(block) - mean(reference)`` is. ``block = "*"`` means every block run on the task.
    """

    claim: str
    source: str
    paper: str
    task: str
    block: str
    op: str
    threshold: float
    reference: str | None = None

    def holds(self, value: float) -> bool:
        return value >= self.threshold if self.op == ">=" else value <= self.threshold

    def holds_for_interval(self, mean: float, half: float) -> bool:
        """The condition holds at the interval's worse end (a single seed has no interval: False)."""
        if not math.isfinite(half):
            return False
        return self.holds(mean - half if self.op == ">=" else mean + half)

    def condition(self) -> str:
        lhs = "accuracy" if self.reference is None else f"accuracy - {self.reference}'s"
        return f"{lhs} {self.op} {self.threshold:g}"


MAMBA = "Mamba (Gu & Dao 2023), Table 1"
ZOOLOGY = "Zoology (Arora et al. 2023), Fig. 2"
MAMBA2 = "Mamba-2 (Dao & Gu 2024), sec. 9.1, Fig. 8"

FINDINGS: tuple[Finding, ...] = (
    Finding("Selection (S6) solves selective copying", MAMBA, "99.8% (Mamba, S6)", "selective_copy", "mamba",
            ">=", 0.9),
    # At short lengths the LTI control gets there too, given several times Mamba's steps
    # (docs/experiments.md, "The LTI control by task shape and width"): the gap is judged at one budget.
    Finding("The same block with an LTI state space model cannot select by content: it stays far below S6 "
            "in the same budget", MAMBA, "56.4% (Mamba block with S4) vs 99.8% (S6)", "selective_copy", "mamba_lti",
            "<=", -0.2, reference="mamba"),
    Finding("An LTI state space layer on its own (no gate) cannot select by content", MAMBA,
            "18.3% (S4, no gate) vs 97.0% (S6, no gate)", "selective_copy", "s4d", "<=", 0.4),
    Finding("Causal softmax attention is content-aware and copies selectively", "Mamba (Gu & Dao 2023), sec. 3.1",
            "- (argued, not tabled)", "selective_copy", "softmax_attention", ">=", 0.9),
    Finding("Attention solves multi-query associative recall", ZOOLOGY, "~100% at every width", "mqar",
            "softmax_attention", ">=", 0.9),
    Finding("Gated convolutions (H3-like LTI) fall short of attention on MQAR at small width", ZOOLOGY,
            "H3, Hyena, RWKV well below attention at width 64-128", "mqar", "mamba_lti", "<=", -0.2,
            reference="softmax_attention"),
    Finding("RWKV (a gated convolution in Zoology's terms) falls short of attention on MQAR at small width",
            ZOOLOGY, "well below attention at width 64-128", "mqar", "rwkv_timemix", "<=", -0.2,
            reference="softmax_attention"),
    # The paper credits the larger state that the SSD layer makes affordable; here Mamba-2 keeps its default
    # 128 states per head and the Mamba-1 block has 8 per channel.
    Finding("Mamba-2, with its larger state, recalls far better than Mamba-1 on MQAR", MAMBA2,
            "Mamba-2 well above Mamba-1", "mqar", "mamba2", ">=", 0.2, reference="mamba"),
    Finding("Selection solves induction heads", "Mamba (Gu & Dao 2023), Table 2", "100% (Mamba at length 256)",
            "induction_heads", "mamba", ">=", 0.9),
    Finding("Every block learns an easy image task", "SNN and token-mixer papers (Spikformer, MetaMixer, ...)",
            ">= 90% on small image sets", "digits", "*", ">=", 0.9),
    Finding("Spiking self-attention matches its ANN counterpart on an easy task", "Spikformer (Zhou et al. 2023)",
            "close to the ANN Transformer on CIFAR-10", "digits", "spikformer_ssa", ">=", -0.05,
            reference="softmax_attention"),
    Finding("A spiking RWKV matches the non-spiking one on an easy task", "SpikeGPT (Zhu et al. 2023)",
            "close to RWKV at the same size", "digits", "spikegpt_timemix", ">=", -0.05, reference="rwkv_timemix"),
)


@dataclass
class Verdict:
    """``reproduced``: the mean satisfies the condition; ``robust``: the whole 95% interval does."""

    finding: Finding
    block: str
    mean: float
    half: float
    seeds: int
    reproduced: bool
    robust: bool

    def label(self) -> str:
        if not self.reproduced:
            return "**not reproduced**"
        return "reproduced" if self.robust else "reproduced in the mean (the interval crosses the threshold)"


# Per task, per block: (mean metric, 95% half-width, distinct seeds).
SummaryTable = dict[str, dict[str, tuple[float, float, int]]]


def judge(findings: tuple[Finding, ...], table: SummaryTable) -> list[Verdict]:
    """Verdicts for the findings that ``table`` can speak to (task and blocks present).

    For a finding with a reference block the difference of the means is judged; its
    half-width combines both as ``sqrt(h1^2 + h2^2)`` and its seed count is the smaller one.
    """
    out = []
    for f in findings:
        rows = table.get(f.task, {})
        for block in (list(rows) if f.block == "*" else [f.block]):
            if block not in rows or (f.reference is not None and f.reference not in rows):
                continue
            mean, half, seeds = rows[block]
            if f.reference is not None:
                ref_mean, ref_half, ref_seeds = rows[f.reference]
                mean, half, seeds = mean - ref_mean, math.hypot(half, ref_half), min(seeds, ref_seeds)
            out.append(Verdict(f, block, mean, half, seeds, f.holds(mean), f.holds_for_interval(mean, half)))
    return out
