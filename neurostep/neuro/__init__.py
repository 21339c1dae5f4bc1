"""Neurons, surrogates, encoders, spiking attention, SpikeGPT blocks and homeostasis."""

from neurostep.neuro import encoders, surrogate
from neurostep.neuro.neurons import IF, LIF, AdaptiveLIF, LIFState, ParametricLIF, SpikingNeuron

__all__ = [
    "IF",
    "LIF",
    "AdaptiveLIF",
    "LIFState",
    "ParametricLIF",
    "SpikingNeuron",
    "encoders",
    "surrogate",
]
