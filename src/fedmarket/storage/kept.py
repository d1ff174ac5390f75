"""A role's mailbox with a memory: what it posted, and what it read, survive a deletion and a restart.

`KeptMailbox` is to the mailbox what `MirroredStore` is to the blob store. Anyone on a shared
mailbox (a directory, a NATS stream) can delete a message. A role that posted one must not make it
anew (a second key advertisement, seal or reveal is a second statement, punished or void), and a
role that read one may have acted on it already. So the role keeps, in its state directory:

- **what it posted** on the topics it `keeps`: recorded before it is posted (a crash between the
  two leaves it to be posted again, never made anew), given back by every read of its topic and
  posted again there when the mailbox lost it, and posted again by `repost` for the readers;
- **what it read** on the topics it `remembers`, with `signer_of`: the last message each signer
  posted there, given back while the mailbox holds none of that signer's (two of a signer's present
  at once read as both: a double signer is the readers' to drop; what nobody signed reads as it is).

Nothing here is trusted more than the mailbox: readers still check every signature.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from . import write_atomic
from .cid import cid_of
from .mailbox import check_topic


class KeptMailbox:
    """`shared`, with the role's own posts on `keeps` topics and (with `signer_of`) each signer's last
    message read on `remembers` topics kept in `directory` (one file per message)."""

    def __init__(self, shared, directory: str | os.PathLike, *, keeps: Callable[[str], bool] = lambda topic: True,
                 signer_of: Callable[[str, bytes], str | None] | None = None,
                 remembers: Callable[[str], bool] = lambda topic: False):
        self.shared = shared
        self.dir = Path(directory)
        self.keeps, self.signer_of, self.remembers = keeps, signer_of, remembers
        self._posted = self._load("posted")  # topic -> {cid: message}
        self._read = self._load("read")  # topic -> {signer: its last message}
        # (topic, message) -> who signed it there (`signer_of`, once each): per topic, since a signed
        # message of one phase copied onto another's topic is nobody's message there
        self._signers: dict[tuple[str, bytes], str | None] = {}

    def _load(self, kind: str) -> dict[str, dict[str, bytes]]:
        root = self.dir / kind
        return {d.name: {f.name: f.read_bytes() for f in sorted(d.iterdir()) if not f.name.startswith(".")}
                for d in (sorted(root.iterdir()) if root.is_dir() else ()) if d.is_dir()}

    # ---- what it posts ------------------------------------------------------------------------
    def post(self, topic: str, message: bytes) -> str:
        message = bytes(message)
        if self.keeps(topic):
            check_topic(topic)  # a topic is a directory name here too
            cid = cid_of(message)
            kept = self._posted.setdefault(topic, {})
            if cid not in kept:
                write_atomic(self.dir / "posted" / topic / cid, message)
                kept[cid] = message
        return self.shared.post(topic, message)

    def posted(self, topic: str) -> list[bytes]:
        """What this role posted on `topic` (and kept), in the order of their CIDs."""
        return [m for _, m in sorted(self._posted.get(topic, {}).items())]

    def topics(self) -> list[str]:
        """The topics it keeps something it posted on."""
        return sorted(self._posted)

    def repost(self, which: Callable[[str], bool] = lambda topic: True) -> int:
        """Post again, the same bytes, every kept message on the topics `which` selects, for readers
        that look after someone deleted it (a repeat of a present message is no new message); how
        many messages that was."""
        n = 0
        for topic in [t for t in self._posted if which(t)]:
            for message in self.posted(topic):
                self.shared.post(topic, message)
                n += 1
        return n

    def forget(self, which: Callable[[str], bool]) -> None:
        """Drop what it keeps (posted and read) on the topics `which` selects: a round done with."""
        for kind, kept in (("posted", self._posted), ("read", self._read)):
            for topic in [t for t in kept if which(t)]:
                del kept[topic]
                shutil.rmtree(self.dir / kind / topic, ignore_errors=True)
        self._signers.clear()

    # ---- what it reads ------------------------------------------------------------------------
    def read(self, topic: str) -> list[bytes]:
        now = [bytes(raw) for raw in self.shared.read(topic)]
        mine = self._posted.get(topic)
        if mine:
            present = {cid_of(raw) for raw in now}
            for cid, message in sorted(mine.items()):
                if cid not in present:  # lost from the mailbox: the same bytes again, here and there
                    self.shared.post(topic, message)
                    now.append(message)
        if self.signer_of is None or not self.remembers(topic):
            return now
        return self._remembered(topic, now)

    def _remembered(self, topic: str, now: list[bytes]) -> list[bytes]:
        kept = self._read.setdefault(topic, {})
        present: dict[str, list[bytes]] = {}
        unsigned = []
        for raw in now:
            if (topic, raw) not in self._signers:
                self._signers[(topic, raw)] = self.signer_of(topic, raw)
            signer = self._signers[(topic, raw)]
            if signer is None:
                unsigned.append(raw)
            else:
                present.setdefault(signer, []).append(raw)
        for signer, raws in present.items():
            if len(raws) == 1 and kept.get(signer) != raws[0]:
                kept[signer] = raws[0]
                write_atomic(self.dir / "read" / topic / signer, raws[0])
        out = [raw for signer, last in kept.items() for raw in present.get(signer, [last])]
        out += [raw for signer, raws in present.items() if signer not in kept for raw in raws]
        return out + unsigned

    def __getattr__(self, name):
        return getattr(self.shared, name)

