"""Neurons, surrogates, encoders, spiking attention, SpikeGPT blocks and homeostasis."""

from neurostep.neuro import encoders, surrogate
from neurostep.neuro.homeostasis import HomeostaticLR
from neurostep.neuro.neurons import IF, LIF, AdaptiveLIF, LIFState, ParametricLIF, SpikingNeuron
from neurostep.neuro.spikegpt import SpikeGPT, SpikeGPTBlock, SpikingChannelMix, SpikingTimeMix
from neurostep.neuro.spikformer import Spikformer, SpikformerBlock, SpikingPatchStem
from neurostep.neuro.ssa import SpikingSelfAttention, SpikingSelfAttentionMixer

__all__ = [
    "IF",
    "LIF",
    "AdaptiveLIF",
    "HomeostaticLR",
    "LIFState",
    "ParametricLIF",
    "SpikeGPT",
    "SpikeGPTBlock",
    "SpikformerBlock",
    "Spikformer",
    "SpikingChannelMix",
    "SpikingNeuron",
    "SpikingPatchStem",
    "SpikingSelfAttention",
    "SpikingSelfAttentionMixer",
    "SpikingTimeMix",
    "encoders",
    "surrogate",
]
