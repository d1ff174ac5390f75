"""A round's blob deleted after its quorum (found by an attacker's review).

A round's quorum needs two thirds of the validator stake; a slower honest validator reviews it
after. The aggregator's process put a round's deleted blobs back only until quorum, so the
requester (who gets an unpaid validator's fee back), or anyone on the shared store, deleted one
update blob of a round right after its quorum: the slower validator found it missing, waited out
its data grace, and rejected the right round on chain, paid for one round of two. Now the
aggregator keeps every round that some validator has not voted on available until the votes
close, and a validator never rejects a round at quorum for missing data (a rejection then fails
nobody and only costs it): it looks again."""

from __future__ import annotations

import time

from proc_support import Procs
from sec_support import TOKEN

from fedmarket.market import JobState
from fedmarket.roles.common import committed_rounds, fetch_metrics


def test_a_blob_deleted_after_quorum_costs_a_slower_validator_nothing(chain, tmp_path):
    """Two of three validators attest round 0; then one of its update blobs is deleted from the
    shared store, and the third validator reviews it with a short data grace. The blob is put back,
    the third attests, and every validator is paid for both rounds."""
    P = Procs(chain, tmp_path, collect_timeout=60.0, providers=3, validators=3, rounds=2, validator_fee=TOKEN)
    slow = chain.validators[2]
    P.first_round_at_quorum(without="v2")
    assert P.dep.disputes.call("attestation_of", P.job, 0, slow.address) == b"\x00" * 32
    doc = fetch_metrics(P.store, committed_rounds(P.dep, P.job)[0])
    (P.store.root / doc["updates"][0]["update_cid"]).unlink()  # the attacker's deletion
    v2 = P.procs["v2"]
    v2.safe_step()  # first look: the blob is missing
    v2.validator.data_grace = 0.01  # its grace runs out at once
    time.sleep(0.05)
    assert P.run(800), "\n".join(P.logs[-40:])  # the aggregator puts blobs back every 5 s
    assert P.state() == JobState.SETTLED
    assert not P.dep.disputes.call("rejected", P.job, 0, slow.address)
    paid = P.paid()
    assert all(paid.get(v.address, 0) == 2 * TOKEN for v in chain.validators[:3]), paid
    assert not P.dep.market.events("StakeSlashed", job_id=P.job)
