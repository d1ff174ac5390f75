"""Verifiable inference on the model market: a server publishes the proof verifier of a listed
job's model, the job's validators re-derive it and attest, anyone registers it, answers carry
proofs that the chain checks, and a proof from another model costs the server its stake.

The steps, each over the job's mailbox and blob store (services or directories):

1. The server builds its circuit kit (`zkml.build_kit`), deploys the verifier contract, stores the
   kit's public files (settings and SRS) as blobs, and posts a :data:`OFFER_TOPIC` message naming
   the verifier, its code hash and the two CIDs (:func:`publish_verifier`).
2. Each validator of the job fetches the model from the chain's model root, the settings and SRS
   by CID, re-derives the verifier's bytecode and compares its hash with the code on chain; only
   then it signs ``VerifierAttestation(jobId, modelRoot, verifier, codehash)`` and posts it
   (:func:`attest_verifier`).
3. Once more than half of the job's validators attested, anyone sends
   ``ModelMarket.register_verifier`` (:func:`register_verifier`: the server does it when it sees
   the majority).
4. A proven answer carries the proof, its public values and the server's ``ProvenAnswer``
   signature. The caller checks that the proof answers its own input with the class the server
   signed, and that the registered verifier accepts it (:func:`check_proven`); it can record it
   in the model's reputation (``prove_answer``), or take the server's stake for a proof the
   verifier rejects (:func:`dispute_proof`).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import eth_abi
from eth_utils import is_address, keccak, to_checksum_address

from ..chain.abi import ContractABI
from ..errors import ContractRevert, FedMarketError
from ..market import Deployment
from ..protocol.encoding import MAX_UNTRUSTED_BYTES, untrusted_json
from ..protocol.receipts import ProvenAnswer, VerifierAttestation
from ..storage import BlobStore, Mailbox
from .common import joined_validators

_HASH = re.compile(r"0x[0-9a-f]{64}")
OFFER_TOPIC = "zk-verifier"
ATTEST_TOPIC = "zk-attest"


def instances_hash(instances: list[int]) -> bytes:
    """keccak256(abi.encode(uint256[] instances)): what a ProvenAnswer names."""
    return keccak(eth_abi.encode(["uint256[]"], [list(instances)]))


def sign_proven(dep: Deployment, account, job_id: int, proof) -> bytes:
    """The server's ProvenAnswer statement for one proof (what `dispute_proof` holds it to)."""
    return ProvenAnswer(job_id, keccak(proof.proof), instances_hash(proof.instances)).sign(
        account.key, dep.chain_id, dep.model_market.address)


# ---- 1. the server publishes its verifier ----------------------------------------------------------


def publish_verifier(dep: Deployment, account, store: BlobStore, box: Mailbox, job_id: int, kit) -> dict:
    """Deploy the kit's verifier (unless an offer of this server with the same code is posted), store
    its public files and post the offer; returns the offer."""
    mm = dep.model_market
    for offer in offers(box):
        if offer["server"] == account.address and offer["codehash"] == "0x" + kit.codehash.hex() \
                and keccak(dep.chain.code(offer["verifier"])) == kit.codehash:
            return offer
    verifier = dep.chain.deploy(account, "Halo2Verifier", ContractABI(kit.abi), kit.creation)
    if keccak(dep.chain.code(verifier.address)) != kit.codehash:
        raise FedMarketError("the deployed verifier's code is not the compiled one")
    offer = {"job_id": job_id, "server": account.address, "verifier": verifier.address,
             "codehash": "0x" + kit.codehash.hex(), "model_root": "0x" + bytes(mm.call("model_root", job_id)).hex(),
             "settings": store.put(kit.path("settings.json").read_bytes()), "srs": store.put(kit.path("kzg.srs").read_bytes())}
    box.post(OFFER_TOPIC, json.dumps(offer, sort_keys=True).encode())
    return offer


def offers(box: Mailbox) -> list[dict]:
    """The well-formed verifier offers on the mailbox, one per verifier address. Anyone can post
    one (the mailbox trusts nobody): a validator checks the deployed code hash, which is cheap,
    before it re-derives anything, which is not."""
    out, seen = [], set()
    for raw in box.read(OFFER_TOPIC):
        try:
            doc = untrusted_json(raw)
        except ValueError:
            continue
        if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in
                                                ("server", "verifier", "codehash", "settings", "srs")):
            continue
        if not (is_address(doc["server"]) and is_address(doc["verifier"]) and _HASH.fullmatch(doc["codehash"])):
            continue
        verifier = to_checksum_address(doc["verifier"])
        if verifier not in seen:
            seen.add(verifier)
            out.append({**doc, "verifier": verifier, "server": to_checksum_address(doc["server"])})
    return out


# ---- 2. a validator re-derives and attests ---------------------------------------------------------


def attest_verifier(dep: Deployment, account, store: BlobStore, box: Mailbox, job_id: int, offer: dict,
                    workdir: Path | None = None, srs: Path | None = None) -> bytes:
    """Re-derive the offered verifier from the model the chain's root commits, compare its code hash
    with the deployed code, and sign and post the attestation; raises if anything differs.

    `srs` is the structured reference string the validator trusts (a ceremony's): the verifier is
    derived with it, so a server whose SRS differs (one whose secret it may know, which would let
    it prove anything) is refused. Without it the offer's SRS is used: sound only if its maker
    destroyed the secret, i.e. for testing."""
    from .. import zkml
    from ..modelfile import trained_model

    mm = dep.model_market
    if account.address not in joined_validators(dep, job_id):
        raise FedMarketError(f"{account.address} is not a validator of job {job_id}")
    root = bytes(mm.call("model_root", job_id))
    if root == b"\x00" * 32:
        raise FedMarketError(f"job {job_id}'s model is not listed")
    trained = trained_model(dep, store, job_id)
    if trained.model_root != root:
        raise FedMarketError("the listed model root is not the job's final round's")
    deployed = keccak(dep.chain.code(offer["verifier"]))
    if "0x" + deployed.hex() != offer["codehash"]:
        raise FedMarketError(f"the code at {offer['verifier']} is not the offered one")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        (tmp / "settings.json").write_bytes(store.get_capped(offer["settings"], MAX_UNTRUSTED_BYTES))
        (tmp / "kzg.srs").write_bytes(Path(srs).read_bytes() if srs is not None
                                      else store.get_capped(offer["srs"], MAX_UNTRUSTED_BYTES))
        try:
            kit = zkml.derive_verifier(trained, tmp / "settings.json", tmp / "kzg.srs", tmp / "kit")
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:  # settings or SRS that are not EZKL's
            raise FedMarketError(f"the offered circuit files are not usable: {str(exc)[:200]}") from None
        if kit.codehash != deployed:
            raise FedMarketError(f"the verifier at {offer['verifier']} is not the circuit of job {job_id}'s model "
                                 f"(derived code hash 0x{kit.codehash.hex()}, deployed 0x{deployed.hex()})")
    sig = VerifierAttestation(job_id, root, offer["verifier"], deployed).sign(account.key, dep.chain_id, mm.address)
    box.post(ATTEST_TOPIC, json.dumps({"validator": account.address, "verifier": offer["verifier"],
                                       "codehash": "0x" + deployed.hex(), "signature": "0x" + sig.hex()}).encode())
    return sig


def attestations(dep: Deployment, box: Mailbox, job_id: int, verifier: str) -> list[bytes]:
    """Valid attestations of `verifier` from distinct validators of the job (each signature checked)."""
    mm = dep.model_market
    root = bytes(mm.call("model_root", job_id))
    codehash = keccak(dep.chain.code(verifier))
    validators = joined_validators(dep, job_id)
    statement = VerifierAttestation(job_id, root, verifier, codehash)
    seen: dict[str, bytes] = {}
    for raw in box.read(ATTEST_TOPIC):
        try:
            doc = untrusted_json(raw)
            sig = bytes.fromhex(doc["signature"][2:])
            signer = statement.signer(sig, dep.chain_id, mm.address)
        except Exception:  # noqa: BLE001 - a malformed or foreign message is not an attestation
            continue
        if signer in validators and signer not in seen:
            seen[signer] = sig
    return list(seen.values())


# ---- 3. registration ---------------------------------------------------------------------------------


def register_verifier(dep: Deployment, account, box: Mailbox, job_id: int, verifier: str):
    """Register `verifier` once a majority of the job's validators attested it; None while they have not."""
    mm = dep.model_market
    if mm.call("verifier", job_id) != "0x" + "0" * 40:
        return None
    sigs = attestations(dep, box, job_id, verifier)
    if 2 * len(sigs) <= int(dep.market.call("progress", job_id)["n_validators"]):
        return None
    return mm.transact("register_verifier", job_id, verifier, sigs, sender=account)


# ---- 4. callers: check, record, dispute --------------------------------------------------------------


def check_proven(dep: Deployment, job_id: int, server: str, reply: dict, n_classes: int, input_scale: int) -> None:
    """Raise unless a proven reply answers the caller's input with the class the server signed,
    the server signed the proof, and the job's registered verifier accepts it."""
    from ..zkml import Proof, answer_of, signed

    proof = Proof.from_doc(reply["proof"])
    x = [int(v) for v in reply["input"]]
    want = [circuit_input(v, input_scale) for v in x]
    got = [signed(v) for v in proof.instances[: len(x)]]
    if got != want:
        raise FedMarketError("the proof answers another input than the query's")
    if answer_of(proof.instances, n_classes) != int(reply["answer"]):
        raise FedMarketError(f"the proof's class is {answer_of(proof.instances, n_classes)}, the answer {reply['answer']}")
    signer = ProvenAnswer(job_id, keccak(proof.proof), instances_hash(proof.instances)).signer(
        bytes.fromhex(reply["proven_signature"][2:]), dep.chain_id, dep.model_market.address)
    if signer != server:
        raise FedMarketError(f"the proof is signed by {signer}, not the server {server}")
    if not verifier_accepts(dep, job_id, proof):
        raise FedMarketError("the job's registered verifier rejects the proof")


def circuit_input(v: int, input_scale: int) -> int:
    """A fixed-point input (scale 2**20, non-negative) at the circuit's input scale, rounded half
    away from zero as EZKL quantizes (exact integer arithmetic)."""
    return (v * (1 << (input_scale + 1)) + (1 << 20)) // (1 << 21)


VERIFY_ABI = ContractABI([{"type": "function", "name": "verifyProof", "stateMutability": "view",
                           "inputs": [{"name": "proof", "type": "bytes"}, {"name": "instances", "type": "uint256[]"}],
                           "outputs": [{"name": "", "type": "bool"}]}])


def verifier_accepts(dep: Deployment, job_id: int, proof) -> bool:
    """Whether the job's registered verifier, its code unchanged, accepts the proof: what
    `ModelMarket.prove_answer` and `dispute_proof` ask it (a call to the verifier itself, no
    transaction; any revert is a no). FedMarketError while no verifier is registered."""
    mm = dep.model_market
    verifier = mm.call("verifier", job_id)
    if verifier == "0x" + "0" * 40:
        raise FedMarketError(f"job {job_id} has no registered verifier")
    if keccak(dep.chain.code(verifier)) != bytes(mm.call("verifier_codehash", job_id)):
        return False
    try:
        return dep.chain.register(verifier, "verifier", VERIFY_ABI).call("verifyProof", proof.proof, proof.instances) is True
    except (ContractRevert, eth_abi.exceptions.DecodingError):  # a verifier answering no bool says no
        return False


def record_proven(dep: Deployment, account, job_id: int, proof):
    """Count a verified answer in the model's on-chain record (`prove_answer`)."""
    return dep.model_market.transact("prove_answer", job_id, proof.proof, proof.instances, sender=account)


def dispute_proof(dep: Deployment, account, job_id: int, server: str, reply: dict):
    """Take the server's stake for a proof it signed that the job's verifier rejects (a proof of
    another model, or of another answer). Refuses, without a transaction, a proof that verifies."""
    from ..zkml import Proof

    proof = Proof.from_doc(reply["proof"])
    if verifier_accepts(dep, job_id, proof):
        raise FedMarketError("the job's verifier accepts this proof: nothing to dispute")
    return dep.model_market.transact("dispute_proof", job_id, server, proof.proof, proof.instances,
                                     bytes.fromhex(reply["proven_signature"][2:]), sender=account)
