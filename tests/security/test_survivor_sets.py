"""Survivor sets of a secure round shown to different providers (a deviating aggregator on the shared
mailbox), as the role code runs them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedmarket.privacy import secagg as sa
from fedmarket.roles import secure_round as sr


def _delete_topic(box, topic):
    d = box.root / topic
    for f in list(d.iterdir()):
        if not f.name.startswith("."):
            f.unlink()


def test_two_survivor_sets_shown_to_disjoint_honest_groups_cannot_open_a_victims_update(make):
    """ATTACK (found by a review of secure rounds under deletion): in a secagg round of 8 (t = 4, 2
    colluders), the aggregator has group A (the victim and two others) and the colluders mask, posts
    S1 = A and the colluders, gets it confirmed and A's unmask answers (the victim's self-mask
    shares); then it posts S2 = everyone but the victim and deletes S1 and its confirmations from the
    shared mailbox, so the slower honest group B, which never saw them, confirms S2 with the
    colluders and answers with the victim's mask-key shares. With the colluders' shares both
    secrets rebuilt: the victim's exact update. A survivor set now needs more confirmations than
    half the round and the colluders together (`secagg.confirmation_quorum`): two sets can never
    both reach it, and neither group answers."""
    from fedmarket.errors import SecAggAbort

    n = 8
    s = make(providers=n, rounds=1, validators=1, privacy="secagg")
    s.open()
    job = s.job
    for p in s.providers:
        p.advertise(job, 0)
    for p in s.providers:
        p.share(job, 0)
    members = s.providers[0].members(job, 0)
    by_uid = {members.index(p.address): p for p in s.providers}
    cfg = s.providers[0]._client(job, 0)[1]
    assert (cfg.threshold, cfg.k) == (4, 7) and cfg.min_survivors == sa.confirmation_quorum(n, 1 / 3) == 6
    A, B, C = [0, 1, 2], [3, 4, 5], [6, 7]  # A holds the victim 0; C = floor(n/3) colluders
    v = 0
    captured = {}
    vclient = by_uid[v]._client(job, 0)[0]
    orig = vclient.masked_input

    def spy(x, shares):
        captured["x"] = np.array(x, dtype=np.int64)
        return orig(x, shares)

    vclient.masked_input = spy
    agg_key = s.agg.account.key
    rid = cfg.round_id

    def post_set(survivors):
        s.box.post(sr.topic(job, 0, "survivors"),
                   sr.survivors_message(agg_key, rid, s.agg.address, list(range(n)), sorted(survivors)))

    def colluders_confirm(survivors):
        for u in C:
            p = by_uid[u]
            s.box.post(sr.topic(job, 0, "confirm"),
                       sr.confirm_message(p.account.key, rid, p.address, u, frozenset(survivors)))

    # group A and the colluders mask; B (honest, slower: bigger data, or a network blip) has not yet
    for u in A + C:
        by_uid[u].train(job, 0)
    S1 = set(A + C)
    post_set(S1)
    for u in A:
        by_uid[u].watch_uploads(job, 0)
        with pytest.raises(SecAggAbort, match="below the round's 6"):  # too few to be confirmed at all
            by_uid[u].confirm(job, 0)
    colluders_confirm(S1)
    for u in A:
        with pytest.raises(SecAggAbort):
            by_uid[u].unmask(job, 0)
    # the aggregator (on the shared mailbox) posts a second set, then removes the first and its confirmations
    S2 = set(range(n)) - {v}
    post_set(S2)
    _delete_topic(s.box, sr.topic(job, 0, "confirm"))
    for f in list((s.box.root / sr.topic(job, 0, "survivors")).iterdir()):
        if sorted(json.loads(json.loads(f.read_bytes())["signed"])["survivors"]) == sorted(S1):
            f.unlink()
    for u in B:
        by_uid[u].train(job, 0)
        by_uid[u].watch_uploads(job, 0)  # the set is out already: it notes nobody
        by_uid[u].confirm(job, 0)
    colluders_confirm(S2)
    for u in B:
        with pytest.raises(SecAggAbort):  # B and the colluders: 5 confirmations of S2, below the quorum of 6
            by_uid[u].unmask(job, 0)
    resp = sr.responses(s.box.read(sr.topic(job, 0, "unmask")), members, rid)
    b_pts = [r for r in resp if v in r.b_shares] + C
    sk_pts = [r for r in resp if v in r.sk_shares] + C
    assert len(b_pts) < cfg.threshold and len(sk_pts) < cfg.threshold  # neither secret of the victim rebuilds
