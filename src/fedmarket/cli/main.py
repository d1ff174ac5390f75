"""The `fedmarket demo` and `fedmarket audit` commands."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..errors import ConfigError, FedMarketError
from .app import app, read_addresses, writable_dir


#: the demo's deadlines on a node it may share with other jobs: short enough to wait out in real time
SHARED_NODE_DEADLINES = {"join_window": 3_600, "round_duration": 600, "challenge_period": 3, "claim_period": 86_400,
                         "response_period": 60}


def _demo_chain(rpc: str | None):
    """(chain, deadlines) of the demo: the embedded EVM (its clock is the demo's alone: the spec's
    deadlines, skipped by moving time), or a development node that other jobs may use too: there
    the demo never sets the clock (that would move every other job's deadlines) but posts its job
    with short deadlines and waits for them to pass, mining an empty block a second."""
    from ..chain import connect

    if rpc is None:
        return connect(None), None
    from ..chain.rpc_backend import RpcChain
    from ..spec import DeadlineSpec

    return RpcChain(rpc, own_clock=False), DeadlineSpec(**SHARED_NODE_DEADLINES)


@app.command()
def demo(
    providers: int = typer.Option(20, "--providers", "-n", help="Number of data providers."),
    rounds: int = typer.Option(10, "--rounds", "-r", help="Training rounds."),
    out: Path = typer.Option(Path("fedmarket-demo"), "--out", "-o", help="Directory for report.json, accuracy.png, blobs."),
    dataset: str = typer.Option(None, "--dataset", help="(default digits; fashion_mnist for --model mlp or cnn) digits, iris, wine or breast_cancer (scikit-learn's bundled sets), fashion_mnist (Debian's dataset-fashion-mnist) or mnist."),
    model: str = typer.Option("softmax", "--model", help="softmax, mlp or cnn (McMahan et al.'s CNN; needs PyTorch)."),
    lr: float = typer.Option(None, "--lr", help="Local learning rate (default: the model's)."),
    epochs: int = typer.Option(None, "--epochs", help="Local epochs per round (default: the model's)."),
    strategy: str = typer.Option("fedavg", "--strategy", help="fedavg, median, trimmed_mean (with --trim), or centered_clip / norm_bounding (attested: need --validators)."),
    trim: int = typer.Option(0, "--trim", help="Updates dropped at each end per coordinate (trimmed_mean)."),
    partition: str = typer.Option("iid", "--partition", help="How data is split across providers: iid or dirichlet."),
    alpha: float = typer.Option(0.5, "--alpha", help="Dirichlet concentration (smaller = more skewed)."),
    seed: int = typer.Option(0, "--seed", help="Seed for data split, partition and accounts."),
    rpc: str = typer.Option(None, "--rpc", help="JSON-RPC URL of a development node (anvil) instead of the embedded EVM; the job then waits out short deadlines of its own and never sets the node's clock."),
    validators: int = typer.Option(0, "--validators", help="Staked validators that recompute, score (Shapley) and attest every round."),
    privacy: str = typer.Option("plain", "--privacy", help="plain, dp_local, secagg or secagg_dp (see docs/privacy.md)."),
    epsilon: float = typer.Option(8.0, "--epsilon", help="Privacy budget epsilon of the DP modes (delta 1e-5)."),
    clip_norm: float = typer.Option(1.0, "--clip-norm", help="Per-update L2 clipping norm of the DP modes."),
    dropout: float = typer.Option(0.0, "--dropout", help="Share of providers that vanish in each round (mid-protocol in secagg)."),
    per_round: int = typer.Option(0, "--per-round", help="Providers picked per round from the chain's public seed (0 = all)."),
    target_accuracy: float = typer.Option(None, "--target-accuracy", help="Quality gate: validators' median accuracy below it pays half the pool."),
) -> None:
    """Run a whole market job: deploy, post a funded job, train, settle, claim; print the settlement."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..runner import JobConfig, demo_spec, run_job

    if seed < 0:
        raise ConfigError(f"--seed must not be negative (got {seed})")
    if dataset is None:
        dataset = "fashion_mnist" if model in ("mlp", "cnn") else "digits"
    cfg = JobConfig.for_model(model, providers=providers, rounds=rounds, dataset=dataset, partition=partition, alpha=alpha,
                              seed=seed, validators=validators, privacy=privacy, epsilon=epsilon, clip_norm=clip_norm,
                              dropout=dropout, per_round=per_round, target_accuracy=target_accuracy, learning_rate=lr,
                              local_epochs=epochs, strategy=strategy, trim=trim)
    ds = cfg.split()[0]  # every input problem is reported before any work starts
    demo_spec(cfg, ds)
    out = writable_dir(out, "output directory")
    console = Console(stderr=True)

    chain, deadlines = _demo_chain(rpc)
    console.print(f"[bold]fedmarket demo[/]: {providers} providers, {rounds} rounds, {dataset} ({partition}) on "
                  f"{'the embedded EVM (titanoboa)' if rpc is None else rpc}")
    labels = {"deploy": "deploy contracts", "join": "providers join", "rounds": "training rounds", "claims": "claims"}
    with Progress(
        TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    ) as bar:
        tasks: dict[str, int] = {}

        def tick(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(labels.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done, total=total)

        report = run_job(chain, out, cfg, tick, deadlines)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _plot(report, out / "accuracy.png")
    _print_settlement(report, out)
    if not report["conserved"]:
        raise FedMarketError("balances are not conserved: escrow != paid + fee + refunded (see report.json)")


@app.command()
def audit(
    job_id: int = typer.Argument(..., help="The job to audit."),
    rpc: str = typer.Option(..., "--rpc", help="JSON-RPC URL of the chain the job lives on."),
    dir: Path = typer.Option(Path("fedmarket-demo"), "--dir", "-d", help="A job directory: report.json (contract addresses) and blobs/."),
    contracts: Path = typer.Option(None, "--contracts", help="Addresses file (JSON with token, market, disputes, licence) instead of DIR/report.json."),
    store: str = typer.Option(None, "--store", help="Blob store instead of DIR/blobs: a directory, nats://HOST:4222 or ipfs+http://HOST:PORT (a Kubo node)."),
    challenge: bool = typer.Option(False, "--challenge", help="Prove what is wrong on chain: run the challenger until its dispute games end (needs a signer with the job's dispute bond)."),
    account: str = typer.Option(None, "--account", help="Challenger's signer: an account of the keystore."),
    keystore: Path = typer.Option(None, "--keystore", help="Keystore directory of --account."),
    dev_account: int = typer.Option(None, "--dev-account", help="Challenger's signer: anvil's public dev account I (chain id 31337 only)."),
    mailbox: str = typer.Option(None, "--mailbox", help="The job's mailbox, nats://HOST:4222 or a directory (default DIR/mailbox if it exists): rounds whose data the aggregator withholds are re-derived from it, censored updates and equivocating validators proven from it."),
) -> None:
    """Re-derive every round and payout of a job from chain data and the blob store; exit 1 on any mismatch.
    With --challenge, every provable fault is also proven on chain (dispute games played to their end)."""
    from rich.console import Console
    from rich.table import Table

    from ..chain import connect
    from ..market import Deployment
    from ..roles.auditor import Auditor
    from ..storage import is_remote, open_mailbox, open_store

    addresses = read_addresses(contracts or dir / "report.json")
    blobs = store or str(dir / "blobs")
    if not is_remote(blobs) and not Path(blobs).is_dir():
        raise ConfigError(f"blob store {blobs} does not exist")
    dep = Deployment.attach(connect(rpc), addresses)
    box = mailbox if mailbox is not None else (dir / "mailbox" if (dir / "mailbox").is_dir() else None)
    report = Auditor(dep, open_store(blobs), open_mailbox(box) if box is not None else None).audit(job_id)
    table = Table(title=f"audit of job {job_id} ({report.state.lower()})")
    for col in ("round", "updates", "recomputed", "problem"):
        table.add_column(col)
    for r in report.rounds:
        table.add_row(str(r.round), str(r.count), "match" if r.ok else "MISMATCH",
                      r.problem + (f" (first bad chunk {r.bad_chunk})" if r.bad_chunk is not None else "")
                      + (" (a walk of its model tree proves it)" if r.model_withheld else ""))
    console = Console()
    console.print(table)
    if report.rewards_ok is not None:
        console.print(f"reward root: {'re-derived, matches' if report.rewards_ok else 'MISMATCH: ' + report.rewards_problem}")
    if report.claims_ok is not None:
        console.print(f"claims: {'all match their leaves' if report.claims_ok else 'MISMATCH: ' + report.claims_problem}")
    console.print(f"verdict: [bold]{'ok' if report.ok else 'MISMATCH'}[/]")
    if challenge:
        from .roles import RoleContext

        ctx = RoleContext(rpc, contracts or dir / "report.json", account, keystore, dev_account, blobs, None, 0.5)
        _challenge(ctx, job_id, box, console)
    if not report.ok:
        raise typer.Exit(1)


def _challenge(ctx, job_id: int, mailbox: str | Path | None, console) -> None:
    """Run the challenger on the job until no game is open and nothing more can be proven; print the slashes."""
    from ..processes import ChallengerProcess

    dep, signer, state = ctx.connect("challenger", job_id)
    blobs, box = ctx.stores(mailbox)
    proc = ChallengerProcess(dep, signer, blobs, box, job_id, state, until_quiet=True)
    start = dep.chain.block_number()
    proc.run(ctx.poll)
    slashed = dep.market.events("StakeSlashed", from_block=start, job_id=job_id)
    console.print(f"challenge: {proc.opened} game(s) opened; slashed: {', '.join(e['account'] for e in slashed) or 'nobody'}")


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    xs = list(range(1, len(report["accuracy"]) + 1))
    ax.plot(xs, report["accuracy"], marker="o", label="federated global model")
    if report["centralized_accuracy"] is not None:
        ax.axhline(report["centralized_accuracy"], color="grey", linestyle="--", label="same model trained centrally")
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy on the requester's test set")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    cfg = report["config"]
    ax.set_title(f"FedAvg, {cfg.get('model', 'softmax')}, {report['providers']} providers, {cfg['dataset']} ({cfg['partition']}) on {report['chain']}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _print_settlement(report: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    unit = 10**18
    table = Table(title=f"settlement of job {report['job_id']}", show_lines=False)
    table.add_column("account")
    table.add_column("role")
    table.add_column("samples", justify="right")
    table.add_column("earned (FED)", justify="right")
    table.add_column("reputation", justify="right")
    for row in report["settlement"]:
        addr = row["account"]
        samples = "" if row["samples"] is None else str(row["samples"])
        table.add_row(f"{addr[:8]}…{addr[-6:]}", row["role"], samples, f"{row['reward'] / unit:,.4f}", str(row["reputation"]))
    console = Console()
    console.print(table)
    console.print(
        f"final accuracy [bold]{report['final_accuracy']:.4f}[/] after {report['rounds']} rounds "
        + (f"(centralized training: {report['centralized_accuracy']:.4f})" if report["centralized_accuracy"] is not None else "")
    )
    fed = lambda v: f"{v / unit:,.6g}"
    console.print(
        f"escrow {fed(report['escrow'])} FED = providers {fed(report['paid'])} + aggregator {fed(report['aggregator_earned'])}"
        + (f" + validators {fed(report['validators_earned'])}" if report["validators"] else "")
        + f" + protocol fee {fed(report['fee'])} + refunded "
        f"{fed(report['refunded'])} (from chain balances) | conserved: [bold]{str(report['conserved']).lower()}[/]",
        soft_wrap=True,
    )
    if report.get("privacy", "plain") != "plain":
        console.print(f"privacy {report['privacy']} | epsilon spent {report['epsilon_spent']:.4g} of {report['epsilon_budget']}",
                      soft_wrap=True)
    gas = report["gas_per_round"]
    console.print(f"gas per round {min(gas):,}–{max(gas):,} | job {report['seconds']:.1f}s | report: {out / 'report.json'}",
                  soft_wrap=True)
