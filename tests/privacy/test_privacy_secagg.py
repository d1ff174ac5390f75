"""SecAgg+: exact masked sums, dropout recovery, aborts below the threshold, tamper detection."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmarket.errors import FedMarketError, SecAggAbort, ShareTampered
from fedmarket.fl.aggregate import fedavg_int
from fedmarket.privacy.secagg import (
    PRIME,
    EncryptedShare,
    SecAggConfig,
    UnmaskResponse,
    decode_weighted,
    default_degree,
    encode_weighted,
    neighbour_graph,
    run_round,
    shamir_decode,
    shamir_reconstruct,
    shamir_split,
)


def _inputs(n, d, seed, bound=2**40):
    rng = np.random.default_rng(seed)
    return {u: rng.integers(-bound, bound, size=d, dtype=np.int64) for u in range(n)}


def _plain(inputs, ids):
    return sum((inputs[u] for u in sorted(ids)), np.zeros_like(next(iter(inputs.values()))))


def _is_probable_prime(p):
    d, s = p - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41):
        x = pow(a, d, p)
        if x in (1, p - 1):
            continue
        for _ in range(s - 1):
            x = x * x % p
            if x == p - 1:
                break
        else:
            return False
    return True


def test_field_is_prime_and_holds_32_byte_secrets():
    assert _is_probable_prime(PRIME) and PRIME > 2**256


@given(secret=st.integers(0, PRIME - 1), t=st.integers(1, 6), extra=st.integers(0, 4), seed=st.integers(0, 2**32))
@settings(max_examples=40, deadline=None)
def test_shamir_any_t_shares_rebuild_fewer_do_not(secret, t, extra, seed):
    xs = list(range(1, t + extra + 1))
    shares = shamir_split(secret, t, xs)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(xs), t, replace=False)
    assert shamir_reconstruct([(xs[i], shares[i]) for i in pick]) == secret
    if t > 1:  # t - 1 shares interpolate a different polynomial (except with negligible probability)
        assert shamir_reconstruct([(xs[i], shares[i]) for i in pick[:-1]]) != secret


@given(n=st.integers(2, 9), d=st.integers(1, 40), seed=st.integers(0, 2**32), big=st.booleans())
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_masked_sum_equals_plain_sum(n, d, seed, big):
    # big: values near the int64 edges, whose sum wraps; the ring result is still the sum mod 2**64
    bound = 2**62 if big else 2**40
    X = _inputs(n, d, seed, bound)
    k, t = default_degree(n, 0.0) if n > 2 else (1, 1)
    cfg = SecAggConfig(n, d, k, t, t, round_id=seed.to_bytes(8, "big"))
    res = run_round(cfg, X)
    assert res.survivors == frozenset(range(n))
    expected = [(sum(int(X[u][j]) for u in range(n)) + 2**63) % 2**64 - 2**63 for j in range(d)]
    assert res.total.tolist() == expected
    if not big:
        assert np.array_equal(res.total, _plain(X, range(n)))


def _tails(n, k, t, dropout, dishonest):
    """(odds some honest provider has t colluding neighbours, odds some neighbourhood keeps < t survivors)."""
    from scipy.stats import binom, hypergeom

    colluders = int(np.floor(dishonest * n + 1e-12))
    return (n - colluders) * hypergeom.sf(t - 1, n - 1, colluders, k), n * binom.cdf(t - 1, k, 1 - dropout)


@pytest.mark.parametrize("dishonest", [0.0, 0.2, 1 / 3, 0.5])
@pytest.mark.parametrize("dropout", [0.1, 0.3])
def test_the_degree_meets_both_tails_with_the_fewest_neighbours(dropout, dishonest):
    """k and t keep a round private (no honest provider with t colluding neighbours, odds below
    PRIVACY_FAILURE) and alive (every neighbourhood keeps t survivors, odds below 1e-3), t is above
    half the neighbours (the consistency argument), and no smaller even degree has such a t."""
    from fedmarket.privacy.secagg import PRIVACY_FAILURE

    for n in (200, 1000, 10_000):
        k, t = default_degree(n, dropout, dishonest=dishonest)
        if k >= n - 1:
            continue
        assert k // 2 < t <= k and k < 120 * np.log2(n)
        private, alive = _tails(n, k, t, dropout, dishonest)
        assert private <= PRIVACY_FAILURE and alive <= 1e-3
        for smaller in range(2, k, 2):
            private, alive = _tails(n, smaller, np.arange(smaller // 2 + 1, smaller + 1), dropout, dishonest)
            assert not ((private <= PRIVACY_FAILURE) & (alive <= 1e-3)).any()
    assert default_degree(1000, 0.3, dishonest=0.0) == (134, 68)  # no colluders: sized for dropout alone


def test_the_complete_graph_keeps_the_threshold_above_the_colluders():
    """On the complete graph every colluder is every honest provider's neighbour: t must exceed
    their number, not only half the neighbours."""
    for n in (3, 4, 10, 20, 100):
        for dishonest in (0.0, 1 / 3, 0.5, 0.6):
            k, t = default_degree(n, 0.3 if dishonest < 0.7 else 0.1, dishonest=dishonest)
            assert k == n - 1 and t > int(np.floor(dishonest * n + 1e-12)) and t > k // 2


def test_the_colluders_odds_match_the_graph_the_round_draws():
    """The privacy tail assumes each neighbourhood a uniformly random k-subset of the others: on
    real graphs drawn from fresh seeds (300 providers, k = 40, a third colluding) the share of
    rounds where some honest provider has t = 23 colluding neighbours is at most the union bound
    and of its size."""
    n, k, t, dishonest, trials = 300, 40, 23, 1 / 3, 400
    colluders = np.zeros(n, dtype=bool)
    colluders[: int(n * dishonest)] = True
    hits = 0
    for seed in range(trials):
        graph = np.stack(neighbour_graph(n, k, seed.to_bytes(8, "big")))
        counts = colluders[graph].sum(axis=1)
        hits += bool((counts[~colluders] >= t).any())
    bound = _tails(n, k, t, 0.3, dishonest)[0]
    assert 0.1 < bound < 0.2
    assert 0.3 * bound <= hits / trials <= bound + 3 * np.sqrt(bound / trials)


def test_sparse_graph_is_regular_symmetric_and_logarithmic():
    for n in (100, 1000, 10_000):
        k, t = default_degree(n, 0.3)
        assert k // 2 < t <= k and k < 40 * np.log2(n)
    g = neighbour_graph(300, 40, b"seed")
    assert all(len(nb) == 40 and u not in nb for u, nb in enumerate(g))
    assert all(u in g[int(v)] for u, nb in enumerate(g) for v in nb)
    assert [x.tolist() for x in g] == [x.tolist() for x in neighbour_graph(300, 40, b"seed")]
    assert [x.tolist() for x in g] != [x.tolist() for x in neighbour_graph(300, 40, b"other")]


@pytest.mark.parametrize("dropout", [0.0, 0.1, 0.3])
def test_recovery_under_dropout_at_every_stage(dropout):
    n, d = 100, 300
    # a sparse graph (degree 30 of 99) with threshold 12: a neighbourhood keeps >= 12 of 30 w.h.p. at 30% dropout
    cfg = SecAggConfig(n, d, 30, 12, 12, round_id=b"job-1-round-3")
    X = _inputs(n, d, 7)
    rng = np.random.default_rng(int(dropout * 100))
    gone = rng.permutation(n)[: round(dropout * n)].tolist()
    thirds = [set(gone[i::3]) for i in range(3)]
    res = run_round(cfg, X, drop_before_share=thirds[0], drop_before_mask=thirds[1], drop_after_mask=thirds[2])
    assert res.survivors == frozenset(range(n)) - thirds[0] - thirds[1]
    assert np.array_equal(res.total, _plain(X, res.survivors))
    if dropout:
        assert thirds[2] and thirds[2] <= res.survivors  # dropped after masking, yet counted and unmasked


def test_all_dropouts_after_masking_recovered():
    n, d = 30, 50
    cfg = SecAggConfig.for_population(n, d, dropout=0.3)
    X = _inputs(n, d, 11)
    late = set(range(0, n, 4))  # 8 of 30 vanish after sending their masked input
    res = run_round(cfg, X, drop_after_mask=late)
    assert np.array_equal(res.total, _plain(X, range(n)))


def test_weighted_encoding_gives_fedavg_int():
    n, d = 8, 20
    rng = np.random.default_rng(5)
    Q = [rng.integers(-(2**30), 2**30, size=d) for _ in range(n)]
    w = rng.integers(1, 500, size=n).tolist()
    cfg = SecAggConfig(n, d + 1, n - 1, 4, 4)
    res = run_round(cfg, {u: encode_weighted(Q[u], w[u]) for u in range(n)})
    assert np.array_equal(decode_weighted(res.total), fedavg_int(Q, w))


def test_abort_below_the_survivor_threshold():
    n, d = 20, 10
    cfg = SecAggConfig(n, d, 19, 10, 12)
    X = _inputs(n, d, 3)
    with pytest.raises(SecAggAbort, match="below the threshold"):
        run_round(cfg, X, drop_before_mask=set(range(9)))  # 11 masked inputs < 12
    assert issubclass(SecAggAbort, FedMarketError)


def test_abort_when_a_neighbourhood_cannot_unmask():
    n, d = 20, 10
    cfg = SecAggConfig(n, d, 19, 10, 10)
    X = _inputs(n, d, 4)
    # 12 send masked inputs, then 3 more vanish: 9 answer, fewer than t = 10
    with pytest.raises(SecAggAbort, match="confirmed the survivor set|threshold 10|fewer than 10"):
        run_round(cfg, X, drop_before_mask=set(range(8)), drop_after_mask={8, 9, 10})


def test_tampered_share_in_transit_is_detected():
    n, d = 10, 5
    cfg = SecAggConfig(n, d, 9, 5, 5)

    def flip(stage, msg):
        if stage == "share" and msg.src == 3 and msg.dst == 7:
            blob = bytearray(msg.blob)
            blob[20] ^= 1
            return EncryptedShare(msg.src, msg.dst, bytes(blob))
        return msg

    with pytest.raises(ShareTampered, match="from provider 3"):
        run_round(cfg, _inputs(n, d, 1), tamper=flip)


def test_redirected_share_is_detected():
    n, d = 10, 5
    cfg = SecAggConfig(n, d, 9, 5, 5)

    def swap(stage, msg):  # claim provider 3's share for 7 came from 4: the AAD no longer matches
        if stage == "share" and msg.src == 3 and msg.dst == 7:
            return dataclasses.replace(msg, src=4)
        return msg

    with pytest.raises(ShareTampered):
        run_round(cfg, _inputs(n, d, 1), tamper=swap)


@pytest.mark.parametrize("kind", ["b", "sk"])
def test_tampered_revealed_shares_are_decoded_out_or_detected(kind):
    """Wrong shares in the unmasking, within the decoding bound ((answers - threshold) // 2), are
    dropped and the exact sum comes back; more of them than that are detected, never used."""
    n, d = 10, 5
    cfg = SecAggConfig(n, d, 9, 5, 5)

    def liars(uids):
        def lie(stage, msg):
            if stage == "unmask" and isinstance(msg, UnmaskResponse) and msg.uid in uids:
                shares = msg.b_shares if kind == "b" else msg.sk_shares
                for u in shares:
                    shares[u] = (shares[u] + 1) % PRIME
            return msg
        return lie

    drop = {0} if kind == "sk" else set()
    inputs = _inputs(n, d, 2)
    res = run_round(cfg, inputs, drop_before_mask=drop, tamper=liars({1}))
    assert np.array_equal(res.total, fedavg_int_sum(inputs, res.survivors))
    with pytest.raises(ShareTampered, match="do not reconstruct"):
        run_round(cfg, inputs, drop_before_mask=drop, tamper=liars({1, 2, 3}))


def fedavg_int_sum(inputs: dict, survivors) -> np.ndarray:
    return sum(inputs[u] for u in sorted(survivors))


def test_expansion_is_small_for_model_sized_updates():
    n, d = 40, 7850
    cfg = SecAggConfig.for_population(n, d, dropout=0.3)
    res = run_round(cfg, _inputs(n, d, 9))
    expansion = max(res.client_bytes.values()) / (8 * d)
    assert 1.0 < expansion <= 2.0


@pytest.mark.parametrize("dishonest", [0.0, 1 / 3, 0.5, 0.6])
@pytest.mark.parametrize("dropout", [0.1, 0.3, 0.45])
def test_a_round_the_spec_accepts_survives_the_dropout_it_promises(dropout, dishonest):
    """ATTACK (found by a review of the colluder sizing): a secagg spec stating dropout 0.3 and
    max_dishonest 0.6 passed, but on a small round's complete graph its threshold (above the
    colluders) left no room for the promised dropout: Sybils that simply went silent, within it,
    aborted every round. A round survives floor(dropout n) dropouts exactly when each survivor keeps
    the threshold in surviving neighbours; a spec is refused unless every round size it allows does
    (and its survivors reach the confirmation quorum: `dropout_shortfall`)."""
    from fedmarket.errors import SecAggAbort
    from fedmarket.privacy.secagg import complete_threshold, dropout_shortfall

    if dropout + dishonest >= 1:
        return
    for n in range(3, 13):
        cfg = SecAggConfig.for_population(n, 8, dropout=dropout, dishonest=dishonest)
        assert cfg.k == n - 1  # small rounds: the complete graph
        X = {u: np.arange(8, dtype=np.int64) * (u + 1) for u in range(n)}
        lost = int(np.floor(dropout * n))
        fits = n - 1 - lost >= complete_threshold(n, dishonest)
        if dropout_shortfall(n, n, dropout, dishonest) is None:
            assert fits  # the spec check is at least this strict
        if fits:
            res = run_round(cfg, X, drop_after_mask=set(range(lost)))
            assert np.array_equal(res.total, _plain(X, range(n)))
        else:
            with pytest.raises(SecAggAbort):
                run_round(cfg, X, drop_after_mask=set(range(lost)))


def test_a_secure_spec_whose_rounds_cannot_lose_its_dropout_is_refused():
    from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, PrivacySpec, RewardSpec, TrainingSpec

    def spec(min_providers, dropout, dishonest, per_round=0):
        return JobSpec(name="x", data=DataSchema(n_features=2, n_classes=2, feature_low=[0.0] * 2, feature_high=[1.0] * 2),
                       training=TrainingSpec(rounds=1), reward=RewardSpec(escrow=10**20, provider_stake=10**18),
                       participation=ParticipationSpec(min_providers=min_providers, max_providers=50, max_validators=1,
                                                       min_validators=1, per_round=per_round),
                       privacy=PrivacySpec(mode="secagg", dropout=dropout, max_dishonest=dishonest))

    with pytest.raises(ValueError, match="a secure round of 5 providers that loses 2 of them"):
        spec(4, 0.4, 0.1)
    assert spec(8, 0.4, 0.1).privacy.dropout == 0.4  # rounds of 8 or more fit
    with pytest.raises(ValueError, match="a round sampling 5 of up to 50 providers can draw"):
        spec(8, 0.4, 0.1, per_round=5)  # five of the pool's colluders can all be drawn into one round
    assert spec(8, 0.1, 0.05, per_round=40).participation.per_round == 40  # two colluders at most, of forty
    for dropout, dishonest in ((0.3, 0.6), (0.5, 0.3)):  # the survivors could not outnumber half and the colluders
        with pytest.raises(ValueError, match="2 dropout \\+ max_dishonest < 1"):
            spec(20, dropout, dishonest)
    assert spec(3, 0.3, 1 / 3).privacy.dropout == 0.3  # the defaults fit every size


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.integers(0, 12), st.data())
def test_shamir_decode_drops_every_wrong_share_within_its_bound(threshold, extra, data):
    """Berlekamp-Welch: of `threshold + extra` shares, up to `extra // 2` wrong ones (any values,
    anywhere) are dropped and the secret comes back from the rest."""
    m = threshold + extra
    secret = data.draw(st.integers(0, PRIME - 1))
    shares = shamir_split(secret, threshold, list(range(1, m + 1)))
    points = list(zip(range(1, m + 1), shares))
    wrong = data.draw(st.sets(st.integers(0, m - 1), max_size=extra // 2))
    for i in wrong:
        points[i] = (points[i][0], (points[i][1] + data.draw(st.integers(1, PRIME - 1))) % PRIME)
    good = shamir_decode(points, threshold)
    assert not {points[i] for i in wrong} & set(good) and len(good) >= threshold
    assert shamir_reconstruct(good[:threshold]) == secret
