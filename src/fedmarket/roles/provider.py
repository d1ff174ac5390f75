"""Provider role: checks its private data against the job, joins with stake, trains, claims."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from ..chain import Account, Receipt
from ..errors import FedMarketError
from ..fl.quantize import dequantize, quantize
from ..fl.train import local_sgd
from ..market import Deployment
from ..protocol.encoding import canonical_json, encode_vector, vector_root
from ..protocol.proofs import reward_tree
from ..protocol.receipts import UpdateReceipt, permit_signature
from ..spec import JobSpec
from ..storage import BlobStore, Mailbox
from .common import ProtocolViolation, global_model, load_spec, round_topic


class Provider:
    """A data owner. Its features and labels never leave this object: only quantized updates do."""

    def __init__(self, dep: Deployment, account: Account, store: BlobStore, mailbox: Mailbox, X: np.ndarray, y: np.ndarray):
        self.dep = dep
        self.account = account
        self.store = store
        self.mailbox = mailbox
        self.X = np.asarray(X)
        self.y = np.asarray(y)
        self._specs: dict[int, JobSpec] = {}

    @property
    def address(self) -> str:
        return self.account.address

    @property
    def n_samples(self) -> int:
        return len(self.y)

    def inspect(self, job_id: int) -> JobSpec:
        """Fetch and verify the job's spec, and check local data against its schema (SchemaMismatch if not)."""
        if job_id not in self._specs:
            spec = load_spec(self.dep, self.store, job_id)
            spec.data.check(self.X, self.y)
            self._specs[job_id] = spec
        return self._specs[job_id]

    def join(self, job_id: int) -> Receipt:
        """Check the data and join, the stake's allowance given by an EIP-2612 permit in the same transaction."""
        spec = self.inspect(job_id)
        stake = spec.reward.provider_stake
        if not stake:
            return self.dep.market.transact("join", job_id, sender=self.account)
        deadline = self.dep.chain.timestamp() + 3_600
        v, r, s = permit_signature(self.dep.token, self.account, self.dep.market.address, stake, deadline)
        return self.dep.market.transact("join_with_permit", job_id, deadline, v, r, s, sender=self.account)

    def train(self, job_id: int, round_: int) -> dict:
        """Train one round from the committed global model and post a signed receipt of the update."""
        spec = self.inspect(job_id)
        next_round, q_global = global_model(self.dep, self.store, spec, job_id)
        if next_round != round_:
            raise FedMarketError(f"job {job_id} is at round {next_round}, not {round_}")
        model = spec.make_model()
        Xn = spec.normalize(self.X)
        start = dequantize(q_global)
        t = spec.training
        seed = int.from_bytes(hashlib.sha256(f"{self.address}:{job_id}:{round_}".encode()).digest()[:8], "big")
        local = local_sgd(
            model, start, Xn, self.y, epochs=t.local_epochs, batch_size=t.batch_size, lr=t.learning_rate,
            seed=seed, prox_mu=t.prox_mu,
        )
        q_delta = quantize(local - start)
        update_cid = self.store.put(encode_vector(q_delta))
        update_root = vector_root(q_delta, spec.quantization.chunk_size)
        receipt = UpdateReceipt(job_id, round_, update_root, self.n_samples)
        signature = receipt.sign(self.account.key, self.dep.chain_id, self.dep.disputes.address)
        message = {
            "provider": self.address,
            "job_id": job_id,
            "round": round_,
            "update_cid": update_cid,
            "update_root": "0x" + update_root.hex(),
            "weight": self.n_samples,
            "signature": "0x" + signature.hex(),
            "train_loss": float(model.loss_and_grad(local, Xn, self.y)[0]),
        }
        self.mailbox.post(round_topic(job_id, round_), canonical_json(message))
        return message

    def reward_leaf(self, job_id: int) -> tuple[dict, list[bytes]]:
        """This provider's reward leaf and Merkle proof, rebuilt from the published rewards document."""
        posted = self.dep.market.events("RewardRootPosted", job_id=job_id)
        if not posted:
            raise FedMarketError(f"job {job_id} has no reward root yet")
        ev = posted[-1]
        doc = json.loads(self.store.get(ev["rewards_cid"]))
        leaves = doc["leaves"]
        tree = reward_tree(leaves)
        if tree.root != ev["reward_root"]:
            raise ProtocolViolation(f"job {job_id}: rewards document does not match the posted reward root")
        for leaf in leaves:
            if leaf["account"] == self.address:
                return leaf, tree.proof(leaf["index"])
        raise FedMarketError(f"{self.address} has no reward leaf in job {job_id}")

    def claim(self, job_id: int) -> Receipt:
        """Claim the reward, release the job stake to free stake and apply the reputation change, in one transaction."""
        leaf, proof = self.reward_leaf(job_id)
        return self.dep.market.transact(
            "claim", job_id, leaf["index"], self.address, int(leaf["amount"]), int(leaf["reputation_delta"]), proof,
            sender=self.account,
        )
