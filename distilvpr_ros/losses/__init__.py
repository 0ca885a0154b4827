"""Losses: the VPR task triplet loss, the DistilVPR relations and manifolds, and KD baselines.

See ``reference/distilvpr.md`` §3 for the formulas and constants these modules follow.
"""

from .base import DistillLoss
from .baselines import DISTILL_METHODS, make_distill_loss
from .distilvpr import CrossAgentLoss, DistilVPRLoss, SelfAgentLoss
from .task import BatchHardTripletLoss, MultiHeadTripletLoss, mine_batch_hard

__all__ = [
    "DISTILL_METHODS",
    "BatchHardTripletLoss",
    "CrossAgentLoss",
    "DistillLoss",
    "DistilVPRLoss",
    "MultiHeadTripletLoss",
    "SelfAgentLoss",
    "make_distill_loss",
    "mine_batch_hard",
]
