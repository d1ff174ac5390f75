"""Split sample indices among clients: IID, label-skewed with Dirichlet proportions, or pathological label shards."""

from __future__ import annotations

import math

import numpy as np

from fedmarket.errors import ConfigError

_MAX_TRIES = 1000


def _check(y: np.ndarray, n_clients: int) -> np.ndarray:
    """Validate labels and client count; return ``y`` as a 1-D array."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ConfigError(f"labels must be a 1-D array, got shape {y.shape}")
    if isinstance(n_clients, bool) or int(n_clients) != n_clients:
        raise ConfigError(f"n_clients must be an integer, got {n_clients!r}")
    if n_clients < 1:
        raise ConfigError(f"n_clients must be at least 1, got {n_clients}")
    if n_clients > y.shape[0]:
        raise ConfigError(
            f"n_clients ({n_clients}) exceeds the number of samples ({y.shape[0]})"
        )
    return y


def iid_partition(y: np.ndarray, n_clients: int, seed: int) -> list[np.ndarray]:
    """Split indices uniformly at random into ``n_clients`` near-equal parts.

    Parameters
    ----------
    y : numpy.ndarray
        Labels, shape ``(n,)`` (only the length is used).
    n_clients : int
        Number of parts, ``1 <= n_clients <= n``.
    seed : int
        Seed of the shuffle.

    Returns
    -------
    list of numpy.ndarray
        ``n_clients`` sorted int64 index arrays; every index appears exactly
        once and sizes differ by at most one.

    Raises
    ------
    ConfigError
        If ``n_clients`` is out of range.
    """
    y = _check(y, n_clients)
    perm = np.random.default_rng(seed).permutation(y.shape[0]).astype(np.int64)
    return [np.sort(part) for part in np.array_split(perm, int(n_clients))]


def dirichlet_partition(
    y: np.ndarray, n_clients: int, alpha: float, seed: int, min_size: int = 2
) -> list[np.ndarray]:
    """Label-skewed split with per-class Dirichlet proportions (Hsu et al., 2019).

    For each class, proportions ``p ~ Dirichlet(alpha * 1)`` over the clients
    are drawn and the (shuffled) samples of that class are cut accordingly.
    Small ``alpha`` gives strongly skewed label distributions, large ``alpha``
    approaches an IID split. The whole draw is repeated until every client has
    at least ``min_size`` samples.

    Parameters
    ----------
    y : numpy.ndarray
        Integer labels, shape ``(n,)``.
    n_clients : int
        Number of clients, ``1 <= n_clients <= n``.
    alpha : float
        Concentration of the Dirichlet distribution, ``> 0``.
    seed : int
        Seed of all random draws.
    min_size : int, optional
        Minimum number of samples per client (default 2).

    Returns
    -------
    list of numpy.ndarray
        ``n_clients`` sorted int64 index arrays; every index appears exactly once.

    Raises
    ------
    ConfigError
        If an argument is out of range, or if no draw gives every client
        ``min_size`` samples within a bounded number of tries.
    """
    y = _check(y, n_clients)
    n_clients = int(n_clients)
    alpha = float(alpha)
    if not math.isfinite(alpha) or alpha <= 0:
        raise ConfigError(f"Dirichlet alpha must be a positive number, got {alpha}")
    if int(min_size) != min_size or min_size < 0:
        raise ConfigError(f"min_size must be a non-negative integer, got {min_size!r}")
    n = y.shape[0]
    if n_clients * min_size > n:
        raise ConfigError(
            f"too few samples ({n}) for {n_clients} clients with at least {min_size} each"
        )
    rng = np.random.default_rng(seed)
    class_idx = [np.flatnonzero(y == c) for c in np.unique(y)]
    owner = np.empty(n, dtype=np.int64)
    clients = np.arange(n_clients)
    for _ in range(_MAX_TRIES):
        for idx in class_idx:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(p) * idx.size).astype(np.int64)
            cuts[-1] = idx.size
            counts = np.diff(np.concatenate(([0], cuts)))
            owner[idx] = np.repeat(clients, counts)
        sizes = np.bincount(owner, minlength=n_clients)
        if sizes.min() >= min_size:
            order = np.argsort(owner, kind="stable")  # indices ascending within a client
            return np.split(order, np.cumsum(sizes)[:-1])
    raise ConfigError(
        f"too few samples ({n}) for {n_clients} clients with Dirichlet alpha={alpha}: "
        f"no draw in {_MAX_TRIES} tries gave every client at least {min_size} samples; "
        f"use fewer clients, a larger alpha or a smaller min_size"
    )


def shard_partition(y: np.ndarray, n_clients: int, shards_per_client: int, seed: int) -> list[np.ndarray]:
    """Pathological non-IID split (McMahan et al., 2017): each client gets a few label-sorted shards.

    Samples are sorted by label (ties in a seeded random order), cut into
    ``n_clients * shards_per_client`` contiguous shards of near-equal size,
    and the shards are dealt to clients at random, ``shards_per_client``
    each; most clients then see only about ``shards_per_client`` labels.

    Parameters
    ----------
    y : numpy.ndarray
        Integer labels, shape ``(n,)``.
    n_clients : int
        Number of clients, ``>= 1``.
    shards_per_client : int
        Shards per client, ``>= 1``, with ``n_clients * shards_per_client <= n``.
    seed : int
        Seed of the tie order and the deal.

    Returns
    -------
    list of numpy.ndarray
        ``n_clients`` sorted int64 index arrays; every index appears exactly once.

    Raises
    ------
    ConfigError
        If an argument is out of range.
    """
    y = _check(y, n_clients)
    if isinstance(shards_per_client, bool) or int(shards_per_client) != shards_per_client or shards_per_client < 1:
        raise ConfigError(f"shards_per_client must be a positive integer, got {shards_per_client!r}")
    n_shards = int(n_clients) * int(shards_per_client)
    if n_shards > y.shape[0]:
        raise ConfigError(
            f"too few samples ({y.shape[0]}) for {n_clients} clients x {shards_per_client} shards"
        )
    rng = np.random.default_rng(seed)
    perm = rng.permutation(y.shape[0])
    by_label = perm[np.argsort(y[perm], kind="stable")].astype(np.int64)
    shards = np.array_split(by_label, n_shards)
    deal = rng.permutation(n_shards).reshape(int(n_clients), int(shards_per_client))
    return [np.sort(np.concatenate([shards[s] for s in row])) for row in deal]
