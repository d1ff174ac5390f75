"""Market rounds on Flower's Deployment Engine (optional extra: ``pip install "fedmarket[flower]"``).

The aggregator runs a SuperLink and submits the Flower app bundled in this package
(`flower_app/`, a FAB whose sha256 is the job spec's ``transport.flower_app_hash``); each
provider runs a SuperNode that only connects outward to it (`flower_nodes.SuperNode`). Flower's
current Message API (no Ray, no simulation, no deprecated calls). Every round is sealed
(`roles.sealed`), in two Flower messages per provider:

1. **train**: the ServerApp (`serve_job`, in the aggregator's SuperLink) waits for the chain to
   open round ``r`` and sends every SuperNode the job, the round, the spec and the round's
   starting global model (the committed metrics document and the model it names). The ClientApp
   (`train_on_node`, in the provider's SuperNode) trains with the market's `Provider.train` and
   answers with its signed commitment only; the receipt, its salt and the update blob stay in the
   provider's own state directory (`sealed.Pending`). The ServerApp files each commitment on the
   aggregator's mailbox (`file_commitment`), and the aggregator's process seals them
   (`AggregatorProcess`, as in a mailbox round).
2. **train.reveal**: the ServerApp brings each SuperNode that committed the aggregator's seal
   (`reveal_on_node`); a provider whose commitment the seal holds answers with its signed round
   message and the update blob, which the ServerApp files in the aggregator's store and mailbox
   (`file_update`). The aggregator commits the round (`Aggregator.run_round`).

So an update reaches the aggregator's mailbox, which strangers on a shared broker read, only after
the seal: a copy posted then opens no sealed commitment. The ClientApp loads the provider's
account, data and chain from the SuperNode's node config (never from a shared file), and files
the blobs in its own store (each checked against its content id; spec and model against the chain
when training).

Before any bundle code runs on a provider's machine, `flower_guard` (the provider's
``flwr-clientapp``) compares the bundle's sha256 with the job spec's and refuses any other.
Telemetry and Flower's update check are off before Flower is imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

from ..errors import ConfigError, FedMarketError, StorageError
from ..protocol.encoding import MAX_UNTRUSTED_BYTES, canonical_json, untrusted_json, vector_blob_limit
from ..roles import sealed as sl
from ..roles.common import committed_rounds, hexbytes, metrics_cid, round_topic
from ..spec import MAX_SPEC_BYTES, JobSpec
from ..storage import BlobStore, Mailbox, cid_of, open_store

try:
    from flwr.app import ConfigRecord, Message, RecordDict
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ConfigError(f'the Flower transport needs the flower extra: pip install "fedmarket[flower]" ({exc})') from None

#: the directory of the Flower app (pyproject.toml + the ServerApp/ClientApp shells)
APP_DIR = Path(__file__).resolve().parent / "flower_app"
#: the record every market message and reply carries
RECORD = "fedmarket"
#: seconds the ServerApp waits for the SuperNodes to take the rewards document
REWARDS_WAIT = 60.0
#: the environment variable naming the bundle hash a provider's SuperNode accepts
APP_HASH_ENV = "FEDMARKET_FLOWER_APP_HASH"


class BundleMismatch(FedMarketError):
    """A Flower app bundle other than the one the job spec names."""


def app_bundle(app_dir: str | os.PathLike = APP_DIR) -> bytes:
    """The Flower app bundle (FAB) of ``app_dir``, built exactly as ``flwr run`` builds it
    (deterministic: sorted files, fixed timestamps), so its sha256 is the run's FAB hash."""
    from flwr.cli.build import build_fab_from_disk

    return build_fab_from_disk(Path(app_dir))


def app_hash(app_dir: str | os.PathLike = APP_DIR) -> str:
    """sha256 (hex) of the app bundle: what a job spec's ``transport.flower_app_hash`` names."""
    return hashlib.sha256(app_bundle(app_dir)).hexdigest()


def check_bundle(fab: bytes, expected: str) -> None:
    """Refuse (BundleMismatch) a bundle whose sha256 is not ``expected`` (or one of its
    comma-separated hashes)."""
    actual = hashlib.sha256(fab).hexdigest()
    allowed = [h.strip() for h in expected.split(",") if h.strip()]
    if not allowed:
        raise BundleMismatch(f"provider refuses Flower app bundle {actual[:16]}: no job spec bundle hash configured")
    if actual not in allowed:
        raise BundleMismatch(f"provider refuses Flower app bundle {actual[:16]}: the job spec names "
                             + ", ".join(h[:16] for h in allowed))


def _open_mailbox(location: str):
    try:  # a service URL where the storage layer knows one, else a directory
        from ..storage import open_mailbox
    except ImportError:
        return Mailbox(location)
    return open_mailbox(location)


def _attach(rpc: str, contracts: str):
    """The deployment named by an addresses file (as written by `fedmarket deploy`) on ``rpc``."""
    from ..chain.rpc_backend import RpcChain
    from ..market import Deployment

    try:
        doc = json.loads(Path(contracts).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read contract addresses from {contracts}: {exc}") from None
    return Deployment.attach(RpcChain(rpc), doc.get("contracts", doc))


def _say(text: str) -> None:
    print(f"[fedmarket flower] {text}", file=sys.stderr, flush=True)


# ---- the aggregator's side: the ServerApp ---------------------------------------------------


def file_update(store: BlobStore, mailbox, job_id: int, round_: int, record, *, seal: dict | None = None,
                limit: int | None = None) -> str:
    """File one provider's reply for the aggregator: ``record["message"]`` (the signed round
    message, JSON) and ``record["blob"]`` (the update), which must be the content id the message
    names, for this job and round, at most `limit` bytes, and with `seal` open its provider's
    commitment in it (any node that reaches the SuperLink can reply: a stranger's reply, or a blob
    of any size, was stored); signatures are checked when the aggregator collects. Returns the
    provider's address; raises (StorageError, FedMarketError, KeyError, ...) without filing."""
    message, blob = untrusted_json(record["message"]), record["blob"]
    if limit is not None and isinstance(blob, bytes) and len(blob) > limit:
        raise StorageError(f"update blob of {len(blob)} bytes, past the {limit} bytes an update of the job takes")
    if not isinstance(blob, bytes) or cid_of(blob) != message["update_cid"]:
        raise StorageError("update blob does not match the content id its signed message names")
    if message.get("job_id") != job_id or message.get("round") != round_:
        raise FedMarketError("message for another job or round")
    if seal is not None:  # (the aggregator's own seal: its signature adds nothing here)
        problem = sl.opening_problem({p: hexbytes(c) for p, c in seal["commitments"].items()}, message)
        if problem:
            raise FedMarketError(f"a reply that opens no commitment of the round's seal: {problem}")
    store.put(blob)
    mailbox.post(round_topic(job_id, round_), canonical_json(message))
    return str(message.get("provider", "?"))


def file_commitment(mailbox, job_id: int, round_: int, record) -> str:
    """File one provider's commitment for the aggregator's seal: ``record["commitment"]`` (its
    signed `UpdateCommitment` message, JSON), for this job and round, on the round's commit topic
    (its signature is checked when the aggregator seals). Returns the provider's address; raises
    without filing."""
    message = untrusted_json(record["commitment"])
    if message.get("job_id") != job_id or message.get("round") != round_:
        raise FedMarketError("commitment for another job or round")
    mailbox.post(sl.commit_topic(job_id, round_), canonical_json(message))
    return str(message.get("provider", "?"))


def file_replies(file, replies) -> tuple[dict[int, str], list[str]]:
    """File every Flower reply's record with ``file(record)`` (`file_commitment` or `file_update`).
    Returns ({SuperNode: provider filed}, reasons of the replies refused: errors, such as a bundle
    a provider refused, and bad records). A reply marked ``skipped`` (not selected) files nothing."""
    filed, refused = {}, []
    for reply in replies:
        src = reply.metadata.src_node_id
        if reply.has_error():
            refused.append(f"node {src}: {reply.error.reason}")
            continue
        try:
            rec = reply.content[RECORD]
            if not rec.get("skipped"):
                filed[src] = file(rec)
        except (KeyError, ValueError, TypeError, AttributeError, FedMarketError) as exc:
            refused.append(f"node {src}: {exc}")
    return filed, refused


def sent_marker(sent_dir: str | Path, job_id: int, r: int) -> Path:
    """The file where the ServerApp notes that it sent round `r` to the SuperNodes: the aggregator's
    wait for updates starts then, not while the ServerApp is still starting or waiting for a
    SuperNode. It lives in a directory of the aggregator's own (`serve-flower` runs both), which
    nobody else writes: on the shared mailbox, a stranger's note started the wait early and its junk
    stopped the aggregator."""
    return Path(sent_dir) / f"job-{job_id}-round-{r}"


def round_blobs(dep, store: BlobStore, job_id: int) -> list[bytes]:
    """What a provider needs to train the open round: the spec, and the last committed round's
    metrics document and the model it names (each checked against the chain when it trains)."""
    posted = dep.market.events("JobPosted", job_id=job_id)
    if not posted:
        raise FedMarketError(f"job {job_id} does not exist on this market")
    raw = store.get_capped(posted[0]["spec_cid"], MAX_SPEC_BYTES)
    blobs = [raw]
    done = committed_rounds(dep, job_id)
    if done:
        metrics = store.get_capped(metrics_cid(done[-1].metrics_hash), MAX_UNTRUSTED_BYTES)
        n_params = JobSpec.parse(raw).n_params
        blobs += [metrics, store.get_capped(untrusted_json(metrics)["model_cid"], vector_blob_limit(n_params))]
    return blobs


@dataclass
class Relay:
    """The ServerApp's loop for one job: every round the chain opens goes to the SuperNodes once."""

    dep: object
    store: BlobStore
    mailbox: object
    job_id: int
    round_timeout: float = 600.0
    node_wait: float = 60.0
    give_up_after: float = 0.0  # > 0: end when a round brings no update for this long
    poll: float = 0.2
    sent_dir: str | None = None  # where each round sent is noted (`sent_marker`) for the aggregator's process

    def nodes(self, grid, want: int) -> list[int]:
        deadline = time.monotonic() + self.node_wait
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= want or time.monotonic() > deadline:
                return nodes
            time.sleep(self.poll)

    def exchange(self, grid, messages, r: int, file, done=lambda: False) -> tuple[dict[int, str], list[str], int]:
        """Push `messages`, then pull replies every `poll` seconds (Grid.send_and_receive looks every
        3 s) and file each as it comes (`file_replies` with `file`), until every SuperNode answered,
        `done()` (looked at every second), the aggregator went on without the rest (the chain left
        round `r`), or `round_timeout` passed. Returns ({SuperNode: provider filed}, replies
        refused, SuperNodes that did not answer)."""
        waiting = set(grid.push_messages(messages))
        filed: dict[int, str] = {}
        refused: list[str] = []
        deadline, looked = time.monotonic() + self.round_timeout, time.monotonic()
        while waiting and time.monotonic() < deadline:
            got = list(grid.pull_messages(waiting))
            if got:
                more, bad = file_replies(file, got)
                filed, refused = {**filed, **more}, refused + bad
                waiting -= {m.metadata.reply_to_message_id for m in got}
            elif time.monotonic() - looked > 1.0:
                looked = time.monotonic()
                if done() or self.dep.job(self.job_id)["current_round"] != r:
                    break
            if waiting:
                time.sleep(self.poll)
        return filed, refused, len(waiting)

    def seal(self, r: int, aggregator: str) -> dict | None:
        """The aggregator's seal of round `r` on its mailbox (the first authentic one), or None."""
        found = sl.seal_messages(self.dep, self.mailbox.read(sl.seal_topic(self.job_id, r)), self.job_id, r, aggregator)
        return found[0][0] if found else None

    def wait_seal(self, r: int, aggregator: str) -> dict | None:
        """The seal of round `r` once the aggregator's process posts it; None if the chain leaves the
        round or `round_timeout` passes first."""
        deadline, looked = time.monotonic() + self.round_timeout, 0.0
        while time.monotonic() < deadline:
            seal = self.seal(r, aggregator)
            if seal is not None:
                return seal
            if time.monotonic() - looked > 1.0:
                looked = time.monotonic()
                if self.dep.job(self.job_id)["current_round"] != r:
                    return None
            time.sleep(self.poll)
        return None

    def relay_round(self, grid, job: dict, r: int) -> tuple[list[str], list[str], int]:
        """Round `r` in two exchanges: commitments (filed for the seal, until the aggregator seals),
        then the seal to every SuperNode, and the reveals of those whose commitment it holds (asked
        again, after a restart, a SuperNode answers with what it already sent)."""
        t0 = time.monotonic()
        nodes = self.nodes(grid, int(job["n_providers"]))
        blobs = round_blobs(self.dep, self.store, self.job_id)
        config = ConfigRecord({"job-id": self.job_id, "round": r, "blobs": blobs})
        messages = [Message(content=RecordDict({RECORD: config}), dst_node_id=n, message_type="train") for n in nodes]
        if self.sent_dir is not None:
            marker = sent_marker(self.sent_dir, self.job_id, r)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        aggregator = str(job["aggregator"])
        committed, refused, silent = self.exchange(
            grid, messages, r, lambda rec: file_commitment(self.mailbox, self.job_id, r, rec),
            done=lambda: self.seal(r, aggregator) is not None)  # a commitment after the seal counts for nothing
        filed: dict[int, str] = {}
        seal = self.seal(r, aggregator) or (self.wait_seal(r, aggregator) if committed else None)
        if seal is not None:
            config = ConfigRecord({"job-id": self.job_id, "round": r, "seal": canonical_json(seal).decode()})
            reveals = [Message(content=RecordDict({RECORD: config}), dst_node_id=n, message_type="train.reveal")
                       for n in nodes]
            limit = vector_blob_limit(JobSpec.parse(blobs[0]).n_params)
            filed, bad, silent = self.exchange(grid, reveals, r, lambda rec: file_update(
                self.store, self.mailbox, self.job_id, r, rec, seal=seal, limit=limit))
            refused += bad
        _say(f"round {r}: {len(nodes)} SuperNodes, {len(committed)} commitments, {len(filed)} updates filed in "
             f"{time.monotonic() - t0:.2f} s" + (f", {silent} did not answer" if silent else "")
             + "".join(f"\n  refused: {why}" for why in refused))
        return list(filed.values()), refused, silent if nodes else -1

    def run(self, grid) -> str:
        """Relay rounds until the job leaves training; returns why it stopped."""
        from ..market import JobState

        relayed: set[int] = set()
        first_try: dict[int, float] = {}
        while True:
            job = self.dep.job(self.job_id)
            state, r = job["state"], int(job["current_round"])
            if state in (JobState.FINALIZING, JobState.SETTLED):
                return f"job {self.job_id} {state.name.lower()} after {r} rounds: " + self.send_rewards(grid)
            if state != JobState.OPEN and state != JobState.TRAINING:
                return f"job {self.job_id} {state.name.lower()} after {r} rounds"
            if state == JobState.OPEN or r in relayed or r >= int(job["rounds"]):
                time.sleep(self.poll)  # not started, the aggregator has yet to commit round r or post the rewards
                continue
            started = first_try.setdefault(r, time.monotonic())
            filed, refused, silent = self.relay_round(grid, job, r)
            if filed or (not refused and silent == 0):
                relayed.add(r)  # updates filed (or every provider passed over): the aggregator commits
            elif self.give_up_after and time.monotonic() - started > self.give_up_after:
                return f"round {r}: no update within {self.give_up_after:g} s"
            else:
                time.sleep(self.poll)


    def send_rewards(self, grid) -> str:
        """Send every SuperNode the posted rewards document (what its provider's claim proves its
        leaf from), and the last round's metrics document (its seal, `check_seals_on_node`): the
        providers share no store with the aggregator."""
        posted = self.dep.market.events("RewardRootPosted", job_id=self.job_id)
        blobs = [self.store.get_capped(posted[-1]["rewards_cid"], MAX_UNTRUSTED_BYTES)]
        last = committed_rounds(self.dep, self.job_id)[-1]  # its seal, for the providers' seal check
        try:
            blobs.append(self.store.get_capped(metrics_cid(last.metrics_hash), MAX_UNTRUSTED_BYTES))
        except StorageError as exc:  # (deleted from the store, say): the rewards document goes all the same
            _say(f"the last round's metrics document is not sent: {exc}")
        config = ConfigRecord({"job-id": self.job_id, "blobs": blobs})
        nodes = sorted(grid.get_node_ids())
        messages = [Message(content=RecordDict({RECORD: config}), dst_node_id=n, message_type="query") for n in nodes]
        waiting = set(grid.push_messages(messages))
        _say(f"rewards document sent to {len(nodes)} SuperNodes")
        deadline = time.monotonic() + min(self.round_timeout, REWARDS_WAIT)  # a vanished SuperNode never answers
        while waiting and time.monotonic() < deadline:
            waiting -= {m.metadata.reply_to_message_id for m in grid.pull_messages(waiting)}
            if waiting:
                time.sleep(self.poll)
        return f"rewards document taken by {len(nodes) - len(waiting)} of {len(nodes)} SuperNodes"


def serve_job(grid, context) -> None:
    """The ServerApp's main: relay the job's rounds (run config: rpc, contracts, job-id, store,
    mailbox, round-timeout, node-wait, give-up-after, poll, and sent-dir where the aggregator's
    process looks for each round sent)."""
    cfg = context.run_config
    dep = _attach(str(cfg["rpc"]), str(cfg["contracts"]))
    relay = Relay(dep, open_store(str(cfg["store"])), _open_mailbox(str(cfg["mailbox"])), int(cfg["job-id"]),
                  round_timeout=float(cfg["round-timeout"]), node_wait=float(cfg["node-wait"]),
                  give_up_after=float(cfg["give-up-after"]), poll=float(cfg["poll"]),
                  sent_dir=str(cfg.get("sent-dir", "")) or None)
    _say(relay.run(grid))


# ---- a provider's side: the ClientApp --------------------------------------------------------


def node_deployment(node_config: dict):
    """The deployment a SuperNode's node config names (rpc, contracts)."""
    try:
        return _attach(str(node_config["rpc"]), str(node_config["contracts"]))
    except KeyError as exc:
        raise ConfigError(f"the SuperNode's node config lacks {exc}") from None


def node_provider(node_config: dict, dep=None):
    """The market provider a SuperNode's node config describes: rpc, contracts, job, data, label,
    store, mailbox (this provider's own), and the signer as dev-account (development chains) or
    account + keystore (password from $FEDMARKET_PASSWORD in the SuperNode's environment); on
    `dep` if the caller attached it already."""
    from ..fl.localdata import load_for_schema
    from ..keys import DEV_CHAIN_ID, dev_account, load_account
    from ..privacy.releases import ReleaseLog
    from ..roles import Provider
    from ..roles.common import load_spec

    try:
        dep = dep or node_deployment(node_config)
        job_id, store = int(node_config["job"]), open_store(str(node_config["store"]))
        if int(node_config.get("dev-account", -1)) >= 0:
            if dep.chain.chain_id != DEV_CHAIN_ID:
                raise ConfigError("dev-account is only for development chains")
            signer = dev_account(int(node_config["dev-account"]))
        else:
            keystore = str(node_config.get("keystore", "")) or None
            signer = load_account(str(node_config["account"]), keystore)
        spec = load_spec(dep, store, job_id)
        X, y = load_for_schema(Path(str(node_config["data"])), spec.data, str(node_config.get("label", "")) or None)
    except KeyError as exc:
        raise ConfigError(f"the SuperNode's node config lacks {exc}") from None
    # the rounds it released, journaled in its own directory: each ClientApp process lives for one
    # message, and an in-memory log forgot every release before it
    state = str(node_config.get("state", ""))
    releases = ReleaseLog(Path(state) / f"releases-{signer.address}.jsonl") if state else None
    return Provider(dep, signer, store, _open_mailbox(str(node_config["mailbox"])), X, y, releases=releases), job_id


def _pending(node_config) -> sl.Pending:
    if not str(node_config.get("state", "")):
        raise ConfigError("the SuperNode's node config lacks 'state' (this provider's own directory for the updates it "
                          "committed and has yet to reveal)")
    return sl.Pending(str(node_config["state"]))


def _answered(provider, job_id: int, r: int) -> dict | None:
    """This provider's signed message of round `r` if it already revealed it (the ServerApp asks
    again after a SuperLink or aggregator restart): sent again, never revealed under another seal."""
    for raw in provider.mailbox.read(round_topic(job_id, r)):
        message = untrusted_json(raw)
        if message.get("provider") == provider.address:
            return message
    return None


def _job_round(msg, context) -> tuple[dict, int, int]:
    content = msg.content[RECORD]
    job_id = int(content["job-id"])
    if job_id != int(context.node_config.get("job", -1)):
        raise FedMarketError(f"this SuperNode serves job {context.node_config.get('job')}, not job {job_id}")
    return content, job_id, int(content.get("round", -1))


def _reply(msg, record: dict):
    return Message(content=RecordDict({RECORD: ConfigRecord(record)}), reply_to=msg)


def check_seals_on_node(provider, node_store: BlobStore, job_id: int, compared: set[int] | None = None):
    """File the seal of every committed round this provider revealed in (its metrics document, as
    the ServerApp brought it) beside the seal it revealed under, in its own mailbox, and prove two
    different ones on chain (`Challenger.check_seals`: the job fails back to that round, the
    aggregator is slashed, half to this provider). A seal shown to this provider alone let the
    aggregator take its update and commit the round under another's name with another seal:
    that costs it its stake. `compared`, if given, keeps the rounds already compared (skipped
    after). Returns the receipt of a proof, or None."""
    from ..roles.challenger import Challenger
    from ..roles.common import fetch_metrics

    aggregator = provider.dep.job(job_id)["aggregator"]
    for c in committed_rounds(provider.dep, job_id):
        if compared is not None and c.round in compared:
            continue
        topic = sl.seal_topic(job_id, c.round)
        mine = sl.seals(provider.dep, provider.mailbox.read(topic), job_id, c.round, aggregator)
        if not mine:
            continue  # it revealed nothing this round
        try:
            doc = fetch_metrics(node_store, c)
        except (FedMarketError, ValueError, KeyError, TypeError):
            continue  # not brought (yet)
        if compared is not None:
            compared.add(c.round)
        if isinstance(doc.get("seal"), dict):
            try:
                public = sl.open_seal(provider.dep, doc["seal"], job_id, c.round, aggregator)
            except FedMarketError:
                continue
            if public not in mine:
                provider.mailbox.post(topic, canonical_json(doc["seal"]))
    return Challenger(provider.dep, provider.account, node_store, provider.mailbox).check_seals(job_id, provider.mailbox)


def file_job_blobs(dep, store: BlobStore, job_id: int, blobs) -> int:
    """File in the provider's own store only what a message of the job may bring, each within its
    size: the job's spec, the last committed round's metrics document and the model it names, and
    the posted rewards document, each by the content id the chain fixes (the ServerApp could send
    anything, and every blob was stored for good). Returns how many it filed; the rest is dropped."""
    by_cid = {cid_of(b): b for b in blobs if isinstance(b, bytes)}
    posted = dep.market.events("JobPosted", job_id=job_id)
    if not posted:
        raise FedMarketError(f"job {job_id} does not exist on this market")
    limits = {posted[0]["spec_cid"]: MAX_SPEC_BYTES}
    done = committed_rounds(dep, job_id)
    last = metrics_cid(done[-1].metrics_hash) if done else None
    if last is not None:
        limits[last] = MAX_UNTRUSTED_BYTES
    limits.update({e["rewards_cid"]: MAX_UNTRUSTED_BYTES for e in dep.market.events("RewardRootPosted", job_id=job_id)[-1:]})
    filed = 0
    for cid, limit in limits.items():
        if cid in by_cid and len(by_cid[cid]) <= limit:
            store.put(by_cid[cid])
            filed += 1
    if last is not None and last in by_cid and len(by_cid[last]) <= MAX_UNTRUSTED_BYTES:
        try:  # the model the round's document names, as long as the job's models are
            model = untrusted_json(by_cid[last]).get("model_cid")
            n_params = JobSpec.parse(store.get_capped(posted[0]["spec_cid"], MAX_SPEC_BYTES)).n_params
        except (FedMarketError, StorageError, AttributeError, ValueError):
            return filed
        if isinstance(model, str) and model in by_cid and len(by_cid[model]) <= vector_blob_limit(n_params):
            store.put(by_cid[model])
            filed += 1
    return filed


def _checked_seals(provider, job_id: int) -> None:
    receipt = check_seals_on_node(provider, provider.store, job_id)
    if receipt is not None:
        _say(f"the aggregator signed two seals of one round: proven on chain (tx {receipt.tx_hash})")


def file_on_node(msg, context):
    """The ClientApp's query: file the blobs the aggregator sends after the rounds (the rewards
    document, the last round's metrics document) in the provider's own store, where its claim
    reads them (checked against the chain), then check the last round's seal
    (`check_seals_on_node`)."""
    content, job_id, _ = _job_round(msg, context)
    node_store = open_store(str(context.node_config["store"]))
    provider, _ = node_provider(context.node_config)
    filed = file_job_blobs(provider.dep, node_store, job_id, content["blobs"])
    _checked_seals(provider, job_id)
    return _reply(msg, {"filed": filed})


def train_on_node(msg, context):
    """The ClientApp's train: one market round with the provider's own code. The reply carries the
    signed commitment (the receipt, salt and blob are kept in `sealed.Pending` for the reveal), or
    ``skipped`` when not selected or sitting out. Asked again, it answers with the commitment it
    made: a round is never trained twice. First it checks the seals of the rounds it revealed in
    against the last committed round's, which the message brings (`check_seals_on_node`)."""
    content, job_id, r = _job_round(msg, context)
    pending = _pending(context.node_config)
    node_store = open_store(str(context.node_config["store"]))
    # spec, metrics and model: each filed by the content id the chain fixes (and verified when used)
    dep = node_deployment(context.node_config)
    file_job_blobs(dep, node_store, job_id, content["blobs"])
    provider, _ = node_provider(context.node_config, dep)
    _checked_seals(provider, job_id)  # the rounds it revealed in, against the seals they committed with
    with pending.locked(job_id, r):  # one ClientApp at a time: two at once trained (and released) twice
        kept = pending.load(job_id, r)
        if kept is None:
            provider.keep_sealed = pending.keep
            if provider.train(job_id, r) is None:  # not selected this round: nothing leaves this machine
                return _reply(msg, {"skipped": True})
            kept = pending.load(job_id, r)
    return _reply(msg, {"commitment": kept[2].decode()})


def reveal_on_node(msg, context):
    """The ClientApp's train.reveal: given the aggregator's seal of the round, reveal the update
    committed for it (`Provider.reveal`, which refuses a seal that leaves this provider out, or a
    second, different seal); the reply carries the signed round message and the update blob, or
    ``skipped`` when this provider committed nothing this round."""
    content, job_id, r = _job_round(msg, context)
    pending = _pending(context.node_config)
    with pending.locked(job_id, r):  # one ClientApp at a time, as for `train_on_node`
        kept = pending.load(job_id, r)
        if kept is None:
            return _reply(msg, {"skipped": True})
        message, blob, _ = kept
        provider, _ = node_provider(context.node_config)
        answered = _answered(provider, job_id, r)
        if answered is None:
            seal = untrusted_json(content["seal"])
            provider.mailbox.post(sl.seal_topic(job_id, r), canonical_json(seal))  # kept: a second seal is refused
            provider.restore_sealed(job_id, r, message, blob)
            answered = provider.reveal(job_id, r)
            if answered is None:
                raise FedMarketError(f"round {r}: the seal sent is not signed by the job's aggregator")
    if answered.get("update_cid") != cid_of(blob):  # only ever the blob of the message it revealed
        raise FedMarketError(f"round {r}: the kept update is not the one this provider revealed")
    return _reply(msg, {"message": canonical_json(answered).decode(), "blob": blob})
