"""neurostep.kernels"""
