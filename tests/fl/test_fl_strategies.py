"""Property tests for every aggregation strategy: permutation invariance, weights, robustness bounds."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmarket.errors import ConfigError
from fedmarket.fl.strategies import (
    STRATEGIES,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedTrimmedMean,
    FedYogi,
    FLTrust,
    Krum,
    MultiKrum,
    NormBounding,
    Strategy,
    coordinate_median,
    make_strategy,
    register_strategy,
    trimmed_mean,
)

FAST = settings(max_examples=20, deadline=None, database=None)
ALL = sorted(STRATEGIES)
ROBUST = ["median", "trimmed_mean", "multikrum", "krum", "fltrust", "norm_bounding"]


def _make(name):
    return make_strategy(name)


@st.composite
def round_data(draw, min_n=3, max_n=12):
    """Updates (n, d) from a seeded Gaussian (ties have probability 0), positive weights, a server update."""
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, 7))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(n, d)) * scale
    w = rng.integers(1, 100, n).astype(float)
    g0 = rng.normal(size=d) * scale
    return U, w, g0


def _agg(s: Strategy, U, w, g0, params=None):
    if params is None:
        return s.aggregate(U, w, server_update=g0)
    return s.step(params, U, w, server_update=g0)


# ------------------------------------------------------------------ every strategy


def test_registry_holds_every_strategy_of_the_issue():
    assert {"fedavg", "fedavgm", "fedadam", "fedyogi", "median", "trimmed_mean", "multikrum", "fltrust",
            "norm_bounding"} <= set(STRATEGIES)
    for name, cls in STRATEGIES.items():
        assert cls.name == name and issubclass(cls, Strategy)
        assert isinstance(make_strategy(name), cls)


@pytest.mark.parametrize("name", ALL)
@FAST
@given(data=round_data(), perm_seed=st.integers(0, 1000))
def test_permutation_invariant(name, data, perm_seed):
    U, w, g0 = data
    perm = np.random.default_rng(perm_seed).permutation(len(U))
    params = np.linspace(-1, 1, U.shape[1])
    a = _agg(_make(name), U, w, g0, params)
    b = _agg(_make(name), U[perm], w[perm], g0, params)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9 * np.abs(U).max())


@pytest.mark.parametrize("name", ALL)
@FAST
@given(data=round_data(), c=st.sampled_from([0.01, 3.0, 1e6]))
def test_weights_are_relative_and_zero_weight_is_ignored(name, data, c):
    U, w, g0 = data
    ref = _agg(_make(name), U, w, g0)
    tol = dict(rtol=1e-9, atol=1e-9 * np.abs(U).max())
    np.testing.assert_allclose(_agg(_make(name), U, w * c, g0), ref, **tol)
    junk = np.full((1, U.shape[1]), 1e12)
    np.testing.assert_allclose(_agg(_make(name), np.vstack([U, junk]), np.append(w, 0.0), g0), ref, **tol)


@pytest.mark.parametrize("name", ["fedavg", "fedavgm", "fedadam", "fedyogi"])
@FAST
@given(data=round_data(max_n=6))
def test_integer_weight_counts_as_copies(name, data):
    U, w, g0 = data
    w = np.minimum(w, 4)
    copies = np.repeat(U, w.astype(int), axis=0)
    np.testing.assert_allclose(
        _agg(_make(name), U, w, g0, np.zeros(U.shape[1])),
        _agg(_make(name), copies, None, g0, np.zeros(U.shape[1])),
        rtol=1e-9, atol=1e-9 * np.abs(U).max(),
    )


@FAST
@given(data=round_data())
def test_weights_change_the_weighted_rules(data):
    U, w, g0 = data
    w2 = w.copy()
    w2[0] *= 50
    assert not np.allclose(FedAvg().aggregate(U, w), FedAvg().aggregate(U, w2))
    np.testing.assert_allclose(FedAvg().aggregate(U, w), (w @ U) / w.sum(), rtol=1e-12, atol=1e-12 * np.abs(U).max())
    # order-statistic rules ignore weight values beyond positivity (float sums may differ in the last bit
    # with memory alignment, hence the tolerance)
    for s in (FedMedian(), FedTrimmedMean(0.2), Krum(0.2), FLTrust()):
        np.testing.assert_allclose(
            s.aggregate(U, w, server_update=g0), s.aggregate(U, w2, server_update=g0), rtol=1e-12, atol=0
        )


# -------------------------------------------------------------- robustness bounds


@st.composite
def attacked_round(draw, krum=False):
    """n honest-looking updates of which f < n / 2 (Krum: n >= 2 f + 3) are replaced by arbitrary vectors."""
    U, w, g0 = draw(round_data(min_n=5, max_n=15))
    n = len(U)
    f = draw(st.integers(1, (n - 3) // 2 if krum else (n - 1) // 2))
    bad_rows = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).choice(n, f, replace=False)
    kind = draw(st.sampled_from(["huge", "nan", "inf", "mixed", "copies"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    A = U.copy()
    for i in bad_rows:
        if kind == "huge":
            A[i] = rng.choice([-1, 1], U.shape[1]) * 1e15
        elif kind == "nan":
            A[i] = np.nan
        elif kind == "inf":
            A[i] = np.inf
        elif kind == "copies":
            A[i] = -1e9 * g0
        else:
            A[i] = rng.normal(size=U.shape[1]) * 10.0 ** rng.integers(-3, 16)
    honest = np.setdiff1d(np.arange(n), bad_rows)
    return A, w, g0, U[honest], f


@FAST
@given(attacked_round())
def test_median_stays_within_honest_range(case):
    A, w, g0, H, f = case
    out = FedMedian().aggregate(A, w)
    assert np.all(out >= H.min(axis=0) - 1e-9) and np.all(out <= H.max(axis=0) + 1e-9)


@FAST
@given(attacked_round())
def test_trimmed_mean_stays_within_honest_range_when_trimming_enough(case):
    A, w, g0, H, f = case
    n = len(A)
    beta = f / n + 1e-9  # floor(beta * n) == f
    out = FedTrimmedMean(beta).aggregate(A, w)
    span = np.abs(H).max()
    assert np.all(out >= H.min(axis=0) - 1e-9 * span) and np.all(out <= H.max(axis=0) + 1e-9 * span)


@FAST
@given(attacked_round(krum=True))
def test_multikrum_and_krum_stay_near_the_honest_updates(case):
    A, w, g0, H, f = case
    n = len(A)
    frac = f / n + 1e-9
    diam = max(np.linalg.norm(a - b) for a in H for b in H)
    centre = H.mean(axis=0)
    for s in (MultiKrum(frac), Krum(frac)):
        f_cfg, _ = s.select(n)
        bound = (np.sqrt(n - f_cfg - 2) + 1) * diam
        out = s.aggregate(A, w)
        assert np.linalg.norm(out - centre) <= bound * (1 + 1e-9) + 1e-12


@FAST
@given(attacked_round())
def test_fltrust_norm_never_exceeds_the_server_update(case):
    A, w, g0, H, f = case
    out = FLTrust().aggregate(A, w, server_update=g0)
    assert np.linalg.norm(out) <= np.linalg.norm(g0) * (1 + 1e-9)


@FAST
@given(attacked_round())
def test_norm_bounding_norm_never_exceeds_the_largest_honest_norm(case):
    A, w, g0, H, f = case
    out = NormBounding().aggregate(A, w)
    assert np.linalg.norm(out) <= np.linalg.norm(H, axis=1).max() * (1 + 1e-9)
    fixed = NormBounding(max_norm=0.5).aggregate(A, w)
    assert np.linalg.norm(fixed) <= 0.5 * (1 + 1e-9)


def test_fedavg_is_not_robust_so_the_bounds_are_meaningful():
    H = np.random.default_rng(0).normal(size=(7, 3))
    A = np.vstack([H, np.full((1, 3), 1e12)])
    out = FedAvg().aggregate(A)
    assert np.linalg.norm(out) > 1e10
    assert not FedAvg.robust and all(STRATEGIES[name].robust for name in ROBUST)


# ------------------------------------------------------------- definitions


@FAST
@given(data=round_data(min_n=1, max_n=12))
def test_median_and_trimmed_mean_match_sorting_references(data):
    U, _, _ = data
    np.testing.assert_array_equal(coordinate_median(U), np.median(U, axis=0))
    n = len(U)
    for trim in range((n - 1) // 2 + 1):
        s = np.sort(U, axis=0)[trim : n - trim]
        np.testing.assert_allclose(trimmed_mean(U, trim), s.mean(axis=0), rtol=1e-12, atol=1e-12 * np.abs(U).max())


def test_blocked_paths_on_wide_updates_match_numpy():
    U = np.random.default_rng(1).normal(size=(10, 5 * 1024 + 7))
    np.testing.assert_array_equal(coordinate_median(U), np.median(U, axis=0))
    np.testing.assert_array_equal(coordinate_median(U[:9]), np.median(U[:9], axis=0))
    s = np.sort(U, axis=0)[2:8]
    np.testing.assert_allclose(trimmed_mean(U, 2), s.mean(axis=0), rtol=1e-12, atol=1e-15)


def test_krum_picks_the_central_update():
    H = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.1, 0.1], [10.0, 10.0]])
    # the four corners tie (score 0.02 each); the tie goes to the lexicographically smallest, in any order
    np.testing.assert_array_equal(Krum(0.2).aggregate(H), H[0])
    np.testing.assert_array_equal(Krum(0.2).aggregate(H[::-1]), H[0])
    np.testing.assert_allclose(MultiKrum(0.2).aggregate(H), H[:4].mean(axis=0))


def test_fltrust_drops_opposed_updates_and_rescales():
    g0 = np.array([1.0, 0.0])
    U = np.array([[10.0, 0.0], [-5.0, 0.0], [0.0, 3.0]])
    np.testing.assert_allclose(FLTrust().aggregate(U, server_update=g0), [1.0, 0.0])
    assert not FLTrust().aggregate(-U[:1], server_update=g0).any()
    with pytest.raises(ConfigError, match="server_update"):
        FLTrust().aggregate(U)


def test_server_optimisers_follow_their_update_rules():
    rng = np.random.default_rng(3)
    rounds = [rng.normal(size=(4, 3)) for _ in range(3)]
    sm, sa, sy = FedAvgM(0.5, 0.9), FedAdam(0.1, 0.9, 0.99, 1e-3), FedYogi(0.1, 0.9, 0.99, 1e-3)
    got = {"m": np.zeros(3), "adam": np.zeros(3), "yogi": np.zeros(3)}
    ref = {"m": np.zeros(3), "adam": np.zeros(3), "yogi": np.zeros(3)}
    vel, m = np.zeros(3), np.zeros(3)
    va, vy = np.full(3, 1e-6), np.full(3, 1e-6)  # v starts at tau**2
    for U in rounds:
        d = U.mean(axis=0)
        vel = 0.9 * vel + d
        m = 0.9 * m + 0.1 * d
        va = 0.99 * va + 0.01 * d * d
        vy = vy - 0.01 * d * d * np.sign(vy - d * d)
        ref["m"] = ref["m"] + 0.5 * vel
        ref["adam"] = ref["adam"] + 0.1 * m / (np.sqrt(va) + 1e-3)
        ref["yogi"] = ref["yogi"] + 0.1 * m / (np.sqrt(vy) + 1e-3)
        got["m"] = sm.step(got["m"], U)
        got["adam"] = sa.step(got["adam"], U)
        got["yogi"] = sy.step(got["yogi"], U)
        for k in got:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-12)
    sa.reset()  # forgets m and v: the next step is a first step again
    d = rounds[0].mean(axis=0)
    first = 0.1 * (0.1 * d) / (np.sqrt(0.99 * 1e-6 + 0.01 * d * d) + 1e-3)
    np.testing.assert_allclose(sa.step(np.zeros(3), rounds[0]), first, rtol=1e-12)


def test_norm_bounding_wraps_any_inner_strategy():
    U = np.array([[3.0, 4.0], [0.3, 0.4], [0.6, 0.8]])
    np.testing.assert_allclose(NormBounding(1.0).aggregate(U), [(0.6 + 0.3 + 0.6) / 3, (0.8 + 0.4 + 0.8) / 3])
    np.testing.assert_allclose(NormBounding(1.0, inner=FedMedian()).aggregate(U), [0.6, 0.8])
    assert isinstance(make_strategy("norm_bounding", inner="median").inner, FedMedian)


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: FedAvgM(server_lr=0), "server_lr"),
        (lambda: FedAvgM(momentum=1.0), "momentum"),
        (lambda: FedAdam(eta=-1), "eta"),
        (lambda: FedYogi(beta_2=1.5), "beta_2"),
        (lambda: FedAdam(tau=0), "tau"),
        (lambda: FedTrimmedMean(0.5), "beta"),
        (lambda: MultiKrum(0.6), "byzantine_fraction"),
        (lambda: MultiKrum(keep=0), "keep"),
        (lambda: NormBounding(max_norm=-1), "max_norm"),
        (lambda: NormBounding(inner="fedavg"), "inner"),
        (lambda: make_strategy("fedsgd"), "unknown strategy 'fedsgd'; choose one of: "),
        (lambda: make_strategy("median", beta=0.1), "bad parameters for strategy 'median'"),
    ],
)
def test_bad_parameters_raise_config_errors(factory, match):
    with pytest.raises(ConfigError, match=match):
        factory()


@pytest.mark.parametrize("name", ALL)
def test_bad_rounds_raise_config_errors(name):
    s = _make(name)
    g0 = np.ones(2)
    with pytest.raises(ConfigError, match="zero updates"):
        s.aggregate([], server_update=g0)
    with pytest.raises(ConfigError, match="entries"):
        s.aggregate([np.ones(2), np.ones(3), np.ones(2)], server_update=g0)
    with pytest.raises(ConfigError, match="weights"):
        s.aggregate(np.ones((3, 2)), [1.0, 2.0], server_update=g0)
    with pytest.raises(ConfigError, match="non-negative"):
        s.aggregate(np.ones((3, 2)), [1.0, -1.0, 1.0], server_update=g0)
    with pytest.raises(ConfigError, match="entries but the model"):
        s.step(np.zeros(5), np.ones((3, 2)), server_update=g0)


def test_krum_needs_three_updates_and_robust_rules_need_one_usable():
    with pytest.raises(ConfigError, match="at least 3"):
        MultiKrum().aggregate(np.ones((2, 2)))
    with pytest.raises(ConfigError, match="no update with positive weight and finite values"):
        FedMedian().aggregate(np.full((2, 2), np.nan))


def test_register_strategy():
    class Mine(FedAvg):
        name = "mine_test"

    try:
        assert register_strategy(Mine) is Mine and isinstance(make_strategy("mine_test"), Mine)
        with pytest.raises(ConfigError, match="already registered"):
            register_strategy(type("Other", (FedAvg,), {"name": "mine_test"}))
        with pytest.raises(ConfigError, match="named Strategy"):
            register_strategy(int)
    finally:
        STRATEGIES.pop("mine_test", None)
