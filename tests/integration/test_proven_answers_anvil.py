"""Verifiable inference on anvil, as separate processes: a softmax job with a validator settles;
the owner lists the model; a buyer prepays credits; `fedmarket serve --prove` builds its circuit,
offers the verifier, `fedmarket validator attest-verifier` re-derives it from the model root and
attests, and the server registers it; the server answers queries, one of them with a proof that
verifies on chain (`prove_answer`); a forged answer, and a proof from another model, each signed
by a staked server, are rejected by the chain and cost their servers the stake; the contributors
claim their share of the usage revenue, and the balances conserve.

Real EZKL (Halo2 proofs, a locally generated SRS: for testing only), real solc (npm's solcjs),
real anvil."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from test_model_serve_anvil import free_port, settled_softmax_job

from fedmarket.chain.rpc_backend import RpcChain
from fedmarket.driver import fund
from fedmarket.errors import ContractRevert, FedMarketError
from fedmarket.keys import dev_account
from fedmarket.modelfile import TrainedModel, trained_model
from fedmarket.protocol.inference import fixed_input, input_hash, linear_answer
from fedmarket.protocol.receipts import Answer
from fedmarket.roles.caller import ModelCaller, dispute_answer
from fedmarket.roles.model_owner import Offer, claim_usage_revenue, list_model, model_record
from fedmarket.roles.proofs import check_proven, dispute_proof, publish_verifier, record_proven, sign_proven
from fedmarket.storage import Mailbox

pytest.importorskip("ezkl")
zkml = pytest.importorskip("fedmarket.zkml")
if zkml.find_solcjs() is None:
    pytest.skip("no solcjs: run `npm install` (package.json pins solc)", allow_module_level=True)

pytestmark = pytest.mark.slow

TOKEN = 10**18
PRICE = TOKEN // 100
STAKE = 5 * TOKEN
SERVER_DEV, VALIDATOR_DEV = 5, 6


def fedmarket(*args: str, node, contracts, tmp_path, dev: int, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fedmarket", *args, "--rpc", node.url, "--contracts", str(contracts),
           "--dev-account", str(dev), "--store", str(tmp_path / "blobs"), "--poll", "0.5"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def wait_for(what, check, proc, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the process exited while waiting for {what}: {proc.communicate()[1][-1500:]}")
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {seconds} s")


def test_proven_answers_from_credits_to_claims(node, tmp_path):
    chain = RpcChain(node.url)
    dep, store, ds, job, contracts, who = settled_softmax_job(chain, tmp_path, validator=dev_account(VALIDATOR_DEV))
    mm = dep.model_market
    server, buyer, forger, other = dev_account(SERVER_DEV), *(chain.new_account("proven-it", 50 + i) for i in range(3))
    fund(dep, who["deployer"], {a.address: 10 * TOKEN for a in (server, buyer, forger, other)})
    list_model(dep, store, who["requester"], job, Offer(query_price=PRICE, owner_bps=1_000, server_bps=2_000,
                                                        server_stake=STAKE))
    watched = [mm.address, who["requester"].address, server.address, buyer.address, forger.address, other.address,
               who["treasury"].address, who["aggregator"].address, who["validator"].address,
               *(p.address for p in who["providers"])]
    start = {a: dep.balance(a) for a in watched}

    # a rival offers a verifier of the job's very model, but on a reference string of its own
    # (whose secret it knows, so it could prove any answer): a validator holding the trusted SRS refuses it
    trained = trained_model(dep, store, job)
    rival_kit = zkml.build_kit(trained, tmp_path / "rival-kit")
    rival_offer = publish_verifier(dep, other, store, Mailbox(tmp_path / "box"), job, rival_kit)

    # the server builds its circuit and offers the verifier; the validator re-derives and attests
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = fedmarket("serve", "--job", str(job), "--port", str(port), "--period", "1", "--prove", "--mailbox",
                     str(tmp_path / "box"), "--state-dir", str(tmp_path / "serve"), node=node, contracts=contracts,
                     tmp_path=tmp_path, dev=SERVER_DEV)
    try:
        wait_for("the server", lambda: _up(url), proc, 120)
        trusted = tmp_path / "serve" / "zk" / "kzg.srs"  # stands in for a ceremony's SRS that both hold
        attest = fedmarket("validator", "attest-verifier", "--job", str(job), "--mailbox", str(tmp_path / "box"),
                           "--wait", "300", "--srs", str(trusted), "--state-dir", str(tmp_path / "validator"),
                           node=node, contracts=contracts, tmp_path=tmp_path, dev=VALIDATOR_DEV)
        out, err = attest.communicate(timeout=600)
        assert attest.returncode == 0 and "attested verifier" in out, err[-1500:]
        assert f"refused verifier {rival_offer['verifier']}: the verifier at" in err, err[-1500:]
        assert "is not the circuit of job" in err
        wait_for("the verifier's registration", lambda: mm.call("verifier", job) != "0x" + "0" * 40, proc, 120)
        info = httpx.get(url + "/info").json()
        assert info["proofs"] and info["verifier"] == mm.call("verifier", job)

        # a buyer prepays credits and queries; one answer carries a proof that the chain accepts
        caller = ModelCaller(dep, buyer, job, server.address)
        caller.buy(10)
        with httpx.Client(timeout=300) as client:
            for i, row in enumerate(ds.X[1500:1508]):
                count, sig = caller.next_receipt()
                r = client.post(url + "/query", json={"features": row.tolist(), "count": count,
                                                      "signature": "0x" + sig.hex(), "prove": i == 0})
                assert r.status_code == 200, r.text
                reply = r.json()
                assert caller.check(reply) == linear_answer(trained.q, reply["input"], 64, 10)
                if i == 0:
                    proven = reply
            # a proof asked for without credit left is refused before the prover runs
            count, sig = ModelCaller(dep, other, job, server.address).next_receipt()
            r = client.post(url + "/query", json={"features": ds.X[0].tolist(), "count": count,
                                                  "signature": "0x" + sig.hex(), "prove": True})
            assert r.status_code == 402, r.text
        check_proven(dep, job, server.address, proven, 10, info["input_scale"])
        ev = record_proven(dep, buyer, job, zkml.Proof.from_doc(proven["proof"])).event("AnswerProven")
        assert ev is not None and model_record(dep, job)["answers_proven"] == 1
        tampered = {**proven, "answer": (proven["answer"] + 1) % 10}
        with pytest.raises(FedMarketError, match="class"):
            check_proven(dep, job, server.address, tampered, 10, info["input_scale"])
        with pytest.raises(FedMarketError, match="accepts this proof"):  # an honest proof cannot be disputed
            dispute_proof(dep, buyer, job, server.address, proven)

        # a staked server forges an answer: re-executed on chain, slashed
        for cheat in (forger, other):
            dep.token.transact("approve", mm.address, STAKE, sender=cheat)
            mm.transact("stake_server", job, STAKE, sender=cheat)
        x = fixed_input(trained.job_model.features(ds.X[1600:1601])[0])
        wrong = (linear_answer(trained.q, x, 64, 10) + 3) % 10
        sig = Answer(job, input_hash(x), wrong).sign(forger.key, dep.chain_id, mm.address)
        forged = {"input": x, "answer": wrong, "signature": "0x" + sig.hex()}
        r = dispute_answer(dep, buyer, store, job, forger.address, forged)
        assert r.event("AnswerSlashed")["amount"] == STAKE

        # another staked server proves its answers with another model's circuit: the registered
        # verifier rejects the proof, and the server's signature of it costs its stake
        elsewhere = TrainedModel(trained.spec, trained.q + np.random.default_rng(1).integers(-40_000, 40_000, trained.q.size),
                                 job, trained.round, b"\x00" * 32)
        other_kit = zkml.build_kit(elsewhere, tmp_path / "other-kit", settings=tmp_path / "serve" / "zk" / "settings.json",
                                   srs=trusted)
        assert other_kit.codehash != bytes(mm.call("verifier_codehash", job))
        p = zkml.prove(other_kit, np.asarray(x) / 2**20, 10)
        foreign = {"input": x, "answer": p.answer, "proof": p.doc(), "proven_signature": "0x" + sign_proven(dep, other, job, p).hex()}
        with pytest.raises(ContractRevert, match="proof rejected"):
            record_proven(dep, buyer, job, p)
        with pytest.raises(FedMarketError, match="rejects the proof"):
            check_proven(dep, job, other.address, foreign, 10, info["input_scale"])
        r = dispute_proof(dep, buyer, job, other.address, foreign)
        assert r.event("AnswerSlashed")["amount"] == STAKE
        assert model_record(dep, job)["disputes_lost"] == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-1500:]
    # the 8 queries settle over one or more periods (the proof makes the first query slow)
    settled = [int(n) for n in re.findall(r"settled (\d+) queries of 1 callers", err)]
    assert sum(settled) == 8, err[-1500:]

    # the contributors claim their share of the usage revenue; everyone withdraws; balances conserve
    record = model_record(dep, job)
    assert (record["queries_settled"], record["gross_revenue"]) == (8, 8 * PRICE)
    paid = sum(claim_usage_revenue(dep, store, a, job).event("RevenueClaimed")["amount"] for a in who["providers"])
    for unpaid in (who["aggregator"], who["validator"]):  # this job's terms pay them no fees: a zero leaf
        with pytest.raises(ContractRevert, match="nothing to claim"):
            claim_usage_revenue(dep, store, unpaid, job)
    assert paid > 0
    for acct in (buyer, who["treasury"], who["requester"], server):
        if mm.call("owed", acct.address):
            mm.transact("withdraw", sender=acct)
    mm.transact("request_refund", job, sender=buyer)
    chain.advance_time(86_400 + 1)
    mm.transact("refund", job, sender=buyer)
    delta = {a: dep.balance(a) - start[a] for a in watched}
    assert sum(delta.values()) == 0, "tokens appeared or vanished"
    assert delta[forger.address] == delta[other.address] == -STAKE
    assert delta[buyer.address] == -8 * PRICE + STAKE  # two challenger shares of half a stake
    assert delta[mm.address] == STAKE + int(mm.call("revenue", job)) - paid  # the server's stake, unclaimed dust


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/info", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
