"""One release per provider per round: a write-ahead log of the (job, round) pairs for which a
provider let a privacy-protected update out.

A second release of the same round would break the mechanism: a second noisy copy of one update
averages its noise away, and a second masked input under reused masks differs from the first by
exactly the difference of the inputs. So the provider records the round *before* anything leaves
(an fsync'ed line in a file that outlives the process), and refuses any round it finds there,
after a restart as well. A crash between the record and the post costs the provider the round,
never a second release. Secrets are never journaled: a restarted provider draws fresh ones.

In `secagg` the same line records the model the update was trained from (``model``): a masked
input may be unmasked in its round's sum whether or not its provider gets to confirm the survivor
set (its neighbours rebuild its self-mask), and a round that then commits nothing leaves the model
where it was, so the next round's update from the same model is the same vector; two sums over
different providers then give it away (found by a privacy review). `spent` names the round that
spent a model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import AlreadyReleased


class ReleaseLog:
    """The (job, round) pairs released; in memory, or also in ``path`` (JSON lines) to survive restarts."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else None
        self._done: set[tuple[int, int]] = set()
        self._spent: dict[tuple[int, str], int] = {}  # (job, model) -> the round that spent it
        if self.path is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    self._done.add((int(rec["job"]), int(rec["round"])))
                    if "model" in rec:
                        self._spent.setdefault((int(rec["job"]), str(rec["model"])), int(rec["round"]))

    def released(self, job_id: int, round_: int) -> bool:
        return (int(job_id), int(round_)) in self._done

    def check(self, job_id: int, round_: int) -> None:
        """AlreadyReleased if round ``round_`` of job ``job_id`` was released before."""
        if self.released(job_id, round_):
            raise AlreadyReleased(f"job {job_id} round {round_}: this provider already released its update "
                                  "(one release per round: a second would spend privacy nobody counts)")

    def claim(self, job_id: int, round_: int, what: str, model: str | None = None) -> None:
        """Record that round ``round_`` of job ``job_id`` is being released (``what``: the mode; ``model``:
        the root of the model the update was trained from, which this release spends), or raise
        AlreadyReleased if it was before. Durable before it returns."""
        self.check(job_id, round_)
        key = (int(job_id), int(round_))
        self._append({"job": key[0], "round": key[1], "what": what, **({"model": str(model)} if model else {})})
        self._done.add(key)
        if model:
            self._spent.setdefault((key[0], str(model)), key[1])

    def spent(self, job_id: int, model: str) -> int | None:
        """The first round of job ``job_id`` that released an update trained from ``model`` (a
        model root, given to `claim`), or None."""
        return self._spent.get((int(job_id), str(model)))

    def _append(self, record: dict) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
