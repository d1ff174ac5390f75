"""`fedmarket node` and `fedmarket deploy` as a user runs them, against real anvil processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from fedmarket.chain.anvil import AnvilNode
from fedmarket.keys import Keystore

pytestmark = [pytest.mark.anvil, pytest.mark.usefixtures("need_anvil")]

PW = "deploy-test-password"
# anvil's dev account 0: public, but it must still never be printed by us
DEV_KEY_0 = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcd7bf1ef4d6f5b2ff"[:-2]


def fm(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("FEDMARKET_PASSWORD", "FEDMARKET_KEYSTORE")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "fedmarket", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, stdin=subprocess.DEVNULL)


def rpc(url: str, method: str, params: list):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["result"]


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("fedmarket: error: "), proc.stderr
    return lines[-1]


def check_deployment(url: str, out, deployer: str) -> dict:
    from fedmarket.chain.rpc_backend import RpcChain
    from fedmarket.market import Deployment

    doc = json.loads(out.read_text())
    assert doc["chain_id"] == 31337 and doc["deployer"] == deployer
    chain = RpcChain(url)
    dep = Deployment.attach(chain, doc)
    assert dep.token.call("symbol") == "FED"
    assert dep.licence.call("MARKET") == dep.market.address
    # the recorded block is the first one holding the token's code
    assert rpc(url, "eth_getCode", [doc["token"], hex(doc["block"])]) not in ("0x", "")
    assert rpc(url, "eth_getCode", [doc["token"], hex(doc["block"] - 1)]) == "0x"
    return doc


def test_node_runs_until_ctrl_c_and_deploy_with_a_dev_account(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "fedmarket", "node", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith("anvil listening on http://127.0.0.1:"), first + proc.stderr.read()
        url = first.split()[3]
        lines = [proc.stdout.readline() for _ in range(11)]
        addresses = [line.split()[1] for line in lines[1:]]
        assert addresses[0] == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266" and len(addresses) == 10
        assert rpc(url, "eth_chainId", []) == hex(31337)

        out = tmp_path / "addresses.json"
        dep = fm("deploy", "--rpc", url, "--dev-account", "0", "--out", str(out))
        assert dep.returncode == 0, dep.stderr
        check_deployment(url, out, addresses[0])
        assert DEV_KEY_0 not in dep.stdout + dep.stderr
        # a second deploy does not clobber the first file
        assert "exists" in one_line_error(fm("deploy", "--rpc", url, "--dev-account", "1", "--out", str(out)))
        # wall-clock timestamps on a user's node (not the tests' fixed one-second interval)
        ts = int(rpc(url, "eth_getBlockByNumber", ["latest", False])["timestamp"], 16)
        assert abs(ts - time.time()) < 120
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err
    assert DEV_KEY_0 not in rest + err
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(OSError):  # anvil is gone with it
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_deploy_from_an_encrypted_keystore(node, tmp_path):
    ks = tmp_path / "ks"
    address = Keystore(ks).new("deployer", PW, scrypt_n=2**10)
    node.rpc("anvil_setBalance", [address, hex(10**20)])
    out = tmp_path / "addrs.json"
    args = ["deploy", "--rpc", node.url, "--keystore", str(ks), "--account", "deployer", "--out", str(out)]

    wrong = fm(*args, env={"FEDMARKET_PASSWORD": "nope"})
    assert one_line_error(wrong) == "fedmarket: error: wrong password for account 'deployer'" and wrong.returncode == 2
    assert not out.exists()
    nopw = fm(*args)
    assert "set FEDMARKET_PASSWORD" in one_line_error(nopw)

    ok = fm(*args, "--fee-bps", "250", env={"FEDMARKET_PASSWORD": PW})
    assert ok.returncode == 0, ok.stderr
    doc = check_deployment(node.url, out, address)
    assert "deployed from block" in ok.stdout and doc["market"] in ok.stdout
    from fedmarket.chain.rpc_backend import RpcChain
    from fedmarket.market import Deployment

    market = Deployment.attach(RpcChain(node.url), doc).market
    assert market.call("FEE_BPS") == 250 and market.call("TREASURY") == address


def test_deploy_errors_are_one_line(node, tmp_path):
    out = str(tmp_path / "a.json")
    assert "exactly one of --account NAME or --dev-account I" in one_line_error(
        fm("deploy", "--rpc", node.url, "--out", out))
    assert "exactly one of" in one_line_error(
        fm("deploy", "--rpc", node.url, "--out", out, "--account", "x", "--dev-account", "0"))
    missing = one_line_error(fm("deploy", "--rpc", node.url, "--out", out, "--keystore", str(tmp_path / "none"),
                                "--account", "ghost", env={"FEDMARKET_PASSWORD": PW}))
    assert "no account 'ghost' in keystore" in missing
    assert "cannot reach an EVM node at http://127.0.0.1:9" in one_line_error(
        fm("deploy", "--rpc", "http://127.0.0.1:9", "--dev-account", "0", "--out", out))
    assert "--treasury is not an address" in one_line_error(
        fm("deploy", "--rpc", node.url, "--dev-account", "0", "--out", out, "--treasury", "0x12"))
    # an empty keystore account has no gas: said before anything is sent
    ks = tmp_path / "ks"
    broke = Keystore(ks).new("broke", PW, scrypt_n=2**10)
    assert f"deployer {broke} has no funds" in one_line_error(
        fm("deploy", "--rpc", node.url, "--keystore", str(ks), "--account", "broke", "--out", out,
           env={"FEDMARKET_PASSWORD": PW}))
    assert not (tmp_path / "a.json").exists()


def test_dev_accounts_are_refused_off_dev_chains(tmp_path):
    with AnvilNode(chain_id=1337) as other:
        err = one_line_error(fm("deploy", "--rpc", other.url, "--dev-account", "0", "--out", str(tmp_path / "a.json")))
    assert "--dev-account is only for development chains (chain id 31337)" in err and "chain id 1337" in err


def test_deploy_with_an_existing_token(node, tmp_path):
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    assert fm("deploy", "--rpc", node.url, "--dev-account", "2", "--out", str(first)).returncode == 0
    token = json.loads(first.read_text())["token"]
    ok = fm("deploy", "--rpc", node.url, "--dev-account", "3", "--out", str(second), "--token", token)
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(second.read_text())
    assert doc["token"] == token and doc["market"] != json.loads(first.read_text())["market"]
    assert rpc(node.url, "eth_getCode", [doc["disputes"], hex(doc["block"] - 1)]) == "0x"
    assert "has no code" in one_line_error(
        fm("deploy", "--rpc", node.url, "--dev-account", "3", "--out", str(tmp_path / "x.json"),
           "--token", "0x" + "11" * 20))


def test_node_on_a_busy_port_is_one_line(node):
    proc = subprocess.run([sys.executable, "-m", "fedmarket", "node", "--port", str(node.port)], capture_output=True,
                          text=True, timeout=60)
    assert one_line_error(proc) == (f"fedmarket: error: port {node.port} on 127.0.0.1 is already in use "
                                    "(another node?): choose another port")
    assert proc.stdout == ""


def test_node_stops_on_sigint_even_when_started_with_sigint_ignored():
    """A script's background job inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler: `fedmarket node` handles SIGINT itself, so `kill -INT` still stops
    it (and anvil with it)."""
    proc = subprocess.Popen([sys.executable, "-m", "fedmarket", "node", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        first = proc.stdout.readline()
        assert first.startswith("anvil listening on http://127.0.0.1:"), first + proc.stderr.read()
        for _ in range(11):
            proc.stdout.readline()
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0 and "stopping anvil" in err, err
