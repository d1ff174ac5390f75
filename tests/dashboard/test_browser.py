"""The dashboard in a real browser: Debian's chromium driven by Playwright (the pip wheel's own
driver; `playwright install` is never run). anvil, `fedmarket dashboard` and a job are real:
the test fails unless each new round is on the page within 2 s of being mined, the payouts
the page shows equal the providers' token balances on chain, and the job and provider pages
render (their screenshots are saved)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedmarket.chain.rpc_backend import RpcChain
from fedmarket.driver import JobDriver
from fedmarket.roles.sealed import seal_and_reveal
from fedmarket.roles.validator import submit_attestations
from fedmarket.runner import JobConfig, demo_spec, demo_world

pytestmark = pytest.mark.anvil

CHROMIUM = "/usr/bin/chromium"
LATENCY_BUDGET = 2.0  # seconds from a round's receipt to its row on the page


def start_dashboard(args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    """`fedmarket dashboard ... --port 0` as a user runs it; returns (process, its URL)."""
    proc = subprocess.Popen([sys.executable, "-m", "fedmarket", "dashboard", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True, stdin=subprocess.DEVNULL)
    line = proc.stdout.readline()
    if not line.startswith("dashboard on http://127.0.0.1:"):
        proc.kill()
        raise AssertionError(f"dashboard did not start: {line!r} {log.read_text()}")
    return proc, line.split()[2]


@pytest.fixture
def browser():
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def test_live_rounds_payouts_and_screenshots(anvil, browser, tmp_path):
    cfg = JobConfig(providers=3, rounds=3, seed=4, validators=1, local_epochs=2)
    ds, train, test, parts = cfg.split()
    spec = demo_spec(cfg, ds)
    world = demo_world(RpcChain(anvil.url), tmp_path, cfg, spec, ds, train, test, parts)
    dep, cast = world.dep, world.cast
    dep.save(tmp_path / "contracts.json", chain_id=dep.chain_id, block=dep.token.from_block)
    np.savez(tmp_path / "test.npz", X=world.test.X, y=world.test.y)
    dash, url = start_dashboard(["--rpc", anvil.url, "--contracts", str(tmp_path / "contracts.json"),
                                 "--db", str(tmp_path / "index.sqlite"), "--store", str(tmp_path / "blobs"),
                                 "--test", str(tmp_path / "test.npz")], tmp_path / "dashboard.log")
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url + "/")
        page.wait_for_selector("text=No job has been posted on this market yet.")
        driver = JobDriver(dep, cast.aggregator.store, cast.aggregator.mailbox, cast, spec)
        job = driver.open()
        page.wait_for_selector(f'#jobs tr[data-job="{job}"]', timeout=LATENCY_BUDGET * 1000)
        page.goto(f"{url}/job/{job}")
        page.wait_for_selector("#job-state:text('Training')")
        latencies = []
        for r in range(cfg.rounds):
            for p in cast.providers:
                p.train(job, r)
            seal_and_reveal(cast.aggregator, cast.providers, job, r)
            receipt = cast.aggregator.run_round(job, r)
            mined = time.monotonic()  # the receipt is back: the round is in a block
            page.wait_for_selector(f'#rounds tr[data-round="{r}"]', timeout=LATENCY_BUDGET * 1000)
            latencies.append(time.monotonic() - mined)
            assert page.inner_text(f'#rounds tr[data-round="{r}"] td:nth-child(5)') == f"{receipt.gas_used:,}"
            for v in cast.validators:
                v.review(job, r)
            submit_attestations(dep, cast.aggregator.mailbox, cast.aggregator.account, job, r)
            # (their scores are revealed once the votes close, in driver.finish)
        assert max(latencies) < LATENCY_BUDGET, latencies
        driver.finish()  # reward root, settlement, every claim, the model token
        page.wait_for_selector("#job-state:text('Settled')", timeout=5000)
        page.wait_for_function(f"document.querySelectorAll('#members td.payout a[data-wei]').length == "
                               f"{len(cast.providers) + len(cast.validators) + 1}", timeout=5000)
        page.wait_for_selector("#accuracy-chart circle >> nth=2", timeout=5000)
        held = spec.reward.provider_funds  # each was given its stake and the dispute bond
        shown = {}
        for row in page.query_selector_all('#members tr[data-role="provider"]'):
            shown[row.get_attribute("data-account")] = int(row.query_selector("td.payout a").get_attribute("data-wei"))
        on_chain = {p.address: dep.balance(p.address) - held for p in cast.providers}
        assert shown == on_chain and sum(on_chain.values()) > 0
        assert int(page.get_attribute("#paid-total", "data-wei")) == sum(on_chain.values())
        # every figure links to its transaction or blob, and those links resolve
        for href in {a.get_attribute("href") for a in page.query_selector_all("#rounds a, #members a")}:
            assert href.startswith(("/tx/0x", "/blob/bafk", "/provider/0x")), href
        page.screenshot(path=str(tmp_path / "job.png"), full_page=True)
        top = max(cast.providers, key=lambda p: on_chain[p.address])
        page.click(f'#members tr[data-account="{top.address}"] td:first-child a')
        page.wait_for_selector("#provider-paid")
        assert int(page.get_attribute("#provider-paid", "data-wei")) == on_chain[top.address]
        page.screenshot(path=str(tmp_path / "provider.png"), full_page=True)
        tx_page = browser.new_page()
        href = page.get_attribute(f'#provider-jobs tr[data-job="{job}"] td.payout a', "href")
        tx_page.goto(url + href)  # the payout's link: its claim transaction, with the event that paid it
        assert href.removeprefix("/tx/") in tx_page.inner_text("h1") and "market.RewardClaimed" in tx_page.inner_text("main")
        assert str(on_chain[top.address]) in tx_page.inner_text("main")
        blob = tx_page.request.get(url + f"/blob/{dep.market.events('JobPosted', job_id=job)[0]['spec_cid']}")
        assert blob.ok and blob.json()["name"] == spec.name
    finally:
        dash.terminate()
        dash.wait(10)
    assert dash.returncode == 0, (tmp_path / "dashboard.log").read_text()
    out = os.environ.get("FEDMARKET_ARTIFACTS")
    if out:  # CI keeps them (an artifacts directory that git ignores)
        Path(out).mkdir(parents=True, exist_ok=True)
        for name in ("job.png", "provider.png"):
            shutil.copy(tmp_path / name, Path(out) / f"dashboard-{name}")
    assert (tmp_path / "job.png").stat().st_size > 20_000 and (tmp_path / "provider.png").stat().st_size > 10_000
    print(f"round latencies on the page: {[round(x, 3) for x in latencies]} s; screenshots in {tmp_path}")
