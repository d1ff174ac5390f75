"""Cheating providers on the embedded chain, with three staked validators holding out digits test data:
free-riders, poisoners and Sybil copies join, sign and claim like anyone, but release attacked
updates (the engine's attack catalogue, run by :mod:`fedmarket.testing.adversary`). Each earns less
than an honest provider of the same job (claimed amounts, on chain); those a validator
supermajority flags are slashed and end the job poorer than they started; every token is
accounted for."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from fedmarket.fl.attacks import ATTACKS, Attack, Sybil
from fedmarket.fl.data import load_dataset, subset, train_test_split
from fedmarket.fl.partition import iid_partition
from fedmarket.market import JobState, Role
from fedmarket.driver import Cast, JobDriver
from fedmarket.roles import Aggregator, Provider, Requester, Validator
from fedmarket.roles.challenger import Challenger
from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, RewardSpec, TrainingSpec
from fedmarket.storage import LocalBlobStore, Mailbox
from fedmarket.testing.adversary import AdversarialProvider, Coalition, JitteredSybil, LoudFreeRider

TOKEN = 10**18
ESCROW, AGG_STAKE, PROV_STAKE, VAL_STAKE = 100 * TOKEN, 50 * TOKEN, 10 * TOKEN, 10 * TOKEN
N_VALIDATORS, ROUNDS = 3, 3


@dataclass
class Outcome:
    job: int
    attackers: list[str]
    honest: list[str]
    claimed: dict[str, int]  # RewardClaimed amount per account
    net: dict[str, int]  # holdings after - before, per watched account
    slashed: dict[str, int]  # StakeSlashed amount per account
    reported: list  # slash_provider receipts
    conserved: bool


def run_job(world, tmp_path, attacks: dict[int, Coalition], n: int = 5) -> Outcome:
    """A 5-provider, 3-validator, 3-round job in which the providers at the keys of `attacks` run its
    coalition's attack; validators review, attest and reveal every round, report misbehaviour, the
    outsider submits the reports; then settle and every claim. Returns what the chain says."""
    dep = world["dep"]
    store, box = LocalBlobStore(tmp_path / "blobs"), Mailbox(tmp_path / "box")
    ds = load_dataset("digits")
    train, test = train_test_split(ds, 0.25, 0)
    parts = iid_partition(train.y, n, 0)
    providers = []
    for i in range(n):
        X, y = subset(train, parts[i]).X, subset(train, parts[i]).y
        acct = world["providers"][i]
        if i in attacks:
            providers.append(AdversarialProvider(dep, acct, store, box, X, y, coalition=attacks[i]))
        else:
            providers.append(Provider(dep, acct, store, box, X, y))
    held = np.array_split(np.arange(test.n_samples), N_VALIDATORS)  # disjoint held-out thirds
    validators = [Validator(dep, world["validators"][i], store, box, subset(test, held[i]).X, subset(test, held[i]).y)
                  for i in range(N_VALIDATORS)]
    spec = JobSpec(
        name="cheating providers",
        data=DataSchema(n_features=64, n_classes=10, feature_low=[0.0] * 64, feature_high=[16.0] * 64),
        training=TrainingSpec(rounds=ROUNDS, local_epochs=1),
        reward=RewardSpec(escrow=ESCROW, provider_stake=PROV_STAKE, aggregator_stake=AGG_STAKE,
                          validator_stake=VAL_STAKE),
        participation=ParticipationSpec(min_providers=n, max_providers=n, max_validators=N_VALIDATORS),
    )
    requester = Requester(dep, world["requester"], store)
    agg = Aggregator(dep, world["aggregator"], store, box)
    outsider = world["outsider"]
    watched = [world["requester"].address, world["aggregator"].address, outsider.address,
               world["treasury"].address, *(p.address for p in providers), *(v.address for v in validators)]
    before = {a: dep.holdings(a) for a in watched}
    money_before = sum(dep.balance(a) for a in watched) + dep.balance(dep.market.address)

    driver = JobDriver(dep, store, box, Cast(requester, agg, providers, validators, Challenger(dep, outsider, store)), spec)
    job = driver.run()
    assert dep.job(job)["state"] == JobState.SETTLED
    assert all(dep.disputes.call("has_quorum", job, r) for r in range(ROUNDS))  # every validator attested
    reported = [r for r in driver.slashed if any(e.name == "ProviderSlashed" for e in r.events)]

    after = {a: dep.holdings(a) for a in watched}
    money_after = sum(dep.balance(a) for a in watched) + dep.balance(dep.market.address)
    bad = [providers[i].address for i in sorted(attacks)]
    return Outcome(
        job=job,
        attackers=bad,
        honest=[p.address for p in providers if p.address not in bad],
        claimed={e["account"]: int(e["amount"]) for e in dep.market.events("RewardClaimed", job_id=job)},
        net={a: after[a] - before[a] for a in watched},
        slashed={e["account"]: int(e["amount"]) for e in dep.market.events("StakeSlashed", job_id=job)},
        reported=reported,
        # no token created or lost, and nothing of the job left in the market (every stake released)
        conserved=money_after == money_before and sum(after.values()) == sum(before.values())
        and dep.balance(dep.market.address) == sum(dep.staked(a) for a in watched),
    )


def assert_slashed_and_poorer(world, out: Outcome, attacker: str) -> None:
    """`attacker` was slashed on a validator supermajority's report: its whole job stake, nothing
    claimed, so its net result is minus its stake, below every honest provider's (positive) one."""
    assert out.slashed.get(attacker) == PROV_STAKE
    ev = next(r.event("ProviderSlashed") for r in out.reported if r.event("ProviderSlashed")["provider"] == attacker)
    assert ev["attested_stake"] * 3 >= ev["total_stake"] * 2
    slash = next(r.event("StakeSlashed") for r in out.reported if r.event("StakeSlashed")["account"] == attacker)
    assert (slash["role"], slash["challenger"]) == (Role.PROVIDER, world["outsider"].address)
    assert out.claimed[attacker] == 0
    assert out.net[attacker] == -PROV_STAKE < 0
    assert world["dep"].market.call("reputation", attacker) < 0
    for h in out.honest:
        assert out.claimed[h] > 0 and out.net[h] == out.claimed[h]  # reward on top of the stake returned


# ---------------------------------------------------------------- the three headline cheats


def assert_unpaid_not_slashed(out: Outcome, attacker: str) -> None:
    """`attacker` was flagged for what honest non-IID work can also look like (a direction away from
    the median, a low value, a near-copy): it is left out of the rewards but keeps its stake, since a
    stake is only taken for the model sent back (`rules.sent_back`), which no honest update is."""
    assert attacker not in out.slashed
    assert out.claimed[attacker] < min(out.claimed[h] for h in out.honest)
    assert out.net[attacker] == out.claimed[attacker]


def test_free_rider_is_slashed_and_earns_less_than_honest_providers(world, tmp_path):
    out = run_job(world, tmp_path, {0: Coalition("free_rider")})
    (cheat,) = out.attackers
    assert out.claimed[cheat] < min(out.claimed[h] for h in out.honest)
    assert_slashed_and_poorer(world, out, cheat)
    assert set(out.slashed) == {cheat}  # no honest provider (or anyone else) slashed
    # the slashed stake went half to the reporter, half to the treasury
    assert out.net[world["outsider"].address] == PROV_STAKE // 2
    assert out.conserved


def test_a_booster_is_unpaid_but_keeps_its_stake(world, tmp_path):
    """A boosted update is flagged against the round's median norm, which the round's other
    providers set: a colluding majority could make an honest update look boosted, so the flag costs
    the round's pay, never the stake (`tests/security/test_providers.py`)."""
    out = run_job(world, tmp_path, {0: Coalition("scaling")})
    (cheat,) = out.attackers
    assert_unpaid_not_slashed(out, cheat)
    assert out.slashed == {} and out.conserved


def test_a_sign_flipper_is_unpaid_but_keeps_its_stake(world, tmp_path):
    out = run_job(world, tmp_path, {0: Coalition("sign_flip")})
    (cheat,) = out.attackers
    assert_unpaid_not_slashed(out, cheat)
    assert out.slashed == {} and out.conserved


def test_sybil_copies_together_earn_less_than_one_honest_provider(world, tmp_path):
    """One attacker, two accounts, both submitting a copy of one honestly trained update: the copies
    are caught as such, and together they earn less than a single honest provider. They are not
    slashed: the copied victim looks the same as its copier."""
    coalition = Coalition(Sybil(base=Attack()))  # plain copies of an honest update
    out = run_job(world, tmp_path, {0: coalition, 1: coalition})
    assert len(out.attackers) == 2
    assert sum(out.claimed[a] for a in out.attackers) < min(out.claimed[h] for h in out.honest)
    for a in out.attackers:
        assert_unpaid_not_slashed(out, a)
    assert out.slashed == {} and out.conserved


def test_a_free_rider_and_a_poisoner_in_one_job(world, tmp_path):
    """The free-rider is slashed; the sign-flipper is left unpaid; the honest four share the pool."""
    out = run_job(world, tmp_path, {1: Coalition("free_rider"), 3: Coalition("sign_flip")}, n=6)
    assert len(out.honest) == 4
    free, flip = out.attackers
    assert_slashed_and_poorer(world, out, free)
    assert_unpaid_not_slashed(out, flip)
    assert set(out.slashed) == {free}
    paid = sum(out.claimed.values())
    assert paid <= ESCROW and out.conserved


# ---------------------------------------------------------------- the rest of the catalogue


@pytest.mark.parametrize("attack", sorted(set(ATTACKS) - {"free_rider", "sign_flip", "scaling"}))
def test_every_catalogue_attack_earns_less_than_an_honest_provider(world, tmp_path, attack):
    """Colluding attacks (alie, sybil) run on two accounts of one attacker, compared in total with one
    honest provider. An attacker flagged for a slashable reason in most rounds loses its whole stake;
    the others keep it but earn less (the backdoor is not flagged, its update looks like honest work,
    but it still scores lower on clean held-out data)."""
    n_bad = 2 if attack in ("alie", "sybil") else 1
    coalition = Coalition(attack)
    out = run_job(world, tmp_path, {i: coalition for i in range(n_bad)})
    total = sum(out.net[a] for a in out.attackers)
    assert total < min(out.net[h] for h in out.honest)
    assert sum(out.claimed[a] for a in out.attackers) < min(out.claimed[h] for h in out.honest)
    for a in out.attackers:
        if a in out.slashed:
            assert_slashed_and_poorer(world, out, a)
        else:
            assert out.net[a] == out.claimed[a]
    assert all(h not in out.slashed for h in out.honest)
    assert out.conserved


def test_an_honest_job_slashes_nobody(world, tmp_path):
    out = run_job(world, tmp_path, {})
    assert out.slashed == {} and out.reported == []
    assert all(out.claimed[h] > 0 for h in out.honest)
    assert out.net[world["aggregator"].address] == 0 and out.conserved


# ---------------------------------------------------------------- evasions tuned to the detection thresholds


def test_jittered_sybil_copies_together_earn_less_than_one_honest_provider(world, tmp_path):
    """Copies 5% apart pass an absolute copy check (1% of the median norm); detection also compares
    them with the round's own spread of updates (honest ones are ~0.4 x the median norm apart)."""
    coalition = Coalition(JitteredSybil(rel=0.05))
    out = run_job(world, tmp_path, {0: coalition, 1: coalition})
    assert sum(out.claimed[a] for a in out.attackers) < min(out.claimed[h] for h in out.honest)


def test_a_free_rider_sending_loud_noise_earns_next_to_nothing(world, tmp_path):
    """Noise at half an update's norm passes the free-rider check (5% of the median norm) and is not
    slashed (it gets its stake back). Each provider is valued by the term it adds to the round's
    aggregate (`score_round(share="round")`), so noise is worth only its chance alignment with the
    validators' loss: a few percent of an honest provider's pay at most, far below every one of them.
    (Valued against each coalition's average instead, it scored below 0 and claimed nothing, but so
    did every honest provider with few samples: tests/scoring/test_scoring_small_providers.py.)"""
    out = run_job(world, tmp_path, {0: Coalition(LoudFreeRider(rel=0.5))})
    (cheat,) = out.attackers
    assert out.claimed[cheat] < 0.05 * min(out.claimed[h] for h in out.honest)
    assert out.net[cheat] == out.claimed[cheat]
    assert out.conserved
