"""`fedmarket spec init` and `fedmarket model pack|get|predict`: a job on your own data, from a sample
file to the trained model's predictions (`fedmarket data split --data FILE` splits a file for trials)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import typer

from ..errors import ConfigError
from .app import app, new_file, read_addresses

spec_app = typer.Typer(no_args_is_help=True, help="Job specs: write a template from a sample of your data.")
model_app = typer.Typer(no_args_is_help=True, help="Models: pack your PyTorch module, get a job's trained model, predict with it.")
app.add_typer(spec_app, name="spec")
app.add_typer(model_app, name="model")

DATA = typer.Option(..., "--data", help="A .csv, .parquet or .npz file, or a folder of images (one sub-folder per class).")
LABEL = typer.Option(None, "--label", help="The label column of a table.")
RPC = typer.Option(..., "--rpc", help="JSON-RPC URL of the chain the job lives on.")
CONTRACTS = typer.Option(..., "--contracts", help="Addresses file written by `fedmarket deploy`.")
ACCOUNT = typer.Option(None, "--account", help="Signer: a keystore account (password from $FEDMARKET_PASSWORD or a prompt).")
KEYSTORE = typer.Option(None, "--keystore", help="Keystore directory (default ~/.fedmarket/keystore).")
DEV_ACCOUNT = typer.Option(None, "--dev-account", help="Signer: anvil's public dev account I (chain id 31337 only).")
TOKEN = 10**18


def _model_doc(kind: str, schema: dict, hidden: str) -> dict:
    if kind == "softmax":
        return {"kind": "softmax"}
    if kind == "mlp":
        try:
            sizes = [int(h) for h in hidden.split(",") if h.strip()]
        except ValueError:
            raise ConfigError(f"--hidden must be comma-separated layer widths, got {hidden!r}") from None
        return {"kind": "mlp", "hidden": sizes}
    if kind == "cnn":
        if len(schema.get("input_shape", [])) != 3:
            raise ConfigError("--model cnn needs images (a folder of them, or an .npz whose X is samples x C x H x W)")
        return {"kind": "cnn"}
    raise ConfigError(f"unknown model '{kind}'; choose softmax, mlp or cnn (for your own PyTorch module: `fedmarket model pack`)")


@spec_app.command("init")
def spec_init(
    data: Path = DATA,
    label: str = LABEL,
    out: Path = typer.Option(Path("spec.json"), "--out", "-o", help="Where to write the spec."),
    name: str = typer.Option(None, "--name", help="The job's name (default: from the data file)."),
    model: str = typer.Option(None, "--model", help="softmax, mlp or cnn (default: cnn for images, else mlp)."),
    hidden: str = typer.Option("64", "--hidden", help="The MLP's hidden layer widths, comma-separated."),
    rounds: int = typer.Option(10, "--rounds", help="Training rounds."),
    providers: int = typer.Option(3, "--providers", help="Providers the job takes (min = max)."),
    validators: int = typer.Option(0, "--validators", help="Validators the job needs."),
    strategy: str = typer.Option("fedavg", "--strategy", help="fedavg, median, trimmed_mean, or centered_clip / norm_bounding (attested: need --validators)."),
    escrow: int = typer.Option(1_000, "--escrow", help="Reward escrow, in whole tokens."),
    stake: int = typer.Option(10, "--stake", help="Each provider's stake, in whole tokens."),
    aggregator_fee: float = typer.Option(None, "--aggregator-fee", help="The aggregator's fee per committed round, in tokens (default: 2% of the escrow over the job)."),
    validator_fee: float = typer.Option(None, "--validator-fee", help="Each validator's fee per attested round, in tokens (default: 1% of the escrow over the job)."),
    owner_share: int = typer.Option(1_000, "--owner-share-bps", help="The model owner's share of licence revenue, and the owner's and its servers' share of query revenue together, in basis points."),
    margin: float = typer.Option(0.1, "--margin", help="Widen each feature's sample range by this share of it on both sides."),
    round_duration: int = typer.Option(3_600, "--round-duration", help="Seconds each round may take."),
    challenge_period: int = typer.Option(3_600, "--challenge-period", help="Seconds to dispute the reward root before settlement."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out file."),
) -> None:
    """Write a job spec whose data schema (features, classes, bounds) is computed from a sample file."""
    from ..fl.localdata import infer_schema, read_data
    from ..spec import JobSpec

    new_file(out, force)
    sample = read_data(data, label)
    schema = infer_schema(sample, margin)
    kind = model or ("cnn" if sample.input_shape is not None and len(sample.input_shape) == 3 else "mlp")
    doc = {
        "name": name or f"{data.stem}: {kind}, {providers} providers",
        "data": schema,
        "model": _model_doc(kind, schema, hidden),
        "training": {"rounds": rounds, "local_epochs": 1, "batch_size": 32,
                     "learning_rate": 0.5 if kind == "softmax" else 0.05, "momentum": 0.0 if kind == "softmax" else 0.9},
        "strategy": strategy,
        "reward": {"escrow": escrow * TOKEN, "provider_stake": stake * TOKEN, "aggregator_stake": 10 * stake * TOKEN,
                   "validator_stake": 5 * stake * TOKEN if validators else 0,
                   "aggregator_fee": _fee(aggregator_fee, escrow * TOKEN // 50, rounds, "--aggregator-fee"),
                   "validator_fee": _fee(validator_fee, escrow * TOKEN // 100, rounds, "--validator-fee") if validators else 0,
                   "licence_requester_bps": owner_share},
        "participation": {"min_providers": providers, "max_providers": providers, "max_validators": validators},
        "deadlines": {"round_duration": round_duration, "challenge_period": challenge_period},
    }
    spec = JobSpec.parse(doc)
    try:
        out.write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from None
    typer.echo(f"wrote {out}: {spec.data.n_features} features, {spec.data.n_classes} classes "
               f"({', '.join(spec.data.classes[:6])}{', ...' if spec.data.n_classes > 6 else ''}), "
               f"model {spec.model.kind} with {spec.n_params} parameters")


def _fee(tokens: float | None, default_total: int, rounds: int, what: str = "a fee") -> int:
    """A fee per round in base units: `tokens` if given, else `default_total` spread over the rounds."""
    if tokens is None:
        return default_total // max(rounds, 1)
    if not math.isfinite(tokens):
        raise ConfigError(f"{what} must be a finite number of tokens (got {tokens:g})")
    if tokens < 0:
        raise ConfigError(f"{what} must not be negative (got {tokens:g})")
    return round(tokens * TOKEN)


@model_app.command("pack")
def model_pack(
    module: str = typer.Option(..., "--module", help="Your nn.Module as FILE.py:CLASS (built with no arguments) or FILE.py:FUNCTION."),
    spec: Path = typer.Option(..., "--spec", help="The job spec to make a torch job of (its data schema gives the input shape); rewritten in place."),
    store: str = typer.Option("fedmarket-blobs", "--store", help="Blob store the packed module goes to (the job's roles read it there)."),
    seed: int = typer.Option(0, "--seed", help="torch.manual_seed before building the module (its initial weights)."),
) -> None:
    """Pack your PyTorch module (architecture and initial weights) into the blob store and point the spec at it."""
    import importlib.util

    from ..fl.torch_models import pack_module, torch_module
    from ..spec import JobSpec
    from ..storage import open_store

    torch = torch_module()
    file, _, attr = module.rpartition(":")
    if not file or not attr or not Path(file).is_file():
        raise ConfigError(f"--module must be FILE.py:NAME of an existing file, got {module!r}")
    if not spec.is_file():
        raise ConfigError(f"spec file {spec} does not exist")
    job = JobSpec.parse(spec.read_bytes())
    mod_spec = importlib.util.spec_from_file_location(Path(file).stem, file)
    user = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(user)  # the requester's own code, on the requester's machine
    if not hasattr(user, attr):
        raise ConfigError(f"{file} defines no {attr}")
    torch.manual_seed(seed)
    net = getattr(user, attr)()
    packed = pack_module(net, job.data.shape, job.data.n_classes)
    from ..fl.torch_models import load_packed

    n_params = load_packed(packed, job.data.n_features, job.data.n_classes).n_params
    cid = open_store(store).put(packed)
    doc = job.model_dump(mode="json")
    doc["model"] = {"kind": "torch", "module_cid": cid, "n_params": n_params}
    spec.write_text(json.dumps(JobSpec.parse(doc).model_dump(mode="json"), indent=2) + "\n")
    typer.echo(f"packed {attr} ({n_params} parameters and buffers, {len(packed)} bytes) as {cid}; {spec} now names it")


@model_app.command("get")
def model_get(
    job: int = typer.Argument(..., help="The job."),
    rpc: str = RPC,
    contracts: Path = CONTRACTS,
    store: str = typer.Option("fedmarket-blobs", "--store", help="The job's blob store: a directory or ipfs+http://HOST:PORT."),
    out: Path = typer.Option(..., "--out", "-o", help="The model file: .npz, .pt (torch.export) or .onnx."),
    round_: int = typer.Option(None, "--round", help="A committed round (default: the last)."),
) -> None:
    """Write a job's trained model, verified against the model root committed on chain."""
    from ..chain import connect
    from ..market import Deployment
    from ..modelfile import save, trained_model
    from ..storage import open_store

    if out.suffix.lower() not in (".npz", ".pt", ".onnx"):
        raise ConfigError(f"--out must end in .npz, .pt or .onnx, got {out.name}")
    dep = Deployment.attach(connect(rpc), read_addresses(contracts))
    trained = trained_model(dep, open_store(store), job, round_)
    save(trained, out)
    typer.echo(f"job {job} round {trained.round}: model root 0x{trained.model_root.hex()} verified; wrote {out} "
               f"({trained.spec.model.kind}, {trained.spec.n_params} parameters)")


@model_app.command("predict")
def model_predict(
    model: Path = typer.Option(..., "--model", help="A model file written by `fedmarket model get`."),
    data: Path = DATA,
    label: str = typer.Option(None, "--label", help="The label column, if the file has one: accuracy is printed too."),
    out: Path = typer.Option(None, "--out", "-o", help="CSV of predictions (default: print them)."),
) -> None:
    """Predict the class of every row of a data file."""
    from types import SimpleNamespace

    from ..fl.localdata import encode_labels, read_data
    from ..modelfile import Predictor

    if model.is_dir():
        raise ConfigError(f"model file {model} is a directory")
    pred = Predictor(model)
    sample = read_data(data, label, shape=tuple(pred.meta["input_shape"]) if len(pred.meta["input_shape"]) == 3 else None)
    X = sample.X
    if pred.features and sample.features:
        missing = [f for f in pred.features if f not in sample.features]
        if missing:
            raise ConfigError(f"{data} lacks the model's feature column(s): {', '.join(missing[:5])}")
        X = X[:, [sample.features.index(f) for f in pred.features]]
    classes = pred.classes
    finite = np.isfinite(np.asarray(X, dtype=np.float64))
    if not finite.all():
        row = int(np.argmax(~finite.reshape(len(finite), -1).all(axis=1)))
        raise ConfigError(f"{data}: {int((~finite).sum())} feature value(s) are NaN or infinite (first in row {row})")
    if sample.labels is not None:  # the roles' check: every label one of the model's classes
        encode_labels(sample.labels, SimpleNamespace(classes=list(classes), n_classes=len(classes)), data)
    names = [classes[i] for i in pred.predict(X)]
    if out is not None:
        out.write_text("prediction\n" + "".join(f"{n}\n" for n in names))
        typer.echo(f"wrote {len(names)} predictions to {out}")
    else:
        for n in names:
            typer.echo(n)
    if sample.labels is not None:
        acc = float(np.mean(np.asarray(names, dtype=object) == sample.labels))
        typer.echo(f"accuracy {acc:.4f} on {len(names)} rows", err=out is None)


@model_app.command("info")
def model_info(
    job: int = typer.Argument(..., help="The job."),
    rpc: str = RPC,
    contracts: Path = CONTRACTS,
) -> None:
    """Print a job model's record on the model market (JSON): its listed root and offer, queries
    settled, gross and contributors' revenue, disputes lost."""
    from ..chain import connect
    from ..market import Deployment
    from ..roles.model_owner import model_record

    dep = Deployment.attach(connect(rpc), read_addresses(contracts))
    typer.echo(json.dumps(model_record(dep, job), indent=2))


@model_app.command("audit-usage")
def model_audit_usage(
    job: int = typer.Argument(..., help="The job."),
    server: str = typer.Option(..., "--server", help="The server whose pending usage root to check."),
    rpc: str = RPC,
    contracts: Path = CONTRACTS,
    store: str = typer.Option("fedmarket-blobs", "--store", help="Blob store the server publishes its leaves to."),
    account: str = typer.Option(None, "--account", help="Prove what is wrong, signing as this keystore account (else only check)."),
    keystore: Path = KEYSTORE,
    dev_account: int = typer.Option(None, "--dev-account", help="Prove, signing as anvil's public dev account I (chain id 31337 only)."),
) -> None:
    """Check a server's pending usage root (tabs) against its published leaves: their order, every
    caller's signature and tab, and the final root; with a signer, prove the first fault on chain
    (the signer puts up a challenge bond where a challenge is needed). Exit 3 if a fault is found."""
    from eth_utils import is_address, to_checksum_address

    from ..chain import connect
    from ..market import Deployment
    from ..roles.tabs import audit_usage
    from ..storage import open_store
    from .account import load_signer

    if not is_address(server):
        raise ConfigError(f"--server: not an address: {server!r}")
    dep = Deployment.attach(connect(rpc), read_addresses(contracts))
    act = account is not None or dev_account is not None
    signer = load_signer(account, keystore, dev_account, dep.chain) if act else None
    findings = audit_usage(dep, signer, open_store(store), job, to_checksum_address(server), act=act)
    typer.echo(json.dumps({"job_id": job, "server": server, "findings": findings, "proven": act and bool(findings)}))
    if findings:
        raise typer.Exit(3)




@model_app.command("buy")
def model_buy(
    job: int = typer.Argument(..., help="The listed job."),
    rpc: str = RPC,
    contracts: Path = CONTRACTS,
    queries: int = typer.Option(None, "--queries", help="Prepay this many query credits (any server)."),
    tab: float = typer.Option(None, "--tab", help="Fund a tab at --server with this many tokens."),
    access: int = typer.Option(None, "--access", help="Buy this many periods of time-bound access."),
    server: str = typer.Option(None, "--server", help="The server a tab pays (its address)."),
    account: str = ACCOUNT,
    keystore: Path = KEYSTORE,
    dev_account: int = DEV_ACCOUNT,
) -> None:
    """Pay for a listed model: query credits, a tab at one server, or time-bound access."""
    from eth_utils import is_address, to_checksum_address

    from ..chain import connect
    from ..market import Deployment
    from ..roles.caller import ModelCaller
    from .account import load_signer

    if sum(x is not None for x in (queries, tab, access)) != 1:
        raise ConfigError("give exactly one of --queries N, --tab TOKENS or --access PERIODS")
    if tab is not None and (server is None or not is_address(server)):
        raise ConfigError("--tab needs --server ADDRESS: a tab pays one server")
    if (queries is not None and queries <= 0) or (access is not None and access <= 0) or (tab is not None and tab <= 0):
        raise ConfigError("the amount to buy must be positive")
    dep = Deployment.attach(connect(rpc), read_addresses(contracts))
    signer = load_signer(account, keystore, dev_account, dep.chain)
    caller = ModelCaller(dep, signer, job, to_checksum_address(server) if server else signer.address, count=0)
    if queries is not None:
        r, what = caller.buy(queries), f"{queries} query credits"
    elif tab is not None:
        amount = round(tab * 10**18)
        r, what = caller.fund(amount), f"a tab of {amount} base units at {server}"
    else:
        r, what = caller.buy_access(access), f"{access} period(s) of access"
    typer.echo(f"bought {what} on job {job} (tx {r.tx_hash})")


def _utc(timestamp: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


@model_app.command("refund")
def model_refund(
    job: int = typer.Argument(..., help="The listed job."),
    server: str = typer.Option(..., "--server", help="The server the tab pays (its address)."),
    rpc: str = RPC,
    contracts: Path = CONTRACTS,
    store: str = typer.Option("fedmarket-blobs", "--store", help="Blob store the server publishes its usage leaves to."),
    declare: int = typer.Option(None, "--declare", help="Ask declaring you spent this much, in base units: the `spent` "
                                                        "of the latest Tab you signed at the server (when its usage "
                                                        "leaves are withheld)."),
    account: str = ACCOUNT,
    keystore: Path = KEYSTORE,
    dev_account: int = DEV_ACCOUNT,
) -> None:
    """Take back what you did not spend of a tab: the first run asks (the server then answers no
    more queries on the tab, and the refund is due a day later); a run once it is due takes it."""
    from eth_utils import is_address, to_checksum_address

    from ..chain import connect
    from ..market import Deployment
    from ..roles.tabs import declare_spent, refund_due, refund_tab, request_refund
    from ..storage import open_store
    from .account import load_signer

    if not is_address(server):
        raise ConfigError(f"--server: not an address: {server!r}")
    if declare is not None and declare < 0:
        raise ConfigError("--declare: the spending declared cannot be negative")
    server = to_checksum_address(server)
    dep = Deployment.attach(connect(rpc), read_addresses(contracts))
    signer = load_signer(account, keystore, dev_account, dep.chain)
    due = refund_due(dep, job, server, signer.address)
    if due is None:
        if declare is not None:
            r = declare_spent(dep, signer, job, server, declare)
            due = r.event("SpentDeclared")["release_time"]
        else:
            r = request_refund(dep, signer, job, server)
            due = r.event("TabRefundRequested")["release_time"]
        typer.echo(f"refund of the tab at {server} requested (tx {r.tx_hash}); due at {_utc(due)}: run this again then")
        return
    if declare is not None:
        raise ConfigError("a refund is already requested on this tab: take it once due (without --declare)")
    now = max(dep.chain.timestamp(), int(time.time()))
    if now < due:
        typer.echo(f"refund requested already; due in {due - now} s (at {_utc(due)}): run this again then")
        return
    r = refund_tab(dep, signer, open_store(store), job, server)
    typer.echo(f"refunded {r.event('TabRefunded')['amount']} base units of the tab at {server} (tx {r.tx_hash})")


@model_app.command("query")
def model_query(
    url: str = typer.Option(..., "--url", help="The model server (`fedmarket serve`), e.g. http://127.0.0.1:8750."),
    rpc: str = RPC,
    contracts: Path = CONTRACTS,
    features: str = typer.Option(None, "--features", help="The query's features, comma-separated."),
    data: Path = typer.Option(None, "--data", help="Or a data file: its --row is the query."),
    row: int = typer.Option(0, "--row", help="The row of --data to ask about."),
    pay: str = typer.Option("credits", "--pay", help="credits, tab or access."),
    prove: bool = typer.Option(False, "--prove", help="Ask for a proof of the answer (checked here against the registered verifier)."),
    max_price: int = typer.Option(None, "--max-price", help="With --pay tab: the most (base units) this query may cost; default the price of your last tab query there."),
    state_dir: Path = typer.Option(None, "--state-dir", help="Where the usage you signed at each server is kept (default ./fedmarket-state/caller-ADDRESS)."),
    account: str = ACCOUNT,
    keystore: Path = KEYSTORE,
    dev_account: int = DEV_ACCOUNT,
) -> None:
    """Ask a model server one paid query; print its answer (JSON) after checking the server signed it.
    The next receipt builds on the usage you signed there (kept in --state-dir), never on the
    server's word."""
    from ..chain import connect
    from ..market import Deployment
    from ..roles.caller import ModelCaller, ask, server_info
    from .account import load_signer

    if (features is None) == (data is None):
        raise ConfigError("give the query as exactly one of --features v1,v2,... or --data FILE [--row I]")
    if features is not None:
        try:
            x = [float(v) for v in features.split(",")]
        except ValueError:
            raise ConfigError(f"--features must be numbers separated by commas, not {features!r}") from None
    else:
        from ..fl.localdata import read_data

        X = read_data(data, None).X
        if not 0 <= row < len(X):
            raise ConfigError(f"{data} has {len(X)} rows; --row {row} is not one")
        x = [float(v) for v in np.asarray(X[row]).ravel()]
    info = server_info(url)
    dep = Deployment.attach(connect(rpc), read_addresses(contracts))
    if dep.model_market is None or dep.model_market.address.lower() != str(info["model_market"]).lower():
        raise ConfigError(f"the server at {url} serves another model market than {contracts}'s")
    signer = load_signer(account, keystore, dev_account, dep.chain)
    if state_dir is not None and state_dir.exists() and not state_dir.is_dir():
        raise ConfigError(f"--state-dir {state_dir} is not a directory")
    record = (state_dir or Path("fedmarket-state") / f"caller-{signer.address}") / "usage.json"
    caller = ModelCaller(dep, signer, int(info["job_id"]), info["server"], count=0, record=record)
    reply = ask(url, caller, x, pay=pay, prove=prove, max_price=max_price)
    if prove:
        from ..roles.proofs import check_proven

        check_proven(dep, int(info["job_id"]), info["server"], reply, len(info["classes"]), int(info["input_scale"]))
    typer.echo(json.dumps({k: reply[k] for k in ("answer", "label", "count", "checked_answer") if k in reply}
                          | {"proven": prove}))
