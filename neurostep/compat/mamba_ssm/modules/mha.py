"""``mamba_ssm.modules.mha``: ``MHA`` can be imported but not built here (it runs on flash-attn's kernels)."""

from neurostep.compat.mamba_ssm.modules._unsupported import unsupported

MHA = unsupported("MHA", "its attention and kv cache are flash-attn CUDA kernels, which neurostep does not "
                         "provide, so hybrid models with attn_layer_idx cannot be built")
