"""Styled V-net (COCA frame emulator) and its trainer: shapes, periodicity, style, I/O, training."""

import pytest

torch = pytest.importorskip("torch")

from cocasbi.frame.checkpoint import load_model, save_model  # noqa: E402
from cocasbi.frame.training.train import evaluate, random_periodic_crop, train  # noqa: E402
from cocasbi.frame.vnet import StyledVNet  # noqa: E402

TINY = dict(in_channels=3, out_channels=3, style_dim=3, base_channels=4, levels=2, mapping_dim=8)


@pytest.fixture(autouse=True)
def _one_thread():
    """Run single-threaded: these tiny grids gain nothing from a second thread, and OpenMP
    threads spin-waiting on a shared 2-core machine made the file ~10x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _inputs(batch=2, n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, n, n, n, generator=g), torch.rand(batch, 3, generator=g)


@torch.no_grad()
def test_output_shape_and_dtype():
    net = StyledVNet(**{**TINY, "out_channels": 5}).eval()
    x, s = _inputs()
    y = net(x, s)
    assert y.shape == (2, 5, 16, 16, 16)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()
    with pytest.raises(ValueError, match="multiple"):
        net(torch.zeros(1, 3, 18, 18, 18), torch.zeros(1, 3))


@torch.no_grad()
def test_batch_is_independent_per_sample():
    """The grouped (per-sample modulated) convolutions do not mix batch members."""
    net = StyledVNet(**TINY).eval()
    x, s = _inputs(batch=3)
    together = net(x, s)
    apart = torch.cat([net(x[i : i + 1], s[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("shift", [(4, 0, 0), (0, 4, 0), (0, 0, 4), (8, -4, 12)])
def test_periodic_shift_equivariance(shift):
    """Rolling the input by multiples of 2**levels cells rolls the output identically."""
    net = StyledVNet(**TINY).eval()
    x, s = _inputs()
    y = net(x, s)
    y_shifted = net(torch.roll(x, shift, dims=(2, 3, 4)), s)
    torch.testing.assert_close(y_shifted, torch.roll(y, shift, dims=(2, 3, 4)), rtol=0, atol=1e-5)


@torch.no_grad()
def test_style_changes_the_output():
    net = StyledVNet(**TINY).eval()
    x, s = _inputs(batch=1)
    y0 = net(x, s)
    for i in range(3):
        s2 = s.clone()
        s2[0, i] += 0.5
        assert (net(x, s2) - y0).abs().max() > 1e-3 * y0.abs().max()


def test_residual_option_adds_the_input():
    net = StyledVNet(**{**TINY, "residual": True}).eval()
    plain = StyledVNet(**TINY).eval()
    plain.load_state_dict(net.state_dict())
    x, s = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(net(x, s), plain(x, s) + x)
    with pytest.raises(ValueError):
        StyledVNet(in_channels=2, out_channels=3, residual=True)


def test_save_load_round_trip(tmp_path):
    net = StyledVNet(**TINY).eval()
    extra = {"x_scale": torch.tensor([1.0, 2.0, 3.0]), "note": "tiny", "times": [0.1, 1.0]}
    save_model(tmp_path / "net.pt", net, extra)
    loaded, extra2 = load_model(tmp_path / "net.pt")
    assert isinstance(loaded, StyledVNet) and loaded.hparams == net.hparams
    assert not loaded.training
    assert extra2["note"] == "tiny" and extra2["times"] == [0.1, 1.0]
    torch.testing.assert_close(extra2["x_scale"], extra["x_scale"], rtol=0, atol=0)
    x, s = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, s), net(x, s))


def test_model_files_hold_only_allow_listed_classes(tmp_path):
    with pytest.raises(TypeError, match="not a model class"):
        save_model(tmp_path / "lin.pt", torch.nn.Linear(2, 2))
    net = StyledVNet(**TINY).eval()
    save_model(tmp_path / "net.pt", net)
    obj = torch.load(tmp_path / "net.pt", weights_only=True)  # plain data only
    assert obj["class"] == "StyledVNet" and obj["hparams"] == net.hparams
    # files written before the allow-list named the class by its import path
    torch.save({**obj, "class": "cocasbi.frame.vnet:StyledVNet"}, tmp_path / "old.pt")
    loaded, _ = load_model(tmp_path / "old.pt")
    x, s = _inputs(batch=1)
    with torch.no_grad():
        assert torch.equal(loaded(x, s), net(x, s))


def test_random_periodic_crop_is_a_wrapped_subvolume():
    g = torch.Generator().manual_seed(3)
    a = torch.arange(2 * 6**3, dtype=torch.float32).reshape(2, 6, 6, 6)
    b = -a
    ca, cb = random_periodic_crop([a, b], 4, g)
    assert ca.shape == (2, 4, 4, 4)
    torch.testing.assert_close(cb, -ca)  # same offsets for input and target
    o = [int((a[0] == ca[0, 0, 0, 0]).nonzero()[0, i]) for i in range(3)]
    expected = torch.roll(a, [-k for k in o], dims=(1, 2, 3))[:, :4, :4, :4]
    assert torch.equal(ca, expected)


class _SmoothingTask(torch.utils.data.Dataset):
    """Input: white noise; style (amplitude, 2 nuisances); target = amplitude * 7-point mean."""

    def __init__(self, n_samples, n=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n_samples, 3, n, n, n, generator=g)
        self.style = torch.rand(n_samples, 3, generator=g) + 0.5
        smooth = self.x.clone()
        for dim in (2, 3, 4):
            smooth += torch.roll(self.x, 1, dim) + torch.roll(self.x, -1, dim)
        self.y = self.style[:, 0, None, None, None, None] * smooth / 7

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.style[i], self.y[i]


def test_short_training_run_reduces_validation_loss(tmp_path):
    torch.manual_seed(0)
    net = StyledVNet(**{**TINY, "base_channels": 8})
    train_set, val_set = _SmoothingTask(16, seed=0), _SmoothingTask(4, seed=1)
    before = evaluate(net, val_set, device="cpu")
    history = train(
        net,
        train_set,
        val_set,
        epochs=6,
        lr=2e-3,
        batch_size=1,
        checkpoint_path=tmp_path / "ckpt.pt",
        device="cpu",
        progress=False,
    )
    assert len(history["val_loss"]) == 6
    assert history["val_loss"][-1] < before / 4, (before, history["val_loss"])
    assert history["lr"][0] == 2e-3 and history["lr"][-1] < history["lr"][0]
    reloaded, meta = load_model(tmp_path / "ckpt.pt")  # checkpoints load like model files
    assert meta["epoch"] == 6 and meta["history"]["val_loss"] == history["val_loss"]
    assert evaluate(reloaded, val_set, device="cpu") == pytest.approx(history["val_loss"][-1])


def test_resume_reproduces_uninterrupted_run(tmp_path):
    train_set, val_set = _SmoothingTask(6, seed=0), _SmoothingTask(2, seed=1)
    common = dict(lr=5e-3, batch_size=4, device="cpu", progress=False, seed=7, crop=8)

    torch.manual_seed(0)
    full = StyledVNet(**TINY)
    hist_full = train(
        full, train_set, val_set, epochs=3, checkpoint_path=tmp_path / "a.pt", **common
    )

    torch.manual_seed(0)
    first = StyledVNet(**TINY)
    train(
        first,
        train_set,
        val_set,
        epochs=1,
        schedule_epochs=3,
        checkpoint_path=tmp_path / "b.pt",
        **common,
    )
    torch.manual_seed(123)  # a fresh process: different model init, different global RNG
    resumed = StyledVNet(**TINY)
    hist_resumed = train(
        resumed,
        train_set,
        val_set,
        epochs=3,
        schedule_epochs=3,
        checkpoint_path=tmp_path / "b.pt",
        resume=True,
        **common,
    )
    assert hist_resumed["train_loss"] == hist_full["train_loss"]
    assert hist_resumed["val_loss"] == hist_full["val_loss"]
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

    with pytest.raises(ValueError, match="settings"):
        train(
            resumed,
            train_set,
            val_set,
            epochs=4,
            checkpoint_path=tmp_path / "b.pt",
            resume=True,
            **{**common, "lr": 1e-3},
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_gpu_model_loads_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    net = StyledVNet(**TINY).eval()
    x, s = _inputs()
    with torch.no_grad():
        y_cpu = net(x, s)
        y_gpu = net.to("cuda")(x.cuda(), s.cuda()).cpu()
    torch.testing.assert_close(y_gpu, y_cpu, rtol=1e-4, atol=1e-4)
    train(
        net,
        _SmoothingTask(4),
        _SmoothingTask(2, seed=1),
        epochs=1,
        lr=1e-3,
        batch_size=2,
        checkpoint_path=tmp_path / "ckpt.pt",
        device="cuda",
        progress=False,
    )
    assert next(net.parameters()).is_cuda
    save_model(tmp_path / "net.pt", net, {"device": "cuda"})
    loaded, _ = load_model(tmp_path / "net.pt", map_location="cpu")
    with torch.no_grad():
        y_trained = net(x.cuda(), s.cuda()).cpu()
        torch.testing.assert_close(loaded(x, s), y_trained, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("width", [1, 2])
def test_periodic_pad_equals_circular_padding_with_gradients(width):
    """The one-allocation pad gives exactly torch's circular padding (values and gradients)."""
    import torch.nn.functional as F

    from cocasbi.frame.vnet import _periodic_pad

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 6, 7, 8, generator=g, requires_grad=True)
    w = torch.randn(2, 3, 6 + 2 * width, 7 + 2 * width, 8 + 2 * width, generator=g)
    y = _periodic_pad(x, width)
    ref = F.pad(x, (width,) * 6, mode="circular")
    assert torch.equal(y, ref)
    (grad,) = torch.autograd.grad((y * w).sum(), x)
    (grad_ref,) = torch.autograd.grad((ref * w).sum(), x)
    torch.testing.assert_close(grad, grad_ref, rtol=0, atol=1e-5)


def test_vnet_frame_shares_the_fourier_modes_without_changing_the_prediction():
    """The V-net frame computes the FFTs of Ψ1, Ψ2 once for its divergence inputs and its
    base transfer model: same prediction as the two computed separately."""
    import numpy as np

    from cocasbi.frame.neural import VNetFrameModel
    from cocasbi.frame.transfer import CosmologyFeatures, TransferModel

    n, K = 16, 2
    rng = np.random.default_rng(4)
    feats = CosmologyFeatures(degree=1)
    base = TransferModel(np.linspace(0, 1.5, 6), rng.standard_normal((2, K, feats.size, 6)),
                         feats)
    torch.manual_seed(0)
    net = StyledVNet(8, 3 * K, 2, base_channels=4, levels=1)
    model = VNetFrameModel(net, K, [1.0, 0.5, 0.3, 0.2], [0.3, 0.1], feats, base)
    p1, p2 = rng.standard_normal((2, n**3, 3))
    cosmo = {"Omega_m": 0.3, "sigma8": 0.8}
    got = model.predict(p1, p2, 64.0, cosmo)

    def old_divergence(psi):  # per component, as before the modes were shared
        k = 2 * np.pi * np.fft.fftfreq(n)
        kz = 2 * np.pi * np.fft.rfftfreq(n)
        f = [np.fft.rfftn(psi[i]) for i in range(3)]
        div = 1j * (k[:, None, None] * f[0] + k[None, :, None] * f[1] + kz * f[2])
        return -np.fft.irfftn(div, s=psi.shape[1:], axes=(0, 1, 2))

    fields = [np.moveaxis(p.reshape(n, n, n, 3), -1, 0) for p in (p1, p2)]
    fields += [old_divergence(f)[None] for f in fields]
    x = np.concatenate([f / s for f, s in zip(fields, model.in_scale, strict=True)])
    with torch.no_grad():
        y = net(torch.from_numpy(x.astype(np.float32))[None],
                torch.from_numpy(model.style(cosmo))[None])[0].double().numpy()
    want = (np.moveaxis(y.reshape(K, 3, n, n, n), 1, -1).reshape(K, n**3, 3)
            * model.out_scale[:, None, None] + base.predict(p1, p2, 64.0, cosmo))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
