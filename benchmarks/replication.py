"""Does splitting one data set across several accounts raise its pay? Real market jobs on the embedded
chain, scored and paid by the market's own path; prints one JSON object.

    python benchmarks/replication.py --seeds 0-4          # about 2-3 minutes

Each job: digits, 3 rounds of 1 local epoch, escrow 100 tokens, 3 validators (disjoint thirds of
the held-out split) that score every round with the validators' own code (`roles.validator`:
`scoring.score_round`, exact Shapley up to 12 providers, `neg_loss`) and reveal; the reward root is
the scores-basis document every role derives (`roles.settlement.reward_document`), approved by the
validators and claimed on chain. The training split is cut IID (seed) into 5 shares: 4 honest
providers hold one each, and the fifth share, "the data set", is held either by one account
(k = 1) or cut IID into k disjoint pieces held by k accounts (k = 2, 4, 8: 6 to 12 providers).
`pay[k]` is what the data set's accounts claimed in total (tokens, from `RewardClaimed` events);
`replication_gain[k] = pay[k] / pay[1]` (goal: at most 1 for every k), as the median and the
worst (largest) over the seeds. `others_pay` is the mean claim of the 4 other providers,
`least_account_pay` the smallest claim among the data set's accounts (with k = 8 each holds about
34 images: a small honest provider, paid more than 0 if its marginal value is positive).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from shapley import parse_seeds  # the sibling benchmark's seed list syntax (this directory is on sys.path)

from fedmarket.chain.boa_backend import BoaChain
from fedmarket.driver import Cast, JobDriver, fund
from fedmarket.fl.data import load_dataset, subset, train_test_split
from fedmarket.fl.partition import iid_partition
from fedmarket.market import Deployment
from fedmarket.roles import Aggregator, Provider, Requester, Validator
from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, RewardSpec, TrainingSpec
from fedmarket.storage import LocalBlobStore, Mailbox

TOKEN = 10**18
OTHERS, VALIDATORS, ROUNDS, KS = 4, 3, 3, (1, 2, 4, 8)


def spec(n_providers: int) -> JobSpec:
    return JobSpec(
        name=f"replication: {n_providers} providers",
        data=DataSchema(n_features=64, n_classes=10, feature_low=[0.0] * 64, feature_high=[16.0] * 64),
        training=TrainingSpec(rounds=ROUNDS, local_epochs=1),
        reward=RewardSpec(escrow=100 * TOKEN, provider_stake=10 * TOKEN, aggregator_stake=50 * TOKEN,
                          validator_stake=10 * TOKEN, dispute_bond=TOKEN),
        participation=ParticipationSpec(min_providers=n_providers, max_providers=n_providers, max_validators=VALIDATORS),
    )


def one_job(chain, dep, accounts: dict, workdir: Path, shares: list, held: list) -> dict[str, int]:
    """Run one job with the given providers' data; every provider's claim (base units)."""
    store, box = LocalBlobStore(workdir / "blobs"), Mailbox(workdir / "box")
    providers = [Provider(dep, a, store, box, d.X, d.y) for a, d in zip(accounts["providers"], shares)]
    validators = [Validator(dep, a, store, box, h.X, h.y) for a, h in zip(accounts["validators"], held)]
    cast = Cast(Requester(dep, accounts["requester"], store), Aggregator(dep, accounts["aggregator"], store, box),
                providers, validators)
    driver = JobDriver(dep, store, box, cast, spec(len(providers)))
    driver.run()
    claimed = {e["account"]: int(e["amount"]) for e in dep.market.events("RewardClaimed", job_id=driver.job_id)}
    return {p.address: claimed.get(p.address, 0) for p in providers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--share", default="round", choices=["round", "coalition"],
                    help="the validators' scoring game: round (what roles/validator.py uses) or coalition (the rule before, for comparison)")
    args = ap.parse_args()
    if args.share != "round":  # for comparison only: the validators score against each coalition's FedAvg
        import functools

        from fedmarket.roles import validator
        from fedmarket.scoring import score_round

        validator.score_round = functools.partial(score_round, share=args.share)
    t0 = time.perf_counter()
    chain = BoaChain()
    acct = lambda i: chain.new_account("replication", i)
    deployer, treasury = acct(0), acct(1)
    accounts = {"requester": acct(2), "aggregator": acct(3), "providers": [acct(100 + i) for i in range(OTHERS + max(KS))],
                "validators": [acct(200 + i) for i in range(VALIDATORS)]}
    dep = Deployment.deploy(chain, deployer, treasury.address, fee_bps=100, unbonding_delay=1_000)
    everyone = [accounts["requester"], accounts["aggregator"], *accounts["providers"], *accounts["validators"]]
    fund(dep, deployer, {a.address: 1_000 * TOKEN for a in everyone})
    train, test = train_test_split(load_dataset("digits"), 0.25, 0)
    held = [subset(test, i) for i in np.array_split(np.arange(test.n_samples), VALIDATORS)]
    seeds = parse_seeds(args.seeds)
    pay = {k: [] for k in KS}
    others = {k: [] for k in KS}
    least = {k: [] for k in KS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            parts = iid_partition(train.y, OTHERS + 1, seed)
            mine = parts[OTHERS]
            for k in KS:
                pieces = [mine[p] for p in iid_partition(train.y[mine], k, seed)] if k > 1 else [mine]
                shares = [subset(train, p) for p in [*parts[:OTHERS], *pieces]]
                with chain.snapshot():
                    got = one_job(chain, dep, accounts, Path(tmp) / f"s{seed}k{k}", shares, held)
                amounts = list(got.values())
                pay[k].append(sum(amounts[OTHERS:]) / TOKEN)
                others[k].append(float(np.mean(amounts[:OTHERS])) / TOKEN)
                least[k].append(min(amounts[OTHERS:]) / TOKEN)
    gain = {k: [p / b for p, b in zip(pay[k], pay[1])] for k in KS if k > 1}
    out = {
        "seeds": seeds,
        "share": args.share,
        "pay": {str(k): [round(x, 6) for x in v] for k, v in pay.items()},
        "others_pay": {str(k): [round(x, 6) for x in v] for k, v in others.items()},
        "least_account_pay": {str(k): [round(x, 6) for x in v] for k, v in least.items()},
        "replication_gain": {str(k): {"median": round(float(np.median(v)), 4), "worst": round(max(v), 4)}
                             for k, v in gain.items()},
        "goal_met": all(max(v) <= 1.0 for v in gain.values()),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
