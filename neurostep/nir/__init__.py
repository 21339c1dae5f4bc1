"""Exchange spiking networks through NIR, the Neuromorphic Intermediate Representation.

:func:`export` turns a neurostep network into a ``nir.NIRGraph`` (optionally written to an HDF5 file);
:func:`load` builds a runnable neurostep network from a graph or a file, on the fused neuron kernels
with explicit state. The conversion is exact or refused: :class:`NIRUnsupportedError` names the node and
the reason. Needs the ``nir`` package (the ``nir`` extra).
"""

from neurostep.nir.convert import DEFAULT_DT, NIRUnsupportedError, export, load
from neurostep.nir.modules import (
    NIRLIF,
    Flatten,
    NetworkState,
    NIRCubaLIF,
    NIRNetwork,
    RecurrentSpiking,
    RecurrentSpikingState,
    SampleWise,
    Scale,
    SumPool2d,
    Threshold,
)

__all__ = [
    "DEFAULT_DT",
    "NIRLIF",
    "Flatten",
    "NIRCubaLIF",
    "NIRNetwork",
    "NIRUnsupportedError",
    "NetworkState",
    "RecurrentSpiking",
    "RecurrentSpikingState",
    "SampleWise",
    "Scale",
    "SumPool2d",
    "Threshold",
    "export",
    "load",
]
