"""The recurrent-step engine: protocol, backend registry, input checks, cost declarations."""

from neurostep.engine.backends import AUTO_ORDER, BACKEND_NAMES, KERNELS, BackendUnavailableError, KernelRegistry
from neurostep.engine.checks import (
    FLOAT_DTYPES,
    check_backend_name,
    check_finite,
    check_nonempty,
    check_numba_input,
    check_same_shape,
    check_tensor,
    check_token_range,
    compute_dtype,
    has_values,
)
from neurostep.engine.costs import COSTS, CountAs, OpCost, register_cost
from neurostep.engine.ops import BackwardCall, FusedOp, define_op, differentiated
from neurostep.engine.protocol import (
    Composite,
    Recurrent,
    State,
    detect_anomalies,
    iter_tensors,
    run_child,
    scan_by_steps,
    step_shape,
)

__all__ = [
    "AUTO_ORDER",
    "BACKEND_NAMES",
    "BackwardCall",
    "COSTS",
    "Composite",
    "CountAs",
    "FLOAT_DTYPES",
    "FusedOp",
    "KERNELS",
    "BackendUnavailableError",
    "KernelRegistry",
    "OpCost",
    "Recurrent",
    "State",
    "check_backend_name",
    "check_finite",
    "check_nonempty",
    "check_numba_input",
    "check_same_shape",
    "check_tensor",
    "check_token_range",
    "compute_dtype",
    "define_op",
    "detect_anomalies",
    "differentiated",
    "has_values",
    "iter_tensors",
    "register_cost",
    "run_child",
    "scan_by_steps",
    "step_shape",
]
