"""Whether a provider sends must not depend on its data (found by an attacker's review).

A requester packed a torch module that passes every check before providers stake (it loads,
evaluates and takes one finite step on the fixed probe batch) but whose forward pass adds
`r - r`, `r = (t + 1) / t`, `t = relu(x_j - p)`: zero for a record with `x_j > p`, NaN for one
with `x_j <= p`. In `dp_local` a provider holding such a record trained to a NaN update, which the
clip refused after the release was journaled: it sent nothing, and the provider whose data differed
by that one record sent its noisy update. Anyone reading the round (the mailbox, its metrics
document) told the two adjacent data sets apart with certainty, against a promised (8, 1e-5). In a
private mode a failed or non-finite training run now gives a zero update, clipped and noised like
any other: both providers send, and nothing about the record shows but the noisy update."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sec_support  # noqa: E402
from sec_support import build  # noqa: E402

from fedmarket import jobmodel  # noqa: E402
from fedmarket.fl.torch_models import pack_module  # noqa: E402
from fedmarket.roles.common import committed_rounds, fetch_metrics  # noqa: E402
from fedmarket.roles.sealed import seal_and_reveal  # noqa: E402
from fedmarket.spec import JobSpec  # noqa: E402
from fedmarket.storage import cid_of  # noqa: E402

J = 20  # the private feature the trap reads


class Trap(torch.nn.Module):
    """A softmax regression plus a term that is exactly 0 unless a record has feature J <= p."""

    def __init__(self, n_features: int, n_classes: int, p: float):
        super().__init__()
        self.lin = torch.nn.Linear(n_features, n_classes)
        self.gate = torch.nn.Linear(n_features, 1)
        with torch.no_grad():
            self.gate.weight.zero_()
            self.gate.weight[0, J] = 1.0
            self.gate.bias.fill_(-p)

    def forward(self, x):
        t = torch.relu(self.gate(x))  # 0 iff x_J <= p
        r = (t + 1.0) / t  # inf iff x_J <= p
        return self.lin(x) + (r - r)  # + 0, or NaN for that record


def _trap_job(chain, path, monkeypatch, make_module, n_extra, **kw):
    """A job of the torch module `make_module(n_features, n_classes, p)` (p below every value of
    the probe batch at feature J, so the checks before staking pass; `n_extra(n_features, n_classes)`
    parameters beside a softmax regression's), whose first two providers hold adjacent data sets D and D' (one record's
    feature J dark in D'), the others feature J lit like D."""
    ds, _, _ = sec_support.digits()
    nf, nc = ds.n_features, ds.num_classes
    probe = np.random.default_rng(0).random((4, nf))  # load_packed's fixed probe batch
    torch.manual_seed(0)
    packed = pack_module(make_module(nf, nc, float(probe[:, J].min()) / 2), (nf,), nc)
    plain = sec_support.make_spec

    def torch_spec(**spec_kw) -> JobSpec:
        doc = plain(**spec_kw).model_dump()
        doc["model"] = {"kind": "torch", "module_cid": cid_of(packed), "n_params": nf * nc + nc + n_extra(nf, nc)}
        return JobSpec.model_validate(doc)

    monkeypatch.setattr(sec_support, "make_spec", torch_spec)
    jobmodel._CACHE.clear()
    sim = build(chain, path, **kw)
    sim.store.put(packed)
    a, b, *others = sim.providers
    D = a.X.copy()
    D[:, J] = float(ds.feature_high[J])
    Dp = D.copy()
    Dp[0, J] = float(ds.feature_low[J])
    a.X, b.X, b.y = D, Dp, a.y.copy()
    for other in others:
        other.X = other.X.copy()
        other.X[:, J] = float(ds.feature_high[J])
    for p in sim.providers:
        p._scaled = {}
    return sim


@pytest.fixture(params=["dp_local", "secagg_dp"])
def trap_job(request, chain, tmp_path, monkeypatch):
    secure = request.param == "secagg_dp"
    return _trap_job(chain, tmp_path / "job", monkeypatch, Trap, lambda nf, nc: nf + 1, providers=3, rounds=2, privacy=request.param,
                     validators=1 if secure else 0)


def test_a_record_that_breaks_the_requesters_module_does_not_stop_its_provider_sending(trap_job):
    """dp_local: both adjacent providers send, the round lists both, and the one whose training
    broke sent a noised zero (its reason kept for the log). secagg_dp: the same holds before
    masking: the broken run gives a zero update, not an error that drops the provider."""
    sim = trap_job
    a, b, _ = sim.providers
    if sim.spec.privacy.secure:
        q0 = np.zeros(sim.spec.n_params, dtype=np.int64)
        assert np.all(np.isfinite(a._private_delta(sim.spec, 0, 0, q0))) and (0, 0) not in a.zeroed
        assert not np.any(b._private_delta(sim.spec, 0, 0, q0)) and "not finite" in b.zeroed[(0, 0)]
        return
    sim.open()
    for p in sim.providers:
        assert p.train(sim.job, 0) is not None
    assert (sim.job, 0) in b.zeroed and (sim.job, 0) not in a.zeroed
    seal_and_reveal(sim.agg, sim.providers, sim.job, 0, sim.spec)
    sim.agg.run_round(sim.job, 0)
    listed = {u["provider"] for u in fetch_metrics(sim.store, committed_rounds(sim.dep, sim.job)[0])["updates"]}
    assert {a.address, b.address} <= listed


class Boom(torch.nn.Module):
    """Softmax regression plus clamp(g, -1, 1) * relu(1/(t + 1e-30) - 1e3) on class 0, t = relu(x_J - p)
    from fixed buffers (no gradient through t): the term and g's gradient are 0 for every record
    but one with x_J <= p, where g's gradient is ~1e28, finite; clamp stops it after that one
    step, so everything stays finite."""

    def __init__(self, n_features: int, n_classes: int, p: float):
        super().__init__()
        self.lin = torch.nn.Linear(n_features, n_classes)
        self.g = torch.nn.Parameter(torch.zeros(1))
        w = torch.zeros(1, n_features)
        w[0, J] = 1.0
        self.register_buffer("gw", w)
        self.register_buffer("gb", torch.tensor([-p]))
        e0 = torch.zeros(n_classes)
        e0[0] = 1.0
        self.register_buffer("e0", e0)
        self.register_buffer("one", torch.ones(1))

    def forward(self, x):
        t = torch.relu(torch.nn.functional.linear(x, self.gw, self.gb))  # (B, 1), no parameter in it
        inv = torch.relu(self.one / (t + 1e-30) - 1e3)  # 0 unless x_J <= p (then 1e30); div.Tensor, not reciprocal
        s = torch.clamp(self.g, -1.0, 1.0) * inv
        return self.lin(x) + s * self.e0


@pytest.fixture
def boom_job(chain, tmp_path, monkeypatch):
    extra = lambda nf, nc: 1 + nf + 1 + nc + 1  # noqa: E731 - g, and the float buffers gw, gb, e0, one
    return _trap_job(chain, tmp_path / "job", monkeypatch, Boom, extra, providers=6, rounds=1, privacy="secagg",
                     validators=1)


def test_a_record_that_blows_an_update_past_the_fixed_point_range_does_not_stop_its_provider(boom_job):
    """secagg sends updates unclipped: a module whose training gives a huge but finite update on one
    chosen record (1e27) passed the finite check, then raised in the quantizer, so the provider
    holding the record never masked and was left out of the survivors, by name (found by the review
    of the fix above). Such a run now gives a zero update too: both adjacent providers mask and
    survive."""
    sim = boom_job
    a, b, *others = sim.providers
    q0 = np.zeros(sim.spec.n_params, dtype=np.int64)
    assert np.abs(a._private_delta(sim.spec, 0, 0, q0)).max() < 1e3 and not a.zeroed
    assert not np.any(b._private_delta(sim.spec, 0, 0, q0)) and "fixed-point range" in b.zeroed[(0, 0)]
    b.zeroed.clear()
    sim.open()
    for phase in ("advertise", "share"):
        for p in sim.providers:
            getattr(p, phase)(sim.job, 0)
    assert all(p.train(sim.job, 0) is not None for p in sim.providers)
    assert (sim.job, 0) in b.zeroed
    sim.agg.secure_survivors(sim.job, 0)
    survivors = sim.agg.own_survivors(sim.job, 0)["survivors"]
    members = a.members(sim.job, 0)
    assert members.index(a.address) in survivors and members.index(b.address) in survivors

