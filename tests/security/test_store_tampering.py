"""What anyone on a shared directory store can put under a blob's name (found by a review of the
fixes for overwritten blobs): junk past the reader's limit, a directory, a named pipe, a sparse
file of a terabyte. A read never blocks, never allocates past its limit, and counts anything that
is not the blob as missing (`BlobCorrupted`, or `BlobTooLarge` past the limit), which validators
wait for and the roles that hold a copy put back (a put replaces what is there)."""

from __future__ import annotations

import json
import os
import time

import pytest
from proc_support import Procs

from fedmarket.errors import BlobCorrupted, BlobTooLarge
from fedmarket.market import JobState
from fedmarket.protocol.encoding import vector_blob_limit
from fedmarket.roles.common import committed_rounds, round_topic
from fedmarket.storage import LocalBlobStore


def _replace(path, what: str) -> None:
    path.unlink(missing_ok=True)
    if what == "directory":
        path.mkdir()
    elif what == "pipe":
        os.mkfifo(path)
    elif what == "sparse":
        path.write_bytes(b"")
        os.truncate(path, 1 << 40)  # 1 TiB, no disk used
    else:
        path.write_bytes(b"junk")


@pytest.mark.parametrize("what", ["directory", "pipe", "sparse", "junk"])
def test_what_is_not_the_blob_is_refused_at_once_and_replaced_by_a_put(tmp_path, what):
    store = LocalBlobStore(tmp_path / "blobs")
    data = b"the blob" * 100
    cid = store.put(data)
    _replace(store._path(cid), what)
    t0 = time.monotonic()
    with pytest.raises((BlobCorrupted, BlobTooLarge)):
        store.get_capped(cid, len(data))  # a pipe would block a plain read; a sparse file fill memory
    if what != "sparse":
        with pytest.raises(BlobCorrupted):
            store.get(cid)
    assert time.monotonic() - t0 < 5
    assert store.put(data) == cid and store.get(cid) == data  # put back over whatever was there


def _spoiler(P, what: str):
    """What replaces a blob's file: junk one byte past the job's vector limit ("oversized"), or `_replace`."""
    if what == "oversized":
        return lambda path: path.write_bytes(b"\0" * (vector_blob_limit(P.spec.n_params) + 1))
    return lambda path: _replace(path, what)


@pytest.mark.parametrize("what", ["oversized", "directory", "sparse"])
def test_a_blob_replaced_after_the_commit_does_not_get_anyone_slashed(chain, tmp_path, what):
    """ATTACK: a provider replaces its committed update blob right after the commit. Junk one byte
    past the readers' limit was refused on its size (not counted as missing: validators rejected at
    once and the aggregator was slashed); a directory escaped the review as an OSError (no vote:
    every validator slashed as absent); a terabyte sparse file was read whole by the aggregator's
    put-back (its process died). Each counts as missing: validators wait, the aggregator's process
    puts the blob back, the round reaches quorum, nobody is slashed."""
    P = Procs(chain, tmp_path, collect_timeout=60.0, providers=3, validators=3, rounds=2)
    done = P.spoil_after_commit(chain.providers[0], _spoiler(P, what))
    assert P.run(80), "\n".join(P.logs[-30:])
    assert done and P.state() == JobState.SETTLED
    assert int(P.dep.disputes.call("rejected_stake", P.job, 0)) == 0
    assert not P.dep.market.events("StakeSlashed", job_id=P.job)


@pytest.mark.parametrize("what", ["oversized", "sparse"])
def test_a_replaced_masked_blob_does_not_leave_its_provider_out(chain, tmp_path, what):
    """ATTACK: a stranger replaces an honest provider's masked blob as the last receipt appears:
    junk past the limit was taken for no update at all (the aggregator did not wait and left the
    provider out, unpaid); a terabyte sparse file was read whole by the provider's own check (its
    process died). The provider puts its blob back, the aggregator waits for it, and it is paid."""
    from fedmarket.roles.senders import signed_on

    P = Procs(chain, tmp_path, collect_timeout=600.0, providers=5, rounds=1, validators=1, privacy="secagg")
    victim = chain.providers[2].address
    spoil, done = _spoiler(P, what), []

    def after(name):
        if done or len(signed_on(P.dep, P.box, P.job, 0, "update")) < 5:
            return
        for raw in P.box.read(round_topic(P.job, 0)):
            msg = json.loads(raw)
            if msg.get("provider") == victim:
                spoil(P.store.root / msg["update_cid"])
                done.append(msg["update_cid"])
                return

    P.after_step = after
    assert P.run(80), "\n".join(P.logs[-30:])
    assert done and [c.count for c in committed_rounds(P.dep, P.job)] == [5]
    assert P.paid()[victim] > 0
