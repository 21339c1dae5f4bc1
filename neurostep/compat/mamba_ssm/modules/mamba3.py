"""``mamba_ssm.modules.mamba3``: not offered (importable so that ``import mamba_ssm`` works; refuses on use)."""

from neurostep.compat.mamba_ssm.modules._unsupported import unsupported

Mamba3 = unsupported("Mamba3", "Mamba-3's kernels (Triton/TileLang/CuTe, complex rotary states) have no "
                               "neurostep counterpart")
