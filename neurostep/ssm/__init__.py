"""State-space blocks: Mamba (and a Mamba language model), Vision Mamba, LaMamba."""

from neurostep.ssm.lamamba import SS2D, LaMamba, LaMambaNet, WindowAttention
from neurostep.ssm.mamba import Mamba, MambaLM, MambaLTI, MambaState
from neurostep.ssm.vision_mamba import VIM_CONFIGS, BidirectionalMamba, VisionMamba

__all__ = [
    "SS2D",
    "VIM_CONFIGS",
    "BidirectionalMamba",
    "LaMamba",
    "LaMambaNet",
    "Mamba",
    "MambaLM",
    "MambaLTI",
    "MambaState",
    "VisionMamba",
    "WindowAttention",
]
