"""`fedmarket requester|provider|aggregator|validator`: each role as a long-running process.

Every command attaches to a deployment (`--contracts`, written by `fedmarket deploy`), signs
with an account of the encrypted keystore (`--account NAME`; or `--dev-account I` on a
development chain), reads and writes blobs in `--store` (`nats://...`, `ipfs+http://...` or a
directory) and messages in `--mailbox` (`nats://...` or a directory), keeps its few facts in `--state-dir`, and polls
the chain every `--poll` seconds until its part of the job is done (exit 0), SIGTERM/SIGINT
(exit 0; restart with the same state directory to resume), or an unrecoverable error (one
line on stderr).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import typer

from ..errors import ConfigError, FedMarketError
from .account import KEYSTORE_HELP
from .app import app, writable_dir

requester_app = typer.Typer(no_args_is_help=True, help="The requester: post a funded job, settle it, mint its model token.")
provider_app = typer.Typer(no_args_is_help=True, help="A data provider: join a job, train every round on private data, claim.")
aggregator_app = typer.Typer(no_args_is_help=True, help="The job's aggregator: accept, start, commit every round, post rewards.")
validator_app = typer.Typer(no_args_is_help=True, help="A validator: join, recompute, score and attest every round, claim.")
challenger_app = typer.Typer(no_args_is_help=True, help="Anyone with a dispute bond: prove a job's faults on chain and take half the cheater's stake.")
app.add_typer(requester_app, name="requester")
app.add_typer(provider_app, name="provider")
app.add_typer(aggregator_app, name="aggregator")
app.add_typer(validator_app, name="validator")
app.add_typer(challenger_app, name="challenger")

JOB = typer.Option(..., "--job", min=1, help="The job id (from 1).")
MAILBOX = typer.Option("fedmarket-mailbox", "--mailbox",
                       help="The job's mailbox: nats://HOST:4222 (a NATS JetStream server; nats+tls:// with TLS), or a directory every role can write (one machine).")

#: the options every role command takes: (name, type, typer option)
COMMON = (
    ("rpc", str, typer.Option(..., "--rpc", help="JSON-RPC URL of the chain.")),
    ("contracts", Path, typer.Option(..., "--contracts", help="Addresses file written by `fedmarket deploy`.")),
    ("account", str, typer.Option(None, "--account", help="Signer: an account of the keystore (password from $FEDMARKET_PASSWORD or a prompt).")),
    ("keystore", Path, typer.Option(None, "--keystore", help=KEYSTORE_HELP)),
    ("dev_account", int, typer.Option(None, "--dev-account", help="Signer: anvil's public dev account I (chain id 31337 only).")),
    ("store", str, typer.Option("fedmarket-blobs", "--store", help="Blob store: nats://HOST:4222 (a NATS JetStream server; nats+tls:// with TLS), ipfs+http://HOST:PORT (a Kubo node) or a directory.")),
    ("state_dir", Path, typer.Option(None, "--state-dir", help="This role's state directory (default ./fedmarket-state/ROLE-ADDRESS[-job-ID]).")),
    ("poll", float, typer.Option(1.0, "--poll", help="Seconds between two looks at the chain and the mailbox.")),
)


@dataclass(frozen=True)
class RoleContext:
    """What every role command shares: where the chain and the deployment are, who signs, where
    blobs and state live, how often to look."""

    rpc: str
    contracts: Path
    account: str | None
    keystore: Path | None
    dev_account: int | None
    store: str
    state_dir: Path | None
    poll: float
    opened: list = field(default_factory=list, init=False, compare=False, repr=False)  # stores to close

    def __post_init__(self) -> None:
        if not self.poll > 0:
            raise ConfigError(f"--poll must be positive (got {self.poll})")
        if (self.account is None) == (self.dev_account is None):
            raise ConfigError("give the signer as exactly one of --account NAME or --dev-account I")
        if self.state_dir is not None and self.state_dir.exists() and not self.state_dir.is_dir():
            raise ConfigError(f"--state-dir {self.state_dir} is not a directory")

    def connect(self, role: str, job: int | None):
        """(deployment on a journaling chain, signer, state directory)."""
        from ..keys import DEV_CHAIN_ID
        from ..keys import dev_account as dev_key
        from ..processes.base import JournaledRpcChain, retrying
        from .account import load_signer
        from .app import attach

        if self.dev_account is not None:
            signer = dev_key(self.dev_account)
        else:
            signer = load_signer(self.account, self.keystore, None, None)
        state = self.state_dir or Path("fedmarket-state") / (f"{role}-{signer.address}" + (f"-job-{job}" if job is not None else ""))
        chain = retrying(lambda: JournaledRpcChain(self.rpc, Path(state) / "journal"), attempts=4)
        if self.dev_account is not None and chain.chain_id != DEV_CHAIN_ID:
            raise ConfigError(f"--dev-account is only for development chains (chain id {DEV_CHAIN_ID}); "
                              f"{self.rpc} has chain id {chain.chain_id}: use --account")
        return attach(chain, self.contracts), signer, Path(state)

    def stores(self, mailbox: str | Path | None = None):
        """(blob store, mailbox or None): each a service (nats://...) or a directory."""
        from ..storage import open_mailbox, open_store

        if mailbox is not None:
            local_mailbox(mailbox)  # before anything is staked: a role that cannot read its mailbox would be slashed
        blobs = open_store(self.store)
        self.opened.append(blobs)
        box = open_mailbox(mailbox) if mailbox is not None else None
        if box is not None:
            self.opened.append(box)
        return blobs, box

    def run(self, proc) -> None:
        """Loop the role process until its part is done or a signal arrives; then close its
        connections to the store and the mailbox."""
        try:
            proc.run(self.poll)
        finally:
            while self.opened:
                self.opened.pop().close()
        if proc.done:
            proc.say("done")


def local_mailbox(mailbox: str | Path) -> None:
    """ConfigError unless a directory mailbox (not nats://) is a directory this process can write
    (created if missing)."""
    from ..storage import is_remote

    if is_remote(mailbox):
        return
    path = Path(mailbox)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--mailbox {path} is not a directory")
    writable_dir(path, "--mailbox directory")


def role_command(group: typer.Typer, name: str):
    """Register `fn(ctx: RoleContext, **own options)` as `fedmarket <group> <name>`, with the
    options every role command shares added to its own."""

    def register(fn):
        own = [p for p in inspect.signature(fn).parameters.values() if p.name != "ctx"]
        shared = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=t) for n, t, opt in COMMON]

        @functools.wraps(fn)
        def command(**kwargs):
            ctx = RoleContext(**{n: kwargs.pop(n) for n, _, _ in COMMON})
            return fn(ctx, **kwargs)

        command.__signature__ = inspect.Signature([*own, *shared])
        group.command(name)(command)
        return fn

    return register


LABEL = typer.Option(None, "--label", help="The label column of a table (default: the one the job's spec names).")


def load_for_job(path: Path, what: str, schema, label: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) of a data file (.csv, .parquet, .npz or a folder of images) read as the job's data
    schema says: its feature columns in order, its classes; one line naming any problem."""
    from ..errors import SchemaMismatch
    from ..fl.localdata import load_for_schema

    if not path.exists():
        raise ConfigError(f"{what} file {path} does not exist")
    try:
        return load_for_schema(path, schema, label)
    except SchemaMismatch as exc:
        raise ConfigError(f"{what}: {exc}") from None


def load_npz(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist")
    from ..errors import SchemaMismatch
    from ..fl.localdata import check_unpacked_size

    try:
        check_unpacked_size(path, f"{what} file")
    except SchemaMismatch as exc:
        raise ConfigError(str(exc)) from None
    try:
        with np.load(path, allow_pickle=False) as doc:
            if "X" not in doc or "y" not in doc:
                raise ConfigError(f"{what} file {path} must hold arrays 'X' and 'y' (has: {', '.join(doc.files) or 'none'})")
            X, y = np.asarray(doc["X"]), np.asarray(doc["y"])
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001  (not a zip, truncated, pickled objects...)
        raise ConfigError(f"cannot read {what} file {path}: {exc}") from None
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y) or not len(y):
        raise ConfigError(f"{what} file {path}: X must be (n, features) and y (n,), got {X.shape} and {y.shape}")
    return X, y


@role_command(requester_app, "post")
def requester_post(
    ctx: RoleContext,
    spec: Path = typer.Option(..., "--spec", help="The job spec (JSON, see fedmarket.spec.JobSpec)."),
    aggregator: str = typer.Option(..., "--aggregator", help="Address of the aggregator the job names."),
    test: Path = typer.Option(None, "--test", help="Held-out test data (a file like the providers'): log each committed model's accuracy."),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="After posting, follow the job: settle it and mint its model token."),
    label: str = LABEL,
) -> None:
    """Post a funded job (once per state directory); print its id; then settle it and mint the model token."""
    from eth_utils import is_address, to_checksum_address

    from ..processes import RequesterProcess
    from ..processes.base import retrying
    from ..spec import JobSpec

    if not is_address(aggregator):
        raise ConfigError(f"--aggregator is not an address: {aggregator!r}")
    if spec.is_dir():
        raise ConfigError(f"spec file {spec} is a directory")
    if not spec.is_file():
        raise ConfigError(f"spec file {spec} does not exist")
    job_spec = JobSpec.parse(spec.read_bytes())
    X, y = load_for_job(test, "test data", job_spec.data, label) if test is not None else (None, None)
    dep, signer, state = ctx.connect("requester", None)
    blobs, _ = ctx.stores()
    proc = RequesterProcess(dep, signer, blobs, state, X_test=X, y_test=y)
    balance = retrying(lambda: dep.balance(signer.address))
    if balance < job_spec.reward.escrow and proc.state.load("job", {}).get("job_id") is None:
        raise ConfigError(f"requester {signer.address} holds {balance} tokens, less than the escrow {job_spec.reward.escrow}")
    # posting is idempotent (state directory + journal + JobPosted events), so it may be retried
    job_id = retrying(lambda: proc.post(job_spec, to_checksum_address(aggregator)))
    print(job_id, flush=True)
    if follow:
        ctx.run(proc)


@role_command(requester_app, "run")
def requester_run(
    ctx: RoleContext, job: int = JOB,
    test: Path = typer.Option(None, "--test", help="Held-out test data (a file like the providers')."),
    label: str = LABEL,
) -> None:
    """Follow a posted job: fail it at whoever missed a deadline, settle it, mint its model token."""
    from ..processes import RequesterProcess

    dep, signer, state = ctx.connect("requester", None)
    blobs, _ = ctx.stores()
    X, y = _job_data(dep, blobs, job, test, "test data", label) if test is not None else (None, None)
    ctx.run(RequesterProcess(dep, signer, blobs, state, job_id=job, X_test=X, y_test=y))


def _data_role(group: typer.Typer, role: str, process: str, data_help: str, doc: str):
    """Register `fedmarket <role> run` for a role that holds local data (`--data`, `--label`)."""

    def command(ctx: RoleContext, data: Path = typer.Option(..., "--data", help=data_help), job: int = JOB,
                mailbox: str = MAILBOX, label: str = LABEL) -> None:
        from .. import processes

        _run_with_data(ctx, role, getattr(processes, process), data, job, mailbox, label)

    command.__doc__, command.__name__ = doc, f"{role}_run"
    return role_command(group, "run")(command)


provider_run = _data_role(
    provider_app, "provider", "ProviderProcess",
    "This provider's private training data: .csv, .parquet, .npz (X, y) or a folder of images (one sub-folder per class).",
    "Join the job (stake by permit), train every round it is selected for, claim reward and stake.")


@role_command(aggregator_app, "run")
def aggregator_run(
    ctx: RoleContext, job: int = JOB, mailbox: str = MAILBOX,
    collect_timeout: float = typer.Option(60.0, "--collect-timeout", help="Seconds to wait for missing updates before committing a round without them."),
    reveal_timeout: float = typer.Option(60.0, "--reveal-timeout", help="Seconds to wait, once the votes close, for validators' revealed scores before posting rewards."),
) -> None:
    """Accept the job, start it, commit every round (one transaction each), answer dispute games,
    post the reward root, claim the stake back."""
    from ..processes import AggregatorProcess

    if collect_timeout < 0 or reveal_timeout < 0:
        raise ConfigError("--collect-timeout and --reveal-timeout must not be negative")
    dep, signer, state = ctx.connect("aggregator", job)
    blobs, box = ctx.stores(mailbox)
    ctx.run(AggregatorProcess(dep, signer, blobs, box, job, state, collect_timeout=collect_timeout,
                              reveal_timeout=reveal_timeout))


validator_run = _data_role(
    validator_app, "validator", "ValidatorProcess",
    "This validator's held-out data: .csv, .parquet, .npz (X, y) or a folder of images.",
    "Join as validator, recompute/score/attest (or reject) every round, reveal the scores, claim the stake back.")


@role_command(challenger_app, "run")
def challenger_run(ctx: RoleContext, job: int = JOB, mailbox: str = MAILBOX) -> None:
    """Watch the job, recompute each round once, open a dispute game on every provable fault
    (wrong aggregate, invalid update, censored update, wrong reward root, equivocating
    validator), play it to its end, and exit once the job is over and no game is open."""
    from ..processes import ChallengerProcess

    dep, signer, state = ctx.connect("challenger", job)
    blobs, box = ctx.stores(mailbox)
    ctx.run(ChallengerProcess(dep, signer, blobs, box, job, state))


def _job_data(dep, blobs, job: int, path: Path, what: str, label: str | None,
              poll: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A data file read against job `job`'s schema (its spec fetched and checked against the chain;
    a job not posted yet is waited for, as the role's loop would)."""
    import sys
    import time

    from ..processes.base import job_state, retrying
    from ..roles.common import load_spec

    if not path.exists():
        raise ConfigError(f"{what} file {path} does not exist")
    said = False
    while True:
        try:
            retrying(lambda: job_state(dep, job))
            break
        except FedMarketError as exc:
            if "does not exist" not in str(exc):
                raise
            if not said:
                print(f"fedmarket: waiting for job {job} to be posted on market {dep.market.address}", file=sys.stderr,
                      flush=True)
                said = True
            time.sleep(poll)
    spec = retrying(lambda: load_spec(dep, blobs, job))
    return load_for_job(path, what, spec.data, label)


def _run_with_data(ctx: RoleContext, role: str, process, data: Path, job: int, mailbox: str,
                   label: str | None = None) -> None:
    """Run a role that holds local data (a provider's, a validator's) on job `job`: the file is read
    as the job's schema says before anything is staked."""
    if not data.exists():
        raise ConfigError(f"data file {data} does not exist")
    dep, signer, state = ctx.connect(role, job)
    blobs, box = ctx.stores(mailbox)
    X, y = _job_data(dep, blobs, job, data, "data", label, ctx.poll)
    ctx.run(process(dep, signer, blobs, box, X, y, job, state))


@role_command(app, "serve")
def serve(
    ctx: RoleContext,
    job: int = JOB,
    port: int = typer.Option(8750, "--port", help="Port on 127.0.0.1 to answer queries on."),
    period: float = typer.Option(60.0, "--period", help="Seconds between two settlements of the callers' signed usage."),
    prove: bool = typer.Option(False, "--prove", help="Prove answers on request (EZKL; softmax and MLP models): build the "
                               "circuit, offer its verifier to the job's validators on --mailbox, register it once a "
                               "majority attested. Needs `pip install fedmarket[zk]` and `npm install` (solc)."),
    mailbox: str = typer.Option(None, "--mailbox", help="The job's mailbox (with --prove): where the verifier is offered "
                                "and the validators' attestations arrive."),
    srs: Path = typer.Option(None, "--srs", help="With --prove: the KZG structured reference string to build the circuit "
                             "on (a ceremony's). Without it one is generated here: testing only."),
    access: bool = typer.Option(False, "--access", help="Also answer holders of time-bound access (ModelMarket.buy_access). "
                                "Their payment went to the owner and contributors, none to servers: for the owner's own server."),
) -> None:
    """Serve a listed job's model to paying callers over HTTP, staked; settle their usage once per period."""
    from ..processes.serve import prepare_proofs
    from ..processes.serve import serve as run_server
    from ..roles.server import ModelServer

    if not period > 0:
        raise ConfigError(f"--period must be positive (got {period})")
    if not 0 < port < 65_536:
        raise ConfigError(f"--port must be a TCP port (got {port})")
    if prove and mailbox is None:
        raise ConfigError("--prove needs --mailbox: the job's validators attest the verifier there")
    if srs is not None and not srs.is_file():
        raise ConfigError(f"SRS file {srs} does not exist")
    if prove:
        from ..zkml import ezkl_module, find_solcjs

        ezkl_module()  # the extra is installed, before anything is staked
        if find_solcjs() is None:
            raise ConfigError("--prove compiles the verifier with npm's solc: run `npm install` in the fedmarket "
                              "repository or set FEDMARKET_SOLCJS=/path/to/solcjs")
    dep, signer, state = ctx.connect("server", job)
    blobs, box = ctx.stores(mailbox if prove else None)
    try:
        state.mkdir(parents=True, exist_ok=True)
        server = ModelServer(dep, signer, blobs, job, journal=state / "receipts.jsonl", access=access)
        if prove:
            from ..zkml import MAX_PROVABLE_PARAMS, provable

            spec = server.trained.spec
            if not provable(spec):
                raise ConfigError(f"--prove covers softmax and MLP models of at most {MAX_PROVABLE_PARAMS:,} "
                                  f"parameters; job {job} trains a '{spec.model.kind}' model of {spec.n_params:,}")
        say = lambda m: typer.echo(m, err=True)
        proving = prepare_proofs(server, state / "zk", blobs, box, ctx.poll, say, srs=srs) if prove else None
        did = server.ensure_staked()
        if did:
            typer.echo(did, err=True)
        run_server(server, port, period, say=say, proving=proving)
    finally:
        blobs.close()
        if box is not None:
            box.close()


@role_command(validator_app, "attest-verifier")
def validator_attest_verifier(
    ctx: RoleContext,
    job: int = JOB,
    mailbox: str = MAILBOX,
    wait: float = typer.Option(600.0, "--wait", help="Seconds to wait for a server's verifier offer on the mailbox."),
    srs: Path = typer.Option(None, "--srs", help="The structured reference string you trust (a ceremony's KZG file): "
                             "a verifier built on another SRS is refused. Without it the server's SRS is used: testing only."),
) -> None:
    """Re-derive the proof verifier a server offers for the job's listed model (from the model root,
    the offer's settings and SRS) and, if its code is the deployed one, sign and post the attestation."""
    import time

    from ..roles.proofs import attest_verifier, offers

    if srs is not None and not srs.is_file():
        raise ConfigError(f"SRS file {srs} does not exist")
    dep, signer, state = ctx.connect("validator", job)
    blobs, box = ctx.stores(mailbox)
    try:
        deadline = time.monotonic() + wait
        while not (found := offers(box)):
            if time.monotonic() > deadline:
                raise ConfigError(f"no verifier offer for job {job} on {mailbox} within {wait:g} s")
            time.sleep(ctx.poll)
        state.mkdir(parents=True, exist_ok=True)
        attested = 0
        for offer in found:
            try:
                attest_verifier(dep, signer, blobs, box, job, offer, workdir=state, srs=srs)
                typer.echo(f"attested verifier {offer['verifier']} (code hash {offer['codehash']})")
                attested += 1
            except FedMarketError as exc:
                typer.echo(f"refused verifier {offer['verifier']}: {exc}", err=True)
        if not attested:
            raise FedMarketError(f"attested none of the {len(found)} verifier offers for job {job}")
    finally:
        blobs.close()
        box.close()