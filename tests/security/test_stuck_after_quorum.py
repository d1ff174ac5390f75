"""A round's data missing after its quorum must not stop a validator from voting on later rounds
(found by an attacker's review of the fix in test_deleted_after_quorum.py)."""

from __future__ import annotations

from proc_support import Procs
from sec_support import TOKEN

from fedmarket.roles.common import committed_rounds, fetch_metrics


def test_data_missing_after_quorum_does_not_stop_a_validator_voting_on_later_rounds(chain, tmp_path):
    """The aggregator deletes a round-0 update blob right after round 0's quorum and does not put it
    back. Before, the slower honest validator stopped at round 0 (looking again) and never voted on
    round 1; an accomplice's rejection of round 1 (a third of the stake) then left it without quorum,
    and `fail_round` slashed only the honest validator. Now it reviews round 1 meanwhile: it
    attests it, and round 1 has its quorum whatever the accomplice does."""
    P = Procs(chain, tmp_path, collect_timeout=60.0, providers=3, validators=3, rounds=2, validator_fee=TOKEN)
    honest_slow, accomplice = chain.validators[2], chain.validators[1]
    P.first_round_at_quorum(without="v2")
    # the aggregator deletes a round-0 update blob after quorum and does not restore it
    agg = P.procs["aggregator"]
    agg._keep_available = lambda rounds: None
    doc = fetch_metrics(P.store, committed_rounds(P.dep, P.job)[0])
    (P.store.root / doc["updates"][0]["update_cid"]).unlink()
    P.procs["v2"].validator.data_grace = 0.0
    # everyone but the accomplice goes on; the aggregator commits round 1, v0 attests it
    others = [n for n in P.procs if n != "v1"]
    for _ in range(60):
        P.step(others)
        if len(committed_rounds(P.dep, P.job)) >= 2 and \
                P.dep.disputes.call("attestation_of", P.job, 1, chain.validators[0].address) != b"\x00" * 32:
            break
    for _ in range(10):
        P.step(others)  # more chances for the slow honest validator
    assert len(committed_rounds(P.dep, P.job)) == 2
    assert P.dep.disputes.call("attestation_of", P.job, 1, honest_slow.address) != b"\x00" * 32
    assert P.dep.disputes.call("has_quorum", P.job, 1) and P.dep.market.events("StakeSlashed", job_id=P.job) == []
    assert accomplice.address != honest_slow.address
