"""`fedmarket localnet up|down`: a whole local market (chain, contracts, a job's role processes,
the dashboard) on loopback from one command, and nothing left behind after `down`."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import ConfigError, FedMarketError
from .app import app

localnet_app = typer.Typer(no_args_is_help=True, help="A whole market on this machine: chain, contracts, one process per role, dashboard.")
app.add_typer(localnet_app, name="localnet")

DIR = typer.Option(Path("fedmarket-localnet"), "--dir", help="Where the localnet keeps its state, logs, blobs and mailbox.")


@localnet_app.command("up")
def localnet_up(
    directory: Path = DIR,
    spec: Path = typer.Option(None, "--spec", help="The job to run (JSON spec, e.g. examples/spec.json)."),
    data: Path = typer.Option(None, "--data", help="provider-I.npz, validator-I.npz and test.npz (`fedmarket data split`)."),
    port: int = typer.Option(8545, "--port", help="The chain's port on 127.0.0.1 (0: any free port)."),
    dashboard_port: int = typer.Option(8050, "--dashboard-port", help="The dashboard's port on 127.0.0.1 (0: any free port)."),
    poll: float = typer.Option(0.5, "--poll", help="Seconds between two looks at the chain, for every role."),
) -> None:
    """Start anvil, deploy the contracts, fund the roles' development accounts, post the job of
    --spec and start one process per role on the files of --data, then the dashboard; return
    once everything runs (the job goes on in the background; follow it with `fedmarket status`)."""
    from ..localnet import LocalNet, up

    for name, value in (("--port", port), ("--dashboard-port", dashboard_port)):
        if not 0 <= value <= 65535:
            raise ConfigError(f"{name} must be between 0 and 65535 (got {value})")
    if not poll > 0:
        raise ConfigError(f"--poll must be positive (got {poll})")
    info = up(LocalNet(directory), port=port, dashboard_port=dashboard_port, spec_path=spec, data=data, poll=poll)
    contracts = Path(info["contracts"])
    print(f"chain      {info['rpc']} (chain id 31337)")
    print(f"contracts  {contracts}")
    print(f"dashboard  {info['dashboard']}")
    if "job" in info:
        print(f"job        {info['job']}: fedmarket status {info['job']} --rpc {info['rpc']} --contracts {contracts}")
    print(f"logs       {Path(info['dir']) / 'logs'}; stop everything with `fedmarket localnet down --dir {directory}`")


@localnet_app.command("down")
def localnet_down(directory: Path = DIR) -> None:
    """Stop every process `localnet up` started here (anvil included) and remove its lock."""
    from ..localnet import LocalNet

    net = LocalNet(directory)
    if not net.load() and not net.lock.exists():
        raise FedMarketError(f"no localnet is up in {net.root}")
    stopped = net.down()
    print(f"stopped {len(stopped)} process(es){': ' + ', '.join(stopped) if stopped else ''}")
