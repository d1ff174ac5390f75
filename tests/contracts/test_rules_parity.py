"""The Python protocol and the contracts, byte for byte: the constants (`modules/constants.vy`
against `protocol/rules.py`), the aggregation rules' claims and root checks (`Rules.vy` against
`protocol.rules`, on honest and tampered claims), and every leaf, tree and EIP-712 statement the
encoders build (`protocol.encoding`, `protocol.merkle`, `protocol.receipts` against the modules,
through `harness/Harness.vy`, a test-only contract exposing the modules' internal functions)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
from contract_kit import deploy_test_contract
from eth_utils import to_checksum_address
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fedmarket.chain import artifacts
from fedmarket.errors import ContractRevert
from fedmarket.protocol import encoding as E
from fedmarket.protocol import merkle as M
from fedmarket.protocol import receipts as RC
from fedmarket.protocol import rules as R

CONTRACTS = artifacts.contracts_dir()
SETTINGS = settings(max_examples=120, deadline=None)


@pytest.fixture(scope="module")
def chain_world(boa_world):
    """The session chain with the harness deployed (rolled back after the module)."""
    chain = boa_world["chain"]
    with chain.snapshot():
        harness = deploy_test_contract(chain, chain.new_account("harness", 0), "Harness")
        yield {"harness": harness, "rules": boa_world["dep"].rules, "dep": boa_world["dep"], "chain": chain}


@pytest.fixture(scope="module")
def harness(chain_world):
    return chain_world["harness"]


@pytest.fixture(scope="module")
def rules_c(chain_world):
    return chain_world["rules"]


# ---------------------------------------------------------------- constants


def vyper_constants(path: Path) -> dict[str, int]:
    """NAME -> value of every integer constant a Vyper module declares."""
    out = {}
    for m in re.finditer(r"^(\w+): constant\((u?int\d+)\) = (.+)$", path.read_text(), re.MULTILINE):
        out[m.group(1)] = eval(compile(ast.parse(m.group(3).strip(), mode="eval"), str(path), "eval"), {})
    return out


ENUMS = {"ROLE_": R.Role, "RULE_": R.Rule, "BASIS_": R.Basis, "GAME_": R.Game, "TURN_": R.Turn}
JOB_STATES = {"OPEN", "TRAINING", "FINALIZING", "SETTLED", "CANCELLED", "FAILED"}
# constants the Python side has no use for (bit layout, proof bounds, the reputation ceiling)
CONTRACT_ONLY = {"ROLE_BITS", "MAX_REPUTATION", "MAX_DEPTH", "MAX_CHUNK_PROOF"}


def python_value(name: str):
    if name in JOB_STATES:
        return int(R.JobState[name])
    for prefix, enum in ENUMS.items():
        member = enum.__members__.get(name[len(prefix):])
        if name.startswith(prefix) and member is not None:
            return int(member)
    return getattr(R, name, None)


def test_constants_match_protocol_rules():
    consts = vyper_constants(CONTRACTS / "modules" / "constants.vy")
    assert len(consts) >= 50
    missing = {name for name in consts if python_value(name) is None}
    assert missing == CONTRACT_ONLY
    for name, value in consts.items():
        if name not in CONTRACT_ONLY:
            assert python_value(name) == value, name
    assert {s.name for s in R.JobState if s} == JOB_STATES
    for prefix, enum in ENUMS.items():  # no Python member without its contract constant
        assert {prefix + m.name for m in enum} <= set(consts), enum


def test_the_rules_modules_own_constants_match():
    consts = vyper_constants(CONTRACTS / "modules" / "rules.vy")
    assert consts["INT64_LIMIT"] == R.INT64_LIMIT
    assert consts["MAX_CLAIM"] == 5 * R.MAX_CHUNK  # the longest claim: a ranked rule's five words per value
    assert E.CHUNK_SIZE <= R.MAX_CHUNK
    assert M.RoundAccumulator().depth == R.ROUNDS_DEPTH and 2**R.ROUNDS_DEPTH >= R.MAX_ROUNDS
    consts = vyper_constants(CONTRACTS / "modules" / "constants.vy")
    assert 2 ** consts["MAX_DEPTH"] >= R.MAX_PROVIDERS + R.MAX_VALIDATORS + 1
    assert 2 ** consts["MAX_CHUNK_PROOF"] >= R.MAX_PARAMS


# ---------------------------------------------------------------- the rules' claims

INT64 = st.integers(-(2**63), 2**63 - 1)
VALUE = st.one_of(st.integers(-40, 40), INT64, st.sampled_from([-(2**63), 2**63 - 1, 0, -1]))


@SETTINGS
@given(rule=st.sampled_from(list(R.Rule)), data=st.data())
def test_leaf_claim_parity(rules_c, rule, data):
    width = data.draw(st.integers(0, 6))
    chunk = data.draw(st.lists(VALUE, min_size=width, max_size=width))
    weight = data.draw(st.one_of(st.integers(0, 5), st.integers(0, R.MAX_WEIGHT)))
    near = st.one_of(VALUE, st.sampled_from(chunk)) if chunk else VALUE
    lo = data.draw(st.lists(near, min_size=width, max_size=width))
    hi = data.draw(st.lists(near, min_size=width, max_size=width))
    assert rules_c.call("leaf_claim", rule, chunk, weight, lo, hi) == R.leaf_claim(rule, chunk, weight, lo, hi)


def test_leaf_claim_at_the_widest_chunk(rules_c):
    rng = np.random.default_rng(3)
    chunk = [int(v) for v in rng.integers(-(2**63), 2**63 - 1, size=R.MAX_CHUNK, dtype=np.int64)]
    lo, hi = sorted(chunk)[10:10 + R.MAX_CHUNK // 2] * 2, sorted(chunk)[20:20 + R.MAX_CHUNK // 2] * 2
    for rule in R.Rule:
        got = rules_c.call("leaf_claim", rule, chunk, R.MAX_WEIGHT, lo, hi)
        assert got == R.leaf_claim(rule, chunk, R.MAX_WEIGHT, lo, hi)
        assert len(got) == (5 * R.MAX_CHUNK if rule.ranked else R.MAX_CHUNK + 1)


def _round(rule, data, big: bool):
    """A round drawn at random: (rows, weights, trim, prev, correction)."""
    count = data.draw(st.integers(0, 7), label="count")
    width = data.draw(st.integers(1, 5), label="width")
    trim = data.draw(st.integers(1, 3)) if rule == R.Rule.TRIMMED_MEAN else 0
    span = 2**61 if big else 60
    if rule == R.Rule.SECURE_SUM:  # masked values live anywhere in the ring
        values = st.integers(-(2**63), 2**63 - 1)
    else:
        values = st.integers(-span, span)
    rows = np.array(data.draw(st.lists(st.lists(values, min_size=width, max_size=width), min_size=count,
                                       max_size=count)), dtype=np.int64).reshape(count, width)
    if rule == R.Rule.WEIGHTED_MEAN and data.draw(st.booleans()):
        rows[:] = rows[0] if count else rows  # equal values: ties everywhere
    weights = data.draw(st.lists(st.integers(1, 2**32 if big else 9), min_size=count, max_size=count))
    prev = np.array(data.draw(st.lists(st.integers(-1_000, 1_000), min_size=width, max_size=width)), dtype=np.int64)
    correction = np.array(data.draw(st.lists(INT64, min_size=width, max_size=width)), dtype=np.int64)
    return rows, weights, trim, prev, correction


def _honest(rule, rows, weights, trim, prev, correction):
    """(claim, lo, hi, new) of an honest aggregator over the round (a trimmed mean of `count <= 2 *
    trim` updates trims `(count - 1) // 2` from each end)."""
    count, width = rows.shape
    if count == 0:
        length = 5 * width if R.Rule(rule).ranked else width + 1
        return [0] * length, [], [], prev.copy()
    lo, hi = R.hints(rule, rows, trim)
    claim = R.range_claim(rule, rows, weights, lo, hi)
    step = R.aggregate(rule, list(rows), weights, trim, correction if rule == R.Rule.SECURE_SUM else None)
    return claim, lo, hi, prev + step


@SETTINGS
@given(rule=st.sampled_from(list(R.Rule)), big=st.booleans(), data=st.data())
def test_root_ok_accepts_the_honest_aggregate_on_chain_and_in_python(rules_c, rule, big, data):
    rows, weights, trim, prev, correction = _round(rule, data, big)
    corr = [int(c) for c in correction] if rule == R.Rule.SECURE_SUM else []
    claim, lo, hi, new = _honest(rule, rows, weights, trim, prev, correction)
    args = (rule, rows.shape[0], trim, claim, lo, hi, [int(v) for v in prev], [int(v) for v in new], corr)
    assert R.root_ok(*args) is True
    assert rules_c.call("root_ok", *args) is True


def _tamper(data, args: list) -> list:
    """One part of a root check's arguments changed."""
    rule, count, trim, claim, lo, hi, prev, new, corr = args
    what = data.draw(st.sampled_from(["claim", "new", "lo", "hi", "count", "trim", "length", "prev", "corr"]))
    nudge = data.draw(st.sampled_from([-1, 1, 2**32, -(2**64)]))

    def bump(xs):
        if not xs:
            return [nudge]
        i = data.draw(st.integers(0, len(xs) - 1))
        return [x + nudge if k == i else x for k, x in enumerate(xs)]

    if what == "claim":
        claim = bump(claim)
    elif what == "new":
        new = bump(new)
    elif what == "prev":
        prev = bump(prev)
    elif what == "lo":
        lo = bump(lo)
    elif what == "hi":
        hi = bump(hi)
    elif what == "corr":
        corr = bump(corr)
    elif what == "count":
        count = max(0, count + data.draw(st.sampled_from([-1, 1])))
    elif what == "trim":
        trim = trim + 1
    else:
        claim = claim[:-1] if claim and data.draw(st.booleans()) else claim + [0]
    return [rule, count, trim, claim, lo, hi, prev, new, corr]


@SETTINGS
@given(rule=st.sampled_from(list(R.Rule)), data=st.data())
def test_root_ok_parity_on_tampered_claims(rules_c, rule, data):
    rows, weights, trim, prev, correction = _round(rule, data, False)
    claim, lo, hi, new = _honest(rule, rows, weights, trim, prev, correction)
    corr = [int(c) for c in correction] if rule == R.Rule.SECURE_SUM else []
    args = _tamper(data, [rule, rows.shape[0], trim, claim, lo, hi, [int(v) for v in prev], [int(v) for v in new],
                          corr])
    lengths_ok = all(abs(x) < 2**255 for xs in args[3:] for x in xs)
    assume(lengths_ok and len(args[3]) <= 5 * R.MAX_CHUNK)
    assert rules_c.call("root_ok", *args) == R.root_ok(*args)


@SETTINGS
@given(rule=st.sampled_from(list(R.Rule)), data=st.data())
def test_range_claim_is_the_sum_of_leaf_claims(rule, data):
    count = data.draw(st.integers(1, 6))
    width = data.draw(st.integers(1, 5))
    rows = np.array(data.draw(st.lists(st.lists(INT64, min_size=width, max_size=width), min_size=count,
                                       max_size=count)), dtype=np.int64).reshape(count, width)
    weights = data.draw(st.lists(st.integers(0, R.MAX_WEIGHT), min_size=count, max_size=count))
    lo = data.draw(st.lists(INT64, min_size=width, max_size=width))
    hi = data.draw(st.lists(INT64, min_size=width, max_size=width))
    total = [0] * (5 * width if R.Rule(rule).ranked else width + 1)
    for row, w in zip(rows, weights):
        total = [a + b for a, b in zip(total, R.leaf_claim(rule, [int(v) for v in row], w, lo, hi))]
    if rule == R.Rule.SECURE_SUM:
        total = [t % R.RING if i < width else t for i, t in enumerate(total)]
    assert R.range_claim(rule, rows, weights, lo, hi) == total


@pytest.mark.parametrize("rule", list(R.Rule))
def test_the_claim_over_no_update_is_zero(rule):
    rows = np.zeros((0, 3), dtype=np.int64)
    length = 15 if R.Rule(rule).ranked else 4
    assert R.range_claim(rule, rows, [], [0, 0, 0], [0, 0, 0]) == [0] * length


@SETTINGS
@given(rule=st.sampled_from(list(R.Rule)), data=st.data())
def test_right_half_parity_and_consistency(harness, rule, data):
    """`rules._right` on chain is `protocol.rules.right`, and the right half of a split of a true
    range claim is the true claim of the right half."""
    count = data.draw(st.integers(2, 6))
    width = data.draw(st.integers(1, 4))
    rows = np.array(data.draw(st.lists(st.lists(INT64, min_size=width, max_size=width), min_size=count,
                                       max_size=count)), dtype=np.int64)
    weights = data.draw(st.lists(st.integers(1, 2**20), min_size=count, max_size=count))
    lo, hi = R.hints(R.Rule.MEDIAN, rows, 0)
    mid = count // 2
    parent = R.range_claim(rule, rows, weights, lo, hi)
    left = R.range_claim(rule, rows[:mid], weights[:mid], lo, hi)
    lanes = width if rule == R.Rule.SECURE_SUM else 0
    expected = R.range_claim(rule, rows[mid:], weights[mid:], lo, hi)
    assert R.right(lanes, parent, left) == expected
    assert harness.call("right", lanes, parent, left) == expected
    fuzz = data.draw(st.lists(st.integers(-(2**200), 2**200), min_size=len(parent), max_size=len(parent)))
    try:
        mirrored = R.right(lanes, parent, fuzz)
    except ValueError:  # a secure sum's lane outside [0, 2**64): the chain refuses it too
        with pytest.raises(ContractRevert, match="claim outside the ring"):
            harness.call("right", lanes, parent, fuzz)
    else:
        assert harness.call("right", lanes, parent, fuzz) == mirrored


@SETTINGS
@given(a=st.integers(-(2**250), 2**250), b=st.integers(1, 2**64))
def test_floor_division_is_pythons(harness, a, b):
    assert harness.call("floor_div", a, b) == a // b


@pytest.mark.parametrize("count", range(1, 9))
def test_ranks_parity(harness, count):
    assert harness.call("ranks", R.Rule.MEDIAN, count, 0) == R.ranks(R.Rule.MEDIAN, count, 0)
    for trim in range((count + 1) // 2):
        assert harness.call("ranks", R.Rule.TRIMMED_MEAN, count, trim) == R.ranks(R.Rule.TRIMMED_MEAN, count, trim)


def test_int64_bounds(harness):
    assert harness.call("in_int64", [-(2**63), 2**63 - 1])
    assert not harness.call("in_int64", [2**63])
    assert not harness.call("in_int64", [0, -(2**63) - 1])


# ---------------------------------------------------------------- leaves and trees

ADDRESS = st.binary(min_size=20, max_size=20).map(lambda b: to_checksum_address("0x" + b.hex()))
B32 = st.binary(min_size=32, max_size=32)


@SETTINGS
@given(provider=ADDRESS, root=B32, weight=st.integers(0, 2**256 - 1))
def test_update_leaf_parity(harness, provider, root, weight):
    assert harness.call("update_leaf", provider, root, weight) == E.update_leaf(provider, root, weight)


@SETTINGS
@given(account=ADDRESS, role=st.integers(0, 2**256 - 1), amount=st.integers(0, 2**256 - 1),
       delta=st.integers(-(2**255), 2**255 - 1), value=st.integers(0, 2**256 - 1), activity=st.integers(0, 2**64))
def test_reward_leaf_parity(harness, account, role, amount, delta, value, activity):
    leaf = (account, role, amount, delta, value, activity)
    assert harness.call("reward_leaf", leaf) == E.reward_leaf(*leaf)


@SETTINGS
@given(job=st.integers(0, 2**256 - 1), r=st.integers(0, 2**256 - 1), roots=st.lists(B32, min_size=5, max_size=5),
       count=st.integers(0, 2**256 - 1), eps=st.integers(0, 2**256 - 1))
def test_round_commitment_parity(harness, job, r, roots, count, eps):
    data = (roots[0], roots[1], count, roots[2], eps, roots[3], roots[4])
    assert harness.call("round_commitment", job, r, data) == E.round_commitment(job, r, data)


@SETTINGS
@given(index=st.integers(0, 2**256 - 1), chunk=st.lists(INT64, max_size=R.MAX_CHUNK))
def test_chunk_leaf_parity(harness, index, chunk):
    assert harness.call("chunk_leaf", index, chunk) == E.chunk_leaf(index, np.array(chunk, dtype=np.int64))


@st.composite
def revenue_shares(draw):
    """(revenue, amount, total): a reward leaf's amount within a reward total within MAX_AMOUNT,
    and any revenue a job can accumulate (uint256), the edges included."""
    total = draw(st.one_of(st.integers(1, 2**128), st.sampled_from([1, 2, 2**127, 2**128 - 1, 2**128])))
    amount = draw(st.one_of(st.integers(0, total), st.sampled_from([0, total, total - 1])))
    revenue = draw(st.one_of(st.integers(0, 2**256 - 1), st.sampled_from([0, 2**128, 3 * 2**128, 2**256 - 1])))
    return revenue, max(amount, 0), total


@SETTINGS
@given(revenue_shares())
def test_pro_rata_is_the_exact_share_without_overflow(harness, case):
    """`leaves._pro_rata` (what licence and usage revenue claims pay) is floor(revenue * amount / total)
    computed exactly, even where that product exceeds 2**256 and a plain product would revert."""
    revenue, amount, total = case
    assert harness.call("pro_rata", revenue, amount, total) == revenue * amount // total


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**255 - 1, -(2**255)])
def test_chunk_leaf_refuses_a_value_outside_int64(harness, value):
    """Values are packed as int64: a wider one would share a leaf with its low 64 bits, so the
    contract refuses it rather than let two chunks open the same leaf."""
    with pytest.raises(ContractRevert, match="value out of range"):
        harness.call("chunk_leaf", 0, [1, value])


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 9, 1023, 1024, 1025, 2**20, 2**20 + 1, 2**32])
def test_depth_parity(harness, n):
    assert harness.call("depth", n) == (M.depth(n) if n else 0)


@SETTINGS
@given(n_params=st.integers(1, 10_000), size=st.integers(1, R.MAX_CHUNK), data=st.data())
def test_chunking_parity(harness, n_params, size, data):
    q = np.arange(n_params, dtype=np.int64)
    tree = E.vector_tree(q, size)
    assert harness.call("n_chunks", n_params, size) == len(tree)
    index = data.draw(st.integers(0, len(tree) + 1))
    width = len(q[index * size : (index + 1) * size])
    assert harness.call("chunk_width", index, n_params, size) == width


@SETTINGS
@given(n=st.integers(1, 40), data=st.data())
def test_positional_proofs_verify_on_chain(harness, n, data):
    leaves = [bytes(data.draw(B32)) for _ in range(n)]
    tree = M.MerkleTree(leaves)
    i = data.draw(st.integers(0, n - 1))
    proof = tree.proof(i)
    assert harness.call("root", leaves[i], i, proof) == M.root_from(leaves[i], i, proof) == tree.root
    assert harness.call("verify", leaves[i], i, n, proof, tree.root) is True
    j = data.draw(st.integers(0, n + 2))
    other = data.draw(st.sampled_from(leaves))
    assert harness.call("verify", other, j, n, proof, tree.root) == M.verify(other, j, n, proof, tree.root)
    # a proof for a tree of another depth never verifies, even one reaching the root
    assert harness.call("verify", leaves[i], i, 2 * n, proof, tree.root) is False
    assert harness.call("verify", leaves[i], i, n, proof + [tree.root], tree.root) is False


def test_a_vector_root_is_the_tree_of_its_chunk_leaves(harness):
    q = np.array([5, -3, 2**62, -(2**63), 0, 7, 9], dtype=np.int64)
    tree = E.vector_tree(q, 3)
    for i in range(3):
        leaf = harness.call("chunk_leaf", i, [int(v) for v in q[3 * i : 3 * i + 3]])
        assert harness.call("verify", leaf, i, 3, tree.proof(i), E.vector_root(q, 3))


# ---------------------------------------------------------------- EIP-712 statements


@SETTINGS
@given(job=st.integers(0, 2**64), r=st.integers(0, 2**32), b1=B32, b2=B32, n=st.integers(0, 2**64), flag=st.booleans(),
       who=ADDRESS)
def test_statement_digests_parity(chain_world, job, r, b1, b2, n, flag, who):
    h, dep = chain_world["harness"], chain_world["dep"]
    chain_id, verifier = dep.chain_id, dep.disputes.address
    sep = h.call("separator", chain_id, verifier)
    assert sep == dep.disputes.call("separator")
    assert h.call("receipt_digest", sep, job, r, b1, n) == RC.UpdateReceipt(job, r, b1, n).eip712_digest(chain_id, verifier)
    assert h.call("ack_digest", sep, job, r, who, b1, n) == RC.ReceiptAck(job, r, who, b1, n).eip712_digest(chain_id, verifier)
    assert h.call("attestation_digest", sep, job, r, b1, b2) == RC.Attestation(job, r, b1, b2).eip712_digest(chain_id, verifier)
    assert h.call("rejection_digest", sep, job, r, b1) == RC.Rejection(job, r, b1).eip712_digest(chain_id, verifier)
    assert h.call("misbehaviour_digest", sep, job, who) == RC.Misbehaviour(job, who).eip712_digest(chain_id, verifier)
    assert h.call("rewards_digest", sep, job, b1, n, r, flag) == RC.RewardsApproval(job, b1, n, r, flag).eip712_digest(
        chain_id, verifier)


def test_the_arbiters_sign_in_the_disputes_domain(chain_world):
    dep, h = chain_world["dep"], chain_world["harness"]
    sep = h.call("separator", dep.chain_id, dep.disputes.address)
    assert dep.round_arbiter.call("SEPARATOR") == dep.reward_arbiter.call("SEPARATOR") == sep
    assert h.call("separator", dep.chain_id + 1, dep.disputes.address) != sep  # another chain, another domain


@pytest.mark.parametrize("count, trim, kept", [(1, 1, [0]), (2, 1, [0, 1]), (3, 2, [1]), (4, 2, [1, 2]), (5, 1, [1, 2, 3])])
def test_a_trimmed_mean_of_few_updates_trims_what_it_can(rules_c, count, trim, kept):
    """Providers' silence can shrink a trimmed-mean round below 2 * trim + 1 updates: the rule then
    drops (count - 1) // 2 from each end, on chain and in Python, so the round can be committed."""
    rows = np.array([[10 * (i + 1)] for i in range(count)], dtype=np.int64)
    lo, hi = R.hints(R.Rule.TRIMMED_MEAN, rows, trim)
    claim = R.range_claim(R.Rule.TRIMMED_MEAN, rows, [1] * count, lo, hi)
    step = R.aggregate(R.Rule.TRIMMED_MEAN, list(rows), [1] * count, trim)
    assert int(step[0]) == sum(10 * (i + 1) for i in kept) // len(kept)
    args = (R.Rule.TRIMMED_MEAN, count, trim, claim, lo, hi, [0], [int(step[0])], [])
    assert R.root_ok(*args) and rules_c.call("root_ok", *args)
    wrong = (*args[:7], [int(step[0]) + 1], [])
    assert not R.root_ok(*wrong) and not rules_c.call("root_ok", *wrong)


@SETTINGS
@given(noise=st.integers(1, R.MAX_NOISE), delta_log=st.integers(1, R.MAX_DELTA_LOG), rounds=st.integers(1, R.MAX_ROUNDS))
def test_epsilon_is_the_same_on_chain_and_in_python(harness, noise, delta_log, rounds):
    assert harness.call("epsilon", noise, delta_log, rounds) == R.epsilon_micro(noise, delta_log, rounds)


def test_epsilon_bounds_the_accountants_and_grows_with_rounds():
    """The market's epsilon (zCDP of the Gaussian, converted) is never below the RDP accountant's
    for the same noise, and it grows with every round."""
    from fedmarket.privacy.accountant import epsilon_for

    log = R.delta_log_micro(1e-5)
    for z in (0.8, 1.5, 4.0, 20.0):
        noise = int(z * R.EPSILON_SCALE)
        eps = [R.epsilon_micro(noise, log, r) for r in range(1, 30)]
        assert eps == sorted(set(eps))
        for r in (1, 10, 29):
            assert eps[r - 1] / R.EPSILON_SCALE >= epsilon_for(z, r, 1e-5)
