"""Attacks on the dashboard (`fedmarket dashboard`) and the model server (`fedmarket serve`): what
anyone who writes a blob to the store, runs a job's aggregator, posts a job or sends an HTTP
request can do to them. Real processes on 127.0.0.1 and a private anvil (from `npm install`), as in
tests/dashboard; each test fails on the code before the fix it names."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from fedmarket.chain.rpc_backend import RpcChain
from fedmarket.keys import dev_account
from fedmarket.market import Deployment
from fedmarket.protocol.encoding import encode_vector, vector_root
from fedmarket.roles import Requester
from fedmarket.roles.aggregator import Aggregator
from fedmarket.roles.common import terms_of
from fedmarket.runner import JobConfig, demo_spec
from fedmarket.storage import LocalBlobStore, Mailbox

pytestmark = pytest.mark.anvil

DEEP = b"[" * 100_000 + b"]" * 100_000  # 200 kB: past the C stack once py_ecc raised the recursion limit
XSS = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


# ---- a private anvil, a deployment and jobs driven by hand -------------------------------------
def deploy(url: str):
    chain = RpcChain(url)
    for i in range(10):
        chain.fund(dev_account(i).address, 10**22)
    dep = Deployment.deploy(chain, dev_account(0), dev_account(0).address, 100, 60)
    for i in range(1, 10):
        dep.token.transact("mint", dev_account(i).address, 10**24, sender=dev_account(0))
    return dep, {**dep.addresses(), "chain_id": chain.chain_id, "block": dep.token.from_block}


def spec_for(dataset: str = "digits"):
    cfg = JobConfig(providers=1, rounds=3, dataset=dataset, seed=1)
    ds, *_ = cfg.split()
    return demo_spec(cfg, ds)


def post_and_start(dep, store, spec, req_i: int, agg_i: int, prov_i: int) -> int:
    """A job whose requester, aggregator and only provider are the given dev accounts, started."""
    agg, prov = dev_account(agg_i), dev_account(prov_i)
    job = Requester(dep, dev_account(req_i), store).post(spec, agg.address)
    Aggregator(dep, agg, store, Mailbox(store.root.parent / "mail")).accept(job)
    dep.token.transact("approve", dep.market.address, spec.reward.provider_stake, sender=prov)
    dep.market.transact("join", job, sender=prov)
    dep.market.transact("start", job, sender=agg)
    return job


def commit_round(dep, store, spec, job: int, round_: int, agg_i: int, doc: bytes) -> None:
    """The aggregator commits `round_` (an all-zero model) with `doc` as its metrics document: the
    chain binds the document by its hash only, never by its shape."""
    q = np.zeros(spec.n_params, dtype=np.int64)
    store.put(encode_vector(q))
    store.put(doc)
    dep.market.transact("submit_round", job, round_, vector_root(q, spec.quantization.chunk_size), b"\x00" * 32, 0,
                        hashlib.sha256(doc).digest(), 0, b"\x00" * 32, sender=dev_account(agg_i))


def start_dashboard(anvil_url: str, addresses: dict, tmp_path: Path, name: str = "dash"):
    """`fedmarket dashboard --store ... --port 0` as a user runs it; returns (process, its URL)."""
    contracts = tmp_path / "contracts.json"
    contracts.write_text(json.dumps(addresses))
    log = tmp_path / f"{name}.log"
    proc = subprocess.Popen([sys.executable, "-m", "fedmarket", "dashboard", "--port", "0", "--rpc", anvil_url,
                             "--contracts", str(contracts), "--db", str(tmp_path / f"{name}.sqlite"),
                             "--store", str(tmp_path / "blobs")],
                            stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True, stdin=subprocess.DEVNULL)
    line = proc.stdout.readline()
    if not line.startswith("dashboard on http://127.0.0.1:"):
        proc.kill()
        raise AssertionError(f"dashboard did not start: {line!r} {log.read_text()}")
    return proc, line.split()[2]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def get(url: str, path: str, timeout: float = 30):
    """The status (and the response) of GET `path`, or the name of the error if the server is gone."""
    try:
        with httpx.Client(base_url=url, timeout=timeout) as c:
            r = c.get(path)
            return r.status_code, r
    except httpx.HTTPError as exc:
        return type(exc).__name__, None


def peak_rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


# ---- the attacks ---------------------------------------------------------------------------------
def test_deep_json_in_a_blob_or_metrics_document_does_not_kill_the_dashboard(anvil, tmp_path):
    """Attack: a JSON document nested 100,000 deep (200 kB) as a stranger's blob, opened at
    /blob/<cid>, and as a job's metrics document (its aggregator's), read when the job's page or
    a member's page is opened. web3 imports py_ecc, which raises the recursion limit to 100,000,
    so plain `json.loads` overflowed the C stack: the dashboard died with SIGSEGV (indexer, every
    open page). Now: documents are parsed by `encoding.untrusted_json` (nesting counted before
    parsing); the deep blob is served as stored, never parsed, the deep metrics document is
    "no data", every page answers 200 and the process lives."""
    dep, addresses = deploy(anvil.url)
    store = LocalBlobStore(tmp_path / "blobs")
    deep_cid = store.put(DEEP)
    spec = spec_for()
    job = post_and_start(dep, store, spec, 7, 8, 9)
    commit_round(dep, store, spec, job, 0, 8, DEEP)
    proc, url = start_dashboard(anvil.url, addresses, tmp_path)
    try:
        for path in (f"/blob/{deep_cid}", f"/job/{job}", f"/provider/{dev_account(9).address}", "/"):
            status, r = get(url, path)
            assert status == 200, (path, status)
            assert proc.poll() is None, f"the dashboard died ({proc.returncode}) on {path}"
        assert get(url, f"/blob/{deep_cid}")[1].content == DEEP  # as stored: not parsed, not pretty-printed
        page = get(url, f"/job/{job}")[1].text
        assert 'id="round-0"' in page  # the round is shown from the chain; its document is "no data"
    finally:
        stop(proc)
    assert proc.returncode != -signal.SIGSEGV


SERVER = """
import sys, types
import web3  # noqa: F401  what RpcChain does in every role process: py_ecc's recursion limit
from fedmarket.processes.serve import serve
stub = types.SimpleNamespace(job_id=1, trained=types.SimpleNamespace(model_root=bytes(32)))
print("limit", sys.getrecursionlimit(), flush=True)
serve(stub, int(sys.argv[1]), 3600.0, say=lambda m: print(m, flush=True))
"""


def test_model_server_refuses_deep_huge_and_oversized_requests_before_parsing(tmp_path):
    """Attack: unauthenticated POST /query bodies against `fedmarket serve` (processes/serve.serve,
    as the CLI starts it, in a process that imported web3): 200 kB of nested brackets (the body
    was `await request.json()`: plain json.loads, SIGSEGV under py_ecc's recursion limit, the
    server and its unsettled usage gone), a 4 MB body (read whole, no cap) and 64 kB of headers
    (uvicorn's httptools parser buffers headers without bound). Now: the body is read up to
    MAX_QUERY_BYTES (413 past it, by Content-Length or as it arrives), parsed by untrusted_json
    (400 with a one-line error), and uvicorn runs h11 with 16 kB of request line and headers at most."""
    MAX_QUERY_BYTES = 2**20  # processes.serve.MAX_QUERY_BYTES

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE, text=True,
                            stderr=open(tmp_path / "serve.log", "wb"), stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        assert proc.stdout.readline().split() == ["limit", "100000"]
        for _ in range(100):
            try:
                first = httpx.post(url + "/query", content=b"{}", timeout=5)
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert first.status_code == 400
        deep = httpx.post(url + "/query", content=DEEP, timeout=10)
        assert deep.status_code == 400 and "nests deeper" in deep.json()["error"]
        assert "\n" not in deep.json()["error"]
        def refused(**kw) -> int | str:
            """The status of a request the server refuses before reading it all, or "reset": the
            server answered and closed while the client was still sending (a race on loopback)."""
            try:
                return httpx.post(url + "/query", timeout=10, **kw).status_code
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                return "reset"

        assert refused(content=b" " * (4 * MAX_QUERY_BYTES)) in (413, "reset")

        def chunks():  # no Content-Length: refused as it arrives
            for _ in range(8):
                yield b" " * (MAX_QUERY_BYTES // 2)

        assert refused(content=chunks()) in (413, "reset")
        assert refused(content=b"{}", headers={"X-Pad": "a" * 65536}) in (400, 431, "reset")
        assert httpx.post(url + "/query", content=b"[1, 2]", timeout=5).status_code == 400
        assert proc.poll() is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode != -signal.SIGSEGV


def test_malformed_documents_cost_only_their_own_job(anvil, tmp_path):
    """Attack: a job's aggregator commits rounds whose metrics documents have the wrong shape
    ({"updates": [7]}, a provider that is a number, a model_cid that is a path) and its rewards
    document is junk. The dashboard indexed into them unchecked: its job page and the page of
    every member -- whose provider page builds every job it joined -- were HTTP 500, so an honest
    provider who once joined the attacker's job lost its whole page. Now: documents are
    shape-checked (wrong types are "no data"), a model_cid that is not a CID is not linked, and
    the provider page builds each job in a guard: a job whose documents cannot be used is shown
    without them, one that cannot be built at all as unavailable."""
    from fedmarket.dashboard import views
    from fedmarket.dashboard.indexer import Indexer

    victim = dev_account(4).address
    dep, addresses = deploy(anvil.url)
    store = LocalBlobStore(tmp_path / "blobs")
    spec = spec_for()
    honest = post_and_start(dep, store, spec, 5, 6, 4)
    commit_round(dep, store, spec, honest, 0, 6, json.dumps({"round": 0, "updates": [{"provider": victim}]}).encode())
    evil = post_and_start(dep, store, spec, 2, 3, 4)
    commit_round(dep, store, spec, evil, 0, 3, json.dumps({"round": 0, "updates": [7]}).encode())
    commit_round(dep, store, spec, evil, 1, 3, json.dumps(
        {"round": 1, "updates": [{"provider": 5}], "model_cid": "../../provider/x"}).encode())
    proc, url = start_dashboard(anvil.url, addresses, tmp_path)
    try:
        for path in (f"/job/{honest}", f"/job/{evil}", f"/provider/{victim}", "/"):
            assert get(url, path)[0] == 200, path
        evil_page = get(url, f"/job/{evil}")[1].text
        assert 'href="/blob/../../provider/x"' not in evil_page
        mine = get(url, f"/provider/{victim}")[1].text
        assert f'data-job="{honest}"' in mine and f'data-job="{evil}"' in mine
    finally:
        stop(proc)
    assert "Traceback" not in (tmp_path / "dash.log").read_text()

    # the rewards document and a documents reader that fails outright (in-process, on the same index)
    idx = Indexer(RpcChain(anvil.url), addresses, tmp_path / "dash.sqlite")
    idx.sync()
    evs = views._events(idx.db, "job_id = ?", (evil,))
    junk_rewards = {"leaves": [7, None, {"account": victim, "value": "x" * 5000}, {"account": [victim], "value": 1},
                               {"account": victim, "value": {"a": 1}}]}
    members = views._members(idx.db, evs, {"rewards_cid": "c"}, lambda cid: junk_rewards)
    assert [m.score for m in members if m.account == victim] == [None]
    members = views._members(idx.db, evs, {"rewards_cid": "c"}, lambda cid: {"leaves": {"account": victim}})
    assert [m.score for m in members if m.account == victim] == [None]

    def broken(cid):
        raise RuntimeError("a reader that fails")

    page = views.provider_view(idx.db, victim, broken)
    assert sorted(j["job_id"] for j in page["jobs"]) == [honest, evil]
    assert all(not j["documents"] for j in page["jobs"])  # shown from the chain, marked as such
    idx.close()


def test_blob_route_memory_is_bounded(anvil, tmp_path):
    """Attack: a stranger's 20 MB JSON array of zeros requested at /blob/<cid>: it was read,
    parsed and pretty-printed in memory (~900 MB peak for one request, up to 40 at once). Now:
    only documents up to PRETTY_MAX_BYTES are parsed (by untrusted_json) and pretty-printed; a
    larger one is served as stored (the request's peak stays within a few times the blob), one
    over BLOB_MAX_BYTES is refused with 413 before it is read, and blob responses carry nosniff."""
    BLOB_MAX_BYTES, PRETTY_MAX_BYTES = 64 * 2**20, 2**20  # dashboard.pages'

    size = 20 * 2**20
    dep, addresses = deploy(anvil.url)
    store = LocalBlobStore(tmp_path / "blobs")
    big = b"[" + b"0," * (size // 2) + b"0]"
    big_cid = store.put(big)
    huge_cid = store.put(b"\x00" * (BLOB_MAX_BYTES + 1))
    small_cid = store.put(json.dumps({"a": [1, 2]}).encode())
    proc, url = start_dashboard(anvil.url, addresses, tmp_path)
    try:
        assert get(url, "/")[0] == 200
        before = peak_rss(proc.pid)
        status, r = get(url, f"/blob/{big_cid}", timeout=120)
        grown = peak_rss(proc.pid) - before
        assert status == 200 and r.content == big  # as stored, not pretty-printed
        assert r.headers["x-content-type-options"] == "nosniff"
        assert grown < 4 * size, f"peak RSS grew by {grown / 2**20:.0f} MB for a {size / 2**20:.0f} MB blob"
        status, r = get(url, f"/blob/{huge_cid}")
        assert status == 413 and b"limit" in r.content
        status, r = get(url, f"/blob/{small_cid}")
        assert status == 200 and r.text == json.dumps({"a": [1, 2]}, indent=2) and len(big) > PRETTY_MAX_BYTES
    finally:
        stop(proc)


def test_job_page_links_only_the_spec_the_job_committed_to(anvil, tmp_path):
    """Attack: a requester posts terms committing to spec A (what the roles load and check, by
    spec_hash) while its spec_cid names a reputable-looking spec B (a 10^6 FED "audited" job).
    The job page linked spec_cid as the job's spec, and /blob served B, with no sign of the
    mismatch. Now: the dashboard checks the blob spec_cid names as `roles.common.load_spec` does
    (its hash is the committed spec_hash, its bytes canonical); only a verified spec is linked, a
    mismatch is a warning on the page and no link. Markup in spec_cid stays escaped."""
    dep, addresses = deploy(anvil.url)
    store = LocalBlobStore(tmp_path / "blobs")
    real = spec_for()
    shown = real.model_copy(update={"name": "Official benchmark job (audited)",
                                    "reward": real.reward.model_copy(update={"escrow": 10**6 * 10**18})})
    real_cid = store.put(real.canonical())
    fake_cid = store.put(shown.canonical())

    def post(cid: str) -> int:
        terms = terms_of(real, dev_account(3).address, dep.chain.timestamp())
        dep.token.transact("approve", dep.market.address, real.reward.escrow, sender=dev_account(2))
        return int(dep.market.transact("post_job", terms.abi(), cid, sender=dev_account(2)).event("JobPosted")["job_id"])

    spoofed, honest, marked = post(fake_cid), post(real_cid), post(XSS)
    proc, url = start_dashboard(anvil.url, addresses, tmp_path)
    try:
        page = get(url, f"/job/{spoofed}")[1].text
        assert f'href="/blob/{fake_cid}"' not in page
        assert 'id="spec-warning"' in page and "does not match" in page
        page = get(url, f"/job/{honest}")[1].text
        assert f'href="/blob/{real_cid}"' in page and 'data-status="verified"' in page and "spec-warning" not in page
        page = get(url, f"/job/{marked}")[1].text
        assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page and "/blob/&#34;" not in page
    finally:
        stop(proc)


def test_a_reorganisation_is_rolled_back_and_the_canonical_events_indexed(anvil, tmp_path):
    """Attack: events of blocks a reorganisation removed. The indexer read to the latest block,
    checked the last block's hash only when constructed, and stored events keyed (block, log
    index) with INSERT OR IGNORE: a running dashboard kept showing a job that left the chain
    (requester, escrow, spec) and silently dropped the canonical job that took its place, and a
    restart did not notice either. Now: it keeps the hashes of the last indexed blocks, checks
    the last one (and each new block's parent link, and each log's block hash) on every sync, and
    on a mismatch deletes everything from the fork on and reads the new branch."""
    from fedmarket.dashboard import views
    from fedmarket.dashboard.app import Dashboard
    from fedmarket.dashboard.indexer import Indexer

    dep, addresses = deploy(anvil.url)
    store = LocalBlobStore(tmp_path / "blobs")
    spec = spec_for()
    dash = Dashboard(anvil.url, addresses, tmp_path / "index.sqlite", store=str(tmp_path / "blobs"), log=lambda m: None)
    dash.step()
    snap = anvil.rpc("evm_snapshot", [])
    Requester(dep, dev_account(2), store).post(spec, dev_account(3).address)  # the branch to be orphaned
    dash.step()
    assert [(j["job_id"], j["requester"]) for j in views.jobs(dash.db)] == [(1, dev_account(2).address)]
    assert anvil.rpc("evm_revert", [snap])
    other = spec.model_copy(update={"reward": spec.reward.model_copy(update={"escrow": 7 * spec.reward.escrow})})
    Requester(dep, dev_account(5), store).post(other, dev_account(6).address)
    for _ in range(3):
        anvil.rpc("evm_mine", [])
    dash.step()
    on_chain = dep.market.events("JobPosted", job_id=1)[0]
    assert on_chain["requester"] == dev_account(5).address
    shown = [(j["job_id"], j["requester"], j["escrow"]) for j in views.jobs(dash.db)]
    assert shown == [(1, dev_account(5).address, 7 * spec.reward.escrow)]
    view = views.job_view(dash.db, 1)
    assert view.summary["spec_cid"] == on_chain["spec_cid"]
    assert dash.spec_status(1)["status"] == "verified"  # the spec of the canonical job, not a cached one
    assert dash.indexer.reorgs == 1
    n_events = dash.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    dash.close()
    # a restart agrees with the chain and reads nothing twice
    idx = Indexer(RpcChain(anvil.url), addresses, tmp_path / "index.sqlite")
    idx.sync()
    assert [(j["job_id"], j["requester"]) for j in views.jobs(idx.db)] == [(1, dev_account(5).address)]
    assert idx.db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == n_events and idx.reorgs == 0
    idx.close()
