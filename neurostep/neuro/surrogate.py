"""Surrogate-gradient spike functions as small objects that neurons take (``surrogate=ATan()``).

The forward of a spike is the Heaviside step ``x >= 0``; the backward is the derivative of a
smooth primitive with sharpness ``alpha``. The formulas live once, in
:mod:`neurostep.kernels.lif.surrogates`, shared with the fused kernels; these classes name a
choice and its ``alpha`` and can also be called on a tensor (``Sigmoid()(x)``) to spike with
a surrogate gradient outside the neuron kernel (e.g. SpikeGPT's binarized embedding).
"""

from __future__ import annotations

import torch

from neurostep.kernels.lif.surrogates import SURROGATES, get_surrogate


class _SpikeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, name: str, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.name, ctx.alpha = name, alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        sg = SURROGATES[ctx.name].derivative(x.float(), ctx.alpha).to(grad.dtype)
        return grad * sg, None, None


class SurrogateFunction:
    """Base class: ``name`` selects the formula, ``alpha`` its sharpness."""

    name: str = ""

    def __init__(self, alpha: float | None = None) -> None:
        spec = get_surrogate(self.name)
        self.alpha = float(spec.default_alpha if alpha is None else alpha)
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Heaviside spike of ``x`` (any shape) with this surrogate's gradient."""
        return _SpikeFunction.apply(x, self.name, self.alpha)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """The surrogate derivative evaluated at ``x``."""
        return SURROGATES[self.name].derivative(x, self.alpha)

    def primitive(self, x: torch.Tensor) -> torch.Tensor:
        """The smooth function whose derivative is :meth:`derivative`."""
        return SURROGATES[self.name].primitive(x, self.alpha)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SurrogateFunction) and (self.name, self.alpha) == (other.name, other.alpha)

    def __hash__(self) -> int:
        return hash((self.name, self.alpha))


class Sigmoid(SurrogateFunction):
    """``alpha * s(alpha x) * (1 - s(alpha x))`` (spikingjelly's default, alpha 4)."""

    name = "sigmoid"


class ATan(SurrogateFunction):
    """``alpha / (2 (1 + (pi/2 alpha x)^2))`` (snntorch's and SpikeGPT's default, alpha 2)."""

    name = "atan"


class PiecewiseQuadratic(SurrogateFunction):
    """``max(0, alpha - alpha^2 |x|)`` (alpha 1)."""

    name = "piecewise_quadratic"


class PiecewiseExp(SurrogateFunction):
    """``alpha/2 exp(-alpha |x|)`` (alpha 1)."""

    name = "piecewise_exp"


class SoftSign(SurrogateFunction):
    """``alpha / (2 (1 + alpha |x|)^2)`` (alpha 2)."""

    name = "soft_sign"


class SuperSpike(SurrogateFunction):
    """``alpha / (1 + |x|)^2`` (alpha 1)."""

    name = "super_spike"


class Erf(SurrogateFunction):
    """``alpha / sqrt(pi) exp(-alpha^2 x^2)`` (alpha 2)."""

    name = "erf"


class FastSigmoid(SurrogateFunction):
    """snntorch's ``fast_sigmoid``: ``1 / (1 + alpha |x|)^2`` (slope alpha 25)."""

    name = "fast_sigmoid"


SURROGATE_CLASSES: dict[str, type[SurrogateFunction]] = {
    cls.name: cls
    for cls in (Sigmoid, ATan, PiecewiseQuadratic, PiecewiseExp, SoftSign, SuperSpike, Erf, FastSigmoid)
}


def resolve_surrogate(surrogate: str | SurrogateFunction) -> SurrogateFunction:
    """A surrogate object from a name (default alpha) or an instance."""
    if isinstance(surrogate, SurrogateFunction):
        return surrogate
    if isinstance(surrogate, str):
        if surrogate not in SURROGATE_CLASSES:
            raise ValueError(f"unknown surrogate {surrogate!r}; choose one of {sorted(SURROGATE_CLASSES)}")
        return SURROGATE_CLASSES[surrogate]()
    raise TypeError(f"surrogate must be a name or a SurrogateFunction, got {type(surrogate).__name__}")
