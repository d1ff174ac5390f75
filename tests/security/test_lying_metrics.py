"""An aggregator whose metrics document lists other updates than the tree it committed (found by a
review of the dispute games). A round's list is the aggregator's word; the committed updates root
is what it can be held to. Every reader that pays, judges or watches by a round's members takes the
list only where it forms that root (`common.listed_leaves`), and otherwise re-derives the round from
the mailbox (`Auditor.leaves`)."""

from __future__ import annotations

import pytest
from sec_support import AGG_STAKE

import fedmarket.roles.aggregator as agg_mod
from fedmarket.errors import FedMarketError
from fedmarket.market import JobState
from fedmarket.roles import Aggregator
from fedmarket.roles.common import committed_rounds, fail_job
from fedmarket.roles.settlement import mailbox_reveals, reward_document
from fedmarket.testing.adversary import DroppingAggregator, InflatingAggregator


def _lying_metrics(edit):
    """Run `fn` with every round's metrics document rewritten by `edit(doc)` before it is stored and
    committed (the aggregator lies in the document it commits the digest of)."""
    def wrap(fn):
        def run(*a, **k):
            real = agg_mod.canonical_json

            def lying(obj):
                if isinstance(obj, dict) and "model_cid" in obj and "updates" in obj:
                    obj = edit(obj)
                return real(obj)

            agg_mod.canonical_json = lying
            try:
                return fn(*a, **k)
            finally:
                agg_mod.canonical_json = real
        return run
    return wrap


class ListingDroppingAggregator(DroppingAggregator):
    """Acknowledges every update of round 1, leaves one out of the committed tree, and still lists
    it in the round's metrics document (at `listed_weight`, its own weight by default)."""

    dropped = None
    listed_weight = None

    def collect(self, job_id, round_, spec):
        full, _ = Aggregator.collect(self, job_id, round_, spec)
        updates, rejected = super().collect(job_id, round_, spec)
        kept = {u.provider for u in updates}
        self.dropped = next((u for u in full if u.provider not in kept), self.dropped)
        return updates, rejected

    def run_round(self, job_id, round_, collected=None):
        if round_ != 1:
            return super().run_round(job_id, round_, collected)
        def relist(doc):  # (collected within the round: read when the document is written)
            u = self.dropped
            entry = {"index": 0, "provider": u.provider, "update_cid": self.store.put(agg_mod.encode_vector(u.q)),
                     "update_root": "0x" + u.update_root.hex(),
                     "weight": u.weight if self.listed_weight is None else self.listed_weight,
                     "signature": "0x" + u.signature.hex()}
            return dict(doc, updates=[entry, *doc["updates"]])
        return _lying_metrics(relist)(super().run_round)(job_id, round_, collected)


class InflatedListSilentAggregator(Aggregator):
    """Commits every round's true tree, lists the first provider's weight ten times over in each
    metrics document, and posts no reward root: whoever posts it in its place must not pay by the
    list."""

    def run_round(self, job_id, round_, collected=None):
        def inflate(doc):
            ups = [dict(e, weight=int(e["weight"]) * 10) if i == 0 else e for i, e in enumerate(doc["updates"])]
            return dict(doc, updates=ups)
        return _lying_metrics(inflate)(super().run_round)(job_id, round_, collected)

    def post_rewards(self, job_id, basis=None):
        return None


@pytest.mark.parametrize("weight", [None, -1], ids=["listed", "unencodable"])
def test_a_metrics_list_naming_a_left_out_update_cannot_hide_the_censorship(make, weight):
    """ATTACK: round 1 leaves out an update the aggregator acknowledged, and its metrics document still
    lists it. The watcher's round check saw the list fail and re-derived the round from the mailbox
    (right); its censorship check read the same list unchecked, found the update "included", and
    opened no inclusion game, though the game wins at once. It reads the committed tree's leaves now.
    Listed with a weight of -1 (which parses, and which the leaf encoding refuses), the first
    version of that fix raised at every step instead of re-deriving the round (found by a review)."""
    s = make(providers=3, rounds=2, aggregator_cls=ListingDroppingAggregator)
    s.agg.listed_weight = weight
    s.open()
    s.rounds()
    assert s.agg.dropped is not None
    (opened,) = s.dep.round_arbiter.events("GameOpened", job_id=s.job)
    assert opened["round"] == 1 and opened["defender"] == s.agg.address
    assert s.state() == JobState.FAILED
    assert s.dep.market.events("JobFailed", job_id=s.job)[0]["reason"] == "censored update"
    s.release_all()
    d = s.delta()
    assert d[s.agg.address] == -AGG_STAKE and all(d[p.address] >= 0 for p in s.providers)


def test_a_metrics_list_that_lies_cannot_get_the_providers_who_post_the_root_slashed(make):
    """ATTACK: the aggregator commits true trees, lists an inflated weight in every metrics document
    and posts no reward root. Each provider then posted the orphaned root from the lying list, was
    proven wrong and slashed its whole stake in turn (half to the challenger, possibly the
    aggregator's Sybil), and the job failed with nobody paid. Members now pay by the committed
    leaves: the first root posted in its place stands, and the providers are paid."""
    s = make(providers=3, rounds=2, aggregator_cls=InflatedListSilentAggregator)
    s.run()  # every round committed; no root
    assert len(committed_rounds(s.dep, s.job)) == 2 and s.state() == JobState.TRAINING
    with pytest.raises(FedMarketError, match="do not form the committed updates root"):
        s.honest_document()  # nobody pays by a list the tree does not hold
    s.past_round_deadline()
    fail_job(s.dep, s.c.stranger, s.job)  # the aggregator is out; the providers post the root in its place
    s.driver.finish()
    assert s.state() == JobState.SETTLED
    rejected = s.dep.market.events("RewardRootRejected", job_id=s.job)
    assert [e["poster"] for e in rejected] == [s.agg.address]  # its missing root, and nobody else's
    d = s.delta()
    assert d[s.agg.address] < 0  # slashed for posting no root
    assert all(d[p.address] > 0 for p in s.providers)  # every provider paid, none slashed


class UnencodableListInflatingAggregator(InflatingAggregator):
    """Commits every round's true tree, lists one extra leaf of weight -1 in round 0's metrics
    document, and posts a reward root that doubles its Sybil's value (`InflatingAggregator`)."""

    def run_round(self, job_id, round_, collected=None):
        def extra(doc):
            self.true_lists[round_] = [(e["provider"], int(e["weight"])) for e in doc["updates"]]
            if round_ != 0:
                return doc
            e = doc["updates"][0]
            return dict(doc, updates=[*doc["updates"], dict(e, index=len(doc["updates"]), weight=-1)])
        return _lying_metrics(extra)(super().run_round)(job_id, round_, collected)

    def rewards_document(self, job_id, spec, basis=None):
        doc = reward_document(self.dep, self.store, job_id, spec, mailbox_reveals(self.dep, self.mailbox, job_id),
                              basis, lambda r: self.true_lists[r])
        return self.tamper(doc)


def test_an_unencodable_metrics_list_cannot_shield_an_inflated_reward_root(make):
    """ATTACK (found by a review of the fix above): a leaf of weight -1 in round 0's list made every
    watcher's reward check raise (`Auditor.members`), so the root doubling a Sybil's value settled
    unchallenged. The round is re-derived from the mailbox now, and the root is proven wrong."""
    s = make(providers=3, rounds=3, aggregator_cls=UnencodableListInflatingAggregator)
    s.agg.true_lists = {}
    s.agg.favoured = s.providers[1].address
    s.run()
    assert s.dep.reward_arbiter.events("GameOpened", job_id=s.job)
    rejected = s.dep.market.events("RewardRootRejected", job_id=s.job)
    assert rejected and rejected[0]["poster"] == s.agg.address
    assert s.state() == JobState.SETTLED and s.delta()[s.agg.address] < 0
