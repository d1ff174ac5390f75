"""Privacy: differential privacy (mechanisms, accountant) and secure aggregation (SecAgg+)."""

from fedmarket.privacy.accountant import PrivacyAccountant, epsilon_for, noise_multiplier_for
from fedmarket.privacy.dp import (
    central_gaussian,
    clip_update,
    clip_updates,
    distributed_gaussian,
    distributed_noise_std,
    gaussian_sigma,
    local_gaussian,
)
from fedmarket.privacy.secagg import (
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    decode_weighted,
    encode_weighted,
    run_round,
)
from fedmarket.privacy.strategy import DPFedAvg

__all__ = [
    "DPFedAvg",
    "PrivacyAccountant",
    "SecAggClient",
    "SecAggConfig",
    "SecAggServer",
    "central_gaussian",
    "clip_update",
    "clip_updates",
    "decode_weighted",
    "distributed_gaussian",
    "distributed_noise_std",
    "encode_weighted",
    "epsilon_for",
    "gaussian_sigma",
    "local_gaussian",
    "noise_multiplier_for",
    "run_round",
]
