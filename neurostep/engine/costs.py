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


@dataclass(frozen=True)
class CountAs:
    """Count a custom op as the aten op it computes: the counter applies that op's rule (ACs on binary
    operands, spike statistics) to the arguments ``adapt`` makes from the custom op's (by default its
    own arguments, which must then start as the aten op's do).

    ``output``: for a custom op with several outputs, the index of the one the aten op returns (the others
    carry values to its backward).

    Example: ``CountAs("aten::linear")``; ``CountAs("aten::convolution", lambda a: (a[0], a[1], a[2], ...))``.
    """

    aten_name: str
    adapt: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None = None
    output: int | None = None

    def __post_init__(self) -> None:
        if not self.aten_name.startswith("aten::"):
            raise ValueError(f"a custom op is counted as an aten op ('aten::<name>'), got {self.aten_name!r}")

    def arguments(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(args) if self.adapt is None else tuple(self.adapt(args))

    def result(self, out: Any) -> Any:
        """The aten op's output among the custom op's outputs ``out``."""
        return out if self.output is None else out[self.output]


class CostRegistry:
    def __init__(self) -> None:
        self._formulas: dict[str, CostFormula] = {}
        self._aliases: dict[str, CountAs] = {}

    def register(self, qualified_name: str) -> Callable[[CostFormula], CostFormula]:
        """Decorator: declare the cost formula of the custom op ``qualified_name``."""

        def decorate(fn: CostFormula) -> CostFormula:
            self._formulas[qualified_name] = fn
            return fn

        return decorate

    def get(self, qualified_name: str) -> CostFormula | None:
        return self._formulas.get(qualified_name)

    def register_alias(self, qualified_name: str, count_as: CountAs) -> None:
        """Count the custom op ``qualified_name`` as the aten op it computes (see :class:`CountAs`)."""
        self._aliases[qualified_name] = count_as

    def alias_of(self, qualified_name: str) -> CountAs | None:
        return self._aliases.get(qualified_name)

    def names(self) -> list[str]:
        return sorted(self._formulas)


COSTS = CostRegistry()
register_cost = COSTS.register
