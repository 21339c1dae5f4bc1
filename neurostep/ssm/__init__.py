"""State-space blocks: Mamba (and a Mamba language model), Vision Mamba, LaMamba."""

from neurostep.ssm.lamamba import SS2D, LaMamba, LaMambaNet, WindowAttention
from neurostep.ssm.mamba import Mamba, MambaLM, MambaLMState, MambaLTI, MambaState
from neurostep.ssm.vision_mamba import VIM_CONFIGS, BidirectionalMamba, BidirectionalMambaState, VisionMamba

__all__ = [
    "SS2D",
    "VIM_CONFIGS",
    "BidirectionalMamba",
    "BidirectionalMambaState",
    "LaMamba",
    "LaMambaNet",
    "Mamba",
    "MambaLM",
    "MambaLMState",
    "MambaLTI",
    "MambaState",
    "VisionMamba",
    "WindowAttention",
]
