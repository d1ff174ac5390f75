"""Contribution scoring (pure math, no I/O): coalition utilities, leave-one-out, exact/TMC/GTG Shapley, reward shares, free-rider and poisoning detection."""

from fedmarket.scoring._permutations import ShapleyEstimate
from fedmarket.scoring.detect import DetectionReport, detect
from fedmarket.scoring.gtg import gtg_shapley, guided_permutations, latin_permutations
from fedmarket.scoring.loo import leave_one_out
from fedmarket.scoring.round import RoundScore, score_round
from fedmarket.scoring.shapley_exact import exact_shapley, shapley_from_table
from fedmarket.scoring.shares import combine_rounds, reward_amounts, shares
from fedmarket.scoring.tmc import tmc_shapley
from fedmarket.scoring.utility import AggregationUtility, FunctionUtility, Utility, all_masks

__all__ = [
    "AggregationUtility",
    "DetectionReport",
    "FunctionUtility",
    "RoundScore",
    "ShapleyEstimate",
    "Utility",
    "all_masks",
    "combine_rounds",
    "detect",
    "exact_shapley",
    "gtg_shapley",
    "guided_permutations",
    "latin_permutations",
    "leave_one_out",
    "reward_amounts",
    "score_round",
    "shapley_from_table",
    "shares",
    "tmc_shapley",
]
