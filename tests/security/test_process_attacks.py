"""The role processes (`fedmarket.processes`), stepped on the security chain, against what anyone on
the mailbox can post and against a restart at a bad moment (found by an attacker's review of the
role processes). A process deciding something it cannot undo (to seal, to go on without someone,
that it already posted) counts only messages their senders signed: an unsigned claim in a
provider's name decides nothing. A provider's committed update is on disk before its commitment is
posted, so a restart before the reveal still reveals it."""

from __future__ import annotations

from proc_support import Procs

from fedmarket.market import JobState
from fedmarket.protocol.encoding import canonical_json
from fedmarket.roles import secure_round as sr
from fedmarket.roles.common import committed_rounds, round_topic
from fedmarket.roles.sealed import commit_topic


def _claims(box, topic: str, addresses) -> None:
    """One unsigned message naming each address as its sender."""
    for a in addresses:
        box.post(topic, canonical_json({"provider": a, "note": "not signed by anyone"}))


def test_unsigned_commitment_claims_do_not_make_the_aggregator_seal_early(chain, tmp_path):
    """A stranger posts, before each round, an unsigned claim per provider on the commit topic. Had
    the aggregator's process counted claims, it would seal at once, over nothing, and commit every
    round empty: nobody paid, no model. It seals the signed commitments: every round takes all
    three, every provider is paid."""
    P = Procs(chain, tmp_path, collect_timeout=60.0, providers=3, rounds=2)
    provs = [a.address for a in chain.providers[:3]]
    for r in range(2):
        _claims(P.box, commit_topic(P.job, r), provs)
    assert P.run(60), "\n".join(P.logs[-30:])
    assert P.state() == JobState.SETTLED
    assert [c.count for c in committed_rounds(P.dep, P.job)] == [3, 3]
    assert all(P.paid()[p] > 0 for p in provs)


def test_a_claim_in_a_providers_name_does_not_make_it_skip_its_rounds(chain, tmp_path):
    """A competitor posts an unsigned claim in the victim's name on every round's commit and round
    topics. Had the victim's process taken it for its own commitment, it would never train and be
    paid nothing while the others shared its pay. It looks for its own signed messages only."""
    P = Procs(chain, tmp_path, collect_timeout=60.0, providers=3, rounds=2)
    victim = chain.providers[0].address
    for r in range(2):
        _claims(P.box, commit_topic(P.job, r), [victim])
        _claims(P.box, round_topic(P.job, r), [victim])
    assert P.run(60), "\n".join(P.logs[-30:])
    assert [c.count for c in committed_rounds(P.dep, P.job)] == [3, 3]
    assert P.paid()[victim] > 0


def test_unsigned_share_claims_do_not_make_a_secure_round_commit_empty(chain, tmp_path):
    """The same in a secure job: unsigned claims for every member on a round's shares topic and its
    round topic. Had the aggregator's process counted them, it would compute the survivors before
    any masked update was in, abort and commit every round empty."""
    P = Procs(chain, tmp_path, collect_timeout=60.0, providers=3, rounds=2, validators=1, privacy="secagg")
    provs = [a.address for a in chain.providers[:3]]
    for r in range(2):
        _claims(P.box, sr.topic(P.job, r, "shares"), provs)
        _claims(P.box, round_topic(P.job, r), provs)
    assert P.run(80), "\n".join(P.logs[-30:])
    assert [c.count for c in committed_rounds(P.dep, P.job)] == [3, 3]
    assert all(P.paid()[p] > 0 for p in provs)


def test_a_provider_restarted_between_its_commitment_and_its_reveal_still_reveals(chain, tmp_path):
    """A provider's process is killed once its sealed commitment is posted and restarted with its
    state directory. Had the update, its salt and its blob lived in memory only, it could not open
    its commitment: the round would go on without it (its pay lost) after every other provider
    waited out the collect timeout. It reveals, and is paid."""
    P = Procs(chain, tmp_path, collect_timeout=60.0, providers=3, rounds=1)
    victim = chain.providers[0].address
    restarted = []

    def after(name):
        if name == "p0" and not restarted and any(victim in m.decode() for m in P.box.read(commit_topic(P.job, 0))):
            P.procs["p0"] = P.new_provider(0)  # killed and restarted with the same state directory
            restarted.append(True)

    P.after_step = after
    assert P.run(60), "\n".join(P.logs[-30:])
    assert restarted and P.state() == JobState.SETTLED
    assert committed_rounds(P.dep, P.job)[0].count == 3
    assert P.paid()[victim] > 0


def test_a_blob_deleted_after_the_commit_does_not_get_the_aggregator_slashed(chain, tmp_path):
    """A provider deletes its own update blob from the shared store right after the honest
    aggregator's process committed the round, before the validators review it. Had they rejected
    the round as unavailable at once, anyone (the deleter first) could fail the job on the
    aggregator and take half its stake. Validators look again for a tenth of a round before they
    call data unavailable, and the aggregator's process puts back what was deleted from its own
    copy while the round is under review: the round reaches quorum, nobody is slashed."""
    P = Procs(chain, tmp_path, collect_timeout=60.0, providers=3, validators=3, rounds=2)
    deleted = P.spoil_after_commit(chain.providers[0], lambda path: path.unlink())
    assert P.run(80), "\n".join(P.logs[-30:])
    assert deleted and P.state() == JobState.SETTLED
    assert int(P.dep.disputes.call("rejected_stake", P.job, 0)) == 0
    assert not P.dep.market.events("StakeSlashed", job_id=P.job)
    assert [c.count for c in committed_rounds(P.dep, P.job)] == [3, 3]



def _cutting_survivors(victim: str):
    """`Aggregator.secure_survivors` as written, but leaving the victim out of the set although its
    masked update is in (a cut of the graph around its neighbours, the smallest one)."""

    def secure_survivors(self, job_id, round_):
        from fedmarket.roles.common import load_spec

        spec = load_spec(self.dep, self.store, job_id)
        members = sr.participants(self.dep, spec, job_id, round_)
        cfg = sr.round_config(self.dep, spec, job_id, round_, len(members))
        updates = [u for u in self.collect(job_id, round_, spec)[0] if u.provider != victim]
        shared = sr.share_lists(self.mailbox.read(sr.topic(job_id, round_, "shares")), members, cfg.round_id)
        uid = {p: i for i, p in enumerate(members)}
        self._survivors[(job_id, round_)] = [u for u in updates if uid[u.provider] in shared]
        survivors = sorted(uid[u.provider] for u in self._survivors[(job_id, round_)])
        self.mailbox.post(sr.topic(job_id, round_, "survivors"),
                          sr.survivors_message(self.account.key, cfg.round_id, self.address, sorted(shared), survivors))
        return survivors

    return secure_survivors


def test_a_strangers_survivor_set_does_not_blind_the_providers_to_a_cut(chain, tmp_path, monkeypatch):
    """ATTACK (found by a review of the fixes): the providers' processes watch which members masked
    until the aggregator's survivor set appears, and refuse a set leaving one of them out. A
    survivor set signed by a throwaway key, posted before the round, made every process take it
    for the aggregator's: they stopped watching, and later confirmed a set that left out a provider
    that had masked. Only the job's aggregator's set counts; the providers refuse the cut."""
    from fedmarket.roles import Aggregator
    from fedmarket.roles.senders import signed_on

    n = 5
    P = Procs(chain, tmp_path, collect_timeout=60.0, providers=n, rounds=1, validators=1, privacy="secagg")
    monkeypatch.setattr(Aggregator, "secure_survivors", _cutting_survivors(chain.providers[2].address))
    rid = sr.Domain.of(P.dep, P.job, 0).round_id
    P.box.post(sr.topic(P.job, 0, "survivors"),
               sr.survivors_message(chain.stranger.key, rid, chain.stranger.address, list(range(n)), list(range(n))))
    provs = [f"p{i}" for i in range(n)]
    for _ in range(60):  # until every provider's masked update is in (the aggregator steps first)
        P.step(["aggregator", *[name for name in P.procs if name != "aggregator"]])
        if len(signed_on(P.dep, P.box, P.job, 0, "update")) == n:
            break
    assert not signed_on(P.dep, P.box, P.job, 0, "survivors")  # the stranger's set is nobody's
    P.step(provs)  # the providers look at the uploads before the aggregator's set exists
    P.step(["aggregator"])  # the cutting set
    assert signed_on(P.dep, P.box, P.job, 0, "survivors")
    for _ in range(3):
        P.step(provs)
    assert not signed_on(P.dep, P.box, P.job, 0, "confirm")  # every provider refused the cut
    assert any("leaves out 1 neighbour(s)" in line for line in P.logs)



def test_a_blob_overwritten_after_the_commit_does_not_get_the_aggregator_slashed(chain, tmp_path):
    """ATTACK (found by a second review of the fixes): as with a deleted blob, but the provider
    overwrites its update blob with junk under the same name. The read failed with a mismatch, not
    a missing blob, so validators rejected at once, and the aggregator's put-back skipped it (the
    name was there). A blob that is not its content id counts as missing (`BlobCorrupted`): the
    validators wait, and the aggregator's process reads each blob to put back an overwritten one."""
    P = Procs(chain, tmp_path, collect_timeout=60.0, providers=3, validators=3, rounds=2)
    done = P.spoil_after_commit(chain.providers[0], lambda path: path.write_bytes(b"junk"))  # overwritten, not deleted
    assert P.run(80), "\n".join(P.logs[-30:])
    assert done and P.state() == JobState.SETTLED
    assert int(P.dep.disputes.call("rejected_stake", P.job, 0)) == 0
    assert not P.dep.market.events("StakeSlashed", job_id=P.job)


def test_a_strangers_signed_update_does_not_hold_a_secure_round(chain, tmp_path, monkeypatch):
    """ATTACK (found by a second review of the fixes): the aggregator's process waits while a
    signed masked update's blob is missing; a stranger (no member of the job) signed an update
    naming a blob that never existed, and every secure round waited out the whole patience. Only
    members that posted their shares are waited for."""
    import secrets

    from fedmarket.protocol.receipts import UpdateReceipt
    from fedmarket.roles.senders import signed_on
    from fedmarket.storage import cid_of

    P = Procs(chain, tmp_path, collect_timeout=600.0, providers=3, rounds=1, validators=1, privacy="secagg")
    dep, job, stranger = P.dep, P.job, chain.stranger
    root = secrets.token_bytes(32)
    sig = UpdateReceipt(job, 0, root, 1).sign(stranger.key, dep.chain_id, dep.disputes.address)
    P.box.post(round_topic(job, 0), canonical_json({
        "provider": stranger.address, "job_id": job, "round": 0, "update_root": "0x" + root.hex(), "weight": 1,
        "update_cid": cid_of(b"never stored"), "signature": "0x" + sig.hex()}))
    for _ in range(40):
        P.step()
        if signed_on(dep, P.box, job, 0, "survivors"):
            break
    assert signed_on(dep, P.box, job, 0, "survivors")  # signed well before a 600 s patience
    assert not any("blob is missing; waiting" in line for line in P.logs)
