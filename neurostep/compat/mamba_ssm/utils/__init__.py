"""``mamba_ssm.utils``: generation (``InferenceParams``, ``GenerationMixin``, ``decode``) and hub loading."""
