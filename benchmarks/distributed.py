"""Benchmark: one job with every role in its own OS process on anvil, against the same job in one
process on the embedded EVM; prints one JSON object.

The role processes (`python -m fedmarket <role> run`, started by `fedmarket.testing.localjob`)
reach anvil through a counting JSON-RPC proxy. A round's time is measured from training start
to the last `RoundCommitted` (wall clock, as seen by a watcher polling the node directly);
`tx_per_round` and `rpc_calls_per_round` count what the proxy forwarded in that window. The
in-process figure is `runner.run_job` on titanoboa for the same job shape in the same run
(the machines here are shared and noisy: compare the ratio, not the absolute seconds).

`--transport nats` runs the role processes on a NATS JetStream server (a real `nats-server -js`
on 127.0.0.1) instead of a shared directory: each role writes only in a home of its own, and
`shared_dirs` counts the directories that more than one role wrote (the blob store and every
mailbox topic with `directory`; the goal with `nats` is 0). `--netns` (root) puts every role, the
chain and the broker in a Linux network namespace of its own (`fedmarket.testing.netns`).

`--transport flower` runs the rounds on Flower's Deployment Engine: the aggregator runs
`fedmarket aggregator serve-flower` (its SuperLink, the market's ServerApp and its own process),
each provider `fedmarket provider supernode` (a SuperNode that only connects out), and blobs and
the remaining messages go through the NATS broker, as with `nats`. In the same run, the same
training as a plain Flower app (no market: no signing, blobs or chain; `flower_engine.py`'s
baseline) runs on a SuperLink in the aggregator's place and a SuperNode in each provider's
(`flower_native_s_per_round`, between consecutive aggregations, round 0 left out).

`--privacy` runs the job in another privacy mode (`secagg`, `secagg_dp`: SecAgg+ across the
provider processes; they need `--validators` >= 1). `--dropout F` kills that fraction of the
provider processes (SIGKILL) as soon as training starts: the rounds go on without them (a secure
round after its phases' timeouts, a tenth of `--round-duration` each), and they never claim; the
in-process baseline drops the same fraction each round.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path


def distributed(args) -> dict:
    import contextlib

    from fedmarket.chain.anvil import AnvilNode
    from fedmarket.testing.localjob import LocalJob, RpcProxy
    from fedmarket.testing.natsserver import NatsServer

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        prefix, flower = None, ""
        if args.netns:  # every role, the chain and the broker in a network namespace of its own
            from fedmarket.testing.netns import LabServices, NetLab

            lab = stack.enter_context(NetLab())
            services = stack.enter_context(LabServices(lab, Path(tmp) / "broker"))
            node_url, broker, prefix = services.rpc_url, services.broker.url, lab.exec
            proxy = stack.enter_context(RpcProxy(node_url, host=lab.harness))
            names = ["requester", "aggregator", *(f"validator-{i}" for i in range(args.validators)),
                     *(f"provider-{i}" for i in range(args.providers))]
            hosts = {name: lab.add(name) for name in names}
            if args.transport == "flower":
                flower = f"{hosts['aggregator']}:9092"
        else:
            node_url = stack.enter_context(AnvilNode(fixed_interval=False)).url
            proxy = stack.enter_context(RpcProxy(node_url))
            broker = stack.enter_context(NatsServer(Path(tmp) / "broker")).url if args.transport != "directory" else ""
            if args.transport == "flower":
                from fedmarket.transport.flower_nodes import free_port

                flower = f"127.0.0.1:{free_port()}"
        job = LocalJob.make(Path(tmp) / "job", node_url, rpc_url=proxy.url, providers=args.providers,
                            validators=args.validators, rounds=args.rounds, local_epochs=args.local_epochs,
                            poll=args.poll, collect_timeout=args.collect_timeout, broker=broker, prefix=prefix,
                            privacy=args.privacy, round_duration=args.round_duration, flower=flower)
        job.setup()
        time.sleep(0.05)  # file times come from a coarse clock: setup's writes stay before `wall_t0`
        t0, wall_t0 = time.monotonic(), time.time()
        try:
            job.start_all()
            job.wait(lambda: job.dep.job(job.job_id)["state"].name != "OPEN", 600, "training to start", poll=0.02)
            t_start, wall_start = time.monotonic(), time.time()
            dropped = [f"provider-{i}" for i in range(int(args.dropout * args.providers))]
            for name in dropped:  # gone for good, mid-job
                job.kill(name)
            commits: list[float] = []  # wall clock when the watcher saw each round committed

            def seen() -> bool:
                n = job.committed()
                while len(commits) < n:
                    commits.append(time.time())
                return n >= args.rounds

            job.wait(seen, 600, "every round", poll=0.02)
            t_end = time.monotonic()
            job.wait_done(timeout=600)
            t_done = time.monotonic()
        finally:
            job.stop_all()
        rep = job.report()
        native = native_flower(job, args, Path(tmp), lab if args.netns else None, flower) if flower else None
        r = args.rounds
        shared = job.shared_writes(wall_t0)
        # where a round's time goes: from the previous commit to the last update posted (providers
        # see the round, fetch the model, train, post), then to the commit (the aggregator verifies,
        # aggregates, sends one transaction); message times are the mailbox files' mtimes (directory only)
        from fedmarket.roles.common import round_topic

        to_last_update, to_commit = [], []
        for i in range(r if not broker else 0):
            files = [p for p in (job.workdir / "mailbox" / round_topic(job.job_id, i)).iterdir() if not p.name.startswith(".")]
            last = max(p.stat().st_mtime for p in files)
            to_last_update.append(last - (commits[i - 1] if i else wall_start))
            to_commit.append(commits[i] - last)
        return {
            "transport": args.transport + ("+nats" if args.transport == "flower" else "") + ("+netns" if args.netns else ""),
            "flower_native_s_per_round": round(statistics.median(native), 3) if native else None,
            "flower_native_worst_s_per_round": round(max(native), 3) if native else None,
            "shared_dirs": sum(1 for d in shared if d.split("/")[0] in ("blobs", "mailbox")) if not broker else len(shared),
            "s_per_round": round((t_end - t_start) / r, 3),
            # commit to commit, round 0 left out: how the Flower baseline's rounds are timed
            "median_s_between_commits": round(statistics.median(b - a for a, b in zip(commits, commits[1:])), 3)
            if len(commits) > 1 else None,
            "tx_per_round": round(proxy.count("eth_sendRawTransaction", t_start, t_end) / r, 2),
            "rpc_calls_per_round": round(proxy.count(None, t_start, t_end) / r, 1),
            "rpc_methods_per_round": {m: round(n / r, 1) for m, n in sorted(collections.Counter(
                m for t, m in proxy.log if t_start <= t <= t_end).items(), key=lambda kv: -kv[1])[:6]},
            "median_s_to_last_update": round(statistics.median(to_last_update), 3) if to_last_update else None,
            "median_s_last_update_to_commit": round(statistics.median(to_commit), 3) if to_commit else None,
            "startup_s": round(t_start - t0, 1),  # post + every process up, joined, training started
            "settle_and_claims_s": round(t_done - t_end, 1),
            "job_total_s": round(t_done - t0, 1),
            "job_tx_total": proxy.count("eth_sendRawTransaction"),
            "job_rpc_calls_total": proxy.count(None),
            "updates_per_round": rep["round_counts"],
            "privacy": args.privacy,
            "dropped_providers": len(dropped),
            "all_claimed": rep["claimed"] == rep["participants_claimable"],
            "live_claimed": set(rep["participants_claimable"]) - set(rep["claimed"])
            == {job.provider_accts[int(n.split("-")[1])].address for n in dropped},
            # every token on a watched account or in the market; unclaimed leaves wait for the sweep
            "conserved": rep["holdings_conserved"] and (bool(dropped) or rep["escrow"] == rep["paid"] + rep["fee"] + rep["refunded"]),
        }


def native_flower(job, args, tmp: Path, lab, address: str) -> list[float]:
    """The job's training as a plain Flower app on a SuperLink where the aggregator's was and a
    SuperNode in each provider's place (namespace); the seconds between consecutive aggregations."""
    from flower_engine import native_app, native_rounds

    from fedmarket.transport.flower import app_hash
    from fedmarket.transport.flower_nodes import SuperLink, SuperNode, stop_all

    host, port = address.rsplit(":", 1)
    (tmp / "spec.json").write_bytes(job.spec.canonical())
    baseline = native_app(tmp)
    link = SuperLink(tmp / "native-link", int(port), host, prefix=lab.exec("aggregator") if lab else [])
    services = [link.start()]
    try:
        link.wait_ready()
        for i in range(args.providers):
            cfg = {"data": str(job.workdir / "data" / f"provider-{i}.npz"), "dev-account": 40 + i}
            node = SuperNode(tmp / f"native-node-{i}", address, cfg, app_hash(baseline),
                             prefix=lab.exec(f"provider-{i}") if lab else [])
            services.append(node.start())
        return native_rounds(tmp, link, baseline, args.providers, args.rounds)
    finally:
        stop_all(reversed(services))


def inprocess(args) -> float:
    from fedmarket.chain.boa_backend import BoaChain
    from fedmarket.runner import JobConfig, run_job

    marks: dict[str, float] = {}

    def tick(stage: str, done: int, total: int) -> None:
        if done == total:
            marks[stage] = time.perf_counter()

    cfg = JobConfig(providers=args.providers, rounds=args.rounds, local_epochs=args.local_epochs,
                    validators=args.validators, privacy=args.privacy, dropout=args.dropout)
    with tempfile.TemporaryDirectory() as tmp:
        run_job(BoaChain(), tmp, cfg, tick)
    return (marks["rounds"] - marks["join"]) / args.rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--providers", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--validators", type=int, default=0, help="validator processes (and validators in-process)")
    ap.add_argument("--local-epochs", type=int, default=1)
    ap.add_argument("--poll", type=float, default=0.2, help="seconds between two steps of each role process")
    ap.add_argument("--collect-timeout", type=float, default=30.0)
    ap.add_argument("--transport", choices=("directory", "nats", "flower"), default="directory",
                    help="what the role processes share: a directory, a NATS JetStream server (no shared directory), "
                         "or Flower's Deployment Engine for the rounds with NATS for the rest")
    ap.add_argument("--netns", action="store_true",
                    help="with --transport nats: every role, the chain and the broker in a network namespace of its own (root)")
    ap.add_argument("--privacy", choices=("plain", "dp_local", "secagg", "secagg_dp"), default="plain")
    ap.add_argument("--dropout", type=float, default=0.0, help="fraction of provider processes killed when training starts")
    ap.add_argument("--round-duration", type=int, default=600, help="seconds a round may take (the job's deadline)")
    args = ap.parse_args()
    if args.privacy.startswith("secagg") and args.validators < 1:
        ap.error(f"--privacy {args.privacy} needs --validators >= 1 (they re-derive each round's mask correction)")
    if not 0 <= args.dropout < 1:
        ap.error("--dropout must be in [0, 1)")
    if args.netns and args.transport == "directory":
        ap.error("--netns needs --transport nats or flower (roles in separate namespaces share no directory)")
    if args.transport == "flower" and (args.privacy != "plain" or args.validators):
        ap.error("--transport flower runs plain jobs without validators here")
    out: dict = {"providers": args.providers, "rounds": args.rounds, "validators": args.validators,
                 "local_epochs": args.local_epochs, "poll_s": args.poll, "dropout": args.dropout}
    out.update(distributed(args))
    out["inprocess_s_per_round"] = round(inprocess(args), 3)
    out["ratio"] = round(out["s_per_round"] / out["inprocess_s_per_round"], 2)
    out["goals"] = {"s_per_round_le_2x_inprocess": out["ratio"] <= 2.0, "tx_per_round_le_4": out["tx_per_round"] <= 4,
                    "shared_dirs_0": out["shared_dirs"] == 0}
    if out.get("flower_native_s_per_round"):
        # like for like: both timed between consecutive rounds' results, round 0 (the apps' start) left out
        out["ratio_to_flower_native"] = round(out["median_s_between_commits"] / out["flower_native_s_per_round"], 2)
        out["goals"]["s_per_round_le_1_5x_flower_native"] = out["ratio_to_flower_native"] <= 1.5
    print(json.dumps(out))


if __name__ == "__main__":
    main()
