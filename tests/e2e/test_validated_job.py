"""A job with staked validators: every round recomputed, scored and attested to quorum before the next."""

from __future__ import annotations

import json

from fedmarket.chain.boa_backend import BoaChain
from fedmarket.market import Deployment
from fedmarket.runner import JobConfig, run_job
from fedmarket.storage import LocalBlobStore


def test_validators_attest_every_round_and_money_is_conserved(tmp_path):
    chain = BoaChain()
    report = run_job(chain, tmp_path, JobConfig(providers=4, rounds=2, validators=2, seed=5))
    assert report["conserved"] is True and report["state"] == "SETTLED"
    assert report["validators"] == 2 and report["attested_rounds"] == 2
    dep = Deployment.attach(chain, report["contracts"])
    job = report["job_id"]
    attested = dep.disputes.events("RoundAttested", job_id=job)
    assert len(attested) == 4  # 2 validators x 2 rounds
    store = LocalBlobStore(tmp_path / "blobs")
    # each validator committed a scores root; its scores document is in the store and scores every provider
    for ev in attested:
        assert ev["scores_root"] != b"\x00" * 32
    docs = [json.loads(store.get(cid)) for cid in _scores_cids(tmp_path)]
    assert len(docs) == 4 and all(len(d["scores"]) == 4 and d["method"] == "exact" for d in docs)
    # the reward root follows the validators' scores, and both validators revealed in consensus
    posted = dep.market.events("RewardRootPosted", job_id=job)[-1]
    rewards = json.loads(store.get(posted["rewards_cid"]))
    assert rewards["basis"] == 1  # the validators' scores, approved by two thirds of their stake
    providers = [l for l in rewards["leaves"] if l["role"] == 1]
    assert len(providers) == 4 and all(int(l["amount"]) > 0 for l in providers)
    assert sorted(int(l["amount"]) for l in providers) != [int(providers[0]["amount"])] * 4  # not an equal split
    validator_leaves = [l for l in rewards["leaves"] if l["role"] == 3]
    assert [l["reputation_delta"] for l in validator_leaves] == [2, 2]
    assert all(dep.market.call("reputation", l["account"]) == 2 for l in validator_leaves)


def _scores_cids(workdir):
    out = []
    for topic in (workdir / "mailbox").iterdir():
        if topic.name.endswith("-reveals"):
            for msg in topic.iterdir():
                if not msg.name.startswith("."):
                    out.append(json.loads(msg.read_bytes())["scores_cid"])
    return out
