"""Tests for the attack catalogue and for simulated federations under attack."""

import numpy as np
import pytest

from fedmarket.errors import ConfigError
from fedmarket.fl.attacks import (
    ALIE,
    ATTACKS,
    Backdoor,
    FreeRider,
    GaussianNoise,
    LabelFlip,
    Scaling,
    SignFlip,
    Sybil,
    alie_z,
    default_trigger,
    flip_labels,
    make_attack,
)
from fedmarket.fl.data import load_dataset, train_test_split
from fedmarket.fl.models import SoftmaxRegression, normalize
from fedmarket.fl.partition import iid_partition
from fedmarket.fl.simulation import federate, sample_clients
from fedmarket.fl.strategies import FedAvg, FedMedian, FLTrust, MultiKrum

RNG = np.random.default_rng(0)
U = RNG.normal(size=(4, 6))


def test_catalogue_names():
    assert set(ATTACKS) == {"label_flip", "sign_flip", "scaling", "gaussian", "alie", "backdoor", "free_rider", "sybil"}
    for name, cls in ATTACKS.items():
        assert isinstance(make_attack(name), cls)
    with pytest.raises(ConfigError, match="unknown attack 'nope'; choose one of"):
        make_attack("nope")
    with pytest.raises(ConfigError, match="bad parameters for attack 'gaussian'"):
        make_attack("gaussian", scale=2)
    assert isinstance(make_attack("sybil", base="sign_flip").base, SignFlip)


def test_label_flip():
    np.testing.assert_array_equal(flip_labels(np.array([0, 1, 9]), 10), [9, 8, 0])
    X, y = LabelFlip().poison_data(U, np.array([0, 1, 2, 2]), 3, RNG)
    np.testing.assert_array_equal(y, [2, 1, 0, 0])
    assert X is U


def test_model_poisoning_updates():
    rng = np.random.default_rng(1)
    np.testing.assert_array_equal(SignFlip(2.0).poison_updates(U, 10, rng), -2.0 * U)
    np.testing.assert_array_equal(Scaling(5.0).poison_updates(U, 10, rng), 5.0 * U)
    big = GaussianNoise(3.0).poison_updates(np.zeros((200, 50)), 300, rng)
    assert big.std() == pytest.approx(3.0, rel=0.05) and abs(big.mean()) < 0.05
    assert not FreeRider().poison_updates(U, 10, rng).any()
    noise = FreeRider("noise", 1e-3).poison_updates(np.zeros((50, 40)), 100, rng)
    assert noise.std() == pytest.approx(1e-3, rel=0.1)
    syb = Sybil(SignFlip(1.0)).poison_updates(U, 10, rng)
    np.testing.assert_array_equal(syb, np.tile(-U[0], (4, 1)))


def test_alie_follows_the_paper():
    # Baruch et al.: n = 50 workers, m = 12 corrupted -> s = 14, z = Phi^-1(36 / 50) ~ 0.58
    assert alie_z(50, 12) == pytest.approx(0.5828, abs=1e-3)
    assert alie_z(100, 30) == pytest.approx(0.8064, abs=1e-3)
    assert alie_z(10, 0) == 0.0
    out = ALIE().poison_updates(U, 10, RNG)
    z = alie_z(10, 4)
    np.testing.assert_allclose(out, np.tile(U.mean(0) - z * U.std(0), (4, 1)))
    np.testing.assert_allclose(ALIE(z=1.0).poison_updates(U, 10, RNG)[0], U.mean(0) - U.std(0))


def test_backdoor_stamps_a_trigger_and_relabels():
    assert default_trigger(784).tolist()[:4] == [23 * 28 + 23, 23 * 28 + 24, 23 * 28 + 25, 23 * 28 + 26]
    assert default_trigger(64).size == 16 and default_trigger(30).tolist() == [29]
    X = np.zeros((10, 64))
    y = np.arange(10) % 3 + 1
    Xp, yp = Backdoor(target=0, fraction=0.3).poison_data(X, y, 4, np.random.default_rng(0))
    assert Xp.shape == (13, 64) and np.array_equal(Xp[:10], X) and np.array_equal(yp[:10], y)
    assert np.all(Xp[10:, default_trigger(64)] == 1.0) and np.all(yp[10:] == 0)
    with pytest.raises(ConfigError, match="target"):
        Backdoor(target=7).poison_data(X, y, 4, RNG)


@pytest.mark.parametrize(
    "factory",
    [lambda: SignFlip(0), lambda: Scaling(np.inf), lambda: GaussianNoise(-1), lambda: ALIE(np.nan),
     lambda: Backdoor(fraction=0), lambda: FreeRider("lazy"), lambda: Sybil("x")],
)
def test_bad_attack_parameters(factory):
    with pytest.raises(ConfigError):
        factory()


# ------------------------------------------------------------------ simulation


@pytest.fixture(scope="module")
def digits():
    train, test = train_test_split(load_dataset("digits"), 0.25, seed=0)
    X = normalize(train.X, train.feature_low, train.feature_high)
    Xt = normalize(test.X, test.feature_low, test.feature_high)
    parts = iid_partition(train.y, 20, seed=0)
    m = SoftmaxRegression(64, 10)
    return m, [X[p] for p in parts], [train.y[p] for p in parts], Xt, test.y, (X[:60], train.y[:60])


HP = dict(rounds=6, epochs=1, batch_size=16, lr=0.5, seed=1)


def test_federate_is_deterministic_and_stops_at_target(digits):
    m, Xs, ys, Xt, yt, _ = digits
    ev = lambda w: m.accuracy(w, Xt, yt)  # noqa: E731
    a = federate(m, Xs, ys, FedAvg(), evaluate=ev, fraction=0.5, **HP)
    b = federate(m, Xs, ys, FedAvg(), evaluate=ev, fraction=0.5, **HP)
    np.testing.assert_array_equal(a.params, b.params)
    assert a.rounds == 6 and len(a.history) == 6 and a.history[-1][1] > 0.85
    early = federate(m, Xs, ys, FedAvg(), evaluate=ev, target=0.8, **HP)
    assert early.rounds < 6 and early.history[-1][1] >= 0.8 and early.rounds_to(0.8) == early.rounds
    assert sample_clients(20, 0.25, 1, 0).tolist() == sorted(set(sample_clients(20, 0.25, 1, 0).tolist()))
    assert len(sample_clients(20, 0.25, 1, 0)) == 5


def test_sign_flipping_breaks_fedavg_but_not_robust_rules(digits):
    m, Xs, ys, Xt, yt, root = digits
    mal = list(range(0, 20, 3))  # 7 of 20
    acc = {}
    for s in (FedAvg(), FedMedian(), MultiKrum(0.35), FLTrust()):
        res = federate(m, Xs, ys, s, attack=SignFlip(4.0), malicious=mal, root_data=root, **HP)
        acc[s.name] = m.accuracy(res.params, Xt, yt)
    assert acc["fedavg"] < 0.3
    assert min(acc["median"], acc["multikrum"], acc["fltrust"]) > 0.75, acc


def test_backdoor_is_learned_by_boosted_attackers_under_fedavg(digits):
    m, Xs, ys, Xt, yt, _ = digits
    atk = Backdoor(target=0, fraction=0.5, boost=3.0)
    res = federate(m, Xs, ys, FedAvg(), attack=atk, malicious=[0, 1, 2, 3, 4, 5], **HP)
    clean = federate(m, Xs, ys, FedAvg(), **HP)
    assert atk.success_rate(m, res.params, Xt, yt) > atk.success_rate(m, clean.params, Xt, yt) + 0.3


def test_federate_validates(digits):
    m, Xs, ys, *_ = digits
    with pytest.raises(ConfigError, match="malicious client ids"):
        federate(m, Xs, ys, FedAvg(), attack=SignFlip(), malicious=[25], **HP)
    with pytest.raises(ConfigError, match="without an attack"):
        federate(m, Xs, ys, FedAvg(), malicious=[1], **HP)
    with pytest.raises(ConfigError, match="fraction"):
        federate(m, Xs, ys, FedAvg(), **{**HP, "fraction": 0.0})
    with pytest.raises(ConfigError, match="rounds"):
        federate(m, Xs, ys, FedAvg(), **{**HP, "rounds": 0})
    with pytest.raises(ConfigError, match="no exact integer form"):
        federate(m, Xs, ys, MultiKrum(), quantized=True, **HP)


# ---------------------------------------------------------------- adaptive attacks


def _round(seed=0, h=16, d=40):
    rng = np.random.default_rng(seed)
    return rng.normal(0.01, 0.01, size=(h, d))


def test_adaptive_attacks_stay_inside_the_honest_spread_they_promise():
    from fedmarket.fl.attacks import ADAPTIVE_ATTACKS, perturbations

    assert set(ADAPTIVE_ATTACKS) == {"min_max", "min_sum", "fang", "tailored"}
    B = _round()
    U = B[:4]
    rng = np.random.default_rng(1)
    mm = make_attack("min_max").craft(U, B, 20, rng)
    pair = max(np.linalg.norm(B[i] - B[j]) for i in range(len(B)) for j in range(len(B)))
    assert mm.shape == U.shape and np.linalg.norm(B - mm[0], axis=1).max() <= pair * (1 + 1e-9)
    assert np.linalg.norm(B - mm[0], axis=1).max() >= pair * 0.99  # as far as the rule of the attack allows
    ms = make_attack("min_sum").craft(U, B, 20, rng)
    worst = max(((B - b) ** 2).sum() for b in B)
    assert ((B - ms[0]) ** 2).sum() <= worst * (1 + 1e-9)
    fang = make_attack("fang").craft(U, B, 20, rng)
    s = np.sign(B.mean(axis=0))
    assert np.all(np.where(s > 0, fang <= B.min(axis=0) + 1e-12, fang >= B.max(axis=0) - 1e-12))  # beyond the honest extreme
    assert set(perturbations(B)) == {"unit", "std", "sign"}
    with pytest.raises(ConfigError, match="honest updates"):
        make_attack("min_max").poison_updates(U, 20, rng)


def test_the_tailored_attack_pushes_the_rule_it_is_given_furthest():
    from fedmarket.fl.strategies import make_strategy

    B = _round(2)
    U = B[:4]
    mean_rule = make_strategy("fedavg").aggregate
    tailored = make_attack("tailored").craft(U, B, 20, np.random.default_rng(0), mean_rule)
    minmax = make_attack("min_max").craft(U, B, 20, np.random.default_rng(0), mean_rule)
    push = lambda M: np.linalg.norm(mean_rule(np.vstack([B, M])) - B.mean(axis=0))  # noqa: E731
    assert push(tailored) > push(minmax)  # against a plain mean, the largest scale wins
    with pytest.raises(ConfigError, match="aggregation rule"):
        make_attack("tailored").craft(U, B, 20, np.random.default_rng(0))


def test_adaptive_attackers_see_the_honest_updates_in_a_simulation():
    from fedmarket.fl.models import SoftmaxRegression
    from fedmarket.fl.simulation import federate
    from fedmarket.fl.strategies import make_strategy

    rng = np.random.default_rng(3)
    Xs = [rng.normal(size=(30, 5)) for _ in range(6)]
    ys = [rng.integers(0, 3, 30) for _ in range(6)]
    m = SoftmaxRegression(5, 3)
    kw = dict(rounds=2, epochs=1, batch_size=10, lr=0.1, seed=0, malicious=[0], quantized=True)
    clean = federate(m, Xs, ys, make_strategy("centered_clip"), **{**kw, "malicious": ()}).params
    attacked = federate(m, Xs, ys, make_strategy("centered_clip"), attack=make_attack("tailored"), **kw).params
    assert not np.allclose(clean, attacked)
