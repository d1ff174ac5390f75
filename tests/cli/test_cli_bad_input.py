"""Bad input on the command line: one line on stderr naming the problem, a non-zero exit, and
nothing lost: no stake, allowance or deployment left behind by a command that was refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedmarket import keys
from fedmarket.chain.rpc_backend import RpcChain
from fedmarket.cli import main
from fedmarket.keys import Keystore, dev_account
from fedmarket.market import Deployment
from fedmarket.roles import Requester
from fedmarket.spec import JobSpec
from fedmarket.storage import LocalBlobStore

EXAMPLE_SPEC = Path(__file__).resolve().parents[2] / "examples" / "spec.json"
NO_NODE = "http://127.0.0.1:1"
REQ, AGG, PROV, POOR, DEPLOYER = (dev_account(i) for i in (2, 3, 11, 7, 9))


def refused(capsys, *args, words: str) -> str:
    """Run the CLI, expect a non-zero exit and one line on stderr containing `words`."""
    rc = main([str(a) for a in args])
    _, err = capsys.readouterr()
    assert rc not in (0, None), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert words in err, err
    return err


def small_spec() -> JobSpec:
    doc = json.loads(EXAMPLE_SPEC.read_text())
    doc["participation"] = {"min_providers": 1, "max_providers": 1}
    doc["training"]["rounds"] = 1
    return JobSpec.parse(json.dumps(doc).encode())


# ---- no node needed ---------------------------------------------------------------------------


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "t.csv"
    rng = np.random.default_rng(0)
    path.write_text("a,b,label\n" + "".join(f"{x:.3f},{y:.3f},{i % 2}\n" for i, (x, y) in enumerate(rng.random((20, 2)))))
    return path


ROLE = ["--rpc", NO_NODE, "--contracts", "none.json", "--dev-account", "1"]


@pytest.mark.parametrize("argv", [
    ["aggregator", "run", "--job", "0"], ["requester", "run", "--job", "-1"], ["challenger", "run", "--job", "0"],
    ["provider", "run", "--data", "x.csv", "--job", "0"], ["validator", "run", "--data", "x.csv", "--job", "-1"],
])
def test_job_ids_below_one_are_refused_by_role_commands(capsys, argv):
    refused(capsys, *argv, *ROLE, words="'--job'")


@pytest.mark.parametrize("argv", [["stake", "release"], ["requester", "cancel"], ["requester", "withdraw"], ["start"]])
def test_job_ids_below_one_are_refused_by_one_shot_commands(capsys, argv):
    refused(capsys, *argv, "--job", "-1", *ROLE, words="'--job'")


def test_state_dir_that_is_a_file(tmp_path, capsys, table):
    (tmp_path / "afile").write_bytes(b"")
    refused(capsys, "provider", "run", "--data", table, "--job", "1", *ROLE, "--state-dir", tmp_path / "afile",
            words="is not a directory")


def test_tx_journal_in_a_file_is_a_storage_error(tmp_path):
    from fedmarket.errors import StorageError
    from fedmarket.processes.base import TxJournal

    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(StorageError, match="afile"):
        TxJournal(tmp_path / "afile" / "journal")


def test_mailbox_on_a_file_is_a_storage_error(tmp_path):
    from fedmarket.errors import StorageError
    from fedmarket.storage import Mailbox

    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(StorageError, match="not a directory"):
        Mailbox(tmp_path / "afile")


def test_binary_keystore_file(tmp_path, capsys, monkeypatch, table):
    monkeypatch.setattr(keys, "SCRYPT_N", 2**10)
    ks = tmp_path / "ks"
    good = Keystore(ks).new("good", "pw")
    (ks / "bin.json").write_bytes(bytes(range(256)) * 4)
    assert main(["account", "list", "--keystore", str(ks)]) == 0
    out, _ = capsys.readouterr()
    assert good in out and "bin" in out and "CORRUPT" in out
    monkeypatch.setenv(keys.ENV_PASSWORD, "pw")
    refused(capsys, "provider", "run", "--data", table, "--job", "1", "--rpc", NO_NODE, "--contracts", "none.json",
            "--account", "bin", "--keystore", ks, words="bin.json is corrupt")


@pytest.mark.parametrize("args, words", [
    (["--aggregator-fee", "nan"], "--aggregator-fee must be a finite"),
    (["--aggregator-fee", "inf"], "--aggregator-fee must be a finite"),
    (["--validators", "1", "--validator-fee", "nan"], "--validator-fee must be a finite"),
    (["--validators", "1", "--validator-fee", "-inf"], "--validator-fee must be a finite"),
])
def test_spec_init_non_finite_fees(tmp_path, capsys, table, args, words):
    refused(capsys, "spec", "init", "--data", table, "--label", "label", "--out", tmp_path / "s.json", *args, words=words)
    assert not (tmp_path / "s.json").exists()


def test_spec_init_out_in_a_missing_directory_and_overwrite(tmp_path, capsys, table):
    refused(capsys, "spec", "init", "--data", table, "--label", "label", "--out", tmp_path / "nodir" / "x.json",
            words="does not exist")
    out = tmp_path / "x.json"
    out.write_text("mine")
    refused(capsys, "spec", "init", "--data", table, "--label", "label", "--out", out, words="--force")
    assert out.read_text() == "mine"
    assert main(["spec", "init", "--data", str(table), "--label", "label", "--out", str(out), "--force"]) == 0
    capsys.readouterr()
    assert JobSpec.parse(out.read_bytes()).data.n_features == 2


@pytest.mark.parametrize("args, words", [
    (["--lr", "nan"], "--lr"), (["--lr", "-1"], "--lr"), (["--lr", "inf"], "--lr"), (["--epochs", "0"], "--epochs"),
    (["--seed", "-1"], "--seed must not be negative"),
])
def test_demo_bad_settings(tmp_path, capsys, args, words):
    refused(capsys, "demo", "--providers", "2", "--rounds", "1", "--out", tmp_path / "d", *args, words=words)
    assert not (tmp_path / "d").exists()


def test_data_split_negative_seed(tmp_path, capsys):
    refused(capsys, "data", "split", "--seed", "-1", "--out", tmp_path / "sd", words="--seed must not be negative")


@pytest.fixture
def model_file(tmp_path):
    from fedmarket.modelfile import TrainedModel, save

    spec = JobSpec.parse(EXAMPLE_SPEC.read_bytes())
    return save(TrainedModel(spec, np.zeros(spec.n_params, dtype=np.int64), 1, 0, b"\0" * 32), tmp_path / "m.npz")


def test_model_predict_refuses_non_finite_features_and_unknown_labels(tmp_path, capsys, model_file):
    np.savez(tmp_path / "nan.npz", X=np.full((4, 64), np.nan), y=np.arange(4))
    refused(capsys, "model", "predict", "--model", model_file, "--data", tmp_path / "nan.npz", words="NaN or infinite")
    np.savez(tmp_path / "lab.npz", X=np.zeros((4, 64)), y=np.arange(4) + 90)
    refused(capsys, "model", "predict", "--model", model_file, "--data", tmp_path / "lab.npz",
            words="label '90' is not one of")


def test_directories_are_named_as_directories(tmp_path, capsys, table):
    refused(capsys, "model", "predict", "--model", tmp_path, "--data", table, words="is a directory")
    refused(capsys, "requester", "post", "--spec", tmp_path, "--aggregator", AGG.address, *ROLE, words="is a directory")


def test_node_block_time_nan(capsys):
    refused(capsys, "node", "--block-time", "nan", words="--block-time must be positive")


# ---- on a node with a deployment ----------------------------------------------------------------


@pytest.fixture(scope="module")
def market(anvil, tmp_path_factory):
    """A deployment, a funded requester, aggregator and provider, and one open job."""
    work = tmp_path_factory.mktemp("badinput")
    out = work / "addresses.json"
    assert main(["deploy", "--rpc", anvil.url, "--dev-account", "0", "--out", str(out)]) == 0
    assert main(["fund", "dev:2", "dev:3", "dev:11", "dev:7", "--rpc", anvil.url, "--contracts", str(out),
                 "--tokens", "1000", "--ether", "5"]) == 0
    chain = RpcChain(anvil.url)
    dep = Deployment.attach(chain, json.loads(out.read_text()))
    store = LocalBlobStore(work / "blobs")
    job = Requester(dep, REQ, store).post(small_spec(), AGG.address)
    return {"url": anvil.url, "contracts": out, "dep": dep, "work": work, "job": job, "anvil": anvil}


def common(m) -> list:
    return ["--rpc", m["url"], "--contracts", m["contracts"]]


def nonce(m, who) -> int:
    return int(m["anvil"].rpc("eth_getTransactionCount", [who.address, "latest"]), 16)


@pytest.mark.anvil
def test_roles_refuse_a_mailbox_that_is_a_file_before_staking(market, tmp_path, capsys):
    m, dep = market, market["dep"]
    afile = tmp_path / "afile"
    afile.write_bytes(b"")
    np.savez(tmp_path / "p.npz", X=np.zeros((4, 64)), y=np.arange(4))
    before = (nonce(m, AGG), nonce(m, PROV))
    refused(capsys, "aggregator", "run", "--job", m["job"], *common(m), "--dev-account", "3", "--mailbox", afile,
            "--state-dir", tmp_path / "agg", "--store", m["work"] / "blobs", words="is not a directory")
    refused(capsys, "provider", "run", "--data", tmp_path / "p.npz", "--job", m["job"], *common(m), "--dev-account", "11",
            "--mailbox", afile, "--state-dir", tmp_path / "prov", "--store", m["work"] / "blobs", words="is not a directory")
    j = dep.job(m["job"])
    assert not j["accepted"] and j["n_providers"] == 0 and (nonce(m, AGG), nonce(m, PROV)) == before


@pytest.mark.anvil
def test_requester_post_checks_gas_before_approving(market, tmp_path, capsys):
    m, dep = market, market["dep"]
    m["anvil"].rpc("anvil_setBalance", [POOR.address, hex(10**14)])
    spec = tmp_path / "spec.json"
    spec.write_bytes(small_spec().canonical())
    refused(capsys, "requester", "post", "--spec", spec, "--aggregator", AGG.address, "--no-follow", *common(m),
            "--dev-account", "7", "--state-dir", tmp_path / "req", "--store", m["work"] / "blobs", words="gas")
    assert int(dep.token.call("allowance", POOR.address, dep.market.address)) == 0
    assert not dep.market.events("JobPosted", requester=POOR.address)


@pytest.mark.anvil
@pytest.mark.parametrize("extra, words", [
    (["--unbonding-delay", "99999999999999999999999"], "--unbonding-delay must be between"),
    (["--token", "RULES"], "does not answer as an ERC-20"),
    (["--out", "DIR", "--force"], "is a directory"),
])
def test_deploy_refuses_before_deploying_anything(market, tmp_path, capsys, extra, words):
    m = market
    extra = [str(tmp_path) if a == "DIR" else m["dep"].rules.address if a == "RULES" else a for a in extra]
    out = [] if "--out" in extra else ["--out", tmp_path / "a.json"]
    before = nonce(m, DEPLOYER)
    refused(capsys, "deploy", "--rpc", m["url"], "--dev-account", "9", *out, *extra, words=words)
    assert nonce(m, DEPLOYER) == before


@pytest.mark.anvil
@pytest.mark.parametrize("doc, words", [
    ([], "must hold a JSON object"),
    ("MARKET", "'market' is not an address"),
])
def test_addresses_file_must_be_an_object_of_addresses(market, tmp_path, capsys, doc, words):
    if doc == "MARKET":
        doc = json.loads(market["contracts"].read_text()) | {"market": "notanaddress"}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))
    refused(capsys, "status", "1", "--rpc", market["url"], "--contracts", path, words=words)


@pytest.mark.anvil
@pytest.mark.parametrize("args, words", [(["--tokens", "1e80"], "--tokens 1e80 is too large"),
                                         (["--ether", "1e80"], "--ether 1e80 is too large"),
                                         (["--tokens", "1e999999999"], "is too large")])
def test_fund_amounts_too_large(market, capsys, args, words):
    refused(capsys, "fund", "dev:6", *common(market), *args, words=words)


@pytest.mark.anvil
def test_stake_release_of_a_job_that_does_not_exist(market, capsys):
    refused(capsys, "stake", "release", "--job", "999", *common(market), "--dev-account", "1", words="job 999 does not exist")
