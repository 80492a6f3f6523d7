import csv
import itertools
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from emsrflow import io, train
from emsrflow.train import (
    CURVE_COLUMNS,
    PatchSampler,
    TrainSettings,
    augment_pair,
    emsr_loss,
    load_model,
    objective,
    save_checkpoint,
)

TAU = 3
TINY_EMSRNET = {
    "type": "emsrnet",
    "scale": 3,
    "channels": 8,
    "blocks": 1,
    "res_blocks": 1,
    "heads": 2,
}


class TinySR(nn.Module):
    """Two 3×3 convolutions, pixel shuffle, plus a nearest-neighbour skip."""

    def __init__(self, scale=TAU, channels=8, seed=0):
        super().__init__()
        self.scale = scale
        self.spec = {"type": "tiny", "scale": scale, "channels": channels}
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
            self.conv2 = nn.Conv2d(channels, scale * scale, 3, padding=1)

    def forward(self, x):
        skip = F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return F.pixel_shuffle(self.conv2(F.relu(self.conv1(x))), self.scale) + skip


def block_mean(image, tau=TAU):
    *lead, h, w = image.shape
    return image.reshape(*lead, h // tau, tau, w // tau, tau).mean(axis=(-3, -1))


def texture(shape, seed=0, sigma=2.0):
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.standard_normal(shape), (0, sigma, sigma))
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (0.1 + 0.8 * smooth).astype(np.float32)


@pytest.fixture(scope="module")
def pair():
    hr = texture((3, 96, 96))
    return block_mean(hr).astype(np.float32), hr


def settings(**changes):
    base = dict(
        steps=20,
        batch=2,
        patch=12,
        lr=1e-3,
        lr_halve_every=8,
        checkpoint_every=5,
        log_every=5,
        deterministic=True,
        device="cpu",
    )
    return TrainSettings(**{**base, **changes})


def run(tmp_path, model, pairs, s, name="run"):
    folder = tmp_path / name
    train.train(
        model,
        pairs,
        s,
        checkpoint=folder / "checkpoint.pt",
        curve=folder / "curve.csv",
        progress=False,
    )
    return folder


def read_curve(path):
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    assert tuple(rows[0]) == CURVE_COLUMNS
    return [[float(v) for v in row] for row in rows[1:]]


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def tensorboard():
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def leftovers(folder):
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


# --- loss ------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_loss_matches_hand_computation(loss):
    g = torch.Generator().manual_seed(1)
    sr, sr_noisy, hr = (torch.rand(2, 1, 6, 6, generator=g) for _ in range(3))
    lambdas = (0.5, 2.0, 3.0)
    total, terms = emsr_loss(sr, sr_noisy, hr, loss=loss, lambdas=lambdas)
    a, b, x = (t.numpy().astype(np.float64) for t in (sr, sr_noisy, hr))
    p = 1 if loss == "l1" else 2
    hand = [np.mean(np.abs(u - v) ** p) for u, v in ((a, x), (b, x), (a, b))]
    np.testing.assert_allclose(terms.numpy(), hand, rtol=1e-6)
    np.testing.assert_allclose(total.item(), np.dot(lambdas, hand), rtol=1e-6)
    assert not terms.requires_grad


def test_objective_runs_both_branches_through_one_module():
    model = TinySR()
    g = torch.Generator().manual_seed(2)
    y = torch.rand(2, 1, 8, 8, generator=g)
    y2 = y + 0.02 * torch.randn(2, 1, 8, 8, generator=g)
    x = torch.rand(2, 1, 24, 24, generator=g)
    total, terms = objective(model, y, y2, x, loss="l1", lambdas=(1.0, 1.0, 1.0))
    with torch.no_grad():
        a, b = model(y), model(y2)
    hand = [F.l1_loss(a, x), F.l1_loss(b, x), F.l1_loss(a, b)]
    np.testing.assert_allclose(terms.numpy(), [h.item() for h in hand], rtol=1e-5)
    np.testing.assert_allclose(total.item(), sum(h.item() for h in hand), rtol=1e-5)
    # Gradients of all three terms reach the one set of weights.
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # Identical inputs to both branches: identical outputs, no consistency term.
    _, same = objective(model, y, y, x, loss="l2")
    assert same[2].item() == 0.0 and same[0].item() == same[1].item()


# --- patches and augmentation ------------------------------------------------------------


def test_augmentation_keeps_lr_hr_alignment():
    hr = texture((1, 12, 18), seed=3)[0]  # not square: a transposition would show
    lr = block_mean(hr)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(64):
        a, b = augment_pair(lr, hr, rng, noise=0.0)
        assert a.dtype == b.dtype == np.float32 and b.shape == (TAU * a.shape[0], TAU * a.shape[1])
        np.testing.assert_allclose(block_mean(b), a, atol=1e-6)
        seen.add(a.tobytes())
    assert len(seen) == 8  # all rotations and flips occur


def test_augmentation_noise_on_lr_only():
    hr = texture((1, 60, 60), seed=4)[0]
    lr = block_mean(hr)
    rng = np.random.default_rng(5)
    deviations = []
    for _ in range(40):
        a, b = augment_pair(lr, hr, rng, noise=5.0)
        deviations.append(np.std(a - block_mean(b)))
    assert max(deviations) <= 5.0 / 255 * 1.2
    assert max(deviations) > 2.0 / 255 and min(deviations) < 2.0 / 255  # σ ~ U[0, 5]


def test_sampler_patches_are_aligned_and_branch_noise_is_weak(pair):
    lr, hr = pair
    sampler = PatchSampler([(lr, hr)], TAU, 10, np.random.default_rng(0))
    y, y2, x = sampler.batch(16, input_noise=0.0, branch_noise=5.0)
    assert y.shape == y2.shape == (16, 1, 10, 10) and x.shape == (16, 1, 30, 30)
    np.testing.assert_allclose(block_mean(x), y, atol=1e-6)
    spread = (y2 - y).std(axis=(1, 2, 3))
    assert 0 < spread.max() <= 5.0 / 255 * 1.3
    y, y2, x = sampler.batch(4, input_noise=0.0, branch_noise=0.0)
    np.testing.assert_array_equal(y, y2)


def test_patch_larger_than_slice(pair):
    lr, hr = pair
    with pytest.raises(ValueError, match=r"patch size 40 is larger than the LR section size 32×32"):
        PatchSampler([(lr, hr)], TAU, 40, np.random.default_rng(0))


def test_mismatched_pair_shapes(pair):
    lr, hr = pair
    with pytest.raises(ValueError, match=r"training pair 1: HR shape \(3, 95, 96\)"):
        PatchSampler([(lr, hr), (lr, hr[:, :95])], TAU, 8, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"training pair 0: HR shape \(2, 96, 96\)"):
        PatchSampler([(lr, hr[:2])], TAU, 8, np.random.default_rng(0))
    with pytest.raises(ValueError, match="no training pairs"):
        PatchSampler([], TAU, 8, np.random.default_rng(0))


# --- settings ------------------------------------------------------------------------------


def test_settings_from_dict():
    s = TrainSettings.from_dict({"steps": 10, "lambdas": [1, 2, 0.5], "loss": "l2"})
    assert s.lambdas == (1.0, 2.0, 0.5) and s.steps == 10 and s.batch == 2
    assert TrainSettings() == TrainSettings.from_dict({})
    assert TrainSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match=r"unknown training setting\(s\) 'epochs', 'lr_decay'"):
        TrainSettings.from_dict({"epochs": 3, "lr_decay": 0.5, "steps": 4})
    for bad in (
        {"loss": "l3"},
        {"steps": 0},
        {"batch": 1.5},
        {"lambdas": [1, 1]},
        {"input_noise": -1},
        {"precision": "fp16"},
        {"device": "gpu"},
        {"deterministic": "yes"},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainSettings.from_dict(bad)


def test_cuda_requested_without_cuda(monkeypatch, tmp_path, pair):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"CUDA requested \(device: cuda\) but torch\.cuda"):
        run(tmp_path, TinySR(), [pair], settings(device="cuda"))


def test_model_without_parameters(tmp_path, pair):
    class Nearest(nn.Module):
        scale, spec = TAU, {"type": "nearest", "scale": TAU}

        def forward(self, x):
            return F.interpolate(x, scale_factor=TAU)

    with pytest.raises(ValueError, match="nothing to train"):
        run(tmp_path, Nearest(), [pair], settings())


# --- training --------------------------------------------------------------------------------


def test_training_lowers_the_loss(tmp_path, pair):
    model = TinySR(seed=1)
    s = settings(steps=150, lr_halve_every=100, checkpoint_every=50, log_every=10, patch=16)
    folder = run(tmp_path, model, [pair], s)
    rows = read_curve(folder / "curve.csv")
    assert [r[0] for r in rows] == list(range(10, 151, 10))
    first, last = rows[0][1], np.mean([r[1] for r in rows[-3:]])
    assert last < 0.5 * first, (first, last)
    assert rows[-1][5] == pytest.approx(5e-4)  # halved once at step 100
    assert all(r[1] == pytest.approx(r[2] + r[3] + r[4], rel=1e-5) for r in rows)
    expected = {"checkpoint.pt", "curve.csv"} | ({"tensorboard"} if tensorboard() else set())
    assert {p.name for p in folder.iterdir()} == expected
    assert not model.training


def test_resume_is_bit_identical(tmp_path, pair):
    whole = TinySR()
    run(tmp_path, whole, [pair], settings(), "whole")
    half = TinySR()
    folder = run(tmp_path, half, [pair], settings(steps=10), "half")
    assert read_curve(folder / "curve.csv")[-1][0] == 10
    resumed = TinySR(seed=7)  # different initial weights: all come from the checkpoint
    run(tmp_path, resumed, [pair], settings(), "half")
    assert_same_weights(whole, resumed)
    a, b = (read_curve(tmp_path / f / "curve.csv") for f in ("whole", "half"))
    assert [r[:6] for r in a] == [r[:6] for r in b]
    ckpt = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 20 and ckpt["settings"]["steps"] == 20 and ckpt["spec"]["type"] == "tiny"


def explode_at(model, calls):
    forward, count = model.forward, itertools.count(1)

    def exploding(*args):
        if next(count) == calls:
            raise KeyboardInterrupt("killed")
        return forward(*args)

    model.forward = exploding
    return model


def test_kill_and_resume(tmp_path, pair):
    whole = TinySR()
    run(tmp_path, whole, [pair], settings(checkpoint_every=4, log_every=3), "whole")
    killed = explode_at(TinySR(), 11)  # dies in step 11; last checkpoint at step 8
    s = settings(checkpoint_every=4, log_every=3)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, killed, [pair], s, "killed")
    folder = tmp_path / "killed"
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["step"] == 8
    assert [r[0] for r in read_curve(folder / "curve.csv")] == [3, 6]
    resumed = TinySR(seed=3)
    run(tmp_path, resumed, [pair], s, "killed")
    assert_same_weights(whole, resumed)
    rows = read_curve(folder / "curve.csv")
    assert [r[0] for r in rows] == [3, 6, 9, 12, 15, 18, 20]
    assert [r[:6] for r in rows] == [r[:6] for r in read_curve(tmp_path / "whole" / "curve.csv")]
    assert leftovers(folder) == []
    # Nothing left to do: a rerun changes nothing.
    before = (folder / "checkpoint.pt").read_bytes()
    again = TinySR(seed=4)
    run(tmp_path, again, [pair], s, "killed")
    assert_same_weights(whole, again)
    assert (folder / "checkpoint.pt").read_bytes() == before


def test_resume_with_other_settings_or_network(tmp_path, pair):
    folder = run(tmp_path, TinySR(), [pair], settings(steps=5))
    with pytest.raises(ValueError, match=r"settings differ.*lr: 0\.001 → 0\.002.*only 'steps'"):
        run(tmp_path, TinySR(), [pair], settings(steps=10, lr=2e-3))
    with pytest.raises(ValueError, match=r"loss: 'l1' → 'l2'"):
        run(tmp_path, TinySR(), [pair], settings(loss="l2"))
    with pytest.raises(ValueError, match="cannot resume training"):
        run(tmp_path, TinySR(channels=4), [pair], settings(steps=10))
    with pytest.raises(ValueError, match="at step 5, beyond the requested steps = 3"):
        run(tmp_path, TinySR(), [pair], settings(steps=3))
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["step"] == 5


def test_checkpoint_is_written_atomically(tmp_path, pair, monkeypatch):
    model = TinySR()
    folder = run(tmp_path, model, [pair], settings(steps=2, checkpoint_every=1))
    path = folder / "checkpoint.pt"
    before = path.read_bytes()
    real_save = torch.save

    def crashing_save(obj, f):
        real_save({"half": "written"}, f)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    states = {"torch": torch.get_rng_state(), "cuda": None, "numpy": {}, "python": None}
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, optimizer, scheduler, 3, states, settings())
    assert path.read_bytes() == before
    assert leftovers(folder) == []
    monkeypatch.setattr(torch, "save", real_save)
    save_checkpoint(tmp_path / "new" / "c.pt", model, optimizer, scheduler, 3, states, settings())
    assert os.listdir(tmp_path / "new") == ["c.pt"]


def test_bf16_autocast_keeps_fp32_weights(tmp_path, pair):
    model = TinySR()
    run(tmp_path, model, [pair], settings(steps=3, precision="bf16", deterministic=False))
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


def test_trains_on_ome_zarr_volume_readers(tmp_path, pair):
    lr, hr = pair
    io.write_volume(str(tmp_path / "lr.ome.zarr"), lr, (50.0, 45.0, 45.0), chunks=(1, 16, 16))
    io.write_volume(str(tmp_path / "hr.ome.zarr"), hr, (50.0, 15.0, 15.0), chunks=(1, 48, 48))
    s = settings(steps=4, checkpoint_every=2)
    with (
        io.open_volume(str(tmp_path / "lr.ome.zarr")) as a,
        io.open_volume(str(tmp_path / "hr.ome.zarr")) as b,
    ):
        from_zarr = TinySR()
        run(tmp_path, from_zarr, [(a, b)], s, "zarr")
    from_numpy = TinySR()
    run(tmp_path, from_numpy, [pair], s, "numpy")
    assert_same_weights(from_zarr, from_numpy)


# --- with the registered architectures ---------------------------------------------------------

archs = pytest.importorskip("emsrflow.archs")


def test_emsrnet_kill_resume_and_load_model(tmp_path, pair):
    s = settings(steps=6, checkpoint_every=2, log_every=2, patch=8)

    def net():
        torch.manual_seed(0)
        return archs.build_network(TINY_EMSRNET)

    whole = net()
    run(tmp_path, whole, [pair], s, "whole")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, explode_at(net(), 4), [pair], s, "killed")
    resumed = net()
    folder = run(tmp_path, resumed, [pair], s, "killed")
    assert_same_weights(whole, resumed)

    path = folder / "checkpoint.pt"
    loaded = load_model(path, expect={"type": "emsrnet", "scale": 3})
    assert not loaded.training and loaded.spec == whole.spec
    assert_same_weights(whole, loaded)
    with torch.no_grad():
        x = torch.rand(1, 1, 9, 9)
        assert torch.equal(loaded(x), whole.eval()(x))
    with pytest.raises(ValueError, match=rf"{path}.*'emsrnet' with τ = 3, expected .*'unet'"):
        load_model(path, expect={"type": "unet", "scale": 3})
    with pytest.raises(ValueError, match=r"τ = 3, expected architecture 'emsrnet' with τ = 4"):
        load_model(path, expect={"type": "emsrnet", "scale": 4})


def test_bicubic_has_nothing_to_train(tmp_path, pair):
    with pytest.raises(ValueError, match="nothing to train"):
        run(tmp_path, archs.build_network({"type": "bicubic", "scale": 3}), [pair], settings())


def test_load_model_rejects_other_files(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match=r"x\.pt: not an emsrflow training checkpoint"):
        load_model(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"x\.pt: cannot read the checkpoint"):
        load_model(path)


def test_emsrnet_learns_on_phantom_data(tmp_path):
    from emsrflow.archs import build_network
    from emsrflow.phantom import Phantom, PhantomParams
    from emsrflow.resize import bicubic

    hr = io.to_float01(Phantom(PhantomParams(), seed=3).hr(0, 4))
    pair = (bicubic(hr, (hr.shape[1] // 3, hr.shape[2] // 3)), hr)
    torch.manual_seed(0)
    model = build_network(
        {"type": "emsrnet", "scale": 3, "channels": 8, "blocks": 1, "res_blocks": 1, "heads": 2}
    )
    settings = TrainSettings(steps=150, patch=24, lr=2e-3, log_every=10, checkpoint_every=150)
    train.train(
        model,
        [pair],
        settings,
        checkpoint=tmp_path / "c.pt",
        curve=tmp_path / "c.csv",
        progress=False,
    )
    with open(tmp_path / "c.csv") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert np.mean(losses[-3:]) < 0.6 * losses[0]
