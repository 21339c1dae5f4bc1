"""``mamba_ssm.modules.mamba3``: ``Mamba3`` can be imported (``import mamba_ssm`` needs it) but not built."""

from neurostep.compat.mamba_ssm.modules._unsupported import unsupported

Mamba3 = unsupported("Mamba3", "neurostep has no kernel for Mamba-3's complex-valued rotary state updates")
