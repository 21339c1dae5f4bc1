"""``mamba_ssm.ops``: the selective scan and its fused Mamba paths (:mod:`.selective_scan_interface`)."""
