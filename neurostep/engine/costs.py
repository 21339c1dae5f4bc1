"""Cost formulas that neurostep custom ops declare for the operation/energy counter.

A formula receives the op's arguments and outputs (as the dispatcher sees them) and returns
a :class:`OpCost`. The counter in :mod:`neurostep.energy` looks formulas up by the op's
qualified name (``"neurostep::lif_forward"``); ops without a formula are counted by the
counter's generic rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any


@dataclass
class OpCost:
    """Operation counts of one op call (all plain numbers of elementary operations)."""

    macs: float = 0.0           # multiply-accumulates on dense operands
    acs: float = 0.0            # accumulates driven by binary (spike) operands
    adds: float = 0.0           # elementwise additions/subtractions
    muls: float = 0.0           # elementwise multiplications
    exps: float = 0.0           # transcendental evaluations (exp, log, softplus, sigmoid)
    compares: float = 0.0       # threshold comparisons
    state_updates: float = 0.0  # recurrent state elements written
    bytes_read: float = 0.0
    bytes_written: float = 0.0

    def __add__(self, other: OpCost) -> OpCost:
        return OpCost(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


CostFormula = Callable[[tuple[Any, ...], dict[str, Any], Any], OpCost]


class CostRegistry:
    def __init__(self) -> None:
        self._formulas: dict[str, CostFormula] = {}
        self._aliases: dict[str, str] = {}

    def register(self, qualified_name: str) -> Callable[[CostFormula], CostFormula]:
        """Decorator: declare the cost formula of the custom op ``qualified_name``."""

        def decorate(fn: CostFormula) -> CostFormula:
            self._formulas[qualified_name] = fn
            return fn

        return decorate

    def get(self, qualified_name: str) -> CostFormula | None:
        return self._formulas.get(qualified_name)

    def register_alias(self, qualified_name: str, aten_name: str) -> None:
        """Count the custom op ``qualified_name`` as the aten op ``aten_name`` (``"aten::linear"``) it
        computes, with the same arguments first: the counter then applies that op's rule (ACs on binary
        operands, spike statistics), exactly as for the aten op."""
        if not aten_name.startswith("aten::"):
            raise ValueError(f"a custom op is counted as an aten op ('aten::<name>'), got {aten_name!r}")
        self._aliases[qualified_name] = aten_name

    def alias_of(self, qualified_name: str) -> str | None:
        return self._aliases.get(qualified_name)

    def names(self) -> list[str]:
        return sorted(self._formulas)


COSTS = CostRegistry()
register_cost = COSTS.register
