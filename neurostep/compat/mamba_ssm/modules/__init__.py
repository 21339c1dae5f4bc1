"""``mamba_ssm.modules``: Mamba, Mamba-2, the residual block and the gated MLP."""
