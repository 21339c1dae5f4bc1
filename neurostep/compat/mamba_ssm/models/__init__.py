"""``mamba_ssm.models``: ``MambaConfig`` and the ``MambaLMHeadModel`` language model."""
