"""The model market on anvil with `fedmarket serve` as its own process: a softmax job settles,
its owner lists it, a caller prepays credits and queries the server over HTTP, a forged answer
signed with the server's key is slashed, SIGTERM settles the period's usage in one transaction,
`fedmarket model info` shows the record, the contributors claim, and balances conserve."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from fedmarket.chain.rpc_backend import RpcChain
from fedmarket.driver import Cast, JobDriver, fund
from fedmarket.fl.data import load_dataset, subset
from fedmarket.fl.partition import iid_partition
from fedmarket.keys import dev_account
from fedmarket.market import Deployment
from fedmarket.protocol.inference import fixed_input, input_hash, linear_answer
from fedmarket.protocol.receipts import Answer
from fedmarket.roles import Aggregator, Provider, Requester, Validator
from fedmarket.roles.caller import ModelCaller, dispute_answer
from fedmarket.roles.model_owner import Offer, claim_usage_revenue, list_model, model_record
from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, RewardSpec, TrainingSpec
from fedmarket.storage import LocalBlobStore, Mailbox

TOKEN = 10**18
PRICE = TOKEN // 100
STAKE = 5 * TOKEN
SERVER_DEV = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settled_softmax_job(chain, tmp_path, validator=None):
    """A digits softmax job of 3 providers run to settlement on `chain`; with `validator` (an
    account) the job has that one validator, holding the last 297 images, and the providers the rest."""
    deployer, treasury, requester, aggregator = (chain.new_account("serve-it", i) for i in range(4))
    providers = [chain.new_account("serve-it", 10 + i) for i in range(3)]
    staked = [requester, aggregator, *providers, *([validator] if validator else [])]
    dep = Deployment.deploy(chain, deployer, treasury.address)
    fund(dep, deployer, {a.address: 1_000 * TOKEN for a in staked})
    for a in staked:
        dep.token.transact("approve", dep.market.address, 2**256 - 1, sender=a)
    store, box = LocalBlobStore(tmp_path / "blobs"), Mailbox(tmp_path / "box")
    ds = load_dataset("digits")
    n_val = 1 if validator else 0
    spec = JobSpec(name="softmax to serve",
                   data=DataSchema(n_features=64, n_classes=10, feature_low=[0.0] * 64, feature_high=[16.0] * 64),
                   model={"kind": "softmax"}, training=TrainingSpec(rounds=2, local_epochs=1, batch_size=16, learning_rate=0.1),
                   reward=RewardSpec(escrow=100 * TOKEN, provider_stake=TOKEN, aggregator_stake=50 * TOKEN,
                                     validator_stake=n_val * TOKEN, licence_requester_bps=3_000),
                   participation=ParticipationSpec(min_providers=3, max_providers=3, min_validators=n_val or None,
                                                   max_validators=n_val))
    held = 1500 if validator else len(ds.y)  # the providers' images; a validator holds the rest
    parts = iid_partition(ds.y[:held], 3, 0)
    provs = [Provider(dep, a, store, box, subset(ds, p).X, subset(ds, p).y) for a, p in zip(providers, parts)]
    validators = [Validator(dep, validator, store, box, ds.X[held:], ds.y[held:])] if validator else []
    cast = Cast(Requester(dep, requester, store), Aggregator(dep, aggregator, store, box), provs, validators)
    job = JobDriver(dep, store, box, cast, spec).run()
    contracts = tmp_path / "contracts.json"
    dep.save(contracts, chain_id=chain.chain_id)
    return dep, store, ds, job, contracts, {"deployer": deployer, "treasury": treasury, "requester": requester,
                                            "aggregator": aggregator, "validator": validator, "providers": providers}


@pytest.fixture
def serve_process(node, tmp_path):
    """Starts `fedmarket serve` for a job; the process is terminated when the test ends."""
    procs = []

    def start(contracts, job: int, port: int):
        cmd = [sys.executable, "-m", "fedmarket", "serve", "--job", str(job), "--rpc", node.url, "--contracts", str(contracts),
               "--dev-account", str(SERVER_DEV), "--store", str(tmp_path / "blobs"), "--state-dir",
               str(tmp_path / f"serve-{len(procs)}"), "--port", str(port), "--period", "1"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def wait_up(proc, url: str) -> None:
    for _ in range(300):
        try:
            if httpx.get(url + "/info", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise AssertionError(f"fedmarket serve exited: {proc.communicate()[1][-800:]}") from None
            time.sleep(0.2)
    raise AssertionError("fedmarket serve did not come up")


def test_serve_on_anvil_from_credits_to_claims(node, tmp_path, serve_process):
    chain = RpcChain(node.url)
    dep, store, ds, job, contracts, who = settled_softmax_job(chain, tmp_path)
    server = dev_account(SERVER_DEV)
    buyer = chain.new_account("serve-it", 50)
    fund(dep, who["deployer"], {server.address: 10 * TOKEN, buyer.address: 10 * TOKEN})
    watched = [dep.model_market.address, who["requester"].address, server.address, buyer.address,
               who["treasury"].address, *(p.address for p in who["providers"])]
    start = {a: dep.balance(a) for a in watched}

    unlisted = serve_process(contracts, job, free_port())  # not listed yet: one line, non-zero exit
    assert unlisted.wait(timeout=120) != 0 and "not listed" in unlisted.communicate()[1]

    list_model(dep, store, who["requester"], job, Offer(query_price=PRICE, owner_bps=1_000, server_bps=2_000,
                                                        server_stake=STAKE))
    port = free_port()
    proc = serve_process(contracts, job, port)
    url = f"http://127.0.0.1:{port}"
    wait_up(proc, url)
    assert dep.model_market.call("serving", job, server.address)  # it staked the offer's stake itself
    caller = ModelCaller(dep, buyer, job, server.address)
    caller.buy(30)
    with httpx.Client(timeout=30) as client:
        for row in ds.X[:25]:
            count, sig = caller.next_receipt()
            r = client.post(url + "/query", json={"features": row.tolist(), "count": count, "signature": "0x" + sig.hex()})
            assert r.status_code == 200, r.text
            caller.check(r.json())
        replay = client.post(url + "/query", json={"features": ds.X[0].tolist(), "count": 25,
                                                   "signature": "0x" + sig.hex()})
        assert replay.status_code == 400

    for _ in range(120):  # the periods' settlements: the caller's 25 queries, in one or more transactions
        if model_record(dep, job)["queries_settled"] == 25:
            break
        time.sleep(0.5)
    assert model_record(dep, job)["queries_settled"] == 25
    assert dep.model_market.call("credit", job, buyer.address) == (5, 5 * PRICE)

    # a forged answer under the server's key (anvil's dev keys are public): proven wrong on chain
    from fedmarket.modelfile import trained_model

    trained = trained_model(dep, store, job)
    x = fixed_input(trained.job_model.features(ds.X[:1])[0])
    wrong = (linear_answer(trained.q, x, 64, 10) + 3) % 10
    sig = Answer(job, input_hash(x), wrong).sign(server.key, dep.chain_id, dep.model_market.address)
    r = dispute_answer(dep, buyer, store, job, server.address, {"input": x, "answer": wrong, "signature": "0x" + sig.hex()})
    assert r.event("AnswerSlashed")["amount"] == STAKE
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert sum(int(n) for n in re.findall(r"settled (\d+) queries of 1 callers", err)) == 25, err[-1500:]

    info = subprocess.run([sys.executable, "-m", "fedmarket", "model", "info", str(job), "--rpc", node.url,
                           "--contracts", str(contracts)], capture_output=True, text=True, timeout=120)
    assert info.returncode == 0, info.stderr
    record = json.loads(info.stdout)
    assert (record["queries_settled"], record["gross_revenue"], record["disputes_lost"]) == (25, 25 * PRICE, 1)

    # contributors claim by reward leaf; everyone else withdraws; the buyer takes its unused credits back
    paid = sum(claim_usage_revenue(dep, store, p, job).event("RevenueClaimed")["amount"] for p in who["providers"])
    gross = 25 * PRICE
    contributors = gross - gross // 100 - gross // 10 - gross // 5
    assert contributors - 3 <= paid <= contributors
    for acct in (buyer, who["treasury"], who["requester"], server):
        dep.model_market.transact("withdraw", sender=acct)
    dep.model_market.transact("request_refund", job, sender=buyer)
    chain.advance_time(86_400 + 1)
    dep.model_market.transact("refund", job, sender=buyer)
    delta = {a: dep.balance(a) - start[a] for a in watched}
    assert sum(delta.values()) == 0, "tokens appeared or vanished"
    assert delta[buyer.address] == -gross + STAKE // 2
    assert delta[server.address] == -STAKE + gross // 5
    assert delta[dep.model_market.address] == contributors - paid


def test_serve_on_anvil_settles_tabs_in_one_root_audited_by_command(node, tmp_path, serve_process):
    """Callers pay from tabs: `fedmarket serve` answers them over HTTP (one of them through
    `fedmarket model buy` and `fedmarket model query`) and posts one usage root for all it
    answered; `fedmarket model audit-usage` finds nothing wrong; once the challenge window
    passed (anvil's clock moved on) the server's next period makes the root final, and so on
    until every query is paid; the contributors claim their share; balances conserve."""
    chain = RpcChain(node.url)
    dep, store, ds, job, contracts, who = settled_softmax_job(chain, tmp_path)
    ru, server, cli_buyer = dep.usage_rollup, dev_account(SERVER_DEV), dev_account(7)
    buyers = [chain.new_account("serve-it", 60 + i) for i in range(3)]
    fund(dep, who["deployer"], {server.address: 10 * TOKEN, cli_buyer.address: TOKEN, **{b.address: TOKEN for b in buyers}})
    watched = [dep.model_market.address, ru.address, who["requester"].address, server.address, cli_buyer.address,
               who["treasury"].address, *(b.address for b in buyers), *(p.address for p in who["providers"])]
    start = {a: dep.balance(a) for a in watched}
    list_model(dep, store, who["requester"], job, Offer(query_price=PRICE, owner_bps=1_000, server_bps=2_000,
                                                        server_stake=STAKE))
    port = free_port()
    proc = serve_process(contracts, job, port)
    url = f"http://127.0.0.1:{port}"
    wait_up(proc, url)
    callers = [ModelCaller(dep, b, job, server.address) for b in buyers]
    with httpx.Client(timeout=30) as client:
        for i, c in enumerate(callers):
            c.fund(10 * PRICE)
            for row in ds.X[: 2 + i]:
                q, s, sig = c.next_tab()
                r = client.post(url + "/query", json={"features": row.tolist(), "count": q, "spent": s,
                                                      "signature": "0x" + sig.hex()})
                assert r.status_code == 200, r.text
                c.check(r.json())
    fm = [sys.executable, "-m", "fedmarket", "model"]
    chain_args = ["--rpc", node.url, "--contracts", str(contracts)]
    bought = subprocess.run([*fm, "buy", str(job), *chain_args, "--tab", "0.1", "--server", server.address,
                             "--dev-account", "7"], capture_output=True, text=True, timeout=120)
    assert bought.returncode == 0 and "bought a tab of 100000000000000000" in bought.stdout, bought.stderr
    expected = server_model_answers(dep, store, job, ds.X[:2])
    for i in range(2):
        asked = subprocess.run([*fm, "query", "--url", url, *chain_args, "--features", ",".join(map(str, ds.X[i])),
                                "--pay", "tab", "--dev-account", "7", "--state-dir", str(tmp_path / "caller")],
                               capture_output=True, text=True, timeout=120)
        assert asked.returncode == 0, asked.stderr
        assert json.loads(asked.stdout)["answer"] == expected[i]
    total = 2 + 3 + 4 + 2

    def pending() -> bool:
        return ru.call("pending_root", job, server.address) != b"\x00" * 32

    audited = False
    for _ in range(240):  # each period posts what is unposted; the window passes; the next one finalizes
        if model_record(dep, job)["tab_queries_settled"] == total:
            break
        if pending():
            if not audited:
                audit = subprocess.run([*fm, "audit-usage", str(job), "--server", server.address, *chain_args,
                                        "--store", str(tmp_path / "blobs")], capture_output=True, text=True, timeout=120)
                assert audit.returncode == 0, audit.stdout + audit.stderr
                assert json.loads(audit.stdout)["findings"] == []
                audited = True
            chain.advance_time(int(ru.call("CHALLENGE_WINDOW")))
        time.sleep(0.5)
    assert audited and model_record(dep, job)["tab_queries_settled"] == total
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "usage root posted" in err and "usage root final" in err, err

    paid = sum(claim_usage_revenue(dep, store, p, job).event("RevenueClaimed")["amount"] for p in who["providers"])
    gross = total * PRICE
    owed = dep.model_market.call("owed", server.address)
    assert gross // 5 - 4 <= owed <= gross // 5  # the server's share, rounded per period
    for acct in (who["treasury"], who["requester"], server):
        dep.model_market.transact("withdraw", sender=acct)
    # the command-line buyer takes back the 8 queries' worth it did not spend: asked, not due, taken
    refund = [*fm, "refund", str(job), "--server", server.address, *chain_args, "--store", str(tmp_path / "blobs"),
              "--dev-account", "7"]
    # and a caller whose server's leaves it cannot read asks by declaring what it spent (nothing here)
    declarer = dev_account(8)
    tabless = subprocess.run([*refund[:-1], "8"], capture_output=True, text=True, timeout=120)  # no tab yet
    assert tabless.returncode != 0 and "has no tab at server" in tabless.stderr and "Traceback" not in tabless.stderr
    fund(dep, who["deployer"], {declarer.address: TOKEN})
    held = dep.balance(declarer.address)
    ModelCaller(dep, declarer, job, server.address).fund(5 * PRICE)
    runs = []
    for i, advance in enumerate((0, 0, int(ru.call("REFUND_DELAY")) + 1)):
        if advance:
            chain.advance_time(advance)
        runs.append(subprocess.run(refund, capture_output=True, text=True, timeout=120))
        assert runs[-1].returncode == 0, runs[-1].stderr
        if i == 0:
            declared = subprocess.run([*refund[:-1], "8", "--declare", "0"], capture_output=True, text=True, timeout=120)
            assert declared.returncode == 0 and "requested" in declared.stdout, declared.stderr
    assert "requested" in runs[0].stdout and "due at" in runs[0].stdout
    assert "refund requested already; due in" in runs[1].stdout
    assert f"refunded {8 * PRICE} base units" in runs[2].stdout, runs[2].stdout
    took = subprocess.run([*refund[:-1], "8"], capture_output=True, text=True, timeout=120)
    assert took.returncode == 0 and f"refunded {5 * PRICE} base units" in took.stdout, took.stderr
    assert dep.balance(declarer.address) == held
    delta = {a: dep.balance(a) - start[a] for a in watched}
    assert sum(delta.values()) == 0, "tokens appeared or vanished"
    assert delta[server.address] == -2 * STAKE + owed  # its answer stake and its rollup bond are held
    assert delta[ru.address] == STAKE + 32 * PRICE - gross  # the bond and the other callers' unspent tabs
    assert delta[cli_buyer.address] == -2 * PRICE and paid > 0  # it paid for its two answers only


def server_model_answers(dep, store, job: int, X) -> list[int]:
    """The classes the job's listed linear model gives on chain (what the server must answer)."""
    from fedmarket.modelfile import trained_model

    trained = trained_model(dep, store, job)
    return [linear_answer(trained.q, fixed_input(trained.job_model.features(X[i:i + 1])[0]), 64, 10) for i in range(len(X))]
