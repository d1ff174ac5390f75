"""Cheats the chain can prove, end to end on the embedded chain with the real roles: an aggregator
that leaves out an update it countersigned (censorship, proven in an inclusion game), a validator
that signs two different attestations for one round (equivocation); a requester that tries to
take its escrow back early; and an honest job in which the challenger finds nothing to prove."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from fedmarket.errors import ContractRevert
from fedmarket.fl.data import load_dataset, subset
from fedmarket.fl.partition import iid_partition
from fedmarket.market import JobState, Role
from fedmarket.protocol.encoding import address_key, canonical_json
from fedmarket.protocol.receipts import Attestation, ReceiptAck, UpdateReceipt
from fedmarket.roles import Aggregator, Provider, Requester, Validator
from fedmarket.roles.sealed import seal_and_reveal
from fedmarket.driver import Cast, JobDriver
from fedmarket.roles.auditor import Auditor
from fedmarket.roles.challenger import Challenger
from fedmarket.roles.common import committed_rounds, fail_job, round_accumulator, round_topic
from fedmarket.roles.validator import submit_attestations
from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, PrivacySpec, RewardSpec, TrainingSpec
from fedmarket.storage import LocalBlobStore, Mailbox, cid_of
from fedmarket.testing.adversary import DroppingAggregator, EquivocatingValidator

TOKEN = 10**18
ESCROW, AGG_STAKE, PROV_STAKE, VAL_STAKE = 100 * TOKEN, 50 * TOKEN, TOKEN, 10 * TOKEN


@dataclass
class Setup:
    dep: object
    store: LocalBlobStore
    box: Mailbox
    job: int
    agg: Aggregator
    providers: list
    validators: list
    requester: Requester
    spec: JobSpec = None

    def driver(self, challenger) -> JobDriver:
        d = JobDriver(self.dep, self.store, self.box, Cast(self.requester, self.agg, self.providers, self.validators,
                                                            challenger), self.spec)
        d.job_id = self.job
        return d


def setup_job(world, tmp_path, aggregator_cls=Aggregator, n=4, rounds=2, validator_cls=(), mode="plain") -> Setup:
    dep = world["dep"]
    store, box = LocalBlobStore(tmp_path / "blobs"), Mailbox(tmp_path / "box")
    ds = load_dataset("digits")
    spec = JobSpec(
        name="provable cheats",
        data=DataSchema(n_features=64, n_classes=10, feature_low=[0.0] * 64, feature_high=[16.0] * 64),
        training=TrainingSpec(rounds=rounds, local_epochs=1),
        reward=RewardSpec(escrow=ESCROW, provider_stake=PROV_STAKE, aggregator_stake=AGG_STAKE,
                          validator_stake=VAL_STAKE if validator_cls else 0),
        participation=ParticipationSpec(min_providers=n, max_providers=n, max_validators=len(validator_cls)),
        privacy=PrivacySpec(mode=mode),
    )
    requester = Requester(dep, world["requester"], store)
    agg = aggregator_cls(dep, world["aggregator"], store, box)
    parts = iid_partition(ds.y, n, 0)
    providers = [Provider(dep, world["providers"][i], store, box, subset(ds, parts[i]).X, subset(ds, parts[i]).y)
                 for i in range(n)]
    held_out = subset(ds, np.arange(300))
    validators = [cls(dep, world["validators"][i], store, box, held_out.X, held_out.y)
                  for i, cls in enumerate(validator_cls)]
    job = requester.post(spec, world["aggregator"].address)
    agg.accept(job)
    for p in providers:
        p.join(job)
    for v in validators:
        v.join(job)
    agg.start(job)
    return Setup(dep, store, box, job, agg, providers, validators, requester, spec)


def run_round(s: Setup, r: int, attest: bool = True) -> None:
    for p in s.providers:
        p.train(s.job, r)
    seal_and_reveal(s.agg, s.providers, s.job, r)
    s.agg.run_round(s.job, r)
    if s.validators:
        for v in s.validators:
            v.review(s.job, r)
        if attest:
            submit_attestations(s.dep, s.box, s.agg.account, s.job, r)
            if s.dep.disputes.call("votes_closed", s.job):  # scores are revealed once no vote can count
                for v in s.validators:
                    for done in range(r + 1):
                        v.reveal(s.job, done)


def secure_round(s: Setup, r: int) -> None:
    for p in s.providers:
        p.advertise(s.job, r)
    for p in s.providers:
        p.share(s.job, r)
    for p in s.providers:
        p.train(s.job, r)
    s.agg.secure_survivors(s.job, r)
    for p in s.providers:
        p.confirm(s.job, r)
    for p in s.providers:
        p.unmask(s.job, r)
    s.agg.run_round(s.job, r)
    for v in s.validators:
        v.review(s.job, r)
    submit_attestations(s.dep, s.box, s.agg.account, s.job, r)
    if s.validators:
        for v in s.validators:
            v.review(s.job, r)
        submit_attestations(s.dep, s.box, s.agg.account, s.job, r)


def money(world, accounts) -> int:
    """Tokens held by the watched accounts, the treasury, the market (which holds every stake) and the
    arbiters (which hold the bonds of open games)."""
    dep = world["dep"]
    return sum(dep.balance(a) for a in {*accounts, world["treasury"].address, dep.market.address,
                                        dep.round_arbiter.address, dep.reward_arbiter.address})


# ---------------------------------------------------------------- a. censorship


@pytest.mark.parametrize("position", [0, 1, 3])  # first leaf, between two leaves, after the last leaf
def test_countersigned_update_left_out_is_proven_and_the_aggregator_slashed(world, tmp_path, position):
    s = setup_job(world, tmp_path, DroppingAggregator)
    dep, job, outsider = s.dep, s.job, world["outsider"]
    victim = sorted((p.address for p in s.providers), key=address_key)[position]
    s.agg.victim = victim
    run_round(s, 0)
    run_round(s, 1)
    assert [c.count for c in committed_rounds(dep, job)] == [4, 3]
    # the round is internally consistent: the audit and the fraud proof see nothing wrong
    assert Auditor(dep, s.store).audit(job).ok
    challenger = Challenger(dep, outsider, s.store)
    assert challenger.check(job) is None

    watched = [world["requester"].address, outsider.address, world["aggregator"].address,
               *(p.address for p in s.providers)]
    before = {a: dep.holdings(a) for a in watched}
    total = money(world, watched)
    receipts = challenger.check_censorship(job, s.box)
    assert len(receipts) == 1
    game = receipts[0].event("GameOpened")
    assert (game["kind"], game["round"], game["target"]) == (3, 1, int(victim, 16))
    s.driver(challenger).play_games()  # the aggregator cannot show the update it acknowledged
    failed = dep.market.events("JobFailed", job_id=job)[-1]
    assert failed["reason"] == "censored update" and failed["round"] == 1
    info = dep.job(job)
    assert info["state"] == JobState.FAILED and info["current_round"] == 1
    assert challenger.check_censorship(job, s.box) == []  # nothing left to dispute
    for p in s.providers:
        dep.market.transact("release_stake", job, p.address, sender=outsider)
    after = {a: dep.holdings(a) for a in watched}
    assert after[outsider.address] - before[outsider.address] == AGG_STAKE // 2  # bond back, half the stake
    assert after[world["requester"].address] - before[world["requester"].address] == ESCROW
    assert after[world["aggregator"].address] == before[world["aggregator"].address]  # its locked stake is gone
    assert all(after[p.address] - before[p.address] == PROV_STAKE for p in s.providers)
    assert money(world, [*watched, dep.market.call("TREASURY")]) == total
    assert dep.balance(dep.market.address) == sum(dep.staked(a) for a in watched)  # nothing of the job is left


def test_an_ack_without_the_providers_receipt_or_from_someone_else_proves_nothing(world, tmp_path):
    """Only the job's aggregator's countersignature, with the provider's own signed receipt, is a proof."""
    s = setup_job(world, tmp_path, DroppingAggregator)
    dep, job = s.dep, s.job
    s.agg.victim = s.providers[2].address
    run_round(s, 0)
    run_round(s, 1)
    topic = round_topic(job, 1)
    receipt = next(m for m in s.box.read(topic) if s.providers[2].address.encode() in m)
    (s.box.root / topic / cid_of(receipt)).unlink()  # the provider's receipt is gone
    forged = ReceiptAck(job, 1, s.providers[2].address, b"\x01" * 32, 7)
    sig = forged.sign(world["outsider"].key, dep.chain_id, dep.disputes.address)  # not the aggregator's key
    s.box.post(topic + "-acks", canonical_json({"provider": s.providers[2].address, "update_root": "0x" + "01" * 32,
                                                "weight": 7, "signature": "0x" + sig.hex()}))
    s.box.post(topic + "-acks", b"not json")
    assert Challenger(dep, world["outsider"], s.store).check_censorship(job, s.box) == []
    assert dep.job(job)["state"] == JobState.TRAINING


# ---------------------------------------------------------------- b. equivocation


def test_validator_signing_two_attestations_for_one_round_is_slashed(world, tmp_path):
    s = setup_job(world, tmp_path, validator_cls=(EquivocatingValidator, Validator))
    dep, job, outsider, treasury = s.dep, s.job, world["outsider"], world["treasury"].address
    cheat, honest = s.validators
    run_round(s, 0, attest=False)
    watched = [outsider.address, cheat.address, honest.address, world["requester"].address,
               world["aggregator"].address, *(p.address for p in s.providers)]
    before = {a: dep.holdings(a) for a in [*watched, treasury]}
    total = money(world, watched)
    challenger = Challenger(dep, outsider, s.store)
    receipts = challenger.check_equivocation(job, s.box)
    assert len(receipts) == 1
    ev = receipts[0].event("EquivocationProven")
    assert (ev["round"], ev["validator"], ev["challenger"]) == (0, cheat.address, outsider.address)
    slashed = receipts[0].event("StakeSlashed")
    assert (slashed["account"], slashed["role"], slashed["amount"]) == (cheat.address, Role.VALIDATOR, VAL_STAKE)
    after = {a: dep.holdings(a) for a in [*watched, treasury]}
    assert after[outsider.address] - before[outsider.address] == VAL_STAKE // 2  # CHALLENGER_BPS = 50%
    assert after[treasury] - before[treasury] == VAL_STAKE - VAL_STAKE // 2
    assert after[cheat.address] == before[cheat.address]  # its locked job stake is gone
    assert all(after[a] == before[a] for a in watched if a not in (outsider.address,))
    assert money(world, watched) == total
    # the quorum total stays the stake fixed at the start: slashing a validator cannot shrink it
    assert dep.job(job)["validator_total_stake"] == 2 * VAL_STAKE
    assert dep.market.call("membership", job, cheat.address)[0] == Role.VALIDATOR | 128
    assert challenger.check_equivocation(job, s.box) == []  # slashed once per job
    # the honest validator alone holds half of that stake: its attestation is no quorum
    msg = next(m for m in map(json.loads, s.box.read(round_topic(job, 0) + "-attestations"))
               if m["validator"] == honest.address)
    data = committed_rounds(dep, job)[0].data
    proof = round_accumulator(dep, job).proof(0)
    dep.disputes.transact("attest", job, 0, data, proof, bytes.fromhex(msg["scores_root"][2:]), [honest.address],
                          [bytes.fromhex(msg["signature"][2:])], sender=outsider)
    assert not dep.disputes.call("has_quorum", job, 0)
    with pytest.raises(ContractRevert, match="market: no quorum yet"):
        run_round(s, 1, attest=False)
    # at the deadline the job fails at the cost of the absent (here already slashed) validator, not the aggregator
    world["chain"].advance_time(s.spec.deadlines.round_duration + 1)
    agg_before = dep.holdings(world["aggregator"].address)
    assert fail_job(dep, outsider, job).event("JobFailed")["reason"] == "validators absent"
    dep.market.transact("release_stake", job, world["aggregator"].address, sender=outsider)
    assert dep.holdings(world["aggregator"].address) - agg_before == AGG_STAKE


# ---------------------------------------------------------------- c. the requester's escrow stays locked


def test_requester_cannot_take_the_escrow_back_once_training_started(world, tmp_path):
    s = setup_job(world, tmp_path)
    dep, job, chain = s.dep, s.job, world["chain"]
    req = world["requester"]
    market = dep.market

    def refused(fn, *args, match):
        bal_req, bal_market = dep.balance(req.address), dep.balance(market.address)
        with pytest.raises(ContractRevert, match=match):
            market.transact(fn, job, *args, sender=req)
        assert dep.balance(req.address) == bal_req and dep.balance(market.address) == bal_market

    def attempts(state_reason):
        refused("cancel", match="market: job not open")
        refused("release_stake", req.address, match=state_reason["release"])
        refused("post_rewards", b"\x11" * 32, ESCROW // 2, 1, 0, True, "bafkreirewards", 0, match=state_reason["post"])
        refused("sweep", match=state_reason["sweep"])

    locked = dep.balance(market.address)
    assert locked >= ESCROW
    # Training
    attempts({"release": "market: job still running", "sweep": "market: job not settled",
              "post": "market: rounds not finished"})
    refused("settle", match="market: job not finalizing")
    refused("fail", match="market: deadline not missed")
    run_round(s, 0)
    run_round(s, 1)
    attempts({"release": "market: job still running", "sweep": "market: job not settled",
              "post": "market: not the aggregator"})
    refused("fail", match="market: deadline not missed")
    # Finalizing: the challenge window is open
    for v in s.validators:
        v.approve_rewards(job)
    s.agg.post_rewards(job)
    assert dep.job(job)["state"] == JobState.FINALIZING
    attempts({"release": "market: job still running", "sweep": "market: job not settled",
              "post": "market: job not training"})
    refused("settle", match="market: challenge window open")
    refused("fail", match="market: job not training")
    assert dep.balance(market.address) == locked
    # Settled: only the part of the escrow not assigned to rewards (minus the fee) goes back
    chain.advance_time(dep.job(job)["challenge_period"] + 1)
    bal_req = dep.balance(req.address)
    settled = s.requester.settle(job).event("JobSettled")
    info = dep.job(job)
    assert settled["refund"] == ESCROW - settled["fee"] - info["reward_total"]
    assert dep.balance(req.address) - bal_req == settled["refund"]
    assert dep.balance(market.address) == locked - settled["fee"] - settled["refund"]
    refused("sweep", match="market: claim period open")
    refused("cancel", match="market: job not open")
    refused("settle", match="market: job not finalizing")
    assert dep.balance(market.address) == locked - settled["fee"] - settled["refund"]


# ---------------------------------------------------------------- d. nothing to prove in an honest job


def test_honest_validated_job_gives_the_challenger_nothing_to_prove(world, tmp_path):
    s = setup_job(world, tmp_path, validator_cls=(Validator, Validator))
    dep, job = s.dep, s.job
    for r in range(2):
        run_round(s, r)
        assert dep.disputes.call("has_quorum", job, r)
    for v in s.validators:
        v.approve_rewards(job)
    s.agg.post_rewards(job)
    # noise on the topics: junk, and an attestation signed by someone who is no validator (even twice)
    for r in range(2):
        s.box.post(round_topic(job, r) + "-acks", b"{}")
        s.box.post(round_topic(job, r) + "-attestations", b"[1, 2]")
        model_root = committed_rounds(dep, job)[r].model_root
        for scores in (b"\x01" * 32, b"\x02" * 32):
            sig = Attestation(job, r, model_root, scores).sign(world["outsider"].key, dep.chain_id, dep.disputes.address)
            s.box.post(round_topic(job, r) + "-attestations", canonical_json(
                {"validator": world["outsider"].address, "round": r, "scores_root": "0x" + scores.hex(),
                 "signature": "0x" + sig.hex()}))
    challenger = Challenger(dep, world["outsider"], s.store)
    assert challenger.check_censorship(job, s.box) == []
    assert challenger.check_equivocation(job, s.box) == []
    assert challenger.check(job) is None and challenger.check_rewards(job) is None
    assert dep.job(job)["state"] == JobState.FINALIZING


def test_honest_secure_job_gives_the_challenger_nothing_to_prove(world, tmp_path):
    """Secure-aggregation rounds commit their mask correction's root beside the updates: all re-derives."""
    s = setup_job(world, tmp_path, n=4, rounds=2, mode="secagg", validator_cls=(Validator,))
    for r in range(2):
        secure_round(s, r)
    challenger = Challenger(s.dep, world["outsider"], s.store)
    assert challenger.check_censorship(s.job, s.box) == []
    assert challenger.check_equivocation(s.job, s.box) == []
    assert s.dep.job(s.job)["state"] == JobState.TRAINING


def test_altered_update_in_a_secure_round_is_proven_by_an_inclusion_game(world, tmp_path):
    """The aggregator acknowledged a provider's receipt, but the secure round committed another update for
    it: it cannot show the acknowledged one in the round."""
    s = setup_job(world, tmp_path, n=4, rounds=2, mode="secagg", validator_cls=(Validator,))
    dep, job = s.dep, s.job
    secure_round(s, 0)
    victim = max(s.providers, key=lambda p: address_key(p.address))
    root, weight = b"\x33" * 32, 9
    psig = UpdateReceipt(job, 0, root, weight).sign(victim.account.key, dep.chain_id, dep.disputes.address)
    asig = ReceiptAck(job, 0, victim.address, root, weight).sign(world["aggregator"].key, dep.chain_id,
                                                                dep.disputes.address)
    topic = round_topic(job, 0)
    s.box.post(topic, canonical_json({"provider": victim.address, "job_id": job, "round": 0, "update_cid": "",
                                      "update_root": "0x" + root.hex(), "weight": weight,
                                      "signature": "0x" + psig.hex()}))
    s.box.post(topic + "-acks", canonical_json({"provider": victim.address, "update_root": "0x" + root.hex(),
                                                "weight": weight, "signature": "0x" + asig.hex()}))
    challenger = Challenger(dep, world["outsider"], s.store)
    receipts = challenger.check_censorship(job, s.box)
    assert len(receipts) == 1 and receipts[0].event("GameOpened")["target"] == int(victim.address, 16)
    s.driver(challenger).play_games()
    assert dep.job(job)["state"] == JobState.FAILED
