"""The aggregator as a long-running process: accept, start, commit each round once, post rewards."""

from __future__ import annotations

import os
import re
import time

from ..chain import Account
from ..errors import BlobNotFound, BlobTooLarge, ContractRevert, FedMarketError, SecAggAbort, StorageError
from ..market import Deployment, JobState
from ..protocol import rules as R
from ..protocol.encoding import BAD_INPUT, decode_vector, untrusted_json, vector_blob_limit
from ..roles import Aggregator
from ..roles.aggregator import Update
from ..roles import secure_round as sr
from ..roles.common import (
    REFUSED_BEFORE_STAKING,
    claim_reward,
    committed_rounds,
    fetch_metrics,
    joined_validators,
    load_spec,
    reward_leaf,
    round_providers,
    round_topic,
    topic_round,
)
from ..roles.senders import SECURE_PHASES, signed_by, signed_on, signed_senders
from ..roles.sealed import sealed
from ..roles.settlement import mailbox_reveals, verified_reveals
from ..roles.validator import submit_attestations, submit_misbehaviour, submit_rejections
from ..storage import BlobStore, KeptMailbox, LocalBlobStore, Mailbox, MirroredStore
from .base import Fatal, RoleProcess, Stop, job_state

ZERO = b"\x00" * 32


class AggregatorProcess(RoleProcess):
    """Drives `roles.Aggregator` for one job.

    Round `r` is committed only while the chain's `current_round` is `r`, and only once every
    selected provider's update arrived or `collect_timeout` seconds went by since this process
    first saw round `r` open (then with whatever valid updates there are). With validators,
    their attestations of the previous round go on chain first (quorum gates the next round),
    and the reward root waits for the votes to close, then for every attesting validator's
    revealed scores (or `reveal_timeout` from the close) and then for two thirds of the validator stake to approve it (or, when
    they do not approve in time, the provable weight basis is posted). Every step first answers
    the dispute games waiting for it. Every transaction is journaled before it is sent
    (JournaledRpcChain), so a restart re-broadcasts or finds it instead of signing another."""

    role = "aggregator"

    def __init__(self, dep: Deployment, account: Account, store: BlobStore, mailbox: Mailbox, job_id: int,
                 state_dir: str | os.PathLike, *, collect_timeout: float = 60.0, reveal_timeout: float = 60.0, **kwargs):
        super().__init__(dep, state_dir, **kwargs)
        # it answers for every round until the job settles: every blob it writes or reads (its
        # models, the updates it took) keeps a copy in its state directory, put back in the shared
        # store if someone deletes it there
        self.kept = LocalBlobStore(self.state.root / "blobs")
        # a secure round's phase messages it has read stay read: one deleted before the commit (a
        # provider's keys, say) voided the round for everyone; and the survivor set it signed stays
        # its one set (deleted, it is posted again, never signed anew)
        self.job_id = job_id
        mailbox = KeptMailbox(mailbox, self.state.root / "mailbox", keeps=self._own_topic,
                              signer_of=self._phase_signer, remembers=self._phase_topic)
        self.aggregator = Aggregator(dep, account, MirroredStore(store, self.kept), mailbox)
        # the seals it signed live in its state directory, written before they are posted: a seal
        # deleted from the mailbox (or a restart) never leads it to sign a second one
        self.aggregator.seals = {(int(k.split("-")[0]), int(k.split("-")[1])): m
                                 for k, m in self.state.load("seals", {}).items()}
        self.aggregator.keep_seal = self._keep_seal
        # so do the updates it acknowledged, with their blobs: after a restart it still holds each
        # one (its provider may have deleted the blob, or been slashed, since)
        self.aggregator._acked = self._load_acked()
        self.aggregator.keep_ack = self._keep_ack
        self.account = account
        self.store = self.aggregator.store  # every read of the process, too, through its copy
        self.mailbox = mailbox
        self.collect_timeout = collect_timeout
        self._voted_through = 0  # every validator voted on the committed rounds before this one
        self._restored_at = -1  # rounds committed when it last put deleted blobs back
        self.reveal_timeout = reveal_timeout
        self._opened: dict[int, float] = {}  # round -> when this process first saw it open (monotonic)
        self._verified: dict = {}  # the open round's messages -> who signed them (`signed_on`)
        self._blobs_read: set[tuple[int, str]] = set()  # (round, cid) of masked blobs read intact
        self._expected: dict[int, list[str]] = {}  # round -> the providers selected for it
        self._spec = None
        self._next_restore = 0.0  # when it next looks for deleted blobs of a round under review

    @property
    def address(self) -> str:
        return self.account.address

    def _keep_seal(self, job_id: int, round_: int, msg: dict) -> None:
        seals = self.state.load("seals", {})
        seals[f"{job_id}-{round_}"] = msg
        self.state.save("seals", seals)

    def _keep_ack(self, job_id: int, round_: int, updates: list) -> None:
        """Record the updates about to be acknowledged; their blobs are in `kept` already (`collect`
        read each through the mirror)."""
        key = f"{job_id}-{round_}"
        kept = {k: v for k, v in self.state.load("acked", {}).items() if k == key}  # earlier rounds are committed
        for u in updates:
            kept.setdefault(key, {})[u.provider] = {
                "update_cid": u.update_cid, "update_root": "0x" + u.update_root.hex(), "weight": u.weight,
                "signature": "0x" + u.signature.hex(), "salt": "0x" + u.salt.hex()}
        self.state.save("acked", kept)

    def _load_acked(self) -> dict:
        out = {}
        try:
            for key, entries in self.state.load("acked", {}).items():
                job_id, round_ = (int(v) for v in key.split("-"))
                out[(job_id, round_)] = {
                    p: Update(p, e["update_cid"], bytes.fromhex(e["update_root"][2:]), int(e["weight"]),
                              bytes.fromhex(e["signature"][2:]),
                              decode_vector(self.kept.get(e["update_cid"])),
                              bytes.fromhex(e["salt"][2:]))
                    for p, e in entries.items()}
        except (OSError, StorageError, *BAD_INPUT) as exc:
            raise StorageError(f"the acknowledged updates in {self.state.root} are unreadable: {exc}") from None
        return out

    def spec(self):
        if self._spec is None:
            self._spec = load_spec(self.dep, self.store, self.job_id)
        return self._spec

    def step(self) -> None:
        job_id = self.job_id
        job = job_state(self.dep, job_id)
        if job["aggregator"] != self.address:
            raise Fatal(f"job {job_id} names {job['aggregator']} as its aggregator, not {self.address}")
        state = job["state"]
        if state in (JobState.TRAINING, JobState.FINALIZING):
            for receipt in self.aggregator.defend(job_id):
                self.say(f"answered a dispute game (tx {receipt.tx_hash})")
            for gid, why in self.aggregator.defender.failed_moves:
                self.say_once(f"game {gid}: could not move now: {why}")
        if state == JobState.OPEN:
            if not job["accepted"]:
                try:  # the terms, the spec and our funds are checked before staking
                    receipt = self.aggregator.accept(job_id)
                except REFUSED_BEFORE_STAKING as exc:
                    raise Fatal(str(exc)) from None
                self.say(f"accepted job {job_id} (tx {receipt.tx_hash})")
                return
            full = job["n_providers"] >= job["max_providers"] and job["n_validators"] >= job["max_validators"]
            late = (max(self.dep.chain.timestamp(), time.time()) >= job["join_deadline"]
                    and job["n_providers"] >= job["min_providers"] and job["n_validators"] >= job["min_validators"])
            if full or late:
                receipt = self.aggregator.start(job_id)
                self.say(f"started training with {job['n_providers']} providers, {job['n_validators']} validators "
                         f"(tx {receipt.tx_hash})")
            else:
                self.say_once(f"waiting for providers ({job['n_providers']}/{job['max_providers']}) and validators")
            return
        if state == JobState.TRAINING:
            r, rounds = int(job["current_round"]), int(job["rounds"])
            gated = job["max_validators"] > 0
            if gated and (time.monotonic() >= self._next_restore or r != self._restored_at):  # every 5 s, and after a commit
                self._next_restore, self._restored_at = time.monotonic() + 5.0, r
                self._keep_available(self._unvoted(job))
            if r > 0 and gated and not job["quorum"]:
                for receipt in submit_attestations(self.dep, self.mailbox, self.account, job_id, r - 1):
                    self.say(f"round {r - 1}: attestations submitted (tx {receipt.tx_hash})")
                for receipt in submit_rejections(self.dep, self.mailbox, self.account, job_id, r - 1):
                    self.say(f"round {r - 1}: REJECTED by validators (tx {receipt.tx_hash})")
                if not self.dep.job(job_id)["quorum"]:
                    self.say_once(f"round {r - 1}: waiting for validator quorum")
                return
            if r < rounds:
                self._round(job, r)
            else:
                self._finish(job)
            return
        if state == JobState.FINALIZING:
            self.say_once("reward root posted; waiting for the challenge window and settlement")
            return
        # settled: claim this aggregator's leaf (stake back to free stake, reputation); cancelled or
        # failed: take the stake back; then stop
        word, stake = self.dep.market.call("membership", job_id, self.address)
        if state == JobState.SETTLED:
            leaf, _ = reward_leaf(self.dep, self.store, self.address, job_id)
            if not self.dep.market.call("is_claimed", job_id, int(leaf["index"])):
                receipt = claim_reward(self.dep, self.store, self.account, job_id)
                self.say(f"claimed: stake back, reputation {int(leaf['reputation_delta']):+d} (tx {receipt.tx_hash})")
        elif stake and not R.is_slashed(word):
            receipt = self.aggregator.release_stake(job_id)
            self.say(f"job {state.name.lower()}: aggregator stake released (tx {receipt.tx_hash})")
        raise Stop

    def _unvoted(self, job: dict) -> list[int]:
        """The committed rounds some validator of the job has not voted on yet (none once the votes
        closed): a slower validator reviews a round after its quorum, and rejects it if its data is
        gone (losing its fee for the round, the attacker's gain)."""
        if self.dep.disputes.call("votes_closed", self.job_id):
            return []
        n, committed = int(job["n_validators"]), int(job["current_round"])
        while self._voted_through < committed and int(self.dep.disputes.call("voters", self.job_id, self._voted_through)) >= n:
            self._voted_through += 1
        # the oldest two (where a slower validator is) and the newest two: every blob of each is read
        # back every 5 s, and a validator that never votes would otherwise keep every round in it
        unvoted = range(self._voted_through, committed)
        return sorted({*unvoted[:2], *unvoted[-2:]})

    def _keep_available(self, rounds: list[int]) -> None:
        """While validators review `rounds`, put back in the shared store any of their blobs someone
        deleted or overwrote there (anyone on a shared store can): each round's metrics document,
        its model, the model it started from and its updates, from this process's copy. A round
        whose data validators cannot fetch is rejected, at this aggregator's cost."""
        if not rounds:
            return
        mirror = self.aggregator.store
        cids, wanted = [], set(rounds)
        for c in committed_rounds(self.dep, self.job_id)[max(0, min(rounds) - 1):max(rounds) + 1]:
            doc = fetch_metrics(mirror, c)  # read through the mirror: puts the document itself back
            cids.append(doc["model_cid"])
            cids += [doc[k] for k in ("correction_cid", "transcript_cid") if k in doc]
            if c.round in wanted:
                cids += [u["update_cid"] for u in doc["updates"] if "update_cid" in u]
        back = mirror.restore(cids)
        if back:
            self.say(f"round{'s' if len(rounds) > 1 else ''} {', '.join(map(str, rounds))}: put {back} deleted blob(s) "
                     "back in the store for the validators")

    def _round(self, job: dict, r: int) -> None:
        job_id = self.job_id
        spec = self.spec()
        opened = self._opened.setdefault(r, time.monotonic())
        if r not in self._expected:
            self._expected = {r: round_providers(self.dep, spec, job_id, r)}
            self._verified, self._blobs_read = {}, set()
            # the messages kept of earlier rounds are no longer needed: those rounds are committed
            self.mailbox.forget(lambda topic: (n := topic_round(job_id, topic)) is not None and n < r)
        if spec.privacy.secure:
            self._secure_round(job_id, r, opened)
            return
        if sealed(spec) and not self._sealed(job_id, r, spec, opened):
            return
        expected = self._expected[r]
        waited = time.monotonic() - opened
        timed_out = waited >= self.collect_timeout
        collected = None
        if not timed_out:
            # cheap first: which selected providers have posted something (unverified)
            if not self._senders(r, "update").issuperset(expected):
                return
            # then verified: a bad update does not count (its provider may still post a good one)
            collected = updates, rejected = self.aggregator.collect(job_id, r, spec)
            if len(updates) < len(expected):
                for rej in rejected:
                    self.say_once(f"round {r}: rejected an update{' of ' + rej['provider'] if 'provider' in rej else ''}: "
                                  f"{rej['reason']}")
                return
        elif not self.mailbox.read(round_topic(job_id, r)):
            # nobody posted: wait on for late providers, but commit the round empty (it keeps the
            # model) a quarter of a round before its deadline, rather than be failed for it
            now = max(self.dep.chain.timestamp(), time.time())
            if now < int(job["round_deadline"]) - max(1, int(job["round_duration"]) // 4):
                self.say_once(f"round {r}: no update after {waited:.0f}s")
                return
            self.say(f"round {r}: no update, and its deadline is near: committing it empty")
        # every selected provider's valid update is here (or time is up): aggregate and commit;
        # bad updates are left out and listed with their reasons in the round's metrics document
        receipt = self.aggregator.run_round(job_id, r, collected)
        committed = committed_rounds(self.dep, job_id)[r]
        metrics = fetch_metrics(self.store, committed)
        for rej in metrics.get("rejected", []):
            self.say_once(f"round {r}: rejected an update{' of ' + rej['provider'] if 'provider' in rej else ''}: "
                          f"{rej['reason']}")
        missing = sorted(set(expected) - {u["provider"] for u in metrics["updates"]})
        self.say(f"round {r} committed: {committed.count} updates"
                 + (f", missing {len(missing)}" if missing else "")
                 + (f", {len(metrics.get('rejected', []))} rejected" if metrics.get("rejected") else "")
                 + f" after {waited:.1f}s, gas {receipt.gas_used} (tx {receipt.tx_hash})")

    def _own_topic(self, topic: str) -> bool:
        """The topics whose messages it posts are kept (`KeptMailbox`): a secure round's survivor set."""
        return topic_round(self.job_id, topic) is not None and topic.endswith("-sa-survivors")

    def _phase_topic(self, topic: str) -> bool:
        """The topics whose messages it remembers once read: a secure round's providers' phases."""
        return topic_round(self.job_id, topic) is not None and "-sa-" in topic and not self._own_topic(topic)

    def _phase_signer(self, topic: str, raw: bytes) -> str | None:
        """Who signed `raw` on the secure-phase `topic` of this job, if one of the round's selected
        providers, or None (a stranger's signed message is not remembered: one file per signer)."""
        m = re.fullmatch(r"job-(\d+)-round-(\d+)-sa-(\w+)", topic)
        if m is None or int(m.group(1)) != self.job_id or m.group(3) not in SECURE_PHASES:
            return None
        r = int(m.group(2))
        signer = signed_by(self.dep, raw, self.job_id, r, m.group(3))
        if signer is None:
            return None
        members = self._expected.get(r)
        if members is None:
            members = round_providers(self.dep, self.spec(), self.job_id, r)
        return signer if signer in members else None

    def _senders(self, r: int, kind: str) -> set[str]:
        """Who signed a message of `kind` of round `r` (a claim nobody signed decides nothing here)."""
        return signed_on(self.dep, self.mailbox, self.job_id, r, kind, self._verified)

    def _secure_round(self, job_id: int, r: int, opened: float) -> None:
        """A secure round (privacy modes secagg, secagg_dp): once every provider that posted its
        shares has uploaded its masked update, verify them and sign the survivor set; once every
        survivor answered the unmasking, unmask and commit. Each wait ends after `collect_timeout`
        plus two of the providers' phase timeouts (a dropped provider makes the others wait out a
        phase). A round below the threshold commits no update (it keeps the model)."""
        waited = time.monotonic() - opened
        # a provider that dropped makes the others wait out a phase (keys, shares; then confirmations)
        patience = self.collect_timeout + 2 * sr.phase_timeout(self.dep.job(job_id)["round_duration"])
        for phase in ("keys", "confirm"):  # read as they come, so that they stay read (`KeptMailbox`)
            self.mailbox.read(sr.topic(job_id, r, phase))
        posted = self.aggregator.own_survivors(job_id, r)  # its own set: anyone can post on the topic
        if posted is None:
            shared = self._senders(r, "shares")
            if not shared or (not self._senders(r, "update").issuperset(shared) and waited < patience):
                if not shared and waited >= patience:
                    self._commit(job_id, r, waited)  # nobody got as far as sharing: the round keeps the model
                return
            if waited < patience and self._uploads_missing(r, shared):
                # a signed masked update whose blob is gone (deleted: its provider puts it back) is
                # waited for: left out, its neighbours, who saw it, would refuse the set
                self.say_once(f"round {r}: a masked update's blob is missing; waiting for it")
                return
            try:
                survivors = self.aggregator.secure_survivors(job_id, r)
            except SecAggAbort as exc:
                self.say(f"round {r}: {exc}")
                self._commit(job_id, r, waited)
                return
            self._opened[r] = time.monotonic()  # the unmasking's window starts now
            self.say(f"round {r}: {len(survivors)} survivors signed; waiting for their confirmations and answers")
            return
        if len(self._senders(r, "unmask")) < len(posted["survivors"]) and waited < patience:
            return
        self._commit(job_id, r, waited)

    def _uploads_missing(self, r: int, shared: set[str]) -> bool:
        """Whether the blob of a masked update signed by a member that `shared` is missing from the
        store, or overwritten (read through the mirror: once read, a later loss is put back)."""
        limit = vector_blob_limit(self.spec().n_params)
        for raw in self.mailbox.read(round_topic(self.job_id, r)):
            if not shared & signed_senders(self.dep, [raw], self.job_id, r, "update", self._verified):
                continue
            cid = untrusted_json(raw).get("update_cid")
            if not isinstance(cid, str) or (r, cid) in self._blobs_read:
                continue
            try:
                self.aggregator.store.get_capped(cid, limit)
            except (BlobNotFound, BlobTooLarge):  # missing, or overwritten (junk, too long, not a file)
                return True
            except (StorageError, ValueError):
                continue  # not a blob of an update at all: the collect says why
            self._blobs_read.add((r, cid))
        return False

    def _commit(self, job_id: int, r: int, waited: float) -> None:
        receipt = self.aggregator.run_round(job_id, r)
        committed = committed_rounds(self.dep, job_id)[r]
        self.say(f"round {r} committed: {committed.count} updates after {waited:.1f}s, gas {receipt.gas_used} "
                 f"(tx {receipt.tx_hash})")

    def _sealed(self, job_id: int, r: int, spec, opened: float) -> bool:
        """A sealed round (`roles.sealed`): seal once every selected provider committed, or when
        `collect_timeout` passed; then the providers in the seal are the ones to wait for, and the
        reveals get their own `collect_timeout`. False while the commitments are still coming."""
        seal = self.aggregator.posted_seal(job_id, r)
        if seal is None:
            committed = self._senders(r, "commit")
            if not committed.issuperset(self._expected[r]) and time.monotonic() - opened < self.collect_timeout:
                return False
            seal = self.aggregator.seal(job_id, r, spec)
            self._opened[r] = time.monotonic()  # the reveals' window starts now
            self._expected[r] = list(seal["commitments"])
            self.say(f"round {r}: sealed {len(seal['commitments'])} commitments; providers reveal now")
            return False
        self._expected[r] = list(seal["commitments"])
        return True

    def _reveals_complete(self) -> bool:
        """Whether every validator that attested a round has revealed its scores for it."""
        stakes = joined_validators(self.dep, self.job_id)
        reveals = mailbox_reveals(self.dep, self.mailbox, self.job_id)
        for c in committed_rounds(self.dep, self.job_id):
            attested = {v for v in stakes if self.dep.disputes.call("attestation_of", self.job_id, c.round, v) != ZERO}
            revealed = {rv.validator for rv in verified_reveals(self.dep, self.store, self.job_id, c.round,
                                                                reveals.get(c.round, []), stakes)}
            if attested - revealed:
                return False
        return True

    def _finish(self, job: dict) -> None:
        job_id = self.job_id
        if job["n_validators"] > 0:
            # every attestation of the last round posted in time goes on chain before the root: once
            # the job is finalizing no vote can land, and a validator's fee follows its on-chain vote
            last = int(job["rounds"]) - 1
            try:  # none once the votes closed: a vote posted late never holds the root back
                for r in range(last + 1):  # every round's, the last one last: it may close the votes
                    for receipt in submit_attestations(self.dep, self.mailbox, self.account, job_id, r):
                        self.say(f"round {r}: attestations beyond quorum submitted (tx {receipt.tx_hash})")
            except ContractRevert as exc:
                if "votes closed" not in str(exc):
                    raise
            for receipt in submit_misbehaviour(self.dep, self.mailbox, self.account, job_id):
                self.say(f"provider {receipt.event('ProviderSlashed')['provider']} slashed by validator vote")
            if not self.dep.disputes.call("votes_closed", job_id):  # the root is computed once no vote can land
                self.say_once("reward root waits for the last votes (every validator's on every round, or a quarter "
                              "of the step's time)")
                return
            # validators reveal their scores once the votes are closed: wait for them from then
            opened = self._opened.setdefault(-1, time.monotonic())
            if not self._reveals_complete():
                if time.monotonic() - opened < self.reveal_timeout:
                    self.say_once("votes closed; waiting for the validators' revealed scores")
                    return
                self.say_once(f"some validators did not reveal their scores within {self.reveal_timeout:.0f}s")
        try:  # a scores-basis root also puts the validators' approvals of it on chain first
            receipt = self.aggregator.post_rewards(job_id)
        except (ContractRevert, FedMarketError) as exc:
            if "votes open" in str(exc):  # a late validator's vote still counts: the root waits for it
                self.say_once("reward root ready; waiting for the last votes (every validator's, or half of the step's time)")
                return
            if "not approved" not in str(exc) and "scores basis" not in str(exc):
                raise
            try:  # validators silent: the provable weight basis, once half of the last step's time passed
                receipt = self.aggregator.post_rewards(job_id, R.Basis.WEIGHT)
            except ContractRevert as again:
                if "approval window open" not in str(again):
                    raise
                self.say_once("reward root ready; waiting for the validators' approvals of it")
                return
        ev = receipt.event("RewardRootPosted")
        self.say(f"reward root posted: total {ev['reward_total']}, challenge window until {ev['challenge_deadline']} "
                 f"(tx {receipt.tx_hash})")
