"""The roles' fees (`JobTerms.aggregator_fee`, `validator_fee`), played by real roles: every role
is paid for its work and nothing more. The aggregator earns its fee per committed round, a
validator per round it attested; a validator that did not work earns nothing, its unearned fee
returns to the requester, and an aggregator that pays itself or an idle validator more than the
terms say loses a dispute game and its stake, while the honest roles are paid in full."""

from __future__ import annotations

from pathlib import Path

import pytest
from sec_support import AGG_STAKE, ESCROW, revert

from fedmarket.errors import ContractRevert
from fedmarket.market import JobState
from fedmarket.protocol import rules as R
from fedmarket.roles import Validator
from fedmarket.roles.auditor import Auditor
from fedmarket.testing.adversary import SilentValidator, TamperingPoster

TOKEN = 10**18
AGG_FEE = 7 * TOKEN  # per committed round
VAL_FEE = 3 * TOKEN  # per attested round


def _fees(**kw) -> dict:
    return {"aggregator_fee": AGG_FEE, "validator_fee": VAL_FEE if kw.get("validators") else 0, **kw}


def _honest(chain, make, **kw) -> dict:
    with chain.chain.snapshot():
        s = make(**_fees(**kw))
        s.run()
        assert s.state() == JobState.SETTLED
        return s.delta()


def _posted(s) -> dict:
    return s.dep.job(s.job)


def test_every_role_earns_its_fee_and_an_idle_validator_nothing(make):
    """Three validators, one silent: the job still reaches quorum. The aggregator earns its fee for
    both rounds, each working validator its fee for both attestations, the silent one nothing (its
    stake comes back; it did no harm), and its unearned fee returns to the requester. The providers
    share the rest of the pool; the auditor re-derives every leaf, fees included."""
    s = make(**_fees(providers=3, rounds=2, validators=3),
             validator_cls=[Validator, Validator, SilentValidator])
    s.run()
    assert s.state() == JobState.SETTLED and s.slashed() == {}
    d, job = s.delta(), _posted(s)
    assert d[s.agg.address] == 2 * AGG_FEE
    working, idle = s.validators[:2], s.validators[2]
    assert all(d[v.address] == 2 * VAL_FEE for v in working) and d[idle.address] == 0
    fee_bps = int(s.dep.market.call("FEE_BPS"))
    pool = R.pool(ESCROW, fee_bps, R.BPS, True)
    reserved = 2 * (AGG_FEE + 3 * VAL_FEE)
    paid_providers = sum(d[p.address] for p in s.providers)
    assert pool - reserved - len(s.providers) < paid_providers <= pool - reserved
    assert int(job["reward_total"]) == paid_providers + 2 * AGG_FEE + 4 * VAL_FEE
    # the requester paid the protocol fee and what was earned; the idle validator's fee came back
    assert d[s.c.requester.address] == -(ESCROW * fee_bps // R.BPS) - int(job["reward_total"])
    report = Auditor(s.dep, s.store).audit(s.job)
    assert report.ok and report.rewards_ok and report.claims_ok


class FeeInflatingAggregator(TamperingPoster):
    """Moves one token from the best-paid provider's leaf to its own fee (the pool is paid out in
    full, so the total cannot grow): the totals add up, every value is right."""

    def tamper(self, doc):
        providers = [leaf for leaf in doc["leaves"] if int(leaf["role"]) == R.Role.PROVIDER]
        richest = max(providers, key=lambda leaf: int(leaf["amount"]))
        richest["amount"] = str(int(richest["amount"]) - TOKEN)
        for leaf in doc["leaves"]:
            if leaf["account"] == self.address:
                leaf["amount"] = str(int(leaf["amount"]) + TOKEN)
        return doc


class IdlePayingAggregator(TamperingPoster):
    """Pays a validator that attested nothing its fee for every round, as if it had attested them
    all (activity and reputation made consistent with that claim, totals adjusted)."""

    idle: str = ""

    def tamper(self, doc):
        r = len(doc["reveals"])  # one entry per committed round
        for leaf in doc["leaves"]:
            if leaf["account"] == self.idle:
                extra = VAL_FEE * r - int(leaf["amount"])
                leaf["amount"], leaf["activity"], leaf["reputation_delta"] = str(VAL_FEE * r), r, r
                doc["total"] = str(int(doc["total"]) + extra)
        return doc


def _caught(s, honest: dict, kind: R.Game) -> None:
    opened = s.dep.reward_arbiter.events("GameOpened", job_id=s.job)
    resolved = s.dep.reward_arbiter.events("GameResolved", job_id=s.job)
    assert [e["kind"] for e in opened] == [kind] and resolved[0]["challenger_won"]
    assert s.state() == JobState.SETTLED and s.slashed() == {s.agg.address: AGG_STAKE}
    d = s.delta()
    for p in s.providers:
        assert d[p.address] == honest[p.address] > 0
    assert d[s.agg.address] == -AGG_STAKE  # a faulting role forfeits its fee with its stake


def test_an_aggregator_overpaying_its_own_fee_is_slashed(chain, make):
    """The aggregator's leaf pays one token above fee x rounds, taken from a provider, the totals
    add up: the watcher's sum game comes down to a leaf that breaks the rule. Slashed, fee
    forfeited, providers whole."""
    honest = _honest(chain, make, providers=3, rounds=2)
    s = make(**_fees(providers=3, rounds=2), aggregator_cls=FeeInflatingAggregator)
    s.run()
    _caught(s, honest, R.Game.REWARD_SUM)


def test_a_root_paying_an_idle_validator_is_slashed(chain, make):
    """A weight-basis job (an attested rule) with a silent validator: the aggregator pays it a fee
    for rounds it never attested. Its leaf follows the reward rule for the activity it claims, so
    the watcher's value game bisects that activity over the rounds down to one, where no attestation
    exists: slashed, and the honest validators and providers are paid exactly their due."""
    kw = dict(providers=3, rounds=2, validators=3, strategy="centered_clip")
    vcls = [Validator, Validator, SilentValidator]
    with chain.chain.snapshot():
        h = make(**_fees(**kw), validator_cls=vcls)
        h.run()
        assert h.state() == JobState.SETTLED and _posted(h)["basis"] == R.Basis.WEIGHT
        honest = h.delta()
    s = make(**_fees(**kw), validator_cls=vcls, aggregator_cls=IdlePayingAggregator)
    s.agg.idle = s.validators[2].address
    s.run()
    _caught(s, honest, R.Game.REWARD_VALUE)
    d = s.delta()
    assert d[s.validators[2].address] == 0
    assert all(d[v.address] == 2 * VAL_FEE for v in s.validators[:2])


def test_a_validator_attesting_the_last_round_after_quorum_is_paid(make, tmp_path):
    """Quorum needs two of three attestations. The aggregator's process used to stop submitting
    there, and post the reward root as soon as it could: a third validator that attested in time,
    but whose own submission waits out its grace, found the job finalizing (`attest` reverts) and
    its fee for the round unpaid. The process puts every posted attestation of the last round on
    chain before the root."""
    from fedmarket.driver import RoundPlan
    from fedmarket.processes.aggregator import AggregatorProcess
    from fedmarket.roles.validator import submit_attestations

    s = make(providers=3, validators=3, rounds=1, validator_fee=TOKEN)
    s.open()
    s.driver._train_and_commit(0, RoundPlan())
    for v in s.validators:
        assert "scores_root" in v.review(s.job, 0)  # all three attest in time, on the mailbox
    v0, v1, late = s.validators
    for v in (v0, v1):
        submit_attestations(s.dep, s.box, s.agg.account, s.job, 0, only=v.address)
    assert s.dep.disputes.call("has_quorum", s.job, 0)
    proc = AggregatorProcess(s.dep, s.agg.account, s.store, s.box, s.job, tmp_path / "agg", reveal_timeout=0)
    proc.safe_step()
    assert s.dep.disputes.call("attestation_of", s.job, 0, late.address) != b"\x00" * 32
    _reveal(s, s.validators)
    for _ in range(3):
        for v in s.validators:
            v.approve_rewards(s.job)
        proc.safe_step()
    assert s.state() == JobState.FINALIZING
    s.settle_and_claim()
    assert all(s.delta()[v.address] == TOKEN for v in s.validators)


def _two_of_three_attest(s, rounds: int, reviewers: int = 3):
    """Train and commit `rounds` rounds; the first `reviewers` validators review each (their
    attestations are on the mailbox), but only the first two reach the chain: quorum without the third."""
    from fedmarket.driver import RoundPlan
    from fedmarket.roles.validator import submit_attestations

    s.open()
    for r in range(rounds):
        s.driver._train_and_commit(r, RoundPlan())
        for v in s.validators[:reviewers]:
            assert "scores_root" in v.review(s.job, r)
        for v in s.validators[:2]:
            submit_attestations(s.dep, s.box, s.agg.account, s.job, r, only=v.address)
        assert s.dep.disputes.call("has_quorum", s.job, r)


def _reveal(s, validators) -> None:
    """Each of `validators` reveals its scores of every committed round (once the votes closed:
    `Validator.reveal`)."""
    from fedmarket.roles.common import committed_rounds

    for v in validators:
        for r in range(len(committed_rounds(s.dep, s.job))):
            v.reveal(s.job, r)


def _signed_approvals(s, validators) -> tuple:
    """The honest scores-basis statement now, with each of `validators`' signature of it (as
    `Validator.approve_rewards` signs, which itself waits for the votes to close)."""
    from fedmarket.protocol.receipts import RewardsApproval
    from fedmarket.roles.settlement import statement_of

    statement = statement_of(s.honest_document())
    ordered = sorted(validators, key=lambda v: int(v.address, 16))
    sigs = [RewardsApproval(s.job, *statement).sign(v.account.key, s.dep.chain_id, s.dep.disputes.address) for v in ordered]
    return statement, [v.address for v in ordered], sigs


def test_the_reward_root_waits_for_a_slower_validators_last_vote(make):
    """Attack: the aggregator posts the reward root the moment the last round reaches quorum,
    before a slower validator's attestation (sent in time) is on chain; once the job is finalizing
    that vote can never land, and the validator's fee for the round is lost. The chain now refuses
    every reward root, and every approval of one, until the votes close: every validator voted on
    every round, or a quarter of the step's time passed. Here the third vote lands, and all three
    validators are paid."""
    from fedmarket.errors import FedMarketError
    from fedmarket.roles.validator import submit_attestations

    s = make(providers=3, validators=3, rounds=1, validator_fee=TOKEN)
    _two_of_three_attest(s, 1)
    v0, v1, late = s.validators
    assert not s.dep.disputes.call("votes_closed", s.job)
    revert(s.agg.post_rewards, s.job, R.Basis.WEIGHT, match="disputes: votes open")
    with pytest.raises(FedMarketError, match="no scores basis"):  # nobody revealed: the votes are open
        s.agg.post_rewards(s.job, R.Basis.SCORES)
    statement, signers, sigs = _signed_approvals(s, [v0, v1])
    revert(s.dep.disputes.transact, "approve_rewards", s.job, *statement, signers, sigs, sender=s.agg.account,
           match="disputes: votes open")
    with pytest.raises(FedMarketError, match="votes still open"):
        v0.approve_rewards(s.job)  # an honest validator signs no statement that could still change
    submit_attestations(s.dep, s.box, late.account, s.job, 0, only=late.address)
    assert s.dep.disputes.call("votes_closed", s.job)  # every validator voted: no wait
    _reveal(s, s.validators)
    for v in s.validators:
        v.approve_rewards(s.job)
    s.agg.post_rewards(s.job)
    assert s.state() == JobState.FINALIZING
    s.settle_and_claim()
    assert all(s.delta()[v.address] == TOKEN for v in s.validators)


def test_no_vote_lands_after_the_votes_close(make):
    """The other side of the wait: once a quarter of the last step's time has passed, the votes are
    closed for good. A validator that held back its attestations cannot put one on chain then, of
    the last round or of any earlier one: landing just before the root (front-running it), it
    would have made the honest root's activity provably wrong and the aggregator slashed. The
    two validators that voted in time are paid, the silent one nothing, and nobody is slashed."""
    from fedmarket.protocol.receipts import Attestation
    from fedmarket.roles.common import committed_rounds, round_accumulator
    from fedmarket.roles.validator import submit_attestations

    s = make(providers=3, validators=3, rounds=2, validator_fee=TOKEN)
    _two_of_three_attest(s, 2)
    late = s.validators[2]
    s.past(int(s.dep.market.call("votes_close", s.job)) - 1)
    assert s.dep.disputes.call("votes_closed", s.job)
    rounds = committed_rounds(s.dep, s.job)
    acc = round_accumulator(s.dep, s.job, rounds)
    for r in (1, 0):
        assert submit_attestations(s.dep, s.box, late.account, s.job, r, only=late.address) == []  # sends nothing
        scores = b"\x07" * 32
        sig = Attestation(s.job, r, rounds[r].model_root, scores).sign(late.account.key, s.dep.chain_id,
                                                                       s.dep.disputes.address)
        revert(s.dep.disputes.transact, "attest", s.job, r, rounds[r].data, acc.proof(r), scores, [late.address], [sig],
               sender=late.account, match="disputes: votes closed")
    _reveal(s, s.validators[:2])
    for v in s.validators[:2]:
        v.approve_rewards(s.job)
    s.agg.post_rewards(s.job)
    s.settle_and_claim()
    d = s.delta()
    assert [d[v.address] for v in s.validators] == [2 * TOKEN, 2 * TOKEN, 0] and s.slashed() == {}


def _aggregator_process(s, tmp_path, logs):
    from fedmarket.processes.aggregator import AggregatorProcess

    return AggregatorProcess(s.dep, s.agg.account, s.store, s.box, s.job, tmp_path / "agg", reveal_timeout=0,
                             log=logs.append)


def test_a_vote_posted_after_the_votes_close_never_holds_the_root_back(make, tmp_path):
    """Attack (a validator): post its attestation of the last round on the mailbox only after the
    votes closed. The aggregator's process puts posted attestations on chain before the root; it
    used to send this one, whose revert ('votes closed') stopped the step before the root every
    time, until the deadline passed and anyone slashed the aggregator. Nothing is sent once the
    votes are closed, and the root is posted."""
    s = make(providers=3, validators=3, rounds=1, validator_fee=TOKEN)
    _two_of_three_attest(s, 1, reviewers=2)
    v0, v1, late = s.validators
    logs: list[str] = []
    proc = _aggregator_process(s, tmp_path, logs)
    proc.safe_step()
    assert s.state() == JobState.TRAINING  # the votes are open: the root waits
    s.past(int(s.dep.market.call("votes_close", s.job)) - 1)
    assert "scores_root" in late.review(s.job, 0)  # too late: on the mailbox only
    _reveal(s, (v0, v1))
    for _ in range(3):
        for v in (v0, v1):
            v.approve_rewards(s.job)
        proc.safe_step()
    assert s.state() == JobState.FINALIZING, "\n".join(logs)
    assert not any("failed" in line for line in logs), "\n".join(logs)
    s.settle_and_claim()
    assert [s.delta()[v.address] for v in s.validators] == [TOKEN, TOKEN, 0]


def test_one_silent_validator_leaves_the_scores_basis_its_window(make, tmp_path):
    """Attack (a validator colluding with the requester): stay silent on the last round, so that
    the votes close only on time. When they closed at the moment the weight basis opened, no
    scores statement could be approved before it, and the aggregator's process fell back to the
    weight basis: a gated job paid its miss payout although the validators found the target met.
    The votes now close a quarter into the step and the weight basis opens at its half: the
    validators approve their statement in between and the scores basis is posted, gate met."""
    s = make(providers=3, validators=3, rounds=1, validator_fee=TOKEN, target_accuracy=0.2, miss_payout_bps=2_000)
    _two_of_three_attest(s, 1, reviewers=2)
    logs: list[str] = []
    proc = _aggregator_process(s, tmp_path, logs)
    s.past(int(s.dep.market.call("votes_close", s.job)) - 1)
    proc.safe_step()  # no approval yet, and the weight basis is not open: it waits
    assert s.state() == JobState.TRAINING, "\n".join(logs)
    _reveal(s, s.validators[:2])
    for v in s.validators[:2]:
        v.approve_rewards(s.job)
    proc.safe_step()
    job = s.dep.job(s.job)
    assert s.state() == JobState.FINALIZING and int(job["basis"]) == R.Basis.SCORES
    assert s.dep.market.events("RewardRootPosted", job_id=s.job)[-1]["gate_met"]


def test_a_slow_validators_earlier_votes_still_count_once_the_last_round_is_in(make, tmp_path):
    """A slow validator reviews both rounds late and posts both attestations. The votes used to
    close as soon as every validator had voted on the last round, so its round-0 vote could never
    land and that fee was lost. They close early only once every validator voted on every round,
    and the aggregator's process puts every round's posted attestations on chain, the last round's
    last: the slow validator is paid for both rounds."""
    from fedmarket.driver import RoundPlan
    from fedmarket.roles.validator import submit_attestations

    s = make(providers=3, validators=3, rounds=2, validator_fee=TOKEN)
    s.open()
    v0, v1, late = s.validators
    for r in range(2):
        s.driver._train_and_commit(r, RoundPlan())
        for v in (v0, v1):
            assert "scores_root" in v.review(s.job, r)
            submit_attestations(s.dep, s.box, s.agg.account, s.job, r, only=v.address)
    for r in range(2):
        assert "scores_root" in late.review(s.job, r)
    logs: list[str] = []
    proc = _aggregator_process(s, tmp_path, logs)
    proc.safe_step()
    assert s.dep.disputes.call("votes_cast", s.job) == 6 and s.dep.disputes.call("votes_closed", s.job)
    _reveal(s, s.validators)
    for _ in range(3):
        for v in s.validators:
            v.approve_rewards(s.job)
        proc.safe_step()
    assert s.state() == JobState.FINALIZING, "\n".join(logs)
    s.settle_and_claim()
    assert all(s.delta()[v.address] == 2 * TOKEN for v in s.validators)


def test_with_no_watcher_the_providers_own_processes_catch_a_self_paying_root(chain, make, tmp_path):
    """Attack: pay itself a token of a provider's reward in a job nobody else watches (assumption 2
    of the threat model not met: no challenger runs). The provider's own process checks each posted
    root against the rule, opens the game it can win with its dispute bond, plays it to its end, and
    once the aggregator is slashed posts the right root: every provider ends with its honest pay."""
    honest = _honest(chain, make, providers=3, rounds=2)
    s = make(**_fees(providers=3, rounds=2), aggregator_cls=FeeInflatingAggregator)
    s.open()
    s.rounds()
    s.driver._judge_and_post()  # the self-paying root; nobody else watches
    assert s.state() == JobState.FINALIZING
    logs: list[str] = []
    _play_out(s, _provider_processes(s, tmp_path, logs))
    _caught_by(s, honest, logs)


def _provider_processes(s, tmp_path, logs: list[str]) -> list:
    from fedmarket.processes.provider import ProviderProcess

    return [ProviderProcess(s.dep, p.account, s.store, s.box, p.X, p.y, s.job, tmp_path / f"p{i}", log=logs.append)
            for i, p in enumerate(s.providers)]


def _play_out(s, procs: list) -> None:
    """Step the providers' processes while the aggregator defends what it can (time runs to the next
    deadline when nobody moves), until a new root stands with the aggregator slashed."""
    for _ in range(200):
        if s.state() == JobState.TRAINING:  # the root was discarded: a provider posts the right one
            procs[0].safe_step()
        if s.state() == JobState.FINALIZING and not s.games() and s.slashed():
            return
        for proc in procs:
            proc.safe_step()
        try:
            moved = s.agg.defend(s.job)
        except ContractRevert:  # its leaf breaks the rule: it cannot answer
            moved = []
        if not moved and s.games():
            s.past(min(g.deadline for g in s.games()))


def _caught_by(s, honest: dict, logs: list[str]) -> None:
    opened = s.dep.reward_arbiter.events("GameOpened", job_id=s.job)  # each provider plays a game of its own
    assert opened and {g["challenger"] for g in opened} <= {p.address for p in s.providers}, "\n".join(logs)
    resolved = s.dep.reward_arbiter.events("GameResolved", job_id=s.job)
    assert len(resolved) == len(opened)  # every game ended (the others moot: bonds back)
    assert [g["challenger_won"] for g in resolved if not g["moot"]] == [True], "\n".join(logs)
    assert s.state() == JobState.FINALIZING and s.slashed() == {s.agg.address: AGG_STAKE}
    s.settle_and_claim()
    d = s.delta()
    for p in s.providers:
        assert d[p.address] >= honest[p.address] > 0  # the prover also keeps half of the slashed stake


def test_a_stalled_sham_game_does_not_blind_the_providers(chain, make, tmp_path):
    """Attack: post the self-paying root and, from a puppet account, open a reward game against it
    that the puppet then lets sit, the aggregator answering at the last moment of its turns so the
    game outlasts the challenge window. The providers' processes used to see a game open and look
    no further, and the wrong root settled. Each provider now checks the root and plays a game of
    its own: the aggregator is proven wrong within the window."""
    honest = _honest(chain, make, providers=3, rounds=2)
    s = make(**_fees(providers=3, rounds=2), aggregator_cls=FeeInflatingAggregator)
    s.open()
    s.rounds()
    s.driver._judge_and_post()
    puppet = s.c.stranger
    s.approve(puppet, s.dep.reward_arbiter.address)
    s.dep.reward_arbiter.transact("challenge_rewards", s.job, sender=puppet)
    logs: list[str] = []
    _play_out(s, _provider_processes(s, tmp_path, logs))
    assert s.slashed() == {s.agg.address: AGG_STAKE}, "\n".join(logs)
    s.settle_and_claim()
    d = s.delta()
    assert all(d[p.address] >= honest[p.address] > 0 for p in s.providers)


def test_a_withheld_rewards_document_is_looked_for_again(chain, make, tmp_path):
    """Attack: post the self-paying root with the content id of a rewards document it does not
    store. The providers' processes marked such a root as checked and never looked again; the
    aggregator stored the document once the window was over, and the wrong root settled. A root
    whose document cannot be read is looked at again every step: once it appears in time, the
    providers prove it wrong."""
    s = make(**_fees(providers=3, rounds=2), aggregator_cls=FeeInflatingAggregator)
    s.open()
    s.rounds()
    s.driver._judge_and_post()
    cid = s.dep.market.events("RewardRootPosted", job_id=s.job)[-1]["rewards_cid"]
    blob = Path(s.store.root) / cid
    doc = blob.read_bytes()
    blob.unlink()  # withheld
    logs: list[str] = []
    procs = _provider_processes(s, tmp_path, logs)
    for proc in procs:
        proc.safe_step()
    assert not s.games() and any("cannot be checked yet" in line for line in logs)
    assert s.store.put(doc) == cid  # stored after all, within the window
    _play_out(s, procs)
    assert s.slashed() == {s.agg.address: AGG_STAKE}, "\n".join(logs)
