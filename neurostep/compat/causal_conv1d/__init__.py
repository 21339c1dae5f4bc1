"""Stand-in for the ``causal_conv1d`` package (Dao-AILab/causal-conv1d) on neurostep's kernels.

Same modules and signatures as causal-conv1d 1.6: :mod:`.causal_conv1d_interface`
(``causal_conv1d_fn``, ``causal_conv1d_update`` and their ``_ref`` versions),
:mod:`.causal_conv1d_varlen` and :mod:`.cpp_functions`. ``neurostep.compat.install()`` makes
``import causal_conv1d`` load this package.
"""

__version__ = "1.6.1"

from neurostep.compat.causal_conv1d.causal_conv1d_interface import causal_conv1d_fn, causal_conv1d_update  # noqa: E402

__all__ = ["causal_conv1d_fn", "causal_conv1d_update"]
