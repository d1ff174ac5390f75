"""`fedmarket aggregator serve-flower`, `fedmarket provider supernode` and `fedmarket flower-app-hash`:
a job's rounds on Flower's Deployment Engine (the optional `flower` extra).

The aggregator runs a SuperLink and the market's Flower app on it next to its usual process;
each provider runs a SuperNode (outbound connections only) next to its usual process, whose
ClientApp reads the provider's account, data, store and chain from the SuperNode's node config.
Everything else (chain, stakes, claims, validators) is as with `run`.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ..errors import ConfigError
from .app import app
from .roles import JOB, LABEL, MAILBOX, RoleContext, aggregator_app, load_for_job, provider_app, role_command


def _local(location: str) -> str:
    """A store or mailbox location as another process sees it: URLs as given, directories absolute."""
    return location if "://" in location else str(Path(location).resolve())


def _flower_spec(dep, blobs, job: int):
    """The job's spec, which must name this installation's Flower app bundle, and that bundle's hash:
    a SuperNode runs only the bundle the spec names, so a spec naming any other (the requester's
    choice) would have its code run on the provider's machine, next to the provider's key."""
    from ..roles.common import load_spec
    from ..transport.flower import app_hash

    spec = load_spec(dep, blobs, job)
    if spec.transport is None:
        raise ConfigError(f"job {job} does not run on Flower: its spec names no app bundle (transport.flower_app_hash)")
    ours = app_hash()
    if spec.transport.flower_app_hash != ours:
        raise ConfigError(f"job {job} names Flower app bundle {spec.transport.flower_app_hash[:16]}, this installation's "
                          f"is {ours[:16]}: only this installation's bundle runs here (another fedmarket version?)")
    return spec, ours


@app.command("flower-app-hash")
def flower_app_hash() -> None:
    """Print the sha256 of this installation's Flower app bundle: a spec's transport.flower_app_hash."""
    from ..transport.flower import app_hash

    print(app_hash())


@role_command(aggregator_app, "serve-flower")
def aggregator_serve_flower(
    ctx: RoleContext, job: int = JOB, mailbox: str = MAILBOX,
    host: str = typer.Option("127.0.0.1", "--flower-host", help="Address the SuperLink listens on."),
    port: int = typer.Option(9092, "--flower-port", help="The SuperLink's port (Fleet, Control and Runtime APIs)."),
    ssl_ca: Path = typer.Option(None, "--ssl-ca-certfile", help="CA certificate (PEM) of the SuperLink's certificate."),
    ssl_cert: Path = typer.Option(None, "--ssl-certfile", help="The SuperLink's TLS certificate (PEM)."),
    ssl_key: Path = typer.Option(None, "--ssl-keyfile", help="The SuperLink's TLS private key (PEM)."),
    supernode_keys: list[Path] = typer.Option(None, "--supernode-key", help="Public key (OpenSSH, EC) of a provider's SuperNode: only these connect (repeat; needs TLS)."),
    collect_timeout: float = typer.Option(60.0, "--collect-timeout", help="Seconds to wait for missing updates before committing a round without them."),
    reveal_timeout: float = typer.Option(60.0, "--reveal-timeout", help="Seconds to wait, once the votes close, for validators' revealed scores before posting rewards."),
    round_timeout: float = typer.Option(600.0, "--round-timeout", help="Seconds the ServerApp waits for the SuperNodes' replies in a round."),
) -> None:
    """Serve the job over Flower: a SuperLink, the market's Flower app on it (one Flower message per
    provider and round, each signed update checked and filed), and the aggregator's process, which
    commits every round, posts rewards and claims as `aggregator run` does."""
    from ..transport.flower import REWARDS_WAIT
    from ..transport.flower_nodes import Serving, SuperLink, Tls
    from ..transport.flower_processes import FlowerAggregatorProcess

    tls_files = (ssl_ca, ssl_cert, ssl_key)
    if any(tls_files) and not all(tls_files):
        raise ConfigError("TLS needs all of --ssl-ca-certfile, --ssl-certfile and --ssl-keyfile")
    for f in [*(f for f in tls_files if f), *(supernode_keys or [])]:
        if not f.is_file():
            raise ConfigError(f"file {f} does not exist")
    dep, signer, state = ctx.connect("aggregator", job)
    blobs, box = ctx.stores(mailbox)
    spec, ours = _flower_spec(dep, blobs, job)
    tls = Tls(ssl_ca.resolve(), ssl_cert.resolve(), ssl_key.resolve()) if ssl_ca else None
    # its state in a file of the state directory: SuperNodes keep their identity across a restart
    link = SuperLink(state / "flower", port, host, tls=tls, node_auth=bool(supernode_keys),
                     database=str((state / "flower" / "superlink.db").resolve()))
    sent_dir = (state / "flower" / "sent").resolve()  # the aggregator's own: nobody else writes it
    serving = Serving(link, {"rpc": ctx.rpc, "contracts": str(ctx.contracts.resolve()), "job-id": job,
                             "store": _local(ctx.store), "mailbox": _local(str(mailbox)), "round-timeout": round_timeout,
                             "node-wait": 60.0, "give-up-after": 0.0, "poll": 0.2, "sent-dir": str(sent_dir)},
                      [k.resolve() for k in supernode_keys or []])
    try:
        serving.start()
        print(f"SuperLink on {link.address}; Flower app {ours[:16]} running for job {job}", flush=True)
        ctx.run(FlowerAggregatorProcess(dep, signer, blobs, box, job, state, collect_timeout=collect_timeout,
                                        reveal_timeout=reveal_timeout, serving=serving, sent_dir=sent_dir))
        serving.run.wait(REWARDS_WAIT + 30)  # the ServerApp hands the providers the rewards document, then ends
    finally:
        serving.stop()


@role_command(provider_app, "supernode")
def provider_supernode(
    ctx: RoleContext, job: int = JOB,
    data: Path = typer.Option(..., "--data", help="This provider's private training data (.csv, .parquet, .npz or a folder of images)."),
    superlink: str = typer.Option(..., "--superlink", help="The aggregator's SuperLink, HOST:PORT (this node only connects outward)."),
    spec: Path = typer.Option(None, "--spec", help="The job's spec file, if the store does not hold it yet (checked against the chain)."),
    mailbox: Path = typer.Option(None, "--mailbox", help="This provider's own message directory (default: in the state directory)."),
    root_certificates: Path = typer.Option(None, "--root-certificates", help="CA certificate (PEM) to verify the SuperLink's TLS certificate; without it, plain TCP."),
    auth_key: Path = typer.Option(None, "--auth-key", help="This SuperNode's private key (OpenSSH, EC) whose public half the aggregator registered."),
    node_port: int = typer.Option(0, "--node-port", help="Local port of the SuperNode's ClientApp API (default: any free one)."),
    label: str = LABEL,
) -> None:
    """Run this provider's SuperNode for the job: join (stake by permit), let the aggregator's ServerApp
    have each round trained here with the market's provider code (only the bundle the job's spec names
    runs), then claim reward and stake."""
    from ..spec import JobSpec
    from ..storage import Mailbox
    from ..transport.flower_nodes import SuperNode
    from ..transport.flower_processes import SuperNodeProviderProcess

    for f in (root_certificates, auth_key, spec):
        if f is not None and not f.is_file():
            raise ConfigError(f"file {f} does not exist")
    if ctx.account is not None and "FEDMARKET_PASSWORD" not in os.environ:
        raise ConfigError("with --account, set $FEDMARKET_PASSWORD: the SuperNode's ClientApp unlocks the key each round")
    dep, signer, state = ctx.connect("provider", job)
    blobs, _ = ctx.stores()
    if spec is not None:
        blobs.put(JobSpec.parse(spec.read_bytes()).canonical())
    job_spec, ours = _flower_spec(dep, blobs, job)
    X, y = load_for_job(data, "data", job_spec.data, label)
    box_dir = (mailbox or state / "mailbox").resolve()
    node_config = {"rpc": ctx.rpc, "contracts": str(ctx.contracts.resolve()), "job": job, "data": str(data.resolve()),
                   "label": label or "", "store": _local(ctx.store), "mailbox": str(box_dir),
                   "state": str((state / "supernode" / "committed").resolve())}  # updates committed, not revealed yet
    if ctx.dev_account is not None:
        node_config["dev-account"] = ctx.dev_account
    else:
        node_config.update({"account": ctx.account, "keystore": str(ctx.keystore.resolve()) if ctx.keystore else ""})
    node = SuperNode(state / "supernode", superlink, node_config, ours, node_port,
                     root_certificates=root_certificates.resolve() if root_certificates else None,
                     auth_key=auth_key.resolve() if auth_key else None)
    with node:
        ctx.run(SuperNodeProviderProcess(dep, signer, blobs, Mailbox(box_dir), X, y, job, state))
