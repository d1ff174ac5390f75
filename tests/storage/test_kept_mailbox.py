"""KeptMailbox: a role's own posts and its remembered reads survive a deletion and a restart."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmarket.errors import StorageError
from fedmarket.storage import KeptMailbox, Mailbox


def _delete(box: Mailbox, topic: str, message: bytes) -> None:
    """What anyone on a shared directory mailbox can do."""
    for f in (box.root / topic).iterdir():
        if f.read_bytes() == message:
            f.unlink()


def test_own_posts_are_read_back_and_posted_again_after_a_deletion(tmp_path):
    shared = Mailbox(tmp_path / "box")
    kept = KeptMailbox(shared, tmp_path / "state", keeps=lambda t: t.startswith("mine"))
    kept.post("mine", b"a")
    kept.post("other", b"b")
    _delete(shared, "mine", b"a")
    _delete(shared, "other", b"b")
    assert kept.read("other") == []  # not a kept topic: as the mailbox holds it
    assert kept.read("mine") == [b"a"]
    assert shared.read("mine") == [b"a"]  # and posted there again, for the other readers


def test_repost_puts_back_what_was_deleted_and_forget_drops_it(tmp_path):
    shared = Mailbox(tmp_path / "box")
    kept = KeptMailbox(shared, tmp_path / "state")
    kept.post("r-1", b"one")
    kept.post("r-2", b"two")
    _delete(shared, "r-1", b"one")
    _delete(shared, "r-2", b"two")
    assert kept.repost(lambda t: t == "r-1") == 1
    assert shared.read("r-1") == [b"one"] and shared.read("r-2") == []
    kept.forget(lambda t: t == "r-1")
    assert kept.topics() == ["r-2"]
    again = KeptMailbox(shared, tmp_path / "state")  # a restart reads what is on disk
    assert again.topics() == ["r-2"] and again.posted("r-2") == [b"two"]


def test_a_message_is_kept_before_it_is_posted(tmp_path):
    """A crash (here: the shared mailbox failing) between recording and posting leaves it to be
    posted again, never made anew."""

    class Down(Mailbox):
        def post(self, topic, message):
            raise StorageError("broker down")

    kept = KeptMailbox(Down(tmp_path / "box"), tmp_path / "state")
    with pytest.raises(StorageError):
        kept.post("t", b"signed once")
    restarted = KeptMailbox(Mailbox(tmp_path / "box"), tmp_path / "state")
    assert restarted.posted("t") == [b"signed once"]
    assert restarted.read("t") == [b"signed once"]
    assert Mailbox(tmp_path / "box").read("t") == [b"signed once"]


def test_a_bad_topic_is_refused_before_anything_is_kept(tmp_path):
    kept = KeptMailbox(Mailbox(tmp_path / "box"), tmp_path / "state")
    with pytest.raises(StorageError, match="bad mailbox topic"):
        kept.post("../escape", b"x")
    assert kept.topics() == [] and not (tmp_path / "escape").exists()


def _signer(topic: str, raw: bytes) -> str | None:
    """Messages `signer:body` are signed by `signer`; anything else by nobody."""
    head, sep, _ = raw.partition(b":")
    return head.decode() if sep else None


def test_remembered_reads_keep_each_signers_last_message(tmp_path):
    shared = Mailbox(tmp_path / "box")
    kept = KeptMailbox(shared, tmp_path / "state", keeps=lambda t: False, signer_of=_signer,
                       remembers=lambda t: t.endswith("-sa-keys"))
    shared.post("r-sa-keys", b"p1:k")
    shared.post("r-sa-keys", b"junk")
    assert sorted(kept.read("r-sa-keys")) == [b"junk", b"p1:k"]
    _delete(shared, "r-sa-keys", b"p1:k")
    assert sorted(kept.read("r-sa-keys")) == [b"junk", b"p1:k"]  # deleted, still read
    assert sorted(KeptMailbox(shared, tmp_path / "state", signer_of=_signer,
                              remembers=lambda t: True).read("r-sa-keys")) == [b"junk", b"p1:k"]  # after a restart
    shared.post("r-sa-keys", b"p1:k2")  # a second message of p1's, present with none other: its last
    assert sorted(kept.read("r-sa-keys")) == [b"junk", b"p1:k2"]
    shared.post("r-sa-keys", b"p1:k3")  # two present at once: both, for the readers to drop
    assert sorted(kept.read("r-sa-keys")) == [b"junk", b"p1:k2", b"p1:k3"]
    shared.post("other", b"p1:x")
    _delete(shared, "other", b"p1:x")
    assert kept.read("other") == []  # not remembered


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["post", "delete", "restart"]), st.sampled_from(["a", "b"]),
                          st.binary(min_size=1, max_size=4)), max_size=12))
def test_whatever_is_deleted_or_restarted_every_own_post_reads_back(tmp_path_factory, steps):
    root = tmp_path_factory.mktemp("kept")
    shared = Mailbox(root / "box")
    kept = KeptMailbox(shared, root / "state")
    mine: dict[str, set[bytes]] = {"a": set(), "b": set()}
    for action, topic, message in steps:
        if action == "post":
            kept.post(topic, message)
            mine[topic].add(message)
        elif action == "delete":
            for raw in shared.read(topic):
                _delete(shared, topic, raw)
        else:
            kept = KeptMailbox(shared, root / "state")
    for topic in ("a", "b"):
        assert set(kept.read(topic)) == mine[topic]
        assert set(shared.read(topic)) == mine[topic]
