"""Freed round memory goes back to the operating system (`fedmarket.memory`), and the loops call it."""

from __future__ import annotations

import ctypes.util
import platform

import pytest

from fedmarket.memory import Trimmer, release_freed

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="malloc_trim is glibc's")


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


@glibc
def test_release_freed_returns_the_holes_a_round_leaves():
    """128 MB of heap blocks, every other one freed: the holes stay resident until the trim."""
    assert ctypes.util.find_library("c")
    release_freed()
    blocks = [bytearray(b"\x01" * (64 << 10)) for _ in range(2048)]  # 64 KB: below mmap's threshold
    kept = blocks[::2]
    del blocks
    held = _rss_mb()
    assert release_freed() is True
    assert _rss_mb() < held - 40, "the 64 MB of freed blocks between kept ones stayed resident"
    assert sum(len(b) for b in kept) == 1024 * (64 << 10)


def test_trimmer_trims_at_most_once_an_interval():
    now = [0.0]
    trims = Trimmer(interval=60, clock=lambda: now[0])
    assert not trims.maybe()
    now[0] = 59.9
    assert not trims.maybe()
    now[0] = 60.0
    assert trims.maybe() == release_freed()  # trimmed (True where the C library can)
    now[0] = 100.0
    assert not trims.maybe()  # 40 s after the last trim
    now[0] = 121.0
    assert trims.maybe() == release_freed()


def test_trimmer_keeps_its_releases_to_a_share_of_the_time(monkeypatch):
    """A release that took 1 s waits 20 s at 5%, even with no interval (the driver's trimmer)."""
    from fedmarket import memory

    now = [0.0]
    released: list[float] = []

    def slow_release():
        released.append(now[0])
        now[0] += 1.0  # the release itself takes a second
        return True

    monkeypatch.setattr(memory, "release_freed", slow_release)
    trims = Trimmer(interval=0, share=0.05, clock=lambda: now[0])
    assert trims.maybe()  # due at once: nothing released yet
    now[0] = 20.9
    assert not trims.maybe()  # 19.9 s after a release of 1 s
    now[0] = 21.0
    assert trims.maybe()
    assert released == [0.0, 21.0]


def test_role_loop_asks_its_trimmer_after_every_step(monkeypatch, tmp_path):
    from fedmarket.processes.base import RoleProcess, Stop

    asked: list[int] = []

    class Twice(RoleProcess):
        role = "twice"

        def step(self):
            if self.steps == 2:
                raise Stop

    proc = Twice(None, tmp_path / "t", log=lambda _m: None)
    monkeypatch.setattr(proc._trimmer, "maybe", lambda: asked.append(proc.steps))
    proc.run(poll_interval=0.001)
    assert asked == [1, 2]


@pytest.mark.slow
def test_an_in_process_job_releases_memory_after_every_round(monkeypatch, tmp_path):
    """With releases that cost nothing, every round's is due (the driver's trimmer has no interval)."""
    from fedmarket import memory
    from fedmarket.chain.boa_backend import BoaChain
    from fedmarket.runner import JobConfig, run_job

    rounds_done: list[int] = []
    released: list[int] = []
    monkeypatch.setattr(memory, "release_freed", lambda: released.append(len(rounds_done)) or True)
    report = run_job(BoaChain(), tmp_path, JobConfig(providers=3, rounds=3, seed=4),
                     lambda stage, done, _total: stage == "rounds" and rounds_done.append(done))
    assert report["state"] == "SETTLED"
    assert released == [0, 1, 2] and rounds_done == [1, 2, 3]  # each round's, before it is reported
