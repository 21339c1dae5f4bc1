"""Neurons, surrogates, encoders, spiking attention, SpikeGPT blocks and homeostasis."""

from neurostep.neuro import encoders, surrogate
from neurostep.neuro.cuba import CubaLIF, CubaLIFState
from neurostep.neuro.homeostasis import HomeostaticLR
from neurostep.neuro.neurons import IF, LIF, AdaptiveLIF, LIFState, ParametricLIF, SpikingNeuron
from neurostep.neuro.spikegpt import (
    BlockState,
    ChannelMixState,
    SpikeGPT,
    SpikeGPTBlock,
    SpikeGPTState,
    SpikingChannelMix,
    SpikingTimeMix,
    TimeMixState,
)
from neurostep.neuro.spikformer import (
    Spikformer,
    SpikformerBlock,
    SpikformerBlockState,
    SpikformerState,
    SpikingMLP,
    SpikingMLPState,
    SpikingPatchStem,
    SpikingPatchStemState,
)
from neurostep.neuro.ssa import SpikingSelfAttention, SpikingSelfAttentionMixer, SSAState

__all__ = [
    "IF",
    "LIF",
    "AdaptiveLIF",
    "BlockState",
    "ChannelMixState",
    "CubaLIF",
    "CubaLIFState",
    "HomeostaticLR",
    "LIFState",
    "ParametricLIF",
    "SSAState",
    "SpikeGPT",
    "SpikeGPTBlock",
    "SpikeGPTState",
    "SpikformerBlock",
    "SpikformerBlockState",
    "Spikformer",
    "SpikformerState",
    "SpikingChannelMix",
    "SpikingMLP",
    "SpikingMLPState",
    "SpikingNeuron",
    "SpikingPatchStem",
    "SpikingPatchStemState",
    "SpikingSelfAttention",
    "SpikingSelfAttentionMixer",
    "SpikingTimeMix",
    "TimeMixState",
    "encoders",
    "surrogate",
]
