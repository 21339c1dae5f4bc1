"""``mamba_ssm.modules.mha``: not offered (upstream's MHA needs flash-attn); importable, refuses on use."""

from neurostep.compat.mamba_ssm.modules._unsupported import unsupported

MHA = unsupported("MHA", "the hybrid attention layer (attn_layer_idx) needs flash-attn's kv-cache kernels")
