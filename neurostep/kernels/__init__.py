"""neurostep.kernels: one package per fused op (``reference.py`` / ``cpu.py`` / ``triton.py``) and the numba
helpers they share.

Importing the package keys numba's disk cache of every kernel on all kernel sources
(:mod:`~neurostep.kernels.numba_cache`) before any kernel is decorated.
"""

from neurostep.kernels.numba_cache import install_kernel_cache_locators

install_kernel_cache_locators()
