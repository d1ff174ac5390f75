"""Stratified GTG-Shapley: Latin-square batches, exact small strata, efficient truncation; properties on random games."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmarket.errors import ConfigError
from fedmarket.scoring import FunctionUtility, exact_shapley, gtg_shapley, latin_permutations
from fedmarket.scoring._permutations import walk
from fedmarket.scoring.gtg import small_strata, stratified_values


def table_game(n: int, seed: int) -> FunctionUtility:
    """A game with an arbitrary (random) value for every coalition."""
    table = np.random.default_rng(seed).normal(size=1 << n)
    bits = 1 << np.arange(n)
    return FunctionUtility(n, lambda M: table[M.astype(np.int64) @ bits])


def strata_means(u: FunctionUtility) -> np.ndarray:
    """Brute force: (n, n), entry (s, i) the mean of v(S + i) - v(S) over all S of size s without i."""
    n = u.n
    mu = np.zeros((n, n))
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for s in range(n):
            d = [u.value([*S, i]) - u.value(S) for S in itertools.combinations(others, s)]
            mu[s, i] = np.mean(d)
    return mu


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), seed=st.integers(0, 2**32 - 1))
def test_latin_batch_is_a_latin_square(n, seed):
    P = latin_permutations(n, np.random.default_rng(seed))
    assert P.shape == (n, n)
    assert all(sorted(row) == list(range(n)) for row in P.tolist())
    assert all(sorted(col) == list(range(n)) for col in P.T.tolist())


def test_latin_rows_are_uniform_permutations():
    rng = np.random.default_rng(0)
    first = np.array([latin_permutations(4, rng)[0] for _ in range(4000)])
    freq = np.array([[np.mean(first[:, j] == p) for p in range(4)] for j in range(4)])
    np.testing.assert_allclose(freq, 0.25, atol=0.03)  # every player equally likely at every position


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 7), seed=st.integers(0, 2**32 - 1), sizes=st.integers(0, 2))
def test_small_strata_match_brute_force(n, seed, sizes):
    u = table_game(n, seed)
    got = small_strata(u, sizes)
    assert u.evaluations == [0, 1 + n, 1 + n + n * (n - 1) // 2][min(sizes, n)]  # one batch, nothing else
    assert got.shape == (min(sizes, n), n)
    np.testing.assert_allclose(got, strata_means(u)[: got.shape[0]], atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 7), seed=st.integers(0, 2**32 - 1))
def test_the_mean_of_the_strata_is_the_shapley_value(n, seed):
    u = table_game(n, seed)
    mu = strata_means(u)
    np.testing.assert_allclose(stratified_values(np.zeros((n, n)), np.zeros((n, n)), mu), exact_shapley(u), atol=1e-12)
    # sampled strata: sums / counts; exact rows override them; empty strata fall back to the player's mean
    np.testing.assert_allclose(stratified_values(3 * mu, np.full((n, n), 3.0), mu[:0]), exact_shapley(u), atol=1e-12)
    if n == 1:
        return
    counts = np.ones((n, n))
    counts[-1] = 0
    fb = stratified_values(mu * counts, counts, mu[:0])
    expect = (mu[:-1].sum(axis=0) + mu[:-1].mean(axis=0)) / n
    np.testing.assert_allclose(fb, expect, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 8), seed=st.integers(0, 2**32 - 1), tol=st.floats(0.0, 2.0))
def test_residual_walk_is_efficient_per_permutation(n, seed, tol):
    u = table_game(n, seed)
    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.tile(np.arange(n), (5, 1)), axis=1)
    ve, vf = u.empty(), u.grand()
    marg = walk(u, perms, ve, vf, tol, residual=True)
    np.testing.assert_allclose(marg.sum(axis=1), vf - ve, atol=1e-12)
    plain = walk(u, perms, ve, vf, tol)
    reached = plain != 0
    np.testing.assert_allclose(marg[reached], plain[reached], atol=1e-12)  # only the unreached players change
    if tol == 0.0:
        np.testing.assert_array_equal(marg, plain)


@pytest.mark.parametrize("n", [1, 2])
def test_all_strata_exact_gives_exact_shapley(n):
    u = table_game(n, 5)
    est = gtg_shapley(u, seed=0, round_tol=0.0)
    assert est.converged and est.permutations == 0
    np.testing.assert_allclose(est.values, exact_shapley(table_game(n, 5)), atol=1e-12)


@settings(max_examples=10, deadline=None, derandomize=True)  # a statistical bound: the same seeds every run
@given(seed=st.integers(0, 1000))
def test_no_truncation_and_many_batches_converge_to_exact(seed):
    u = table_game(6, seed)
    est = gtg_shapley(u, seed=seed, eps=0.0, round_tol=0.0, conv_tol=0.0, max_permutations=6 * 400)
    exact = exact_shapley(table_game(6, seed))
    # unbiased: marginals of an N(0, 1) table have variance about 2, so with 400 samples per sampled
    # stratum each value's standard error is about sqrt(4 * 2 / 400) / 6 = 0.024; allow about 6 of them
    assert np.max(np.abs(est.values - exact)) < 0.15


@pytest.mark.parametrize("bad", [-1, 3, 1.5, True])
def test_exact_strata_is_validated(bad):
    with pytest.raises(ConfigError):
        gtg_shapley(table_game(4, 0), seed=0, exact_strata=bad)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_every_stratum_setting_estimates_well(k):
    w = np.array([5.0, 4.0, 3.0, 2.5, 2.0, 1.0, 0.5, 0.0])
    game = lambda: FunctionUtility(len(w), lambda M: 1.0 - np.exp(-(M @ w) / 4.0))
    exact = exact_shapley(game())
    est = gtg_shapley(game(), seed=0, eps=0.001, conv_tol=0.01, exact_strata=k)
    assert np.mean(np.abs(est.values - exact)) / exact.sum() < 0.02
