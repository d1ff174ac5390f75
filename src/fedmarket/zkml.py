"""Proofs of inference for a listed model (EZKL Halo2 circuits), and the on-chain verifier of them.

A *circuit kit* is what a server needs to prove answers of one job's model: the model as ONNX
(the trained parameters, dequantized from the committed vector, fixed in the circuit), EZKL's
settings (input and output public, parameters fixed), the compiled circuit, the structured
reference string (SRS), the proving and verifying keys, and the verifier contract that EZKL
generates from the verifying key, compiled with npm's ``solcjs``.

The verifier is bound to *this* model: the parameters are fixed columns of the circuit, so they
are part of the verifying key the contract embeds. Anyone holding the kit's public part (the
settings and the SRS, published by content id) re-derives the verifier's bytecode from the model
they re-derived from the chain's model root (:func:`derive_verifier`); the job's validators do
that before they sign the ``VerifierAttestation`` that `ModelMarket.register_verifier` needs.

The model takes the normalized features in [0, 1] (what :func:`~fedmarket.protocol.inference.fixed_input`
answers for); the proof's public values are the input and the class scores, at the settings'
fixed-point scales, and the answer is the first highest score.

Offline by design: the SRS comes from ``ezkl.gen_srs`` when none is given (generated locally, so
its secret was never destroyed by a ceremony: **for testing only**; a deployment passes a
ceremony's SRS file), and the verifier is compiled by ``solcjs`` from ``npm install`` (the repo's
package.json pins ``solc``), never by a solc binary that ezkl would download. Needs the ``zk``
extra: ``pip install fedmarket[zk]`` (ezkl, torch, onnx).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from eth_utils import keccak

from .errors import ConfigError, FedMarketError
from .protocol.inference import first_best

SOLC_VERSION = "0.8.28"
ENV_SOLCJS = "FEDMARKET_SOLCJS"
ZK_HINT = "proofs of inference need the zk extra: pip install 'fedmarket[zk]' (ezkl, torch, onnx)"
PROVABLE_KINDS = ("softmax", "mlp")
# @dev Largest model proven: a 1.9M-parameter MLP took 112 s and 9.9 GB to prove here, 50k took 3 s.
MAX_PROVABLE_PARAMS = 500_000
# @dev The calibration inputs: a fixed draw, so every party derives the same settings.
CALIBRATION_ROWS = 16
# @dev Range of the circuit's integers: base**legs (EZKL's default of 2 legs of 2**14 overflows at
#      scale 2**26 once a class score passes about 4).
DECOMP_LEGS = 3
CALIBRATION_SEED = 20_171_129
# the field EZKL's public values live in (BN254's scalar field)
FIELD = 0x30644E72E131A029B85045B68181585D2833E84879B9709143E1F593F0000001


class ProofError(FedMarketError):
    """A proof that cannot be made or checked (missing tools, a model out of reach, a bad kit)."""


def find_solcjs(cwd: Path | None = None) -> str | None:
    """Path of npm's ``solcjs``: $FEDMARKET_SOLCJS, else ``node_modules/.bin/solcjs`` in the working
    directory or above it, or next to the installed package; None when there is none."""
    env = os.environ.get(ENV_SOLCJS)
    if env:
        return env if os.path.isfile(env) else None
    cwd = (cwd or Path.cwd()).resolve()
    for root in [cwd, *cwd.parents, *Path(__file__).resolve().parents, Path(sys.prefix)]:
        candidate = root / "node_modules" / ".bin" / "solcjs"
        if candidate.is_file():
            return str(candidate)
    return None


def ezkl_module():
    """The ezkl module, after checking the zk extra (ezkl, onnx, torch) is installed."""
    try:
        import ezkl
        import onnx  # noqa: F401 - torch's exporter writes it
        import torch  # noqa: F401
    except ImportError:
        raise ConfigError(ZK_HINT) from None
    return ezkl


def _call(fn, *args, **kwargs):
    """Run one ezkl call inside an event loop (some of them need one to exist)."""
    async def go():
        out = fn(*args, **kwargs)
        if hasattr(out, "__await__"):
            out = await out
        return out
    return asyncio.run(go())


def provable(spec) -> bool:
    """Whether the prover can reach a job's model: a linear model or an MLP of at most
    `MAX_PROVABLE_PARAMS` parameters."""
    return spec.model.kind in PROVABLE_KINDS and spec.n_params <= MAX_PROVABLE_PARAMS


def _network(trained):
    """The trained model on normalized input, as a torch module (float32)."""
    from .fl.torch_models import linear_stack

    spec = trained.spec
    if not provable(spec):
        raise ProofError(f"proofs of inference cover {', '.join(PROVABLE_KINDS)} models of at most "
                         f"{MAX_PROVABLE_PARAMS:,} parameters; job {trained.job_id} trains a '{spec.model.kind}' "
                         f"model of {spec.n_params:,}")
    widths = [spec.data.n_features, spec.data.n_classes] if spec.model.kind == "softmax" else \
        [spec.data.n_features, *spec.model.hidden, spec.data.n_classes]
    activation = "relu" if spec.model.kind == "softmax" else spec.model.activation
    return linear_stack(trained.params, widths, activation).eval()


def calibration_inputs(n_features: int) -> np.ndarray:
    """The fixed calibration rows (uniform in [0, 1]): the same for every party."""
    return np.random.default_rng(CALIBRATION_SEED).random((CALIBRATION_ROWS, n_features))


@dataclass(frozen=True)
class Kit:
    """One job's circuit files in ``dir``; ``settings``, ``srs`` and the ``verifier`` code are public."""

    dir: Path

    def path(self, name: str) -> Path:
        return self.dir / name

    @property
    def runtime(self) -> bytes:
        """The verifier's runtime bytecode (what the chain stores; its keccak is the codehash)."""
        return bytes.fromhex(self.path("Verifier.bin-runtime").read_text().strip())

    @property
    def creation(self) -> bytes:
        return bytes.fromhex(self.path("Verifier.bin").read_text().strip())

    @property
    def abi(self) -> list:
        return json.loads(self.path("Verifier.abi").read_text())

    @property
    def codehash(self) -> bytes:
        return keccak(self.runtime)


def _export_onnx(trained, out: Path) -> None:
    import torch

    net = _network(trained)
    example = torch.zeros(1, trained.spec.data.n_features)
    torch.onnx.export(net, example, str(out), input_names=["x"], output_names=["scores"], opset_version=17,
                      dynamo=False)


def _compile_verifier(sol: Path, out: Path, solcjs: str | None) -> None:
    """Compile ``Verifier.sol`` with solcjs (standard JSON, fixed optimizer settings) into
    ``Verifier.bin``, ``Verifier.bin-runtime`` and ``Verifier.abi`` beside ``out``."""
    solcjs = solcjs or find_solcjs()
    if solcjs is None:
        raise ProofError(f"no solcjs found: run `npm install` in the fedmarket repository (it pins solc@{SOLC_VERSION}) "
                         f"or set {ENV_SOLCJS}=/path/to/solcjs")
    node = shutil.which("node")
    if node is None:
        raise ProofError("compiling the verifier needs Node.js (node) on PATH")
    request = {"language": "Solidity", "sources": {"Verifier.sol": {"content": sol.read_text()}},
               "settings": {"optimizer": {"enabled": True, "runs": 1}, "evmVersion": "cancun",
                            "metadata": {"bytecodeHash": "none", "appendCBOR": False},
                            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}}}}
    # solc's JavaScript API on a request file (solcjs --standard-json reads stdin, which node
    # fails to read with EAGAIN under some parents)
    module = Path(solcjs).resolve().parent
    module = module if (module / "package.json").is_file() else Path(solcjs).parent.parent / "solc"
    request_file = out / "solc-input.json"
    request_file.write_text(json.dumps(request))
    script = ("const solc = require(process.argv[1]); const fs = require('fs');"
              "process.stdout.write(solc.compile(fs.readFileSync(process.argv[2], 'utf8')));")
    done = subprocess.run([node, "-e", script, str(module), str(request_file)], capture_output=True, text=True, check=False)
    try:
        result = json.loads(done.stdout)
    except ValueError:
        raise ProofError(f"solc gave no output: {done.stderr.strip()[-300:]}") from None
    errors = [e["formattedMessage"] for e in result.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise ProofError(f"solcjs could not compile the verifier: {errors[0].strip()}")
    (contract,) = result["contracts"]["Verifier.sol"].values()
    out.joinpath("Verifier.bin").write_text(contract["evm"]["bytecode"]["object"])
    out.joinpath("Verifier.bin-runtime").write_text(contract["evm"]["deployedBytecode"]["object"])
    out.joinpath("Verifier.abi").write_text(json.dumps(contract["abi"]))


def build_kit(trained, workdir: str | os.PathLike, *, settings: Path | None = None, srs: Path | None = None,
              solcjs: str | None = None) -> Kit:
    """Build the circuit kit of a trained model in ``workdir``.

    ``settings`` and ``srs`` are a published kit's public files: given them, this re-derives that
    kit's circuit, keys and verifier from ``trained`` (what a validator does); without them it
    calibrates the settings on :func:`calibration_inputs` and generates a test SRS."""
    ezkl = ezkl_module()
    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    kit = Kit(out)
    f = {k: str(kit.path(k)) for k in ("model.onnx", "settings.json", "model.ezkl", "kzg.srs", "vk.key", "pk.key",
                                        "calibration.json")}
    _export_onnx(trained, kit.path("model.onnx"))
    if settings is None:
        kit.path("calibration.json").write_text(json.dumps(
            {"input_data": calibration_inputs(trained.spec.data.n_features).tolist()}))
        run = ezkl.PyRunArgs()
        run.input_visibility, run.output_visibility, run.param_visibility = "public", "public", "fixed"
        run.decomp_legs = DECOMP_LEGS
        if not ezkl.gen_settings(f["model.onnx"], f["settings.json"], py_run_args=run):
            raise ProofError("ezkl could not generate the circuit settings")
        _call(ezkl.calibrate_settings, f["calibration.json"], f["model.onnx"], f["settings.json"], "accuracy")
    else:
        check_settings(json.loads(Path(settings).read_text()))
        if Path(settings).resolve() != kit.path("settings.json").resolve():
            shutil.copyfile(settings, kit.path("settings.json"))
    if not ezkl.compile_circuit(f["model.onnx"], f["model.ezkl"], f["settings.json"]):
        raise ProofError("ezkl could not compile the circuit")
    logrows = json.loads(kit.path("settings.json").read_text())["run_args"]["logrows"]
    if srs is None:
        ezkl.gen_srs(f["kzg.srs"], logrows)  # generated locally: for testing only
    elif Path(srs).resolve() != kit.path("kzg.srs").resolve():
        shutil.copyfile(srs, kit.path("kzg.srs"))
    if not ezkl.setup(f["model.ezkl"], f["vk.key"], f["pk.key"], srs_path=f["kzg.srs"]):
        raise ProofError("ezkl setup failed (is the SRS large enough for the circuit?)")
    sol = kit.path("Verifier.sol")
    try:  # writes the Solidity; its own compile step would fetch a solc binary, which is not used
        _call(ezkl.create_evm_verifier, f["vk.key"], f["settings.json"], str(sol), str(kit.path("ezkl.abi")),
              srs_path=f["kzg.srs"])
    except RuntimeError as exc:
        if not sol.is_file():
            raise ProofError(f"ezkl wrote no verifier: {exc}") from None
    _compile_verifier(sol, out, solcjs)
    return kit


def check_settings(settings: dict) -> None:
    """A published kit's settings must keep the input and the answer public and the weights fixed:
    otherwise a proof would not say which input it answers, or would not bind the model."""
    run = settings.get("run_args", {})
    want = {"input_visibility": "Public", "output_visibility": "Public", "param_visibility": "Fixed"}
    for key, value in want.items():
        if str(run.get(key, "")).lower() != value.lower():
            raise ProofError(f"the circuit settings' {key} is {run.get(key)!r}, not {value!r}")


def derive_verifier(trained, settings: Path, srs: Path, workdir: str | os.PathLike, solcjs: str | None = None) -> Kit:
    """Re-derive a published kit's verifier from ``trained`` (what validators attest), after checking
    that its circuit answers as the model does on every calibration row: settings too coarse for
    the model (a circuit that is the model's only in name) are refused."""
    kit = build_kit(trained, workdir, settings=settings, srs=srs, solcjs=solcjs)
    X = calibration_inputs(trained.spec.data.n_features)
    model = trained.job_model.model
    want = [int(c) for c in model.predict(trained.params, X)]
    got = [circuit_answer(kit, x, trained.spec.data.n_classes) for x in X]
    wrong = sum(a != b for a, b in zip(want, got))
    if wrong:
        raise ProofError(f"the circuit answers {wrong} of {len(X)} calibration inputs differently from the model: "
                         f"its settings are too coarse for it")
    return kit


def circuit_answer(kit: Kit, x: np.ndarray, n_classes: int) -> int:
    """The class the circuit computes at one normalized input (its witness, no proof)."""
    with _witness(kit, x) as (_work, witness):
        outputs = witness["outputs"][0]
    return answer_of([int.from_bytes(bytes.fromhex(h), "little") for h in outputs], n_classes)


@contextlib.contextmanager
def _witness(kit: Kit, x: np.ndarray):
    """EZKL's witness of the circuit at one normalized input, in a scratch directory of the kit that
    is removed afterwards: yields (that directory, the witness document)."""
    ezkl = ezkl_module()
    x = np.asarray(x, dtype=np.float64).ravel()
    work = kit.dir / f"w-{os.getpid()}-{threading.get_ident()}-{keccak(x.tobytes()).hex()[:12]}"
    work.mkdir(exist_ok=True)
    try:
        (work / "input.json").write_text(json.dumps({"input_data": [x.tolist()]}))
        _call(ezkl.gen_witness, str(work / "input.json"), str(kit.path("model.ezkl")), str(work / "witness.json"),
              vk_path=str(kit.path("vk.key")), srs_path=str(kit.path("kzg.srs")))
        yield work, json.loads((work / "witness.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def input_scale(kit: Kit) -> int:
    """The circuit's fixed-point scale of its input (public values are ``round(x * 2**scale)``)."""
    return int(json.loads(kit.path("settings.json").read_text())["run_args"]["input_scale"])


def signed(v: int) -> int:
    """A public value (a field element) as the signed integer it encodes."""
    return v - FIELD if v > FIELD // 2 else v


@dataclass(frozen=True)
class Proof:
    """A proof of one answer: its bytes, its public values (input then class scores) and the class."""

    proof: bytes
    instances: list[int]
    answer: int

    def doc(self) -> dict:
        return {"proof": "0x" + self.proof.hex(), "instances": [hex(v) for v in self.instances], "answer": self.answer}

    @classmethod
    def from_doc(cls, doc: dict) -> Proof:
        return cls(bytes.fromhex(doc["proof"][2:]), [int(v, 16) for v in doc["instances"]], int(doc["answer"]))


def scores_of(instances: list[int], n_classes: int) -> list[int]:
    """The class scores a proof's public values state (the last ``n_classes``, signed)."""
    return [signed(v) for v in instances[-n_classes:]]


def answer_of(instances: list[int], n_classes: int) -> int:
    """The class a proof's public values answer: the first highest score."""
    return first_best(scores_of(instances, n_classes))


def prove(kit: Kit, x: np.ndarray, n_classes: int) -> Proof:
    """Prove the model's class scores at one normalized input ``x`` (in [0, 1])."""
    ezkl = ezkl_module()
    with _witness(kit, np.clip(np.asarray(x, dtype=np.float64).ravel(), 0.0, 1.0)) as (work, _witness_doc):
        ezkl.prove(str(work / "witness.json"), str(kit.path("model.ezkl")), str(kit.path("pk.key")),
                   str(work / "proof.json"), srs_path=str(kit.path("kzg.srs")))
        doc = json.loads((work / "proof.json").read_text())
    instances = [int.from_bytes(bytes.fromhex(h), "little") for h in doc["instances"][0]]
    return Proof(bytes.fromhex(doc["hex_proof"].removeprefix("0x")), instances, answer_of(instances, n_classes))
