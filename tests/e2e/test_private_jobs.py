"""Private jobs on the embedded chain: differential privacy with the spent epsilon committed per
round, and secure aggregation (SecAgg+) whose rounds survive dropouts, abort cleanly below the
threshold, and stay provable on chain through the secure-sum fraud proof."""

from __future__ import annotations

import numpy as np
import pytest

from fedmarket.errors import ConfigError, ContractRevert, PrivacyBudgetExceeded, SecAggAbort
from fedmarket.fl import aggregate as agg_rules
from fedmarket.fl.data import load_dataset, subset
from fedmarket.fl.partition import iid_partition
from fedmarket.fl.quantize import quantize
from fedmarket.market import JobState
from fedmarket.roles import Aggregator, Provider, Requester, Validator
from fedmarket.roles import aggregator as aggregator_module
from fedmarket.roles.sealed import seal_and_reveal
from fedmarket.roles.auditor import Auditor
from fedmarket.roles.challenger import Challenger
from fedmarket.driver import Cast, JobDriver
from fedmarket.protocol.encoding import decode_vector
from fedmarket.roles.common import committed_rounds, epsilon_after_round, fail_job, fetch_metrics, fetch_model, round_topic
from fedmarket.roles.validator import submit_attestations, submit_rejections
from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, PrivacySpec, RewardSpec, TrainingSpec
from fedmarket.storage import LocalBlobStore, Mailbox

TOKEN = 10**18
DP = {"epsilon": 4.0, "delta": 1e-5, "clip_norm": 1.0}


def make_spec(mode: str, n: int, rounds: int = 2, **privacy) -> JobSpec:
    secure = mode.startswith("secagg")  # a secure job's mask corrections are re-derived by validators
    return JobSpec(
        name=f"private {mode}",
        data=DataSchema(n_features=64, n_classes=10, feature_low=[0.0] * 64, feature_high=[16.0] * 64),
        training=TrainingSpec(rounds=rounds, local_epochs=1),
        reward=RewardSpec(escrow=100 * TOKEN, provider_stake=TOKEN, aggregator_stake=50 * TOKEN,
                          validator_stake=5 * TOKEN if secure else 0),
        participation=ParticipationSpec(min_providers=n, max_providers=n, max_validators=1 if secure else 0),
        privacy=PrivacySpec(mode=mode, **privacy),
    )


def setup_job(world, tmp_path, spec, aggregator_cls=Aggregator):
    n = spec.participation.max_providers
    dep = world["dep"]
    store, box = LocalBlobStore(tmp_path / "blobs"), Mailbox(tmp_path / "box")
    ds = load_dataset("digits")
    parts = iid_partition(ds.y, n, 0)
    providers = [Provider(dep, world["providers"][i], store, box, subset(ds, parts[i]).X, subset(ds, parts[i]).y)
                 for i in range(n)]
    agg = aggregator_cls(dep, world["aggregator"], store, box)
    job = Requester(dep, world["requester"], store).post(spec, world["aggregator"].address)
    agg.accept(job)
    for p in providers:
        p.join(job)
    if spec.participation.max_validators:
        agg.validators = [Validator(dep, world["validators"][0], store, box, ds.X[:60], ds.y[:60])]
        agg.validators[0].join(job)
    agg.start(job)
    return dep, store, box, job, agg, providers


def vote(job, r, agg):
    """The job's validator (secure jobs) reviews round `r`; its vote goes on chain."""
    for v in getattr(agg, "validators", []):
        v.review(job, r)
    submit_attestations(agg.dep, agg.mailbox, agg.account, job, r)
    submit_rejections(agg.dep, agg.mailbox, agg.account, job, r)


def secure_round(job, r, agg, providers, drop_keys=(), drop_mask=(), drop_unmask=()):
    """One secure round; providers (by index) vanish before their keys, before masking, or before unmasking."""
    live = [i for i in range(len(providers)) if i not in drop_keys]
    for i in live:
        providers[i].advertise(job, r)
    for i in live:
        providers[i].share(job, r)
    live = [i for i in live if i not in drop_mask]
    for i in live:
        providers[i].train(job, r)
    agg.secure_survivors(job, r)
    for step in ("confirm", "unmask"):
        for i in live:
            if i not in drop_unmask:
                try:
                    getattr(providers[i], step)(job, r)
                except SecAggAbort:  # too few survivors pinned the set: an honest provider does not answer
                    pass
    receipt = agg.run_round(job, r)
    vote(job, r, agg)
    return receipt


def plain_updates(spec, job, r, providers, q_global):
    """What each provider's update was before masking (training is seeded, so it can be redone here)."""
    return {p.address: (quantize(p._local_delta(spec, job, r, q_global)), 1) for p in providers}


# ---------------------------------------------------------------------------- differential privacy


@pytest.mark.parametrize("mode", ["dp_local", "secagg_dp"])
def test_dp_job_commits_its_cumulative_epsilon_each_round_within_budget(world, tmp_path, mode):
    spec = make_spec(mode, 4, rounds=3, **DP)
    dep, store, _, job, agg, providers = setup_job(world, tmp_path, spec)
    for r in range(3):
        if mode == "dp_local":
            for p in providers:
                p.train(job, r)
            seal_and_reveal(agg, providers, job, r)
            agg.run_round(job, r)
        else:
            secure_round(job, r, agg, providers)
    spent = [c.epsilon_spent for c in committed_rounds(dep, job)]
    assert spent == [epsilon_after_round(spec, r) for r in range(3)]
    assert 0 < spent[0] < spent[1] < spent[2] <= 4_000_000  # millionths of the budget epsilon 4
    assert spent[2] > 3_990_000  # the fitted noise spends (almost) the whole budget, not more
    report = Auditor(dep, store).audit(job)
    assert report.ok and all(c.ok for c in report.rounds)


def test_a_round_past_the_budget_is_refused_and_a_spec_that_cannot_fit_is_rejected():
    spec = make_spec("dp_local", 4, rounds=3, **DP)
    with pytest.raises(PrivacyBudgetExceeded, match="round 3 would bring epsilon"):
        epsilon_after_round(spec, 3)  # a fourth round of noise the job was not sized for
    with pytest.raises(ConfigError, match="above the budget"):
        JobSpec.parse({**spec.model_dump(mode="json"), "privacy": {**DP, "mode": "dp_local", "noise_multiplier": 0.3}})
    with pytest.raises(ConfigError, match="needs epsilon"):
        JobSpec.parse({**spec.model_dump(mode="json"), "privacy": {"mode": "dp_local", "delta": 1e-5, "clip_norm": 1.0}})
    with pytest.raises(ConfigError, match="takes no epsilon"):
        JobSpec.parse({**spec.model_dump(mode="json"), "privacy": {"mode": "secagg", "epsilon": 1.0}})
    with pytest.raises(ConfigError, match="needs strategy fedavg"):
        JobSpec.parse({**spec.model_dump(mode="json"), "strategy": "median", "privacy": {"mode": "secagg"}})


def test_dp_updates_must_have_weight_one(world, tmp_path):
    spec = make_spec("dp_local", 3, **DP)
    dep, _, _, job, agg, providers = setup_job(world, tmp_path, spec)
    providers[0]._post_update(spec, job, 0, np.zeros(spec.n_params, dtype=np.int64), 50)  # claims 50 samples
    for p in providers[1:]:
        p.train(job, 0)
    seal_and_reveal(agg, providers, job, 0)
    updates, rejected = agg.collect(job, 0, spec)
    assert [u.provider for u in updates] == sorted((p.address for p in providers[1:]), key=lambda a: int(a, 16))
    assert "weight must be 1" in rejected[0]["reason"]


def test_a_wrong_committed_epsilon_is_refused_by_the_chain(world, tmp_path, monkeypatch):
    """The chain derives each round's epsilon from the terms' noise multiplier and delta: an aggregator
    claiming almost no privacy loss cannot commit the round at all."""
    spec = make_spec("dp_local", 3, rounds=1, **DP)
    dep, store, _, job, agg, providers = setup_job(world, tmp_path, spec)
    monkeypatch.setattr(aggregator_module, "epsilon_after_round", lambda spec, r: 1)  # claims almost no loss
    for p in providers:
        p.train(job, 0)
    seal_and_reveal(agg, providers, job, 0)
    with pytest.raises(ContractRevert, match="bad epsilon"):
        agg.run_round(job, 0)
    assert committed_rounds(dep, job) == []
    monkeypatch.undo()
    agg.run_round(job, 0)  # the true epsilon goes through
    assert Auditor(dep, store).audit(job).rounds[0].ok


# ---------------------------------------------------------------------------- secure aggregation


@pytest.mark.parametrize("drops", [
    {},  # 0% dropout
    {"drop_unmask": (2,)},  # a provider vanishes after sending its masked update (17%)
    {"drop_keys": (0,), "drop_unmask": (3,)},  # 2 of 6 (33%): one before its keys, one after masking
    {"drop_mask": (1,), "drop_unmask": (3,)},  # 2 of 6: one after sharing its keys, one after masking
])
def test_secure_rounds_equal_the_plain_weighted_mean_of_the_survivors(world, tmp_path, drops):
    # a job promising 2 of 6 dropping, with 1 colluder: 4 confirmations are its quorum
    spec = make_spec("secagg", 6, dropout=0.34, max_dishonest=0.2)
    dep, store, box, job, agg, providers = setup_job(world, tmp_path, spec)
    q_prev = np.zeros(spec.n_params, dtype=np.int64)
    for r in range(2):
        plain = plain_updates(spec, job, r, providers, q_prev)
        secure_round(job, r, agg, providers, **drops)
        committed = committed_rounds(dep, job)[r]
        q_new = fetch_model(store, spec, committed)
        gone = set(drops.get("drop_keys", ())) | set(drops.get("drop_mask", ()))
        survivors = [p.address for i, p in enumerate(providers) if i not in gone]
        assert committed.count == len(survivors)
        expected = agg_rules.fedavg_int([plain[a][0] for a in survivors], [plain[a][1] for a in survivors])
        assert np.array_equal(q_new - q_prev, expected)
        # what was published is masked: no update blob equals its provider's plain update
        doc_updates = Auditor(dep, store).evidence(spec, job, r).updates
        assert all(not np.array_equal(u.q, plain[u.provider][0] * plain[u.provider][1]) for u in doc_updates)
        q_prev = q_new
    report = Auditor(dep, store).audit(job)
    assert report.ok
    assert Challenger(dep, world["outsider"], store).check(job) is None


def test_a_secure_round_below_the_threshold_aborts_and_moves_nothing(world, tmp_path):
    spec = make_spec("secagg", 6)
    dep, store, box, job, agg, providers = setup_job(world, tmp_path, spec)
    watched = [world["requester"].address, world["aggregator"].address, *(p.address for p in providers)]
    before = {a: dep.holdings(a) + dep.staked(a) for a in watched}
    market_before = dep.balance(dep.market.address)
    with pytest.raises(SecAggAbort, match="below the threshold"):
        secure_round(job, 0, agg, providers, drop_mask=(0, 1, 2, 3))
    assert dep.job(job)["current_round"] == 0 and not committed_rounds(dep, job)
    assert {a: dep.holdings(a) + dep.staked(a) for a in watched} == before
    assert dep.balance(dep.market.address) == market_before


def test_too_few_unmask_answers_abort_the_round_which_keeps_the_model(world, tmp_path):
    """Five of six providers vanish before unmasking: nobody can recover the sum, so the round is
    aborted: no masked update is acknowledged and the aggregator commits it empty (the model is
    kept), so the providers' silence can neither stall the job nor get the aggregator slashed."""
    spec = make_spec("secagg", 6)
    dep, store, box, job, agg, providers = setup_job(world, tmp_path, spec)
    receipt = secure_round(job, 0, agg, providers, drop_unmask=(0, 1, 2, 3, 4))
    ev = receipt.event("RoundCommitted")
    assert (ev["round"], ev["count"]) == (0, 0) and dep.job(job)["current_round"] == 1
    metrics = fetch_metrics(store, committed_rounds(dep, job)[0])
    assert metrics["updates"] == [] and "1 survivors confirmed the survivor set" in metrics["rejected"][-1]["reason"]
    assert box.read(round_topic(job, 0) + "-acks") == []  # nobody acknowledged, so nobody was censored
    assert decode_vector(store.get(metrics["model_cid"])).tolist() == [0] * spec.n_params  # round 0 keeps the zero model


class ShiftySecureAggregator(Aggregator):
    """Adds 3 to one coordinate of the round-1 model of a secure job."""

    def aggregate(self, spec, q_global, updates, correction):
        q = super().aggregate(spec, q_global, updates, correction)
        if self.dep.job(self.job)["current_round"] == 1:
            q = q.copy()
            q[300] += 3
        return q


def test_a_wrong_secure_aggregate_is_proven_on_chain_and_slashed(world, tmp_path):
    spec = make_spec("secagg", 5, rounds=3)
    dep, store, box, job, agg, providers = setup_job(world, tmp_path, spec, ShiftySecureAggregator)
    agg.job = job
    for r in range(2):
        secure_round(job, r, agg, providers, drop_unmask=(4,))
    report = Auditor(dep, store).audit(job)
    assert [c.ok for c in report.rounds] == [True, False] and report.rounds[1].bad_chunk == 300 // 64
    outsider = world["outsider"].address
    before = dep.holdings(outsider)
    challenger = Challenger(dep, world["outsider"], store)
    game = challenger.check(job).event("GameOpened")
    assert (game["round"], game["target"]) == (1, 300 // 64)
    driver = JobDriver(dep, store, box, Cast(Requester(dep, world["requester"], store), agg, providers, agg.validators,
                                             challenger), spec)
    driver.job_id = job
    driver.play_games()  # a secure-sum claim consistent with a shifted model cannot be split down honestly
    assert dep.job(job)["state"] == JobState.FAILED
    assert dep.holdings(outsider) - before == 25 * TOKEN  # its bond back and half the aggregator's 50-token stake


class MiscorrectingAggregator(Aggregator):
    """Publishes a mask correction off by 5 at one coordinate (and a model consistent with it)."""

    def _secure_round(self, job_id, round_, spec, updates):
        kept, corr, transcript = super()._secure_round(job_id, round_, spec, updates)
        corr = corr.copy()
        corr[10] += 5
        return kept, corr, transcript


def test_a_wrong_mask_correction_is_rejected_and_fails_the_job_on_the_aggregator(world, tmp_path):
    spec = make_spec("secagg", 4)
    dep, store, box, job, agg, providers = setup_job(world, tmp_path, spec, MiscorrectingAggregator)
    secure_round(job, 0, agg, providers)  # the validator re-derives the correction, rejects the round
    check = Auditor(dep, store).audit(job).rounds[0]
    assert not check.ok and "mask correction differs" in check.problem and check.bad_chunk is None
    assert dep.disputes.call("rejected", job, 0, agg.validators[0].address) and not dep.job(job)["quorum"]
    before = dep.holdings(world["outsider"].address)
    receipt = fail_job(dep, world["outsider"], job)  # at once: a third of the validator stake rejected it
    assert receipt.event("JobFailed")["reason"] == "round rejected"
    assert dep.holdings(world["outsider"].address) - before == 25 * TOKEN  # half the aggregator's stake
