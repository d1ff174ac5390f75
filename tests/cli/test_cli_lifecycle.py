"""A job's life from the command line, on a real anvil: `fund`, `status`, `requester cancel|withdraw`
and `stake show|release|unbond|withdraw`, each at the moment it applies, with the attacker's
questions asked: who else can call it, with what effect, and whether every token comes back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_utils import keccak

from fedmarket.chain.rpc_backend import RpcChain
from fedmarket.cli import main
from fedmarket.keys import dev_account
from fedmarket.market import Deployment
from fedmarket.protocol.proofs import reward_struct, reward_tree
from fedmarket.roles import Requester
from fedmarket.spec import JobSpec
from fedmarket.storage import LocalBlobStore

pytestmark = pytest.mark.anvil

TOKEN = 10**18
EXAMPLE_SPEC = Path(__file__).resolve().parents[2] / "examples" / "spec.json"
REQ, AGG, STRANGER, PROV = (dev_account(i) for i in (2, 3, 5, 11))


def cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    if rc not in (0, 3):
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return rc, out, err


@pytest.fixture(scope="module")
def market(anvil, tmp_path_factory):
    """A deployment (1-minute unbonding), and the requester, aggregator and a provider funded by `fedmarket fund`."""
    work = tmp_path_factory.mktemp("lifecycle")
    out = work / "addresses.json"
    assert main(["deploy", "--rpc", anvil.url, "--dev-account", "0", "--out", str(out), "--unbonding-delay", "60"]) == 0
    assert main(["fund", "dev:2", "dev:3", "dev:11", "--rpc", anvil.url, "--contracts", str(out), "--tokens", "1000",
                 "--ether", "5"]) == 0
    chain = RpcChain(anvil.url)
    dep = Deployment.attach(chain, json.loads(out.read_text()))
    return {"url": anvil.url, "contracts": str(out), "dep": dep, "work": work, "store": LocalBlobStore(work / "blobs")}


def common(m) -> list[str]:
    return ["--rpc", m["url"], "--contracts", m["contracts"]]


def small_spec(**deadlines) -> JobSpec:
    """The example spec for one provider and one round."""
    doc = json.loads(EXAMPLE_SPEC.read_text())
    doc["participation"] = {"min_providers": 1, "max_providers": 1}
    doc["training"]["rounds"] = 1
    doc["deadlines"].update(deadlines)
    return JobSpec.parse(json.dumps(doc).encode())


def post(m, spec: JobSpec) -> int:
    m["dep"].chain.reconnect()  # the CLI sent from these accounts too: re-read nonces from the node
    return Requester(m["dep"], REQ, m["store"]).post(spec, AGG.address)


def accept_and_join(m, job: int, provider=PROV) -> None:
    dep = m["dep"]
    dep.chain.reconnect()
    dep.token.transact("approve", dep.market.address, 2**256 - 1, sender=AGG)
    dep.market.transact("accept", job, sender=AGG)
    if provider is not None:
        dep.token.transact("approve", dep.market.address, 2**256 - 1, sender=provider)
        dep.market.transact("join", job, sender=provider)


def test_fund_gives_tokens_and_ether_to_any_address(market, capsys):
    dep = market["dep"]
    assert dep.balance(REQ.address) == 1000 * TOKEN and dep.chain.native_balance(PROV.address) >= 5 * 10**18
    target = "0x000000000000000000000000000000000000bEEF"
    rc, out, _ = cli(capsys, "fund", target, *common(market), "--tokens", "2.5", "--ether", "1")
    assert rc == 0 and out.strip() == f"{target}  +1 ETH  +2.5 FED"
    assert dep.balance(target) == 25 * TOKEN // 10 and dep.chain.native_balance(target) == 10**18
    rc, _, err = cli(capsys, "fund", "0x1234", "--rpc", market["url"])
    assert rc == 2 and "not an address (nor dev:N): '0x1234'" in err
    rc, _, err = cli(capsys, "fund", target, "--rpc", market["url"], "--tokens", "1")
    assert rc == 2 and "--tokens needs --contracts" in err
    rc, _, err = cli(capsys, "fund", target, *common(market), "--tokens", "-3")
    assert rc == 2 and "non-negative" in err


def test_cancel_an_unjoined_job_only_its_requester_can_at_once(market, capsys):
    dep, work = market["dep"], market["work"]
    before = dep.balance(REQ.address)
    rc, out, _ = cli(capsys, "requester", "post", *common(market), "--dev-account", "2", "--spec", str(EXAMPLE_SPEC),
                     "--aggregator", AGG.address, "--store", str(work / "blobs"), "--state-dir", str(work / "req-1"),
                     "--no-follow")
    assert rc == 0
    job = int(out.split()[0])
    assert dep.balance(REQ.address) == before - 100 * TOKEN
    rc, out, _ = cli(capsys, "status", str(job), *common(market))
    assert rc == 0 and f"job {job}: Open, round 0 of 3" in out and "escrow 100 FED" in out
    assert "may cancel now (nobody joined yet)" in out and "stuck       no" in out
    assert "join      20" in out  # the join deadline as a local ISO date
    # a stranger cannot cancel someone else's open job before its deadline; nothing is mined
    block = dep.chain.block_number()
    rc, _, err = cli(capsys, "requester", "cancel", "--job", str(job), *common(market), "--dev-account", "5")
    assert rc == 1 and "cannot be cancelled before its join deadline" in err and "is not its requester" in err
    assert dep.chain.block_number() == block
    rc, out, _ = cli(capsys, "requester", "cancel", "--job", str(job), *common(market), "--dev-account", "2")
    assert rc == 0 and f"job {job} cancelled: 100 FED refunded to {REQ.address}" in out
    assert dep.balance(REQ.address) == before
    rc, out, _ = cli(capsys, "status", str(job), *common(market), "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["state"] == "CANCELLED" and doc["escrow"] == 100 * TOKEN and doc["stuck"] is False
    rc, _, err = cli(capsys, "requester", "withdraw", "--job", str(job), *common(market), "--dev-account", "2")
    assert rc == 1 and "was refunded" in err
    rc, _, err = cli(capsys, "requester", "cancel", "--job", str(job), *common(market), "--dev-account", "2")
    assert rc == 1 and "not open" in err
    rc, _, err = cli(capsys, "status", "999", *common(market))
    assert rc == 1 and "job 999 does not exist" in err
    # the same state directory against another deployment: its job id would name nothing there
    other = work / "addresses-2.json"
    assert main(["deploy", "--rpc", market["url"], "--dev-account", "1", "--out", str(other)]) == 0
    capsys.readouterr()
    block = dep.chain.block_number()
    rc, _, err = cli(capsys, "requester", "post", "--rpc", market["url"], "--contracts", str(other), "--dev-account", "2",
                     "--spec", str(EXAMPLE_SPEC), "--aggregator", AGG.address, "--store", str(work / "blobs"),
                     "--state-dir", str(work / "req-1"), "--no-follow")
    assert rc == 2 and f"holds job {job} of another deployment or chain" in err and "use another --state-dir" in err
    assert dep.chain.block_number() == block  # nothing was sent


def test_stuck_open_job_is_cancelled_by_anyone_and_stake_goes_back_to_the_wallet(market, capsys, advance):
    dep = market["dep"]
    req0, agg0 = dep.balance(REQ.address), dep.balance(AGG.address)
    job = post(market, small_spec(join_window=60))
    accept_and_join(market, job, provider=None)
    assert dep.balance(AGG.address) == agg0 - 20 * TOKEN
    advance(61)
    rc, out, _ = cli(capsys, "status", str(job), *common(market))
    assert rc == 0 and "stuck       no" in out  # just past the deadline: someone may act in the next block
    advance(30)
    rc, out, _ = cli(capsys, "status", str(job), *common(market))
    assert rc == 3 and "stuck       YES: the join window closed without what the job needs (0/1 providers" in out
    assert "cancel the job for a full refund" in out
    rc, out, _ = cli(capsys, "requester", "cancel", "--job", str(job), *common(market), "--dev-account", "5")
    assert rc == 0 and f"100 FED refunded to {REQ.address}" in out  # anyone may; the refund goes to the requester
    assert dep.balance(REQ.address) == req0 and dep.balance(STRANGER.address) == 0
    a = ["--dev-account", "3"]
    rc, out, _ = cli(capsys, "stake", "show", *common(market), *a)
    assert f"job {job:<6} aggregator: 20 FED locked (Cancelled)" in out
    rc, _, err = cli(capsys, "stake", "unbond", *common(market), *a)
    assert rc == 1 and "no free stake to unbond" in err
    rc, out, _ = cli(capsys, "stake", "release", "--job", str(job), *common(market), *a)
    assert rc == 0 and f"job {job}: 20 FED of {AGG.address}'s stake released" in out
    rc, _, err = cli(capsys, "stake", "release", "--job", str(job), *common(market), *a)
    assert rc == 1 and "no stake locked" in err  # released once only
    rc, out, _ = cli(capsys, "stake", "unbond", *common(market), *a, "--role", "aggregator", "--amount", "30")
    assert rc == 1
    rc, out, _ = cli(capsys, "stake", "unbond", *common(market), *a)
    assert rc == 0 and "aggregator: 20 FED unbonding, withdrawable from 20" in out
    rc, _, err = cli(capsys, "stake", "withdraw", *common(market), *a)
    assert rc == 1 and "still unbonding (aggregator 20 FED from 20" in err
    advance(61)
    rc, out, _ = cli(capsys, "stake", "withdraw", *common(market), *a)
    assert rc == 0 and f"aggregator: 20 FED withdrawn to {AGG.address}" in out
    assert dep.balance(AGG.address) == agg0 and dep.staked(AGG.address) == 0


def test_a_job_its_aggregator_never_starts_is_started_by_anyone_after_the_join_window(market, capsys, advance):
    """ATTACK (an aggregator that accepts and then sits on the job): the stakes and the escrow stay
    locked while it is open. `fedmarket start` lets anyone start it once the join window is over;
    the aggregator then misses round 0 and the job fails with a full refund."""
    dep = market["dep"]
    prov0 = dep.balance(PROV.address)
    job = post(market, small_spec(join_window=60, round_duration=120))
    accept_and_join(market, job)
    block = dep.chain.block_number()
    rc, _, err = cli(capsys, "start", "--job", str(job), *common(market), "--dev-account", "5")
    assert rc == 1 and "join window is open until" in err and dep.chain.block_number() == block  # nothing sent
    advance(91)
    rc, out, _ = cli(capsys, "status", str(job), *common(market))
    assert rc == 3 and "nobody started the job" in out and "`fedmarket start`" in out
    rc, out, _ = cli(capsys, "start", "--job", str(job), *common(market), "--dev-account", "5")
    assert rc == 0 and f"job {job} started with 1 providers and 0 validators" in out
    rc, _, err = cli(capsys, "start", "--job", str(job), *common(market), "--dev-account", "5")
    assert rc == 1 and "is training, not open" in err
    advance(121)
    rc, out, _ = cli(capsys, "requester", "withdraw", "--job", str(job), *common(market), "--dev-account", "2")
    assert rc == 0 and "failed (deadline missed): 100 FED refunded" in out
    rc, out, _ = cli(capsys, "stake", "release", "--job", str(job), "--of", PROV.address, *common(market), "--dev-account", "5")
    assert rc == 0 and dep.balance(PROV.address) == prov0
    # a job that cannot start is refused, with what it lacks and what to do instead
    other = post(market, small_spec(join_window=60))
    accept_and_join(market, other, provider=None)
    advance(61)
    rc, _, err = cli(capsys, "start", "--job", str(other), *common(market), "--dev-account", "5")
    assert rc == 1 and "cannot start (0/1 providers" in err and "requester cancel" in err
    rc, _, _ = cli(capsys, "requester", "cancel", "--job", str(other), *common(market), "--dev-account", "5")
    assert rc == 0
    for j in (job, other):  # the aggregator's stake back to its free stake
        cli(capsys, "stake", "release", "--job", str(j), *common(market), "--dev-account", "3")


def test_training_job_past_its_deadline_is_failed_by_withdraw(market, capsys, advance):
    dep = market["dep"]
    req0, prov0 = dep.balance(REQ.address), dep.balance(PROV.address)
    job = post(market, small_spec(round_duration=120))
    accept_and_join(market, job)
    dep.market.transact("start", job, sender=AGG)
    rc, out, _ = cli(capsys, "status", str(job), *common(market))
    assert rc == 0 and "Training, round 0 of 1" in out and "commit round 0 by the round deadline" in out
    assert "aggregator 20 FED, providers 10 FED, validators 0 FED locked" in out
    rc, _, err = cli(capsys, "requester", "withdraw", "--job", str(job), *common(market), "--dev-account", "2")
    assert rc == 1 and "training on time" in err
    advance(121)
    rc, out, _ = cli(capsys, "status", str(job), "--json", "--grace", "0", *common(market))
    doc = json.loads(out)
    assert rc == 3 and doc["late"] == [{"who": AGG.address, "what": "did not commit round 0 by its deadline"}]
    rc, out, _ = cli(capsys, "requester", "withdraw", "--job", str(job), *common(market), "--dev-account", "2")
    assert rc == 0 and "failed (deadline missed): 100 FED refunded" in out
    assert dep.balance(REQ.address) == req0 + 10 * TOKEN  # the escrow back, and half the aggregator's stake as the caller
    # anyone releases the provider's stake, which goes to the provider only
    rc, out, _ = cli(capsys, "stake", "release", "--job", str(job), "--of", PROV.address, *common(market), "--dev-account", "5")
    assert rc == 0 and "10 FED" in out and dep.balance(PROV.address) == prov0


def test_settle_then_sweep_what_nobody_claimed(market, capsys, advance):
    dep = market["dep"]
    req0 = dep.balance(REQ.address)
    job = post(market, small_spec(challenge_period=30, claim_period=86_400))
    accept_and_join(market, job)
    m = dep.market
    m.transact("start", job, sender=AGG)
    m.transact("submit_round", job, 0, keccak(b"model"), keccak(b"updates"), 1, keccak(b"metrics"), 0, b"\0" * 32, sender=AGG)
    pool = 100 * TOKEN - TOKEN  # 1% fee
    members = sorted([PROV.address, AGG.address], key=lambda a: int(a, 16))
    leaves = [{"index": i, "account": a, "role": 1 if a == PROV.address else 2, "amount": pool if a == PROV.address else 0,
               "reputation_delta": 1, "value": 1 if a == PROV.address else 0, "activity": 1} for i, a in enumerate(members)]
    tree = reward_tree(leaves)
    m.transact("post_rewards", job, tree.root, pool, 1, 0, True, "bafkrei-none", 0, sender=AGG)
    rc, _, err = cli(capsys, "requester", "withdraw", "--job", str(job), *common(market), "--dev-account", "2")
    assert rc == 1 and "can be settled after 20" in err
    advance(62)
    rc, out, _ = cli(capsys, "status", str(job), *common(market))
    assert rc == 3 and "nobody settled the job" in out and "rewards     99 FED posted, 0 FED claimed" in out
    rc, out, _ = cli(capsys, "requester", "withdraw", "--job", str(job), *common(market), "--dev-account", "2")
    assert rc == 0 and "settled: 0 FED refunded to the requester, fee 1 FED" in out
    rc, out, _ = cli(capsys, "status", str(job), *common(market))
    assert rc == 0 and "claim reward and stake (1 not claimed yet)" in out and "mint the model token" in out
    agg_leaf = next(leaf for leaf in leaves if leaf["account"] == AGG.address)
    dep.chain.reconnect()
    m.transact("claim", job, agg_leaf["index"], reward_struct(agg_leaf), tree.proof(agg_leaf["index"]), sender=AGG)
    rc, _, err = cli(capsys, "requester", "withdraw", "--job", str(job), *common(market), "--dev-account", "2")
    assert rc == 1 and "99 FED not claimed yet; unclaimed rewards return after 20" in err
    advance(86_401)
    rc, out, _ = cli(capsys, "requester", "withdraw", "--job", str(job), *common(market), "--dev-account", "5")
    assert rc == 0 and "99 FED of unclaimed rewards swept back" in out
    assert dep.balance(REQ.address) == req0 - TOKEN  # everything but the fee came back
    rc, _, err = cli(capsys, "requester", "withdraw", "--job", str(job), *common(market), "--dev-account", "2")
    assert rc == 1 and "nothing to withdraw" in err


def test_version(capsys):
    from fedmarket import __version__

    rc, out, _ = cli(capsys, "--version")
    assert rc == 0 and out.strip() == f"fedmarket {__version__}"
