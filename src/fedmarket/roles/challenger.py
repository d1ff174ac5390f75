"""Challenger: watches a job and proves on chain what can be proven. It opens a dispute game
(`RoundArbiter`, `RewardArbiter`) for a wrong aggregate, an invalid or out-of-order update, an
acknowledged update left out of a round (censorship) or a reward root that breaks the reward
rule, plays the challenger's moves to the end, and proves directly a validator's equivocation
(two attestations of one round) and the aggregator's (two seals of one round's commitments)."""

from __future__ import annotations

from eth_utils import to_checksum_address

from ..chain import Account, Receipt
from ..errors import ContractRevert, FedMarketError, StorageUnreachable
from ..market import Deployment, JobState, Role
from ..protocol import rules as R
from ..protocol.encoding import BAD_INPUT, address_key, untrusted_json
from ..protocol.proofs import reward_tree
from ..protocol.receipts import Attestation
from ..storage import BlobStore, Mailbox
from .auditor import Auditor, AuditReport
from .common import (
    acknowledged, committed_rounds, hex32, hexbytes, load_spec, posted_receipts, round_topic,
)
from .games import Truth, any_bad_leaf, choose, each_move, job_games


class Challenger:
    """Anyone with gas and the job's dispute bond: earns half the cheater's stake by proving a fault,
    and loses its bond to the defender if the defender shows the challenged data was right."""

    def __init__(self, dep: Deployment, account: Account, store: BlobStore, mailbox: Mailbox | None = None):
        self.dep = dep
        self.account = account
        self.store = store
        self.auditor = Auditor(dep, store, mailbox)  # with the job's mailbox, it re-derives withheld rounds
        self.failed_moves: list[tuple[int, str]] = []  # (game, why) of the last `play`'s failed moves

    def _bond(self, job_id: int, arbiter) -> None:
        bond = int(self.dep.job(job_id)["dispute_bond"])
        if int(self.dep.token.call("allowance", self.account.address, arbiter.address)) < bond:
            self.dep.token.transact("approve", arbiter.address, 2**256 - 1, sender=self.account)

    def _mine(self, job_id: int) -> list:
        return [g for g in job_games(self.dep, job_id) if g.challenger == self.account.address]

    def check(self, job_id: int, verified: set[int] | None = None, mailbox: Mailbox | None = None) -> Receipt | None:
        """Recompute every committed round in order; at the first provable fault open the game that
        proves it (an invalid leaf, else the first wrong chunk) and return the receipt. None when
        every round is right or holds a fault only validators can judge, or a game is already open.
        Rounds in `verified` are skipped, and every round found right is added to it (a process
        watching a job recomputes each round once). Given the job's `mailbox` (kept for the games
        that follow), a round whose data the aggregator withholds is re-derived from what the
        providers posted, and a wrong one is proven by walking its model tree (`challenge_model`)."""
        verified = set() if verified is None else verified
        if mailbox is not None:
            self.auditor.mailbox = mailbox
        truth = Truth(self.dep, self.store, job_id, self.auditor)
        for committed in truth.rounds:
            if committed.round in verified:
                continue
            found, _ = self.auditor.check_round(truth.spec, job_id, committed, truth.rounds)
            if found.ok:
                verified.add(committed.round)
                continue
            if self._mine(job_id):
                return None
            if found.bad_leaf is None and found.bad_chunk is None and not found.model_withheld:
                continue  # only validators judge this round's fault: a later round may hold a provable one
            self._bond(job_id, self.dep.round_arbiter)
            data, proof, prev, prev_proof = truth.round_args(committed.round)
            if found.bad_leaf is not None:
                return self.dep.round_arbiter.transact("challenge_leaf", job_id, committed.round, found.bad_leaf, data,
                                                       proof, prev, prev_proof, sender=self.account)
            if found.model_withheld:
                return self.dep.round_arbiter.transact("challenge_model", job_id, committed.round, data, proof, prev,
                                                       prev_proof, sender=self.account)
            return self.dep.round_arbiter.transact("challenge_aggregate", job_id, committed.round, found.bad_chunk, data,
                                                   proof, prev, prev_proof, sender=self.account)
        return None

    def check_rewards(self, job_id: int) -> Receipt | None:
        """Open a game on a posted reward root that breaks the reward rule: a value game on the first
        leaf whose value or activity is wrong (weight basis), else a sum game. None if it is right,
        or if no game could be won: a bond is not staked on what the challenger cannot prove (its
        posted leaves sum right and each follows the rule, and the values cannot be re-derived
        because a round's data is unavailable)."""
        job = self.dep.job(job_id)
        if job["state"] != JobState.FINALIZING or self._mine(job_id):
            return None
        spec = load_spec(self.dep, self.store, job_id)
        report = AuditReport(job_id, job["state"].name)
        self.auditor.check_rewards(report, spec, job_id)
        if report.rewards_ok is True:
            return None
        truth = Truth(self.dep, self.store, job_id, self.auditor)
        try:
            opening = self._reward_game(truth, job)
        except StorageUnreachable:
            raise  # says nothing about the data: look again at the next step
        except FedMarketError:
            return None  # the posted rewards document is unavailable: nothing to play a game with
        if opening is None:
            return None
        self._bond(job_id, self.dep.reward_arbiter)
        return self.dep.reward_arbiter.transact(*opening, sender=self.account)

    @staticmethod
    def _reward_game(truth: Truth, job: dict) -> tuple | None:
        """The game that proves the posted reward root wrong: (function, job, *args), or None."""
        leaves, _ = truth.rewards()
        if int(job["basis"]) == R.Basis.WEIGHT:
            try:
                for leaf in leaves:
                    if [int(leaf["value"]), int(leaf["activity"])] != truth.value_claim(leaf["account"], 0, len(truth.rounds)):
                        return ("challenge_value", truth.job_id, int(leaf["index"]))
            except StorageUnreachable:
                raise
            except FedMarketError:
                pass  # a round's data is unavailable: no value can be re-derived, the rule still can be
        n_leaves = int(job["n_providers"]) + int(job["n_validators"]) + 1
        totals = [int(job["value_total"]), int(job["reward_total"])]
        unlike_root = len(leaves) != n_leaves or reward_tree(leaves).root != job["reward_root"]  # the poster must open the real ones
        if unlike_root or truth.reward_sum_claim(0, n_leaves) != totals or any_bad_leaf(truth, 0, n_leaves):
            return ("challenge_rewards", truth.job_id)
        return None

    def play(self, job_id: int, now: int | None = None) -> list[Receipt]:
        """The challenger's move in each of its games waiting for one, and the end of every game of
        the job whose mover let its deadline pass (callable by anyone) as of `now` (default: the
        latest block's time; a process on a live chain passes the wall clock, the next block's)."""
        now = self.dep.chain.timestamp() if now is None else now
        truth = None

        def move(g):
            nonlocal truth
            if now > g.deadline:  # may revert: someone else's timeout landed first, a block behind the wall clock
                return g.arbiter.transact("timeout", g.gid, sender=self.account)
            if g.turn == R.Turn.CHALLENGER and g.challenger == self.account.address:
                truth = truth or Truth(self.dep, self.store, job_id, self.auditor)
                return g.arbiter.transact("choose", g.gid, choose(truth, g), sender=self.account)
            return None

        receipts, self.failed_moves = each_move(job_games(self.dep, job_id), move)
        return receipts

    def close_moot(self, job_id: int) -> list[Receipt]:
        """Close (bond refunded) every game of the job it has outgrown."""
        out = []
        for g in job_games(self.dep, job_id):
            try:
                out.append(g.arbiter.transact("close_moot", g.gid, sender=self.account))
            except ContractRevert:
                continue
        return out

    # ---------------------------------------------------------------- censorship

    def check_censorship(self, job_id: int, mailbox: Mailbox) -> list[Receipt]:
        """Open an inclusion game for an update the aggregator countersigned and then left out of (or
        altered in) a committed round: the provider's receipt on the round's topic and the
        aggregator's acknowledgement on its `-acks` topic. At most one game at a time."""
        if self._mine(job_id):
            return []
        if self.auditor.mailbox is None:  # the same mailbox serves to re-derive withheld rounds
            self.auditor.mailbox = mailbox
        truth = Truth(self.dep, self.store, job_id, self.auditor)
        job = self.dep.job(job_id)
        if job["state"] not in (JobState.TRAINING, JobState.FINALIZING):
            return []
        for c in truth.rounds:
            found = self._censored(truth, job_id, c, mailbox, job["aggregator"])
            if found is None:
                continue
            self._bond(job_id, self.dep.round_arbiter)
            data, proof, _, _ = truth.round_args(c.round)
            (provider, root, weight), psig, asig = found
            return [self.dep.round_arbiter.transact("challenge_inclusion", job_id, c.round, data, proof, provider, root,
                                                    weight, psig, asig, sender=self.account)]
        return []

    def _censored(self, truth: Truth, job_id: int, c, mailbox: Mailbox, aggregator: str):
        """An acknowledged (provider, root, weight) the round does not hold, with both signatures; or None.
        What the round holds is its committed tree's leaves, never the metrics document's word: its
        list must form the committed root, else the round is re-derived from the mailbox (an
        aggregator listing an update it left out of the tree hid the censorship from every watcher)."""
        try:
            included = set(self.auditor.leaves(job_id, c.round, truth.rounds))
        except StorageUnreachable:
            return None  # the store did not answer: look again next time
        except (FedMarketError, *BAD_INPUT):
            return None  # unavailable data: a leaf game matter
        signed = posted_receipts(self.dep, mailbox, job_id, c.round)
        for key, asig in acknowledged(self.dep, mailbox, job_id, c.round, aggregator).items():
            if key not in included and key in signed:
                return key, signed[key][0], asig
        return None

    # ---------------------------------------------------------------- equivocation

    def check_equivocation(self, job_id: int, mailbox: Mailbox) -> list[Receipt]:
        """Prove every validator that signed two different attestations (model root or scores root)
        for one round of the job, from the messages posted on each committed round's `-attestations`
        topic. A message without a `model_root` attests the round's committed model root. Each
        validator is slashed at most once per job; returns the receipts ([] if nobody equivocated)."""
        chain_id, verifier = self.dep.chain_id, self.dep.disputes.address
        receipts: list[Receipt] = []
        proven: set[str] = set()
        model_roots: dict[int, set[bytes]] = {}
        for c in committed_rounds(self.dep, job_id):
            model_roots.setdefault(c.round, set()).add(c.model_root)
        for r in sorted(model_roots):
            seen: dict[str, dict[tuple[bytes, bytes], bytes]] = {}
            for raw in mailbox.read(round_topic(job_id, r) + "-attestations"):
                found = _attestation(raw, job_id, r, model_roots[r], chain_id, verifier)
                if found is not None:
                    validator, statement, sig = found
                    seen.setdefault(validator, {}).setdefault(statement, sig)
            for validator in sorted(seen, key=address_key):
                if len(seen[validator]) < 2 or validator in proven:
                    continue
                role, _ = self.dep.market.call("membership", job_id, validator)
                if int(role) != Role.VALIDATOR:  # not a validator of the job, or already slashed
                    continue
                (a, sa), (b, sb) = sorted(seen[validator].items())[:2]
                receipts.append(self.dep.disputes.transact(
                    "prove_equivocation", job_id, r, validator, a[0], a[1], sa, b[0], b[1], sb, sender=self.account,
                ))
                proven.add(validator)
        return receipts


    def check_seals(self, job_id: int, mailbox: Mailbox) -> Receipt | None:
        """Prove that the job's aggregator signed two different seals of one round's commitments
        (`roles.sealed`), from the seals posted on each round's seal topic up to the one in
        training: the job fails back to before that round and the aggregator is slashed, half to
        this challenger (`Disputes.prove_seal_equivocation`). Returns the receipt, or None when
        every round has at most one seal (or the job is past disputes)."""
        from . import sealed as sl

        state, current, _, _, aggregator = self.dep.market.call("job_status", job_id)
        if JobState(int(state)) not in (JobState.TRAINING, JobState.FINALIZING):
            return None
        for r in range(int(current) + 1):
            signed: dict[bytes, bytes] = {}
            for msg, taken in sl.seal_messages(self.dep, mailbox.read(sl.seal_topic(job_id, r)), job_id, r, aggregator):
                signed.setdefault(sl.seal_digest(taken), hexbytes(msg["signature"]))
            if len(signed) > 1:
                (a, sa), (b, sb) = sorted(signed.items())[:2]
                return self.dep.disputes.transact("prove_seal_equivocation", job_id, r, a, sa, b, sb, sender=self.account)
        return None


def _attestation(raw: bytes, job_id: int, round_: int, model_roots: set[bytes], chain_id: int, verifier: str):
    """(validator, (model root, scores root), signature) of a validly signed attestation message, or None."""
    try:
        msg = untrusted_json(raw)
        if "round" in msg and int(msg["round"]) != round_:
            return None
        validator = to_checksum_address(msg["validator"])
        scores = hex32(msg["scores_root"])
        sig = hexbytes(msg["signature"])
        candidates = [hex32(msg["model_root"])] if msg.get("model_root") else sorted(model_roots)
    except BAD_INPUT:
        return None
    for model_root in candidates:
        try:
            if Attestation(job_id, round_, model_root, scores).signer(sig, chain_id, verifier) == validator:
                return validator, (model_root, scores), sig
        except Exception:  # noqa: BLE001 - unrecoverable signature
            return None
    return None
