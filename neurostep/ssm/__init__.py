"""State-space blocks: Mamba and Mamba-2 (and their language models), Vision Mamba, LaMamba, S4D."""

from neurostep.ssm.lamamba import SS2D, LaMamba, LaMambaNet, WindowAttention
from neurostep.ssm.mamba import Mamba, MambaLM, MambaLMState, MambaLTI, MambaState
from neurostep.ssm.mamba2 import Mamba2, Mamba2LM, Mamba2LMState, Mamba2State
from neurostep.ssm.s4d import S4D
from neurostep.ssm.vision_mamba import VIM_CONFIGS, BidirectionalMamba, BidirectionalMambaState, VisionMamba

__all__ = [
    "S4D",
    "SS2D",
    "VIM_CONFIGS",
    "BidirectionalMamba",
    "BidirectionalMambaState",
    "LaMamba",
    "LaMambaNet",
    "Mamba",
    "Mamba2",
    "Mamba2LM",
    "Mamba2LMState",
    "Mamba2State",
    "MambaLM",
    "MambaLMState",
    "MambaLTI",
    "MambaState",
    "VisionMamba",
    "WindowAttention",
]
