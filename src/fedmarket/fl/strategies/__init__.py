"""Aggregation strategies, one per module on the :class:`Strategy` base class, and a registry by name."""

from fedmarket.fl.strategies.base import Strategy, check_weights, stack_updates
from fedmarket.fl.strategies.centered_clip import CenteredClip, centered_clip
from fedmarket.fl.strategies.fedadam import FedAdam
from fedmarket.fl.strategies.fedavg import FedAvg, weighted_mean
from fedmarket.fl.strategies.fedavgm import FedAvgM
from fedmarket.fl.strategies.fedopt import FedOpt
from fedmarket.fl.strategies.fedyogi import FedYogi
from fedmarket.fl.strategies.fltrust import FLTrust, fltrust
from fedmarket.fl.strategies.krum import Krum, MultiKrum, krum_scores, multi_krum, pairwise_sq_distances
from fedmarket.fl.strategies.median import FedMedian, coordinate_median
from fedmarket.fl.strategies.norm_bounding import NormBounding, clip_norms
from fedmarket.fl.strategies.registry import STRATEGIES, make_strategy, register_strategy
from fedmarket.fl.strategies.trimmed_mean import FedTrimmedMean, trim_count, trimmed_mean

__all__ = [
    "STRATEGIES",
    "CenteredClip",
    "FLTrust",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedMedian",
    "FedOpt",
    "FedTrimmedMean",
    "FedYogi",
    "Krum",
    "MultiKrum",
    "NormBounding",
    "Strategy",
    "centered_clip",
    "check_weights",
    "clip_norms",
    "coordinate_median",
    "fltrust",
    "krum_scores",
    "make_strategy",
    "multi_krum",
    "pairwise_sq_distances",
    "register_strategy",
    "stack_updates",
    "trim_count",
    "trimmed_mean",
    "weighted_mean",
]
