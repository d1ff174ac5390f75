"""Anyone can write to the mailbox and the content store, so every message and document a role
reads there is untrusted. The attack: one malformed message that makes an honest role raise on
every try, or end its process, so that it misses a vote or a deadline and is slashed (validators
for absence, the aggregator for a round or a reward root it never committed). Each test passes
when the honest role drops the junk (or votes against a malformed round) and does its job."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import sec_support
from sec_support import AGG_STAKE

import fedmarket.roles.aggregator as agg_mod
from fedmarket.driver import RoundPlan
from fedmarket.market import JobState
from fedmarket.processes import ValidatorProcess
from fedmarket.protocol.encoding import canonical_json
from fedmarket.roles import Aggregator, Provider
from fedmarket.roles.common import committed_rounds, fail_job, round_topic
from fedmarket.roles.sealed import seal_topic
from fedmarket.roles.validator import submit_attestations
from fedmarket.spec import CNNModel
from fedmarket.storage.cid import cid_of

# 65 bytes in the canonical form the contracts accept (v 27, low s), with r = 0: no key recovers it
NO_KEY = "0x" + (bytes(32) + (1).to_bytes(32, "big") + bytes([27])).hex()


def _first(existing: list[bytes], make_msg) -> bytes:
    """A message that a directory mailbox lists before every one in `existing` (CID order)."""
    low = min(cid_of(m) for m in existing)
    for i in range(200_000):
        msg = make_msg(i)
        if cid_of(msg) < low:
            return msg
    raise AssertionError("no message sorts first")


def _votes(s, round_: int) -> int:
    attested = sum(s.dep.disputes.call("attestation_of", s.job, round_, v.address) != b"\x00" * 32 for v in s.validators)
    rejected = sum(bool(s.dep.disputes.call("rejected", s.job, round_, v.address)) for v in s.validators)
    return attested + rejected


def _validator_steps(s, tmp_path, steps: int = 3) -> list[str]:
    logs: list[str] = []
    procs = [ValidatorProcess(s.dep, v.account, s.store, s.box, v.X, v.y, s.job, tmp_path / f"v{i}", log=logs.append)
             for i, v in enumerate(s.validators)]
    for _ in range(steps):
        for p in procs:
            p.safe_step()  # raises only what would end the process
        s.chain.advance_time(60)
    return logs


def test_a_signature_that_recovers_no_key_is_one_dropped_message(make, tmp_path):
    """Such a signature passed the canonical-form check and then raised eth_keys' BadSignature (no
    ValueError) out of every reader: a junk seal ended every validator's process before it voted
    (all slashed for absence), junk attestations stopped every submission, a junk receipt stopped
    the aggregator's collect. Now each is one message passed over."""
    s = make(providers=3, validators=3, rounds=2)
    s.open()
    s.box.post(round_topic(s.job, 0), canonical_json({
        "job_id": s.job, "round": 0, "weight": 1, "provider": "0x" + "00" * 20, "update_root": "0x" + "11" * 32,
        "signature": NO_KEY, "salt": "0x" + "22" * 32, "update_cid": "x"}))
    s.driver._train_and_commit(0, RoundPlan())
    assert committed_rounds(s.dep, s.job)[0].count == 3
    s.box.post(seal_topic(s.job, 0), canonical_json({"job_id": s.job, "round": 0, "commitments": {},
                                                     "signature": NO_KEY}))
    for v in s.validators:
        v.review(s.job, 0)
    topic = round_topic(s.job, 0) + "-attestations"
    for v in s.validators:  # one per validator, listed before its real attestation
        s.box.post(topic, _first(s.box.read(topic), lambda n, v=v: canonical_json(
            {"validator": v.address, "scores_root": "0x" + "11" * 32, "signature": NO_KEY, "n": n})))
    s.box.post(topic, canonical_json({"validator": [], "scores_root": "0x" + "11" * 32, "signature": NO_KEY}))
    submit_attestations(s.dep, s.box, s.agg.account, s.job, 0)
    assert _votes(s, 0) == 3 and s.dep.job(s.job)["quorum"]
    _validator_steps(s, tmp_path)  # their processes run on past the junk
    assert s.slashed() == {}


def test_an_attestation_written_without_its_0x_cannot_stop_the_batch(make):
    """A validator's own attestation, well signed but with its hex written without 0x, passed the
    checks (which take hex either way) and was then re-read from the text with its first byte cut:
    every batch holding it reverted, so nobody's attestations landed through the aggregator (found
    by an attacker's review). What is checked is now what is sent: all three land."""
    s = make(providers=3, validators=3, rounds=2)
    s.open()
    s.driver._train_and_commit(0, RoundPlan())
    for v in s.validators:
        v.review(s.job, 0)
    topic = round_topic(s.job, 0) + "-attestations"
    mine = json.loads(next(m for m in s.box.read(topic) if json.loads(m)["validator"] == s.validators[0].address))
    s.box.post(topic, _first(s.box.read(topic), lambda n: canonical_json(
        {**mine, "scores_root": mine["scores_root"][2:], "signature": mine["signature"][2:], "n": n})))
    submit_attestations(s.dep, s.box, s.agg.account, s.job, 0)
    assert _votes(s, 0) == 3 and s.dep.job(s.job)["quorum"]


def test_a_message_nested_past_the_limit_is_dropped_not_a_crash():
    """eth_account (every role imports it) raises the recursion limit to 100,000; a 180 kB message
    nested 90,000 deep then overflowed the C stack in `json.loads`: the process died of SIGSEGV, which
    no `except` catches, on the first topic every role reads. Run in a fresh interpreter."""
    code = (
        "import eth_account, sys\n"
        "from fedmarket.roles.common import claimed_senders\n"
        "from fedmarket.protocol.encoding import untrusted_json\n"
        "assert sys.getrecursionlimit() >= 100_000\n"
        "deep = b'[' * 90_000 + b']' * 90_000\n"
        "assert claimed_senders([deep, b'{\"provider\": \"0xabc\"}']) == {'0xabc'}\n"
        "try:\n    untrusted_json(deep)\nexcept ValueError as exc:\n    print('refused:', exc)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert "refused: document nests deeper than 64 levels" in run.stdout


class JunkMetricsAggregator(Aggregator):
    """Commits a right round (right model, right updates) whose metrics document lists its updates
    without signatures: a validator's review raised KeyError on every try instead of voting."""

    def run_round(self, job_id, round_, collected=None):
        orig = agg_mod.canonical_json

        def unsigned(doc):
            if isinstance(doc, dict) and "model_cid" in doc and "updates" in doc:
                doc = {**doc, "updates": [{k: v for k, v in e.items() if k != "signature"} for e in doc["updates"]]}
            return orig(doc)

        agg_mod.canonical_json = unsigned
        try:
            return super().run_round(job_id, round_, collected)
        finally:
            agg_mod.canonical_json = orig


def test_a_malformed_metrics_document_gets_votes_against_it(make, tmp_path):
    """Silent validators are slashed for absence and the aggregator keeps its stake; so an
    aggregator committed a round whose document made every review raise. A review always ends in
    a vote now: the round is rejected and the aggregator alone is slashed."""
    s = make(providers=3, validators=3, rounds=2, aggregator_cls=JunkMetricsAggregator)
    s.open()
    s.driver._train_and_commit(0, RoundPlan())
    _validator_steps(s, tmp_path)
    assert _votes(s, 0) == 3
    assert all(s.dep.disputes.call("rejected", s.job, 0, v.address) for v in s.validators)
    fail_job(s.dep, s.c.stranger, s.job)
    assert s.state() == JobState.FAILED and s.slashed() == {s.agg.address: AGG_STAKE}


class Overflowing(Provider):
    """Every value at 2**47 (the edge of the fixed-point range, so the aggregator takes it) at a
    large claimed weight: a float32 network's logits overflow and its loss is NaN."""

    def _released(self, spec, delta, cfg=None):
        return np.full(spec.n_params, 2**47, dtype=np.int64), 100_000


def test_an_update_that_overflows_a_float_network_still_gets_the_round_a_vote(make, tmp_path, monkeypatch):
    """Scoring raised on the NaN every try, so no validator voted and all were slashed (the
    provider, never judged, kept its stake). The round is right: it is attested, its scores zero."""
    plain = sec_support.make_spec

    def cnn_spec(**kw):
        spec = plain(**kw)
        return spec.model_copy(update={"model": CNNModel(kind="cnn", channels=[8, 16], kernel=5, dense=64),
                                       "data": spec.data.model_copy(update={"input_shape": [1, 8, 8]})})

    monkeypatch.setattr(sec_support, "make_spec", cnn_spec)
    s = make(providers=3, validators=3, rounds=2, provider_cls=[Provider, Provider, Overflowing])
    s.open()
    s.driver._train_and_commit(0, RoundPlan())
    assert committed_rounds(s.dep, s.job)[0].count == 3
    _validator_steps(s, tmp_path)
    assert all(s.dep.disputes.call("attestation_of", s.job, 0, v.address) != b"\x00" * 32 for v in s.validators)
    assert s.slashed() == {}


def test_an_infinite_score_in_a_named_reveal_cannot_stop_the_reward_root(make):
    """Anyone stores a 'scores document' naming a real validator with a score of 1e400 and posts
    its CID on a round's reveals topic, first: `int(inf)` raised out of every reward computation
    (the aggregator's, each validator's approval, the providers' fallback), so the aggregator was
    slashed for the missing root and the providers were never paid."""
    s = make(providers=3, rounds=2, validators=3, challenger=False)
    s.open()
    s.rounds()
    v = s.validators[0].address
    cid = s.store.put(b'{"job_id": %d, "round": 0, "validator": "%s", "scores": [{"provider": "%s", "score": 1e400}], '
                      b'"accuracy": 0}' % (s.job, v.encode(), s.providers[0].address.encode()))
    topic = round_topic(s.job, 0) + "-reveals"
    s.box.post(topic, _first(s.box.read(topic), lambda i: canonical_json({"scores_cid": cid, "pad": i})))
    s.box.post(topic, canonical_json({"scores_cid": [1, 2]}))
    s.driver.finish()
    assert s.state() == JobState.SETTLED and s.slashed() == {}


def test_junk_on_a_secure_rounds_phase_topics_cannot_void_or_stall_it(make):
    """A secure round's phase topics are open to anyone too: a stranger's well-signed survivor set
    made the aggregator's process skip its own and commit the round empty (every round, nobody
    paid); a non-JSON message on the keys topic made the transcript raise out of `run_round` on
    every try; a signature that recovers no key on the shares topic ended the process. The round
    unmasks and commits all three updates, and the validators attest it."""
    from fedmarket.roles import secure_round as sr

    s = make(providers=3, rounds=1, validators=3, privacy="secagg", challenger=False)
    s.open()
    for phase in ("advertise", "share", "train"):
        for p in s.providers:
            getattr(p, phase)(s.job, 0)
    cfg = sr.round_config(s.dep, s.spec, s.job, 0, 3)
    s.box.post(sr.topic(s.job, 0, "survivors"), sr.survivors_message(s.c.stranger.key, cfg.round_id,
                                                                     s.c.stranger.address, [], []))
    s.box.post(sr.topic(s.job, 0, "survivors"), b"{}")
    s.box.post(sr.topic(s.job, 0, "keys"), b"not json")
    s.box.post(sr.topic(s.job, 0, "shares"), canonical_json({"signed": "{}", "signature": NO_KEY}))
    assert s.agg.own_survivors(s.job, 0) is None  # the stranger's set is not the aggregator's
    s.agg.secure_survivors(s.job, 0)
    for phase in ("confirm", "unmask"):
        for p in s.providers:
            getattr(p, phase)(s.job, 0)
    s.agg.run_round(s.job, 0)
    assert committed_rounds(s.dep, s.job)[0].count == 3
    for v in s.validators:
        v.review(s.job, 0)
    submit_attestations(s.dep, s.box, s.agg.account, s.job, 0)
    assert _votes(s, 0) == 3 and s.dep.job(s.job)["quorum"] and s.slashed() == {}


def test_a_copy_of_a_reveal_with_another_accuracy_is_not_the_validators(make):
    """A revealed scores document's accuracy and flags are in no root the validator attested: a
    copy of it with accuracy 0, listed first under the validator's name, flipped the quality gate
    (the pool fell to the miss payout, and every honest validator approved that). A reveal now
    counts only with its validator's signature over the whole document."""
    import json

    from fedmarket.roles.settlement import mailbox_reveals, reward_document

    s = make(providers=3, validators=3, rounds=1, target_accuracy=0.2, miss_payout_bps=2_000)
    s.open()
    s.driver._train_and_commit(0, RoundPlan())
    s.driver._review(0)  # honest reviews, attestations on chain
    s.driver.reveal()  # every vote is in: the votes are closed, the signed reveals posted
    honest = s.honest_document()
    assert honest["gate_met"]
    topic = round_topic(s.job, 0) + "-reveals"
    for raw in list(s.box.read(topic)):
        msg = json.loads(raw)
        doc = json.loads(s.store.get(msg["scores_cid"]))
        for forged in ({**doc, "accuracy": 0}, {k: x for k, x in {**doc, "accuracy": 0}.items() if k != "signature"}):
            cid = s.store.put(canonical_json(forged))
            s.box.post(topic, _first(s.box.read(topic), lambda n, cid=cid: canonical_json(
                {"validator": msg["validator"], "scores_cid": cid, "n": n})))
    after = reward_document(s.dep, s.store, s.job, s.spec, mailbox_reveals(s.dep, s.box, s.job))
    assert after["gate_met"] and after["quality"] == honest["quality"] and after["pool"] == honest["pool"]
