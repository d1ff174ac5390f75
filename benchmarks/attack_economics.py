"""Does cheating pay, and can griefing cost the honest anything? Every attack of the engine's catalogue
run by market providers, every cheat the chain can prove, and the griefing attacks of
docs/security.md, each in its own small job on the embedded chain, driven end to end by
`fedmarket.driver.JobDriver` (the one in-process job driver) with cheating subclasses of the
roles; every profit is read from chain balances.

    python benchmarks/attack_economics.py --seeds 0-4   # about a minute a seed; prints one JSON object

Each job: digits, 5 providers (IID shares of the training split), 3 validators (disjoint thirds of
the held-out split), 3 rounds of 1 local epoch, escrow 100 tokens, stakes 10 (provider), 50
(aggregator), 10 (validator), dispute bond 1, fees 1 token per committed round (aggregator) and 0.5
per attested round (each validator); a watcher runs the challenger role. The seed (``--seeds``, every
figure is reported per seed and as the median and worst over them) sets the train / held-out split,
the providers' partition and the attackers' randomness. A lone attack has
1 attacker among the 5 providers; the colluding ones ("alie", "sybil") have 2 accounts of one
attacker. Validators flag and score every round, report providers flagged in most rounds, and a
two-thirds supermajority slashes them (the driver's flow).

"attacks": attacker_profit = rewards received - stake slashed, read as the change of the attacker's
holdings (wallet + free stake) from before joining to after every claim: nothing else is counted (no
gas, no training compute, no share of another's slashed stake). For a colluding attack it is the sum
over the attacker's accounts (one attacker, one data set: compare it with ONE honest provider).
honest_profit = the mean profit of the honest providers of the same job (goal: attacker_profit below
the lowest of them, honest_profit_min); for a provable cheat, an honest participant of the same
role: the aggregator of an honest job (0: it is paid nothing, its stake comes back) or, for
equivocation, the honest validators of the same job; goal: below that and below zero.
same_accounts_if_honest: what the attacker's accounts earned in the honest job.
"honest_job": what the honest roles earn, gas included (at the price below): aggregator_profit and
validator_profit (the mean over the job's validators) must be above 0 -- every role is paid for its
work. "copy": a fifth provider copies the first one's update every round as soon as it is revealed
(testing.adversary.CopyingProvider); copy_victim_share = what the victim earns then / what it earns
in the honest job (goal >= 0.8), and the copier's profit is judged like any attack. Besides the
catalogue's defaults: its other free-rider mode (noise, sigma 1e-3) and Sybil copies of an honest
update. "beyond_catalogue" holds two evasions tuned to the detection thresholds
(testing.adversary: JitteredSybil, LoudFreeRider); they are reported but not part of goal_met.

"griefing": attacks that aim to make an honest party pay, each with
  honest_loss = the tokens the job's honest parties (providers, validators, the aggregator and the
    watcher that are not the attacker) end with below what they held before it, summed: stakes,
    bonds, anything (forgone pay is not a loss: a job failed by absent validators refunds everyone);
    the requester, who buys the model, is not counted (it never pays more than its escrow);
  attacker_profit = the attacker's holdings change (all its accounts) minus the gas of every
    transaction its accounts sent, counted in tokens at a gas price of 1 gwei and 1 token per ether
    (1 unit of gas = 1e9 token base units); gas is what a silent provider loses, nothing else.
The cases: "withheld_attestations" (two of three validators never vote: the round never reaches
quorum, and at its deadline they are slashed), "withheld_updates" (two of five providers never send
an update: the rounds go on without them), "broken_data_validator" (a validator whose data does not
fit the schema joins anyway, skipping the role's check, and can never vote: one of two, so the round
fails at its deadline and it is slashed), "self_paying_root" (in a job without validators the
aggregator posts a root paying itself the pool: proven wrong, slashed, the root replaced by a
provider) and "false_challenge" (the watcher disputes an honest aggregator's right round and loses
its bond). Goal: honest_loss 0 and attacker_profit below 0 in every case.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedmarket.chain.boa_backend import BoaChain
from fedmarket.driver import Cast, JobDriver, fund
from fedmarket.fl.attacks import ATTACKS, Attack, FreeRider, Sybil
from fedmarket.fl.data import load_dataset, subset, train_test_split
from fedmarket.fl.partition import iid_partition
from fedmarket.market import Deployment
from fedmarket.roles import Aggregator, Provider, Requester, Validator
from fedmarket.roles.challenger import Challenger
from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, RewardSpec, TrainingSpec
from fedmarket.storage import LocalBlobStore, Mailbox
from fedmarket.testing.adversary import (
    AdversarialProvider,
    CopyingProvider,
    BrokenDataValidator,
    Coalition,
    DroppingAggregator,
    EquivocatingValidator,
    FalseChallenger,
    JitteredSybil,
    LoudFreeRider,
    SelfPayingAggregator,
    ShiftyAggregator,
    SilentProvider,
    SilentValidator,
)

TOKEN = 10**18
GAS_PRICE = 10**9  # wei per gas (1 gwei), and 1 token per ether: a unit of gas costs 1e9 token base units
N_PROVIDERS, N_VALIDATORS, ROUNDS = 5, 3, 3
ESCROW, PROV_STAKE, AGG_STAKE, VAL_STAKE, BOND = 100 * TOKEN, 10 * TOKEN, 50 * TOKEN, 10 * TOKEN, TOKEN
COLLUDING = {"alie": 2, "sybil": 2}
AGG_FEE, VAL_FEE = TOKEN, TOKEN // 2  # per committed round, per attested round


class MeteredChain(BoaChain):
    """The embedded chain, counting the gas each account's transactions used."""

    def __init__(self) -> None:
        super().__init__()
        self.gas: dict[str, int] = {}

    def _send(self, sender, to, data, value=0):
        raw = super()._send(sender, to, data, value)
        self.gas[sender.address] = self.gas.get(sender.address, 0) + raw.gas_used
        return raw


@dataclass
class World:
    chain: MeteredChain
    dep: Deployment
    deployer: object
    requester: object
    aggregator: object
    watcher: object
    treasury: object
    providers: list
    validators: list
    train: object = None
    parts: list = field(default_factory=list)
    held: list = field(default_factory=list)
    seed: int = 0

    @property
    def accounts(self) -> list:
        return [self.requester, self.aggregator, self.watcher, self.treasury, *self.providers, *self.validators]


def make_world(seed: int = 0) -> World:
    chain = MeteredChain()
    acct = lambda i: chain.new_account("attack-economics", i)
    deployer, treasury, req, agg, watcher = (acct(i) for i in range(5))
    providers = [acct(100 + i) for i in range(N_PROVIDERS)]
    validators = [acct(200 + i) for i in range(N_VALIDATORS)]
    dep = Deployment.deploy(chain, deployer, treasury.address, fee_bps=100, unbonding_delay=1_000)
    fund(dep, deployer, {a.address: 1_000 * TOKEN for a in [req, agg, watcher, *providers, *validators]})
    ds = load_dataset("digits")
    train, test = train_test_split(ds, 0.25, seed)
    held = [subset(test, i) for i in np.array_split(np.arange(test.n_samples), N_VALIDATORS)]
    return World(chain, dep, deployer, req, agg, watcher, treasury, providers, validators, train,
                 iid_partition(train.y, N_PROVIDERS, seed), held, seed)


def job_spec(name: str, n_validators: int) -> JobSpec:
    return JobSpec(
        name=f"attack economics: {name}",
        data=DataSchema(n_features=64, n_classes=10, feature_low=[0.0] * 64, feature_high=[16.0] * 64),
        training=TrainingSpec(rounds=ROUNDS, local_epochs=1),
        reward=RewardSpec(escrow=ESCROW, provider_stake=PROV_STAKE, aggregator_stake=AGG_STAKE,
                          validator_stake=VAL_STAKE if n_validators else 0, dispute_bond=BOND,
                          aggregator_fee=AGG_FEE, validator_fee=VAL_FEE if n_validators else 0),
        participation=ParticipationSpec(min_providers=N_PROVIDERS, max_providers=N_PROVIDERS, max_validators=n_validators),
    )


def run_job(w: World, workdir: Path, name: str, *, attack: Attack | str | None = None, provider_cls=None,
            aggregator_cls=Aggregator, validator_cls=None, challenger_cls=Challenger, n_validators: int = N_VALIDATORS,
            validator_data=None, plans=None, setup=None) -> dict:
    """One job through `JobDriver.run`, from posting to the last claim (or its failure and every stake
    released); every account's profit and gas from the chain."""
    dep = w.dep
    store, box = LocalBlobStore(workdir / "blobs"), Mailbox(workdir / "box")
    data = [(subset(w.train, p).X, subset(w.train, p).y) for p in w.parts]
    coalition = Coalition(attack, seed=w.seed) if attack else None
    n_bad = COLLUDING.get(coalition.name, 1) if coalition else 0
    pcls = provider_cls or [Provider] * N_PROVIDERS
    providers = [
        AdversarialProvider(dep, a, store, box, X, y, coalition=coalition) if i < n_bad else pcls[i](dep, a, store, box, X, y)
        for i, (a, (X, y)) in enumerate(zip(w.providers, data))
    ]
    vcls = validator_cls or [Validator] * n_validators
    validators = [cls(dep, a, store, box, *(validator_data[i] if validator_data and validator_data[i] else (h.X, h.y)))
                  for i, (cls, a, h) in enumerate(zip(vcls, w.validators[:n_validators], w.held))]
    cast = Cast(Requester(dep, w.requester, store), aggregator_cls(dep, w.aggregator, store, box), providers, validators,
                challenger_cls(dep, w.watcher, store))
    if setup is not None:
        setup(cast)
    spec = job_spec(name, n_validators)
    held = [dep.market.address, dep.round_arbiter.address, dep.reward_arbiter.address]

    def money() -> int:
        return sum(dep.balance(a.address) for a in w.accounts) + sum(dep.balance(a) for a in held)

    total_before = money()
    before = {a.address: dep.holdings(a.address) for a in w.accounts}
    w.chain.gas = {}
    driver = JobDriver(dep, store, box, cast, spec)
    driver.run(plans)
    after = {a.address: dep.holdings(a.address) for a in w.accounts}
    profit = {a: after[a] - before[a] for a in before}
    slashed: dict[str, int] = {}
    for ev in dep.market.events("StakeSlashed", job_id=driver.job_id):
        slashed[ev["account"]] = slashed.get(ev["account"], 0) + int(ev["amount"])
    claimed = {e["account"]: int(e["amount"]) for e in dep.market.events("RewardClaimed", job_id=driver.job_id)}
    return {
        "job": driver.job_id,
        "state": driver.state.name,
        "attackers": [p.address for p in providers[:n_bad]],
        "honest": [p.address for p in providers[n_bad:]],
        "providers": [p.address for p in providers],
        "validators": [v.address for v in validators],
        "profit": profit,
        "gas": dict(w.chain.gas),
        "claimed": claimed,
        "slashed": slashed,
        # every token is on a watched account or in the protocol's contracts, and no contract keeps any of the job's
        "conserved": money() == total_before and sum(profit.values()) == 0,
    }


def _tokens(x: float) -> float:
    return round(x / TOKEN, 6)


def _griefing(w: World, res: dict, attackers: list[str]) -> dict:
    """honest_loss and attacker_profit of a griefing job (see the module docstring)."""
    honest = [a.address for a in [w.aggregator, w.watcher, *w.providers, *w.validators] if a.address not in attackers]
    honest = [a for a in honest if a in res["profit"]]
    loss = sum(max(0, -res["profit"][a]) for a in honest)
    gas = sum(res["gas"].get(a, 0) for a in attackers)
    profit = sum(res["profit"][a] for a in attackers) - gas * GAS_PRICE
    return {
        "honest_loss": _tokens(loss),
        "attacker_profit": _tokens(profit),
        "attacker_gas": gas,
        "attacker_slashed": _tokens(sum(res["slashed"].get(a, 0) for a in attackers)),
        "job_state": res["state"],
        "goal_met": loss == 0 and profit < 0,
    }


def one_seed(seed: int) -> dict:
    """Every job of the benchmark on one seed's world."""
    w = make_world(seed)
    out: dict[str, dict] = {}
    beyond: dict[str, dict] = {}  # evasions tuned to detection's thresholds: reported, not part of the goal
    griefing: dict[str, dict] = {}
    conserved = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def job(tag, **kw):
            with w.chain.snapshot():
                res = run_job(w, tmp / tag.replace(" ", "_"), tag, **kw)
            conserved.append(res["conserved"])
            return res

        honest = job("honest")
        honest_provider = np.mean([honest["profit"][a] for a in honest["honest"]])
        honest_aggregator = honest["profit"][w.aggregator.address]
        net = lambda res, a: res["profit"][a] - res["gas"].get(a, 0) * GAS_PRICE  # noqa: E731 - gas counted
        validator_net = float(np.mean([net(honest, v) for v in honest["validators"]]))
        catalogue: dict[str, Attack | str] = {name: name for name in ATTACKS}
        catalogue["free_rider(noise)"] = FreeRider(mode="noise")  # the catalogue's other free-rider mode
        catalogue["sybil(honest copies)"] = Sybil(base=Attack())  # copies of an honestly trained update
        evasions = {"sybil(jittered 5%)": JitteredSybil(rel=0.05), "free_rider(noise 50%)": LoudFreeRider(rel=0.5)}
        for name, attack in {**catalogue, **evasions}.items():
            res = job(name, attack=attack)
            atk = sum(res["profit"][a] for a in res["attackers"])
            fair = float(np.mean([res["profit"][a] for a in res["honest"]]))
            (out if name in catalogue else beyond)[name] = {
                "role": "provider",
                "accounts": len(res["attackers"]),
                "attacker_profit": _tokens(atk),
                "attacker_profit_per_account": [_tokens(res["profit"][a]) for a in res["attackers"]],
                "honest_profit": _tokens(fair),
                "honest_profit_min": _tokens(min(res["profit"][a] for a in res["honest"])),
                "provable": False,
                "slashed": [a in res["slashed"] for a in res["attackers"]],
                "stake_slashed": _tokens(sum(res["slashed"].get(a, 0) for a in res["attackers"])),
                "rewards_claimed": _tokens(sum(res["claimed"].get(a, 0) for a in res["attackers"])),
                "same_accounts_if_honest": _tokens(sum(honest["profit"][a] for a in res["attackers"])),
                "goal_met": atk < min(res["profit"][a] for a in res["honest"]),
            }
        # ---- a copier: the fifth provider posts the first one's update as its own
        res = job("copy", provider_cls=[Provider] * (N_PROVIDERS - 1) + [CopyingProvider],
                  setup=lambda cast: setattr(cast.providers[-1], "victim", cast.providers[0].address))
        copier, victim = res["providers"][-1], res["providers"][0]
        others = [a for a in res["providers"] if a != copier]
        copy_share = res["profit"][victim] / honest["profit"][victim]
        out["copy"] = {
            "role": "provider", "accounts": 1,
            "attacker_profit": _tokens(res["profit"][copier]),
            "honest_profit": _tokens(float(np.mean([res["profit"][a] for a in others]))),
            "honest_profit_min": _tokens(min(res["profit"][a] for a in others)),
            "provable": False, "slashed": [copier in res["slashed"]],
            "rewards_claimed": _tokens(res["claimed"].get(copier, 0)),
            "copy_victim_share": round(copy_share, 4),
            "goal_met": res["profit"][copier] < min(res["profit"][a] for a in others) and copy_share >= 0.8,
        }
        cheats = {
            "wrong_aggregate": {"aggregator_cls": ShiftyAggregator},
            "censorship": {"aggregator_cls": DroppingAggregator},
            "equivocation": {"validator_cls": [EquivocatingValidator] + [Validator] * (N_VALIDATORS - 1)},
        }
        for name, kw in cheats.items():
            res = job(name, **kw)
            if name == "equivocation":
                cheat = res["validators"][0]
                fair = float(np.mean([res["profit"][v] for v in res["validators"][1:]]))
                role = "validator"
            else:
                cheat, fair, role = w.aggregator.address, float(honest_aggregator), "aggregator"
            atk = res["profit"][cheat]
            out[name] = {
                "role": role,
                "attacker_profit": _tokens(atk),
                "honest_profit": _tokens(fair),
                "provable": True,
                "slashed": cheat in res["slashed"],
                "stake_slashed": _tokens(res["slashed"].get(cheat, 0)),
                "job_state": res["state"],
                "goal_met": atk < fair and atk < 0,
            }

        # ---- griefing: make an honest party pay
        v = [a.address for a in w.validators]
        p = [a.address for a in w.providers]
        res = job("withheld attestations", validator_cls=[Validator, SilentValidator, SilentValidator])
        griefing["withheld_attestations"] = _griefing(w, res, v[1:])
        res = job("withheld updates", provider_cls=[Provider] * 3 + [SilentProvider] * 2)
        griefing["withheld_updates"] = _griefing(w, res, p[3:])
        held = w.held[0]
        res = job("broken data validator", validator_cls=[BrokenDataValidator, Validator], n_validators=2,
                  validator_data=[(held.X[:, :10], held.y), None])
        griefing["broken_data_validator"] = _griefing(w, res, v[:1])
        res = job("self paying root", aggregator_cls=SelfPayingAggregator, n_validators=0)
        griefing["self_paying_root"] = _griefing(w, res, [w.aggregator.address])
        false_challenger = type("FalseAggregateChallenger", (FalseChallenger, Challenger), {"kind": "aggregate"})
        res = job("false challenge", challenger_cls=false_challenger, n_validators=0)
        griefing["false_challenge"] = _griefing(w, res, [w.watcher.address])
    agg_net = net(honest, w.aggregator.address)
    return {
        "attacks": out,
        "beyond_catalogue": beyond,
        "griefing": griefing,
        "honest_job": {"provider_profit": _tokens(honest_provider), "aggregator_profit": _tokens(agg_net),
                       "validator_profit": _tokens(validator_net), "aggregator_fees": _tokens(honest_aggregator),
                       "state": honest["state"]},
        "copy_victim_share": out["copy"]["copy_victim_share"],
        "conserved": all(conserved),
        "goal_met": (all(x["goal_met"] for x in out.values()) and all(x["goal_met"] for x in griefing.values())
                     and agg_net > 0 and validator_net > 0),
    }


def _seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = (int(x) for x in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(x) for x in text.split(",")]


def _spread(values: list[float]) -> dict:
    return {"median": round(float(np.median(values)), 6), "worst": round(float(min(values)), 6)}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0-4", help="seeds, as 0-4 or 0,2,5 (default 0-4)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    seeds = _seeds(args.seeds)
    runs = {sd: one_seed(sd) for sd in seeds}
    first = runs[seeds[0]]
    # per attack: the attacker's margin below the lowest honest provider (or honest role), per seed
    margins = {}
    for group in ("attacks", "griefing"):
        for name in first[group]:
            rows = [runs[sd][group][name] for sd in seeds]
            if group == "attacks":
                ref = [r.get("honest_profit_min", r["honest_profit"]) for r in rows]
                margins[name] = {"attacker_profit": _spread([r["attacker_profit"] for r in rows]),
                                 "below_honest_by": _spread([h - r["attacker_profit"] for h, r in zip(ref, rows)]),
                                 "goal_met_every_seed": all(r["goal_met"] for r in rows)}
            else:
                margins[name] = {"attacker_profit": _spread([r["attacker_profit"] for r in rows]),
                                 "honest_loss_worst": max(r["honest_loss"] for r in rows),
                                 "goal_met_every_seed": all(r["goal_met"] for r in rows)}
    honest = {k: _spread([runs[sd]["honest_job"][k] for sd in seeds])
              for k in ("provider_profit", "aggregator_profit", "validator_profit")}
    copy_share = _spread([runs[sd]["copy_victim_share"] for sd in seeds])
    report = {
        "seeds": seeds,
        "summary": margins,
        "honest_job": honest,
        "copy_victim_share": copy_share,
        "goals": {
            "attacker_below_lowest_honest_every_attack_every_seed": all(m["goal_met_every_seed"] for m in margins.values()),
            "aggregator_profit_above_0": honest["aggregator_profit"]["worst"] > 0,
            "validator_profit_above_0": honest["validator_profit"]["worst"] > 0,
            "copy_victim_share_at_least_0.8": copy_share["worst"] >= 0.8,
        },
        "per_seed": {str(sd): runs[sd] for sd in seeds},
        "gas_price_wei": GAS_PRICE,
        "conserved": all(runs[sd]["conserved"] for sd in seeds),
        "goal_met": all(runs[sd]["goal_met"] for sd in seeds),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
