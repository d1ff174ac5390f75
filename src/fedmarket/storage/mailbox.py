"""Off-chain message drop between roles (e.g. signed update receipts), keyed by topic."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import StorageError
from .cid import cid_of

_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


def check_topic(topic: str) -> None:
    """Raise StorageError unless `topic` is a valid mailbox topic (letters, digits, `.`, `_`, `-`)."""
    if not isinstance(topic, str) or not _TOPIC.match(topic):
        raise StorageError(f"bad mailbox topic {topic!r}")


class Mailbox:
    """Append-only message board in a directory: one file per message, named by its CID.

    Messages carry no trust: receivers check signatures and CIDs themselves. It is the
    transport between roles on one machine; across machines, `JetStreamMailbox` (nats://).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(f"mailbox {self.root} is not a directory")

    def _dir(self, topic: str) -> Path:
        check_topic(topic)
        return self.root / topic

    def post(self, topic: str, message: bytes) -> str:
        d = self._dir(topic)
        d.mkdir(parents=True, exist_ok=True)
        cid = cid_of(message)
        tmp = d / f".{cid}.{os.getpid()}.tmp"
        tmp.write_bytes(message)
        tmp.replace(d / cid)
        return cid

    def read(self, topic: str) -> list[bytes]:
        """Every message posted on `topic`, in a deterministic (CID) order."""
        d = self._dir(topic)
        if not d.is_dir():
            return []
        return [p.read_bytes() for p in sorted(d.iterdir()) if not p.name.startswith(".")]

    def close(self) -> None:
        """Nothing to release (the NATS mailbox has a connection to close)."""
