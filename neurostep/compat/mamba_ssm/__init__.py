"""Stand-in for the ``mamba_ssm`` package (state-spaces/mamba) on neurostep's kernels.

Same module tree and signatures as mamba-ssm 2.x (and the extras of Vision Mamba's 1.1.1 fork):
``ops.selective_scan_interface``, ``ops.triton.selective_state_update``, ``ops.triton.layer_norm``,
``ops.triton.layernorm_gated``, ``ops.triton.ssd_combined``, ``modules.mamba_simple``,
``modules.mamba2``, ``modules.block``, ``modules.mlp``, ``models.mixer_seq_simple``,
``models.config_mamba``, ``utils.generation``, ``utils.hf``. ``neurostep.compat.install()`` makes
``import mamba_ssm`` load this package. ``Mamba3`` and ``MHA`` import but refuse on use.
"""

__version__ = "2.3.2.post1"

from neurostep.compat.mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel  # noqa: E402
from neurostep.compat.mamba_ssm.modules.mamba2 import Mamba2  # noqa: E402
from neurostep.compat.mamba_ssm.modules.mamba3 import Mamba3  # noqa: E402
from neurostep.compat.mamba_ssm.modules.mamba_simple import Mamba  # noqa: E402
from neurostep.compat.mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn  # noqa: E402

__all__ = ["Mamba", "Mamba2", "Mamba3", "MambaLMHeadModel", "mamba_inner_fn", "selective_scan_fn"]
