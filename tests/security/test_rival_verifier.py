"""A rival's verifier, registered first, and an honest proving server (found by an attacker's review).

The first verifier a majority of the job's validators attests is the job's for good, and a server
that signed a proof the registered verifier rejects loses its stake (`ModelMarket.dispute_proof`).
A rival built a circuit of the job's very model on the trusted SRS with settings of its own (a finer
input scale); the validators re-derived and attested it honestly and it was registered. An honest
server's `--prove` then signed sound proofs of right answers from its own circuit, which the rival's
verifier rejected: one paid query (0.01 tokens) took its whole stake (5 tokens, half to the
caller). A server now proves only for the registered verifier's code, and checks the verifier
accepts a proof before it signs it; otherwise it refuses the proof, and the query costs nothing."""

from __future__ import annotations

import json
import shutil

import pytest
from sec_support import digits

from fedmarket.modelfile import trained_model
from fedmarket.protocol.inference import linear_answer
from fedmarket.roles.caller import ModelCaller
from fedmarket.roles.model_owner import Offer, list_model
from fedmarket.roles.proofs import attest_verifier, check_proven, publish_verifier, register_verifier
from fedmarket.roles.server import ModelServer, QueryRefused

zkml = pytest.importorskip("fedmarket.zkml")
pytest.importorskip("ezkl")
if zkml.find_solcjs() is None:
    pytest.skip("no solcjs", allow_module_level=True)

pytestmark = pytest.mark.slow

TOKEN = 10**18
PRICE = TOKEN // 100
STAKE = 5 * TOKEN


def test_an_honest_server_signs_no_proof_a_rivals_registered_verifier_rejects(make, tmp_path):
    """The rival's verifier is registered first. The honest server refuses every proof (before the
    prover runs, and the caller's credit stays unspent) and still answers without one; the rival's
    own server, whose circuit is the registered one, proves, and its proof checks on chain."""
    from fedmarket.processes.serve import prepare_proofs

    sim = make(validators=3, licence_requester_bps=3_000)
    sim.driver.run()
    dep, store, box, job = sim.dep, sim.store, sim.box, sim.job
    mm = dep.model_market
    list_model(dep, store, sim.c.requester, job, Offer(query_price=PRICE, owner_bps=0, server_bps=2_000,
                                                       server_stake=STAKE))
    trained = trained_model(dep, store, job)
    honest = ModelServer(dep, sim.c.stranger, store, job)
    prepare_proofs(honest, tmp_path / "honest-zk", store, box, 0.1, say=lambda m: None)
    ceremony = tmp_path / "ceremony.srs"  # stands in for the trusted SRS everyone holds
    shutil.copyfile(tmp_path / "honest-zk" / "kzg.srs", ceremony)
    settings = json.loads((tmp_path / "honest-zk" / "settings.json").read_text())
    settings["run_args"]["input_scale"] += 1  # still answers every calibration row as the model does
    (tmp_path / "rival-settings.json").write_text(json.dumps(settings))
    rival = sim.c.watcher
    rival_kit = zkml.build_kit(trained, tmp_path / "rival-zk", settings=tmp_path / "rival-settings.json", srs=ceremony)
    rival_offer = publish_verifier(dep, rival, store, box, job, rival_kit)
    for v in sim.c.validators[:2]:  # honest validators attest what they re-derive
        attest_verifier(dep, v, store, box, job, rival_offer, workdir=tmp_path, srs=ceremony)
    register_verifier(dep, rival, box, job, rival_offer["verifier"])
    assert mm.call("verifier", job) == rival_offer["verifier"] and honest.kit.codehash != rival_kit.codehash

    honest.ensure_staked()
    attacker = sim.c.providers[0]
    caller = ModelCaller(dep, attacker, job, honest.address)
    caller.buy(1)
    _, _, test = digits()
    row = [float(v) for v in test.X[0]]
    count, sig = caller.next_receipt()
    with pytest.raises(QueryRefused, match="another circuit than this server's"):
        honest.answer(row, count, sig, prove=True)
    reply = honest.answer(row, count, sig).doc()  # the same paid query, answered without a proof
    assert reply["answer"] == linear_answer(trained.q, reply["input"], *honest.shape) and "proof" not in reply
    assert int(mm.call("stake", job, honest.address)) == STAKE

    own = ModelServer(dep, rival, store, job)  # the registered circuit's server proves, and its proof checks
    own.kit = rival_kit
    own.ensure_staked()
    caller = ModelCaller(dep, attacker, job, own.address)
    caller.buy(1)
    proven = own.answer(row, *caller.next_receipt(), prove=True).doc()
    check_proven(dep, job, own.address, proven, 10, settings["run_args"]["input_scale"])
