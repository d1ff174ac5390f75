"""The market's round accumulator (an incremental Merkle tree of depth ROUNDS_DEPTH per job)
against `protocol.merkle.RoundAccumulator`: every committed round verifies with the Python proof
after every append, nothing else does, and the Python readers rebuild it from the events."""

from __future__ import annotations

from contract_kit import EMPTY_DATA, ZERO32, reverts
from eth_utils import keccak

from fedmarket.protocol import rules as R
from fedmarket.protocol.encoding import round_commitment
from fedmarket.protocol.merkle import RoundAccumulator
from fedmarket.roles.common import committed_rounds, round_accumulator


def verify(kit, job_id, r, data, proof) -> bool:
    return kit.m.call("verify_round", job_id, r, data, proof)


def test_every_round_verifies_after_every_append(kit):
    job = kit.job(rounds=17, round_duration=100)
    for r in range(17):
        job.commit(updates=job.updates() if r % 3 else [])
        for k in range(r + 1):
            assert verify(kit, job.id, k, job.rounds[k].data, job.acc.proof(k)), (r, k)
        assert not verify(kit, job.id, r + 1, job.rounds[r].data, job.acc.proof(r))  # not committed yet


def test_nothing_else_verifies(kit):
    job = kit.job(rounds=5)
    for _ in range(5):
        job.commit()
    data, proof = job.rounds[2].data, job.acc.proof(2)
    assert verify(kit, job.id, 2, data, proof)
    for field in range(7):  # every field of the round data is committed
        changed = list(data)
        changed[field] = changed[field] + 1 if isinstance(changed[field], int) else keccak(changed[field])
        assert not verify(kit, job.id, 2, tuple(changed), proof), field
    assert not verify(kit, job.id, 3, data, proof)  # the round number is committed
    assert not verify(kit, job.id, 2, data, proof[:-1])
    assert not verify(kit, job.id, 2, data, [ZERO32] * R.ROUNDS_DEPTH)
    assert not verify(kit, job.id, 5, EMPTY_DATA, job.acc.proof(4))  # an empty leaf past the last round
    assert not verify(kit, job.id + 1, 2, data, proof)  # the job id is committed
    assert not verify(kit, job.id, 2, data, job.acc.proof(1))


def test_a_proof_longer_than_the_accumulator_is_refused(kit):
    job = kit.job()
    job.commit()
    with reverts("reverted without a reason"):  # the ABI bounds the proof to ROUNDS_DEPTH siblings
        kit.m.call("verify_round", job.id, 0, job.rounds[0].data, job.acc.proof(0) + [ZERO32])


def test_jobs_have_accumulators_of_their_own(kit):
    a, b = kit.job(rounds=4), kit.job(rounds=4)
    for _ in range(2):  # interleaved: a commits one round for every two of b
        a.commit()
        b.commit()
        b.commit()
    for job in (a, b):
        for k, rd in enumerate(job.rounds):
            assert verify(kit, job.id, k, rd.data, job.acc.proof(k))
    assert not verify(kit, b.id, 0, a.rounds[0].data, a.acc.proof(0))


def test_the_python_readers_rebuild_the_accumulator_from_events(kit):
    job = kit.job(rounds=6)
    for _ in range(6):
        job.commit()
    rounds = committed_rounds(kit.dep, job.id)
    assert [c.data for c in rounds] == [rd.data for rd in job.rounds]
    acc = round_accumulator(kit.dep, job.id)
    assert acc.root == job.acc.root
    assert [c.commitment(job.id) for c in rounds] == [round_commitment(job.id, k, rd.data) for k, rd in
                                                      enumerate(job.rounds)]
    for k in range(6):
        assert acc.proof(k) == job.acc.proof(k)


def test_a_reverted_round_no_longer_verifies(kit):
    job = kit.job(rounds=4)
    for _ in range(4):
        job.commit()
    kit.m.transact("fail_proven", job.id, 2, kit.outsider.address, "round fault proven",
                   sender=kit.as_contract(kit.ra.address))
    kept = RoundAccumulator(job.acc.leaves[:2])  # the accumulator is back to two rounds
    assert verify(kit, job.id, 0, job.rounds[0].data, kept.proof(0))
    assert verify(kit, job.id, 1, job.rounds[1].data, kept.proof(1))
    assert not verify(kit, job.id, 1, job.rounds[1].data, job.acc.proof(1))
    assert not verify(kit, job.id, 2, job.rounds[2].data, job.acc.proof(2))
    assert not verify(kit, job.id, 3, job.rounds[3].data, job.acc.proof(3))
    assert [c.round for c in committed_rounds(kit.dep, job.id)] == [0, 1]


def test_round_proof_reads_the_accumulator(kit):
    from fedmarket.roles.common import round_proof

    job = kit.job()
    job.commit()
    assert round_proof(kit.dep, job.id, 0) == job.acc.proof(0)
