"""PyTorch networks on a flat vector: McMahan et al.'s CNN, a user's packed module (BatchNorm buffers in
the vector), deterministic local training, and packs that are refused with a clear error."""

import io
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fedmarket.errors import ConfigError, SchemaMismatch  # noqa: E402
from fedmarket.fl.optim import LocalTraining  # noqa: E402
from fedmarket.fl.torch_models import (  # noqa: E402
    TorchNet,
    cnn_net,
    cnn_param_count,
    inference_module,
    load_packed,
    pack_module,
)


class Net(torch.nn.Module):
    """A small user module with BatchNorm (buffers) and Dropout (randomness)."""

    def __init__(self):
        super().__init__()
        self.l1 = torch.nn.Linear(6, 8)
        self.bn = torch.nn.BatchNorm1d(8)
        self.drop = torch.nn.Dropout(0.2)
        self.l2 = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.l2(self.drop(torch.relu(self.bn(self.l1(x)))))


def _data(n=40, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, k, n)


@pytest.fixture(scope="module")
def packed():
    torch.manual_seed(0)
    return pack_module(Net(), (6,), 3)


def test_the_paper_cnn_has_its_parameter_count_and_trains_deterministically():
    assert cnn_param_count((1, 28, 28), 10) == 1_663_370  # McMahan et al. (2017)
    net = cnn_net((1, 8, 8), 3, channels=(4, 8), dense=16, seed=1)
    assert net.n_params == cnn_param_count((1, 8, 8), 3, (4, 8), 5, 16)
    assert np.array_equal(net.init_params(), cnn_net((1, 8, 8), 3, channels=(4, 8), dense=16, seed=1).init_params())
    X, y = _data(n=30, d=64, seed=2)
    cfg = LocalTraining(epochs=1, batch_size=8, lr=0.1, momentum=0.9)
    a = net.train_local(net.init_params(), X, y, cfg, seed=5, lr=0.1)
    assert np.array_equal(a, net.train_local(net.init_params(), X, y, cfg, seed=5, lr=0.1))
    assert not np.array_equal(a, net.init_params())


def test_a_packed_module_carries_its_buffers_and_trains_deterministically(packed):
    net = load_packed(packed, 6, 3)
    assert net.names[-2:] == ["bn.running_mean", "bn.running_var"]  # floating buffers ride in the vector
    assert net.n_params == sum(p.numel() for p in Net().parameters()) + 16
    X, y = _data()
    w0 = net.init_params()
    for opt in ("sgd", "adam"):
        cfg = LocalTraining(epochs=2, batch_size=7, lr=0.05, optimizer=opt, weight_decay=1e-3, prox_mu=0.01)
        a = net.train_local(w0, X, y, cfg, seed=3, lr=0.05)
        assert np.array_equal(a, net.train_local(w0, X, y, cfg, seed=3, lr=0.05))  # dropout seeded too
        assert not np.array_equal(a, net.train_local(w0, X, y, cfg, seed=4, lr=0.05))
        assert np.abs(a[-16:] - w0[-16:]).max() > 0  # the running statistics moved in training
    # the evaluation program uses the running statistics it is given: the same as the native module in eval mode
    native = Net()
    ref = TorchNet(native, native, 6, 3)
    trained = net.train_local(w0, X, y, LocalTraining(epochs=1, batch_size=8, lr=0.1), seed=1, lr=0.1)
    np.testing.assert_allclose(net.logits(trained, X), ref.logits(trained, X), rtol=1e-5, atol=1e-6)


def test_the_same_module_packs_to_the_same_bytes(packed):
    torch.manual_seed(0)
    assert pack_module(Net(), (6,), 3) == packed


def test_bad_packs_are_refused_with_one_clear_line(packed):
    with pytest.raises(SchemaMismatch, match="not a packed module"):
        load_packed(b"not a zip at all", 6, 3)
    with pytest.raises(SchemaMismatch, match="takes input"):
        load_packed(packed, 7, 3)
    with pytest.raises(SchemaMismatch, match="takes input"):
        load_packed(packed, 6, 4)
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(packed)) as src, zipfile.ZipFile(buf, "w") as dst:
        for name in src.namelist():
            if name != "eval.pt2":
                dst.writestr(name, src.read(name))
    with pytest.raises(SchemaMismatch, match="not a packed module"):
        load_packed(buf.getvalue(), 6, 3)
    with pytest.raises(ConfigError, match="not \\(2, 5\\) class scores"):
        pack_module(Net(), (6,), 5)


def test_an_inference_module_scales_raw_features_like_the_job():
    net = cnn_net((1, 8, 8), 3, channels=(2,), dense=4, seed=0)
    w = net.init_params()
    X = np.random.default_rng(0).uniform(0, 16, size=(5, 64))
    expected = net.logits(w, X / 16.0)  # also leaves w in the evaluation module
    mod = inference_module(net.eval_module, np.zeros(64), np.full(64, 16.0), (1, 8, 8)).eval()
    with torch.no_grad():
        out = mod(torch.from_numpy(X)).double().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
