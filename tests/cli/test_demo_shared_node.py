"""`fedmarket demo --rpc` on a node that other jobs use: the demo's job settles without ever
setting the node's clock, so another job's deadline does not move (it used to jump an hour)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from fedmarket.chain.anvil import AnvilNode, anvil_missing, find_anvil
from fedmarket.chain.rpc_backend import RpcChain
from fedmarket.keys import dev_account
from fedmarket.market import Deployment

pytestmark = pytest.mark.anvil


def test_demo_on_a_shared_node_leaves_its_clock_alone(tmp_path):
    if find_anvil() is None:
        if os.environ.get("CI"):
            pytest.fail(f"anvil is required in CI: {anvil_missing()}")
        pytest.skip(anvil_missing())
    with AnvilNode(fixed_interval=False) as node:  # wall-clock timestamps, as `fedmarket node` runs
        chain = RpcChain(node.url)
        other = dev_account(7)
        dep = Deployment.deploy(chain, other, other.address)
        ts0 = chain.timestamp()
        t0 = time.time()
        demo = subprocess.run([sys.executable, "-m", "fedmarket", "demo", "-n", "3", "-r", "1", "--out", str(tmp_path / "d"),
                               "--rpc", node.url], capture_output=True, text=True, timeout=300)
        assert demo.returncode == 0, demo.stderr
        report = json.loads((tmp_path / "d" / "report.json").read_text())
        assert report["conserved"] is True and report["state"] == "SETTLED"
        elapsed = time.time() - t0
        moved = chain.timestamp() - ts0
        # the chain's clock moved with the wall clock (an empty block a second while waiting), not by the
        # challenge period of a default spec (an hour)
        assert moved <= elapsed + 2, (moved, elapsed)
        assert chain.timestamp() <= time.time() + 2
        assert dep.market.call("job_count") == 0  # the other deployment is untouched
