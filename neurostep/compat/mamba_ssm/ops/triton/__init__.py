"""``mamba_ssm.ops.triton``: decode step, fused norms and the SSD scan, on neurostep's kernels and PyTorch."""
