"""Drop-in token mixers ``(B, N, C) -> (B, N, C)`` and the models built from them.

MetaMixer (FFNified attention), NiNformer, EfficientMod, CRATE, Lightning Attention-2 and the
softmax-attention baseline. Each mixer's ``forward(x, grid_size=None)`` takes tokens; those that need a 2D map
use ``grid_size=(H, W)`` (or a square). Build them by name with
``neurostep.models.create_mixer("efficientmod", dim, grid_size=(14, 14))``.
"""

from neurostep.mixers.attention import SoftmaxAttention
from neurostep.mixers.crate import CRATE, ISTA, MSSA, CRATELayer
from neurostep.mixers.efficientmod import EfficientMod, EfficientModBlock, EfficientModulation
from neurostep.mixers.ffnet import FFBlock, FFNet, FFNifiedAttention, RepDWConv, reparameterize
from neurostep.mixers.lightning import LightningAttention, LightningState
from neurostep.mixers.ninformer import MixerBlock, NiNBlock, NiNformer, NiNGating

__all__ = [
    "CRATE",
    "CRATELayer",
    "EfficientMod",
    "EfficientModBlock",
    "EfficientModulation",
    "FFBlock",
    "FFNet",
    "FFNifiedAttention",
    "ISTA",
    "LightningAttention",
    "LightningState",
    "MSSA",
    "MixerBlock",
    "NiNBlock",
    "NiNGating",
    "NiNformer",
    "RepDWConv",
    "SoftmaxAttention",
    "reparameterize",
]
