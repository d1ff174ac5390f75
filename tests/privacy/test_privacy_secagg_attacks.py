"""Attacker tests of SecAgg+ against a server (the aggregator) that deviates: each passes only when
the attack fails. Library level (`privacy.secagg`) and the signed mailbox messages of a market
round (`roles.secure_round`)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account as EthAccount

from fedmarket.errors import SecAggAbort, ShareTampered
from fedmarket.privacy.secagg import EncryptedShare, SecAggClient, SecAggConfig, SecAggServer, neighbour_graph, prg_mask
from fedmarket.roles import secure_round as sr

N, D, K, T = 10, 16, 9, 5


def _setup(n=N, d=D, k=K, t=T, min_survivors=None):
    cfg = SecAggConfig(n, d, k, t, t if min_survivors is None else min_survivors, round_id=b"job-7-round-2")
    graph = neighbour_graph(n, k, cfg.graph_seed)
    clients = {u: SecAggClient(u, cfg, graph[u]) for u in range(n)}
    server = SecAggServer(cfg, graph)
    keys_for = server.collect_keys([c.advertise() for c in clients.values()])
    routed = server.route_shares({u: clients[u].share_keys(keys_for[u]) for u in clients})
    X = {u: np.random.default_rng(u).integers(-(2**40), 2**40, size=d, dtype=np.int64) for u in range(n)}
    return cfg, clients, server, routed, X


def test_a_victim_routed_fewer_than_t_shares_refuses_to_mask_so_its_input_never_leaves():
    """The attack: route t - 1 shares to the victim, so its masked input carries pairwise masks
    only with the server's accomplices; then call it a survivor so the others reveal its self-mask
    seed. The victim refuses to mask, so there is no masked input to strip."""
    cfg, clients, server, routed, X = _setup()
    victim = 0
    with pytest.raises(SecAggAbort, match="received 4 shares, threshold 5; refusing to mask"):
        clients[victim].masked_input(X[victim], routed[victim][: T - 1])
    others = [clients[u].masked_input(X[u], routed[u]) for u in range(1, N)]
    survivors = server.collect_masked(others)
    assert victim not in survivors and victim not in server.masked
    # the server now even obtains the victim's self-mask seed: there is still nothing to unmask
    claimed = survivors | {victim}
    responses = [clients[u].unmask(claimed, claimed) for u in range(1, N) if clients[u].confirm(claimed)]
    assert sum(victim in r.b_shares for r in responses) >= T
    views = [np.frombuffer(m.data, dtype=np.int64) for m in others]
    assert not any(np.array_equal(v, X[victim]) for v in views)
    # the control: with t shares it masks
    cfg2, clients2, _, routed2, X2 = _setup()
    assert clients2[victim].masked_input(X2[victim], routed2[victim][:T]).uid == victim


def test_forged_shares_do_not_count_towards_the_threshold():
    cfg, clients, _, routed, X = _setup()
    victim = 0
    junk = [EncryptedShare(s.src, s.dst, bytes(len(s.blob))) for s in routed[victim]]
    with pytest.raises(ShareTampered, match="failed authentication"):
        clients[victim].masked_input(X[victim], junk)


def test_a_second_unmask_for_another_survivor_set_is_refused():
    """The attack: get provider 3's self-mask share (it survived) and, with another survivor set
    that says 3 dropped, its mask-key share too; with t of each, the server strips 3's masks."""
    cfg, clients, server, routed, X = _setup()
    masked = [clients[u].masked_input(X[u], routed[u]) for u in range(N)]
    survivors = server.collect_masked(masked)
    helper = clients[1]
    assert helper.confirm(survivors) == survivors
    first = helper.unmask(survivors, survivors)
    assert 3 in first.b_shares and 3 not in first.sk_shares
    other = survivors - {3}
    with pytest.raises(SecAggAbort, match="already confirmed another survivor set"):
        helper.confirm(other)
    with pytest.raises(SecAggAbort, match="did not confirm"):
        helper.unmask(other, other)
    assert helper.unmask(survivors, survivors) is first  # the same set gets the same answer, nothing new


def test_unmasking_needs_the_survivor_set_pinned_by_enough_signatures():
    cfg, clients, server, routed, X = _setup(min_survivors=8)
    masked = [clients[u].masked_input(X[u], routed[u]) for u in range(N)]
    survivors = server.collect_masked(masked)
    clients[2].confirm(survivors)
    with pytest.raises(SecAggAbort, match="only 7 survivors confirmed"):
        clients[2].unmask(survivors, frozenset(range(7)))
    with pytest.raises(SecAggAbort, match="below the round's 8"):
        clients[4].confirm(frozenset(range(7)))  # a set smaller than the round accepts is never signed


def test_a_provider_masks_and_shares_once_per_round():
    cfg, clients, _, routed, X = _setup()
    clients[0].masked_input(X[0], routed[0])
    with pytest.raises(SecAggAbort, match="already masked"):
        clients[0].masked_input(X[0] + 1, routed[0])  # two masked inputs would differ by exactly x - x'
    with pytest.raises(SecAggAbort, match="already shared"):
        clients[0].share_keys({})


def test_mask_prg_is_chacha20_keystream():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    seed = b"\x07" * 32
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedmarket-secagg-prg").derive(seed)
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor().update(bytes(8 * 5))
    assert prg_mask(seed, 5).tolist() == np.frombuffer(stream, dtype="<u8").tolist()
    assert prg_mask(seed, 5).tolist() != prg_mask(b"\x08" * 32, 5).tolist()


# ---------------------------------------------------------------------------- signed mailbox messages


def _members(n=4):
    accounts = [EthAccount.create() for _ in range(n)]
    accounts.sort(key=lambda a: int(a.address, 16))
    return accounts, [a.address for a in accounts]


def _keys_raw(account, round_id, uid):
    clientcfg = SecAggConfig(4, 3, 3, 2, 2, round_id=round_id)
    adv = SecAggClient(uid, clientcfg, np.array([v for v in range(4) if v != uid])).advertise()
    return sr.keys_message(account.key, round_id, account.address, adv)


def test_a_message_replayed_from_another_round_job_or_chain_is_rejected():
    accounts, members = _members()
    here = sr.Domain(31337, "0x" + "11" * 20, 5, 2)
    elsewhere = [sr.Domain(31337, "0x" + "11" * 20, 5, 1), sr.Domain(31337, "0x" + "11" * 20, 6, 2),
                 sr.Domain(1, "0x" + "11" * 20, 5, 2), sr.Domain(31337, "0x" + "22" * 20, 5, 2)]
    fresh = _keys_raw(accounts[0], here.round_id, 0)
    assert list(sr.advertised([fresh], members, here.round_id)) == [0]
    for other in elsewhere:
        replayed = _keys_raw(accounts[1], other.round_id, 1)
        assert sr.advertised([replayed], members, here.round_id) == {}
        with pytest.raises(Exception, match="another round or phase"):
            sr.opened(replayed, here.round_id, "keys", "provider")
    # a message of one phase does not pass for another
    with pytest.raises(Exception, match="another round or phase"):
        sr.opened(fresh, here.round_id, "unmask", "provider")


def test_messages_are_verified_on_their_exact_bytes():
    accounts, members = _members()
    rid = sr.Domain(31337, "0x" + "11" * 20, 5, 2).round_id
    raw = _keys_raw(accounts[0], rid, 0)
    env = json.loads(raw)
    body = json.loads(env["signed"])
    # the same content serialised differently is another message: its signature does not verify
    respaced = json.dumps({"signed": json.dumps(body, indent=1), "signature": env["signature"]}).encode()
    assert sr.advertised([respaced], members, rid) == {}
    # a field changed after signing
    forged = json.dumps({"signed": env["signed"].replace('"uid":0', '"uid":1'), "signature": env["signature"]}).encode()
    assert sr.advertised([forged], members, rid) == {}


def test_two_messages_of_one_provider_in_a_phase_are_both_rejected():
    accounts, members = _members()
    rid = sr.Domain(31337, "0x" + "11" * 20, 5, 2).round_id
    first, second = _keys_raw(accounts[2], rid, 2), _keys_raw(accounts[2], rid, 2)
    other = _keys_raw(accounts[3], rid, 3)
    assert first != second  # fresh keys each time
    assert sorted(sr.advertised([first, other], members, rid)) == [2, 3]
    assert sorted(sr.advertised([first, second, other], members, rid)) == [3]  # not ordered: refused


def test_no_two_providers_act_on_different_survivor_sets():
    """An aggregator shows survivor set A to some providers and B to others. A set needs more
    confirmations than half the members (and the colluders: `confirmation_quorum`), so a 3/3 split
    pins neither, and a set confirmed by enough pins that one only."""
    accounts, members = _members(6)
    cfg = SecAggConfig(6, 3, 5, 3, 3, round_id=sr.Domain(31337, "0x" + "11" * 20, 5, 2).round_id)
    a, b = frozenset(range(6)), frozenset(range(5))
    raws = [sr.confirm_message(acc.key, cfg.round_id, acc.address, u, a if u < 3 else b) for u, acc in enumerate(accounts)]
    for view in (a, b):  # a config below a majority is raised to one
        with pytest.raises(SecAggAbort, match="confirmed the survivor set, the round needs 4"):
            sr.pinned(cfg, members, raws, view)
    raws[3] = sr.confirm_message(accounts[3].key, cfg.round_id, accounts[3].address, 3, a)
    assert sr.pinned(cfg, members, raws, a) == frozenset(range(4))
    with pytest.raises(SecAggAbort, match="the round needs"):
        sr.pinned(cfg, members, raws, b)


def test_one_provider_confirming_another_set_cannot_abort_the_round():
    """ATTACK (a dishonest provider; the last left-alone liveness lever of secure rounds): it signs a
    survivor set other than the aggregator's. Any confirmation of another set aborted the round for
    everyone (attributable, never slashed), so one Sybil could stall every secure round of a job.
    Its confirmation counts for nothing now; the honest confirmations pin the set."""
    accounts, members = _members(6)
    cfg = SecAggConfig(6, 3, 5, 3, 5, round_id=sr.Domain(31337, "0x" + "11" * 20, 5, 2).round_id)
    survivors = frozenset(range(6))
    raws = [sr.confirm_message(acc.key, cfg.round_id, acc.address, u, survivors if u != 4 else survivors - {0})
            for u, acc in enumerate(accounts)]
    assert sr.pinned(cfg, members, raws, survivors) == survivors - {4}


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 9), dishonest=st.sampled_from([0.0, 1 / 3, 0.45]), data=st.data())
def test_two_survivor_sets_are_never_both_pinned(n, dishonest, data):
    """Whatever the aggregator shows to whom (each view of the mailbox holding any of the honest
    confirmations, and the colluders confirming both sets, one in each view), at most one of two
    different sets reaches the round's `min_survivors`, which holds the confirmation quorum."""
    from fedmarket.privacy.secagg import confirmation_quorum

    accounts, members = _members(n)
    colluders = math.floor(dishonest * n + 1e-12)
    cfg = SecAggConfig(n, 3, n - 1, 2, confirmation_quorum(n, dishonest),
                       round_id=sr.Domain(31337, "0x" + "11" * 20, 5, 2).round_id)
    a, b = frozenset(range(n)), frozenset(range(1, n))
    side = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))  # an honest member's one set
    views = {}
    for view, mine in ((a, True), (b, False)):
        raws = []
        for u, acc in enumerate(accounts):
            if u < colluders:  # a colluder signs whichever set this view needs
                raws.append(sr.confirm_message(acc.key, cfg.round_id, acc.address, u, view))
            elif side[u] == mine:
                raws.append(sr.confirm_message(acc.key, cfg.round_id, acc.address, u, view))
        try:
            views[view] = sr.pinned(cfg, members, raws, view)
        except SecAggAbort:
            pass
    assert len(views) <= 1, (n, colluders, side)


def test_copies_of_a_signed_message_are_that_message_once():
    """Anyone can put a provider's signed message in another envelope (an extra field) or under a
    second signature of the same bytes (the high-s twin): had the copy counted as a second
    message, the provider would be dropped from the phase (its dropout faked without a trace).
    Copies count once; two different signed messages still drop it."""
    from eth_keys.constants import SECPK1_N

    accounts, members = _members()
    rid = sr.Domain(31337, "0x" + "11" * 20, 5, 2).round_id
    raw, other = _keys_raw(accounts[2], rid, 2), _keys_raw(accounts[3], rid, 3)
    env = json.loads(raw)
    wrapped = json.dumps({**env, "x": 1}).encode()
    sig = bytes.fromhex(env["signature"][2:])
    n = int(SECPK1_N)
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    twin = r + (n - s).to_bytes(32, "big") + bytes([55 - v])  # the other valid signature of the same bytes
    high_s = json.dumps({**env, "signature": "0x" + twin.hex()}).encode()
    for copies in ([raw, wrapped, other], [raw, high_s, other], [wrapped, raw, high_s, other]):
        assert sorted(sr.advertised(copies, members, rid)) == [2, 3]
    assert sorted(sr.advertised([raw, _keys_raw(accounts[2], rid, 2), other], members, rid)) == [3]


# ---- an aggregator isolating one victim in the sparse graph (SecAgg+, 400 providers) -------------

BIG_N, BIG_D, SYBILS = 400, 32, 0.2


def _isolation(rewrap: bool):
    """A round of 400 real clients (k = 124, t = 63, the `secagg_dp` minimum of 280 survivors: the
    graph sized for dropout alone, as before the job's colluders counted, where leaving out a
    victim's partners fits in the dropout allowance; sized for a third colluding, k = 164, it does
    not fit at all). The
    aggregator picks a victim and signs a survivor set without the victim's honest partners (who
    did mask): were they to answer, their neighbours would reveal their mask keys (they are
    "dropped") and they themselves the victim's self-mask share (it "survived"), so the victim's
    input could be stripped of every mask. With ``rewrap``, it first tries to fake the dropout of
    the victim's other neighbours by posting copies of their signed shares, so that the victim
    masks with few partners. Returns what the attacker could gather."""
    import math

    rng = np.random.default_rng(1)
    accounts = sorted((EthAccount.create() for _ in range(BIG_N)), key=lambda a: int(a.address, 16))
    members = [a.address for a in accounts]
    rid = sr.Domain(31337, "0x" + "11" * 20, 9, 3).round_id
    base = SecAggConfig.for_population(BIG_N, BIG_D, dropout=0.3, dishonest=0.0, round_id=rid, graph_seed=b"\x42" * 32)
    cfg = SecAggConfig(base.n, base.d, base.k, base.threshold, max(base.threshold, BIG_N - math.floor(0.3 * BIG_N)),
                       base.round_id, base.graph_seed)
    graph = sr.graph_of(cfg)
    nb = [set(map(int, g)) for g in graph]
    sybils = set() if rewrap else set(rng.choice(BIG_N, int(SYBILS * BIG_N), replace=False).tolist())
    assert max(len(nb[u] & sybils) for u in range(BIG_N)) < cfg.threshold  # below t in every neighbourhood
    victim = next(v for v in range(BIG_N) if v not in sybils)
    left_out = set(sorted(nb[victim] - sybils)[: cfg.threshold]) if rewrap else nb[victim] - sybils
    survivors = frozenset(set(range(BIG_N)) - left_out)
    assert len(survivors) >= cfg.min_survivors
    clients = {u: SecAggClient(u, cfg, graph[u]) for u in range(BIG_N)}
    keys = sr.advertised([sr.keys_message(accounts[u].key, rid, members[u], clients[u].advertise())
                          for u in range(BIG_N)], members, rid)
    posted = [sr.shares_message(accounts[u].key, rid, members[u], u, clients[u].share_keys(keys)) for u in range(BIG_N)]
    if rewrap:  # the aggregator's copies of the shares of the victim's other neighbours
        posted += [json.dumps({**json.loads(posted[w]), "x": 1}).encode() for w in nb[victim] - left_out]
    lists = sr.share_lists(posted, members, rid)
    for u in range(BIG_N):
        x = rng.integers(-(2**30), 2**30, size=BIG_D, dtype=np.int64)
        clients[u].masked_input(x, [s for lst in lists.values() for s in lst if s.dst == u])
    answers, refused = [], []
    for u in range(BIG_N):
        try:
            clients[u].confirm(survivors)
            answers.append(clients[u].unmask(survivors, survivors))
        except SecAggAbort:
            refused.append(u)
    b_shares = {r.uid for r in answers if victim in r.b_shares} | (nb[victim] & sybils)
    return cfg, clients[victim], nb[victim], left_out, refused, b_shares


def test_an_aggregator_leaving_out_a_victims_honest_partners_cannot_rebuild_its_self_mask():
    """With Sybils below t in every neighbourhood and below a third of the round: the honest
    partners it left out answer nothing (a provider that masked refuses a set without itself), so
    the victim's self-mask seed has fewer than t shares and its input stays masked."""
    cfg, _, _, left_out, refused, b_shares = _isolation(rewrap=False)
    assert left_out <= set(refused)
    assert len(b_shares) < cfg.threshold


def test_copies_of_shares_cannot_fake_the_dropout_of_a_victims_partners():
    """The aggregator alone: its copies of the other neighbours' signed shares count once, so the
    victim masks with every neighbour, and those still in the survivor set keep its pairwise masks
    secret; the ones left out answer nothing."""
    _, victim, neighbours, left_out, refused, _ = _isolation(rewrap=True)
    assert set(victim._shares_in) == neighbours  # no partner's dropout faked
    assert left_out <= set(refused)




def test_a_survivor_set_that_cuts_the_ring_around_a_few_providers_unmasks_nothing():
    """ATTACK (found by a privacy review): on the sparse SecAgg+ graph (a ring in a public order,
    each provider linked to k/2 on each side) an aggregator with the colluders a secagg_dp job
    tolerates leaves out of the survivor set every honest provider in the two flanks around a short
    arc of the ring, although they masked. The arc's pairwise masks then end at colluders or at
    left-out providers whose mask keys the survivors rebuild, and the aggregator unmasks the arc's
    sum apart from the rest: a few providers' updates with a fraction of the noise the job sized for
    the honest minimum. Each provider now refuses a survivor set that leaves out a neighbour whose
    masked input it saw before the set: every honest neighbour of a left-out uploader refuses, so no
    left-out mask key can be rebuilt (the colluders hold fewer than t shares of each), and neither
    the arc's sum nor the round's unmasks."""
    import math

    from fedmarket.privacy.dp import honest_minimum
    from fedmarket.privacy.secagg import _hkdf

    n, d, dropout, f = 300, 8, 0.3, 1 / 3
    round_id, graph_seed = b"job-1-round-0", b"round-seed-fixed-on-chain"
    # the graph sized for dropout alone (k = 122), as before the colluders counted: sized for them
    # (k = 150) the flanks of any arc hold more honest providers than the dropout allowance
    cfg = SecAggConfig.for_population(n, d, dropout=dropout, dishonest=0.0, round_id=round_id, graph_seed=graph_seed)
    m = n - math.floor(dropout * n)
    cfg = SecAggConfig(cfg.n, cfg.d, cfg.k, cfg.threshold, m, round_id, graph_seed)
    graph = neighbour_graph(n, cfg.k, graph_seed)
    half, t = cfg.k // 2, cfg.threshold
    dishonest = set(np.random.default_rng(7).choice(n, math.floor(f * n), replace=False).tolist())
    # the shortest arc whose flanks' honest providers fit in the dropout allowance, every honest arc
    # member keeping t neighbours in the set (the review's plan), on the public ring order
    key = int.from_bytes(_hkdf(graph_seed, b"fedmarket-secagg-graph", 16), "little")
    order = np.random.Generator(np.random.Philox(key=key)).permutation(n)
    dis = np.array([int(order[p]) in dishonest for p in range(n)])
    plan = None
    for start in range(n):
        for length in range(1, n // 2):
            arc = [(start + i) % n for i in range(length)]
            flanks = [(start - 1 - i) % n for i in range(half)] + [(start + length + i) % n for i in range(half)]
            cut = [p for p in flanks if not dis[p]]
            if len(cut) > n - m:
                break
            kept = set(range(n)) - set(cut)
            offs = [*range(1, half + 1), *range(-half, 0)]
            if all(dis[p] or sum((p + o) % n in kept for o in offs) >= t for p in arc):
                honest = int(sum(not dis[p] for p in arc))
                if honest and (plan is None or honest < plan[0]):
                    plan = (honest, [int(order[p]) for p in arc], [int(order[p]) for p in cut])
                break
    assert plan is not None and plan[0] < honest_minimum(m, f, n)  # what the cut would have leaked
    _, arc, cut = plan

    clients = {u: SecAggClient(u, cfg, graph[u]) for u in range(n)}
    server = SecAggServer(cfg, graph)
    keys_for = server.collect_keys([c.advertise() for c in clients.values()])
    routed = server.route_shares({u: clients[u].share_keys(keys_for[u]) for u in clients})
    masked = {u: clients[u].masked_input(np.full(d, u, dtype=np.int64), routed[u]) for u in range(n)}
    survivors = frozenset(range(n)) - set(cut)  # every provider masked; the cut flanks are left out
    seen = frozenset(range(n))  # ... and each saw the others' masked inputs before the set

    confirmed = set()
    for u in sorted(survivors):
        try:
            clients[u].confirm(survivors, frozenset() if u in dishonest else seen)  # colluders confirm anything
            confirmed.add(u)
        except SecAggAbort as exc:
            assert "leaves out" in str(exc)
    for v in cut:  # every honest neighbour of a left-out uploader refused: only colluders answer for it
        holders = set(graph[v].tolist()) & confirmed
        assert holders <= dishonest and len(holders) < t
    assert not (set(arc) - dishonest) & confirmed  # the arc itself refused
    # too few signatures pin the set: no honest provider that confirmed answers the unmasking either
    assert len(confirmed) < m
    for u in sorted(confirmed - dishonest)[:3]:
        with pytest.raises(SecAggAbort, match="confirmed the survivor set"):
            clients[u].unmask(survivors, confirmed)
    # and with the colluders' shares alone the server rebuilds no left-out mask key
    server.collect_masked([masked[u] for u in sorted(survivors)])
    with pytest.raises(SecAggAbort, match="cannot recover"):
        server.unmask([clients[u].unmask(survivors, confirmed | set(range(n))) for u in sorted(dishonest & survivors)])


def _colluders_open(cfg, victim, clients, masked, colluders):
    """What the aggregator and ``colluders`` make of the victim's masked input with the shares of its
    secrets the colluders hold: its input if they hold ``t`` of each, else None."""
    from fedmarket.privacy.secagg import _pair_seed, from_ring, shamir_reconstruct

    held = [(c + 1, clients[c]._shares_in[victim]) for c in sorted(colluders) if victim in clients[c]._shares_in]
    if len(held) < cfg.threshold:
        return None
    sk_int = shamir_reconstruct([(x, sh[0]) for x, sh in held[: cfg.threshold]])
    b = shamir_reconstruct([(x, sh[1]) for x, sh in held[: cfg.threshold]]).to_bytes(32, "big")
    sk = X25519PrivateKey.from_private_bytes(sk_int.to_bytes(32, "big"))
    y = np.frombuffer(masked[victim].data, dtype=np.uint64) - prg_mask(b, cfg.d)
    for v in sorted(clients[victim]._shares_in):
        m = prg_mask(_pair_seed(cfg, sk, clients[v].advertise().s_pk), cfg.d)
        y = y - m if victim < v else y + m
    return from_ring(y)


def test_colluders_up_to_the_jobs_max_dishonest_cannot_open_an_honest_update():
    """ATTACK: a secagg_dp job stating ``max_dishonest = 0.5`` (its noise is sized for half the round
    colluding) with 20 providers: the graph is complete, and the threshold was half the neighbours
    (10 of 19), so the 10 colluders the job tolerates held 10 shares of each of an honest provider's
    secrets, rebuilt its self-mask seed and mask key, and stripped its masked input to the update
    itself, whose noise was a twentieth-odd of the job's. The threshold now exceeds the colluders
    (11), so their shares rebuild nothing."""
    from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, PrivacySpec, RewardSpec, TrainingSpec

    n = 20
    spec = JobSpec(name="x", data=DataSchema(n_features=2, n_classes=2, feature_low=[0.0] * 2, feature_high=[1.0] * 2),
                   training=TrainingSpec(rounds=1), reward=RewardSpec(escrow=10**20, provider_stake=10**18),
                   participation=ParticipationSpec(min_providers=n, max_providers=n, max_validators=1, min_validators=1),
                   privacy=PrivacySpec(mode="secagg_dp", epsilon=2.0, delta=1e-5, clip_norm=1.0, dropout=0.2,
                                       max_dishonest=0.5))
    cfg = sr.secagg_config(spec, n, b"job-4-round-1", b"seed")
    d = cfg.d  # the softmax of 2 features and 2 classes
    colluders = set(range(1, 1 + int(n * spec.privacy.max_dishonest)))
    assert cfg.k == n - 1 and cfg.threshold > len(colluders)
    graph = neighbour_graph(n, cfg.k, cfg.graph_seed)
    clients = {u: SecAggClient(u, cfg, graph[u]) for u in range(n)}
    server = SecAggServer(cfg, graph)
    keys_for = server.collect_keys([c.advertise() for c in clients.values()])
    routed = server.route_shares({u: clients[u].share_keys(keys_for[u]) for u in clients})
    X = {u: np.random.default_rng(u).integers(-(2**30), 2**30, size=d, dtype=np.int64) for u in range(n)}
    masked = {u: clients[u].masked_input(X[u], routed[u]) for u in range(n)}
    assert _colluders_open(cfg, 0, clients, masked, colluders) is None
    # the control: one colluder more than the job states does open it
    opened = _colluders_open(cfg, 0, clients, masked, colluders | {11})
    assert opened is not None and np.array_equal(opened, X[0])


@settings(max_examples=40, deadline=None)
@given(population=st.integers(4, 3000), frac=st.floats(0.01, 1.0), dishonest=st.sampled_from([0.0, 0.1, 0.2, 1 / 3, 0.45]))
def test_a_sampled_round_is_sized_for_the_colluders_its_draw_can_hold(population, frac, dishonest):
    """A round of ``n`` drawn at random from the job's providers holds more than ``floor(f n)`` of the
    job's colluders in about half of the rounds; `sampled_share` is exceeded with odds below
    PRIVACY_FAILURE, never below the job's share, and is the job's share when nobody is sampled."""
    from scipy.stats import hypergeom

    from fedmarket.privacy.secagg import PRIVACY_FAILURE, sampled_share

    n = min(population, max(3, round(population * frac)))
    share = sampled_share(n, population, dishonest)
    colluders = math.floor(dishonest * population + 1e-12)
    if n >= population or colluders == 0:
        assert share == dishonest
        return
    assert share >= dishonest
    if share < 1:
        c = math.floor(share * n + 1e-12)
        assert c >= math.floor(dishonest * n + 1e-12)
        assert hypergeom.sf(c, population, colluders, n) <= PRIVACY_FAILURE


def test_colluders_concentrated_in_a_sampled_round_are_counted_in_its_sizing():
    """ATTACK (a share f of a job's providers collude, and the job samples its rounds): the round's
    threshold, confirmation quorum and secagg_dp noise were sized for floor(f n) colluders of its n,
    but the draw put more than that in about half of the rounds (47.8% of rounds of 100 from 1,000
    at f = 1/3): fewer honest survivors carried the noise than it was sized for. A sampled round is
    sized for the upper tail of its draw now, and a spec whose sampled rounds cannot be is refused."""
    from fedmarket.privacy.dp import honest_minimum
    from fedmarket.privacy.secagg import confirmation_quorum
    from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, PrivacySpec, RewardSpec, TrainingSpec

    def spec(per_round, dropout, dishonest):
        return JobSpec(name="x", data=DataSchema(n_features=2, n_classes=2, feature_low=[0.0] * 2, feature_high=[1.0] * 2),
                       training=TrainingSpec(rounds=1), reward=RewardSpec(escrow=10**20, provider_stake=10**18),
                       participation=ParticipationSpec(min_providers=10, max_providers=1000, max_validators=1,
                                                       min_validators=1, per_round=per_round),
                       privacy=PrivacySpec(mode="secagg_dp", epsilon=8.0, delta=1e-5, clip_norm=1.0, dropout=dropout,
                                           max_dishonest=dishonest))

    job = spec(100, 0.1, 0.2)
    share = sr.round_dishonest(job, 100, 1000)
    c = math.floor(share * 100 + 1e-12)
    assert c > 20  # more than floor(f n): the draw's tail
    cfg = sr.secagg_config(job, 100, b"r" * 32, b"g" * 32, share)
    assert cfg.dishonest == share and cfg.min_survivors >= confirmation_quorum(100, share) == (100 + c) // 2 + 1
    assert honest_minimum(cfg.min_survivors, cfg.dishonest, cfg.n) == cfg.min_survivors - c
    assert sr.round_dishonest(job, 10, 10) == 0.2  # every joined provider in the round: the job's share
    with pytest.raises(ValueError, match="a round sampling 100 of up to 1000 providers can draw"):
        spec(100, 0.3, 1 / 3)


def _sampled_spec(per_round, max_providers, dropout, dishonest):
    from fedmarket.spec import DataSchema, JobSpec, ParticipationSpec, PrivacySpec, RewardSpec, TrainingSpec

    return JobSpec(name="x", data=DataSchema(n_features=2, n_classes=2, feature_low=[0.0] * 2, feature_high=[1.0] * 2),
                   training=TrainingSpec(rounds=1), reward=RewardSpec(escrow=10**20, provider_stake=10**18),
                   participation=ParticipationSpec(min_providers=10, max_providers=max_providers, max_validators=1,
                                                   min_validators=1, per_round=per_round),
                   privacy=PrivacySpec(mode="secagg_dp", epsilon=8.0, delta=1e-5, clip_norm=1.0, dropout=dropout,
                                       max_dishonest=dishonest))


@pytest.mark.parametrize("population", [1000, 984, 400])
def test_a_spec_accepted_for_sampled_rounds_runs_the_rounds_it_draws(monkeypatch, population):
    """ATTACK (found by a review of d15cf4c): each provider is picked on its own, so a sampled round's
    size varies around per_round, and the spec check looked at a round of exactly per_round drawn from
    max_providers. A spec it accepted (110 of 1,000, dropout 0.2, max_dishonest 1/3) then aborted
    48.5% of its rounds, the ones that drew fewer providers; and 984 joined providers (Sybils stopping
    there) made even a round of 110 abort. Every size a round draws outside the SAMPLED_SIZE_FAILURE
    tails is checked now, with a count of colluders no pool exceeds: that spec is refused, and an
    accepted one runs its rounds from any pool."""
    from types import SimpleNamespace

    from fedmarket.protocol.selection import select

    with pytest.raises(ValueError, match="a round sampling 110 of up to 1000 providers can draw"):
        _sampled_spec(110, 1000, 0.2, 1 / 3)
    spec = _sampled_spec(100, 1000, 0.1, 0.2)
    members = ["0x" + (i + 1).to_bytes(20, "big").hex() for i in range(population)]
    monkeypatch.setattr(sr, "joined_providers", lambda dep, job: members)
    monkeypatch.setattr(sr, "round_seed", lambda dep, job, r: b"\x11" * 32)
    dep = SimpleNamespace(chain_id=1, disputes=SimpleNamespace(address="0x" + "22" * 20))
    aborted = []
    for r in range(150):
        n = len(select(r.to_bytes(32, "big"), 7, r, members, spec.participation.per_round))
        try:
            sr.round_config(dep, spec, 7, r, n)
        except SecAggAbort:
            aborted.append(n)
    assert len(aborted) <= 1, f"rounds of {aborted} providers commit no update"
