"""Sequence parallelism over torch.distributed: one sequence split along time across ranks.

Linear recurrences (selective scan, linear scan, chunked decayed linear attention, WKV) run in a
two-pass form whose ranks work at the same time and exchange only state-sized summaries; the LIF
family is pipelined rank to rank; softmax attention has a ring self-attention baseline. Gradients
cross ranks in the backward. See ``docs/distributed.md``.
"""

from neurostep.distributed.comm import CommStats
from neurostep.distributed.models import spikegpt_scan
from neurostep.distributed.parallel import SequenceParallel, chunk_length, init_sequence_parallel

__all__ = ["CommStats", "SequenceParallel", "chunk_length", "init_sequence_parallel", "spikegpt_scan"]
