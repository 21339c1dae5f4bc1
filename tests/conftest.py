"""Test-session settings.

Triton kernels run on CPU tensors only under Triton's interpreter, which Triton reads when a
kernel module is first imported: set it before anything imports triton. Tests run two
workers on two cores, so each worker keeps torch to one thread.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"
# numba's and torch's OpenMP pools both spin after each parallel region; on 2 cores each starves
# the other (a tiny training step went from 35 ms to 700 ms). Passive waiting fixes it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

torch.set_num_threads(1)
