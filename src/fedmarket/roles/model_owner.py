"""The model's owner and contributors on the model market: list a settled job's model with its
final round (proven against the market's accumulator) and an offer, claim a contributor's share
of the usage revenue by its reward leaf, and read a model's record."""

from __future__ import annotations

from dataclasses import astuple, dataclass

from ..errors import FedMarketError
from ..market import Deployment
from ..protocol.inference import linear_shape
from ..protocol.proofs import reward_struct
from ..storage import BlobStore
from .common import load_spec, reward_leaf, round_proof, verified_round


@dataclass(frozen=True)
class Offer:
    """`ModelMarket.Offer`, field for field: prices in base units, shares in basis points."""

    query_price: int
    access_price: int = 0
    access_period: int = 0
    owner_bps: int = 0
    server_bps: int = 1_000  # with owner_bps at most the job terms' licence_requester_bps (`spec init` gives 1,000)
    server_stake: int = 0

    def abi(self) -> tuple:
        return astuple(self)


def list_model(dep: Deployment, store: BlobStore, account, job_id: int, offer: Offer):
    """List the job's final model (linear shape from its spec) with `offer`; the sender owns its model token."""
    if dep.model_market is None:
        raise FedMarketError("this deployment has no model market")
    spec = load_spec(dep, store, job_id)
    final = verified_round(dep, job_id)
    proof = round_proof(dep, job_id, final.round)
    return dep.model_market.transact("list_model", job_id, final.round, final.data, proof, *linear_shape(spec),
                                     offer.abi(), sender=account)


def claim_usage_revenue(dep: Deployment, store: BlobStore, account, job_id: int):
    """Claim `account`'s share of the job's model-market revenue with its reward leaf (anyone may send it)."""
    leaf, proof = reward_leaf(dep, store, account.address, job_id)
    return dep.model_market.transact("claim", job_id, int(leaf["index"]), reward_struct(leaf), proof, sender=account)


def model_record(dep: Deployment, job_id: int) -> dict:
    """A model's record on chain: its listed root and offer, queries settled (by credits and by tabs
    through the usage rollup), revenue, disputes lost,
    its registered proof verifier and the answers proven with it."""
    mm = dep.model_market
    if mm is None:
        raise FedMarketError("this deployment has no model market")
    root = bytes(mm.call("model_root", job_id))
    if root == b"\x00" * 32:
        return {"job_id": job_id, "listed": False}
    tab_queries = 0 if dep.usage_rollup is None else int(dep.usage_rollup.call("queries_settled", job_id))
    return {
        "job_id": job_id, "listed": True, "model_root": "0x" + root.hex(),
        "linear_shape": list(listed_shape(dep, job_id)),
        "offer": dict(mm.call("offer", job_id)),
        "queries_settled": int(mm.call("queries_settled", job_id)) + tab_queries,
        "tab_queries_settled": tab_queries,
        "gross_revenue": int(mm.call("gross_revenue", job_id)),
        "contributors_revenue": int(mm.call("revenue", job_id)),
        "contributors_paid": int(mm.call("paid_out", job_id)),
        "disputes_lost": int(mm.call("disputes_lost", job_id)),
        "verifier": mm.call("verifier", job_id),
        "answers_proven": int(mm.call("answers_proven", job_id)),
    }


def listed_shape(dep: Deployment, job_id: int) -> tuple[int, int]:
    """(features, classes) the model is listed with: disputes re-execute a linear model of that shape ((0, 0): none)."""
    return int(dep.model_market.call("shape", job_id, 0)), int(dep.model_market.call("shape", job_id, 1))
