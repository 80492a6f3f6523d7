"""LPIPS and DISTS from local weight files written in the reference packages' layouts."""

import numpy as np
import pytest
import torch

from emsrflow.archs.backbones import Backbone
from emsrflow.perceptual import (
    DISTS,
    LPIPS,
    available_perceptual_metrics,
    l2_pool,
    load_dists,
    load_lpips,
    load_perceptual,
    perceptual_availability,
    score_slice,
    score_stack,
)

LPIPS_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
# The lpips package's taps: slices of torchvision's ``features``.
LPIPS_SLICES = {
    "alex": ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)),
    "vgg": ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Random backbones (torchvision layout, with a classifier) and calibrations."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    for name in ("alexnet", "vgg16"):
        state = Backbone(name).state_dict()
        state["classifier.6.weight"] = torch.randn(1000, 4)
        torch.save(state, root / f"{name}.pth")
    for net, channels in LPIPS_CHANNELS.items():
        lins = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(channels)}
        torch.save(lins, root / f"{net}.pth")
    weights = {key: 0.1 + 0.01 * torch.randn(1, 1475, 1, 1) for key in ("alpha", "beta")}
    torch.save(weights, root / "weights.pt")
    return root


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    x = rng.random((40, 44), dtype=np.float32)
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
    return x, y


def lpips_of(files, net):
    backbone = files / ("alexnet.pth" if net == "alex" else "vgg16.pth")
    return load_lpips(backbone, files / f"{net}.pth", net=net)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_is_zero_for_equal_images_positive_and_symmetric(files, images, net):
    metric = lpips_of(files, net)
    x, y = images
    assert score_slice(metric, x, x, device="cpu") == 0
    d = score_slice(metric, x, y, device="cpu")
    assert d > 0
    assert score_slice(metric, y, x, device="cpu") == pytest.approx(d, rel=1e-5)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_the_formula_on_the_backbone_slices(files, images, net):
    metric = lpips_of(files, net)
    lins = torch.load(files / f"{net}.pth", weights_only=True)
    x, y = (torch.from_numpy(a)[None, None].expand(-1, 3, -1, -1) for a in images)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    hx, hy = ((2 * a - 1 - shift) / scale for a in (x, y))
    expected = 0.0
    with torch.no_grad():
        for k, (start, stop) in enumerate(LPIPS_SLICES[net]):
            hx = metric.backbone.features[start:stop](hx)
            hy = metric.backbone.features[start:stop](hy)
            ux = hx.double().numpy()[0] / (np.sqrt((hx.double().numpy()[0] ** 2).sum(0)) + 1e-10)
            uy = hy.double().numpy()[0] / (np.sqrt((hy.double().numpy()[0] ** 2).sum(0)) + 1e-10)
            w = lins[f"lin{k}.model.1.weight"].double().numpy().reshape(-1, 1, 1)
            expected += float((w * (ux - uy) ** 2).sum(0).mean())
    got = score_slice(metric, *images, device="cpu")
    assert got == pytest.approx(expected, rel=1e-4)


def test_lpips_with_zero_calibration_is_zero(files, images, tmp_path):
    zeros = {f"lin{k}.model.1.weight": torch.zeros(1, c, 1, 1) for k, c in enumerate((64, 192))}
    zeros |= {f"lin{k}.model.1.weight": torch.zeros(1, c, 1, 1) for k, c in [(2, 384), (3, 256)]}
    zeros["lin4.model.1.weight"] = torch.zeros(1, 256, 1, 1)
    torch.save(zeros, tmp_path / "zero.pth")
    metric = load_lpips(files / "alexnet.pth", tmp_path / "zero.pth", net="alex")
    assert score_slice(metric, *images, device="cpu") == 0


def test_lpips_calibration_errors_name_the_file(files, tmp_path):
    with pytest.raises(ValueError, match=r"absent\.pth does not exist"):
        load_lpips(files / "alexnet.pth", tmp_path / "absent.pth")
    with pytest.raises(ValueError, match=r"vgg\.pth holds tensors of the wrong shape: lin1"):
        load_lpips(files / "alexnet.pth", files / "vgg.pth", net="alex")
    lins = torch.load(files / "alex.pth", weights_only=True)
    del lins["lin3.model.1.weight"]
    torch.save(lins, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"partial\.pth lacks the keys lin3\.model\.1\.weight"):
        load_lpips(files / "alexnet.pth", tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"absent\.pth does not exist"):
        load_lpips(tmp_path / "absent.pth", files / "alex.pth")
    with pytest.raises(ValueError, match="unknown LPIPS net 'squeeze'"):
        load_lpips(files / "alexnet.pth", files / "alex.pth", net="squeeze")
    with pytest.raises(ValueError, match=r"vgg16\.pth lacks the keys"):  # a VGG16 for AlexNet
        load_lpips(files / "vgg16.pth", files / "alex.pth")


def test_l2_pool_of_a_constant_is_the_constant_away_from_borders():
    pooled = l2_pool(torch.full((1, 2, 9, 10), 0.7))
    assert pooled.shape == (1, 2, 5, 5)
    torch.testing.assert_close(pooled[..., 1:-1, 1:-1], torch.full((1, 2, 3, 3), 0.7))
    # a corner sees the zero padding: weights 4 + 2 + 2 + 1 of the filter's 16 are inside
    torch.testing.assert_close(pooled[0, 0, 0, 0], torch.tensor(0.7 * (9 / 16) ** 0.5))


def test_l2_pool_of_an_impulse_is_the_root_of_the_hann_filter():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 4, 4] = 2.0
    pooled = l2_pool(x)[0, 0]
    expected = torch.zeros(4, 4)
    expected[2, 2] = (4 * 0.25) ** 0.5  # window centre weight 4/16
    assert torch.allclose(pooled, expected, atol=1e-5)


def test_dists_is_zero_for_equal_images_and_positive_otherwise(files, images):
    metric = load_dists(files / "vgg16.pth", files / "weights.pt")
    x, y = images
    assert abs(score_slice(metric, x, x, device="cpu")) < 1e-5
    assert score_slice(metric, x, y, device="cpu") > 1e-4


@pytest.mark.parametrize("term", ["alpha", "beta"])
def test_dists_on_the_image_stage_alone_is_hand_computable(files, images, term):
    weights = {key: torch.zeros(1, 1475, 1, 1) for key in ("alpha", "beta")}
    weights[term][0, :3] = 1.0  # only the image itself, three equal channels
    metric = DISTS(Backbone("vgg16"), weights["alpha"], weights["beta"])
    x, y = (a.astype(np.float64) for a in images)
    if term == "alpha":
        similarity = (2 * x.mean() * y.mean() + 1e-6) / (x.mean() ** 2 + y.mean() ** 2 + 1e-6)
    else:
        cov = (x * y).mean() - x.mean() * y.mean()
        similarity = (2 * cov + 1e-6) / (x.var() + y.var() + 1e-6)
    assert score_slice(metric, *images, device="cpu") == pytest.approx(1 - similarity, abs=1e-5)


def test_dists_stages_have_their_channels_and_sizes():
    stages = DISTS(Backbone("vgg16"), torch.ones(1, 1475, 1, 1), torch.ones(1, 1475, 1, 1))
    shapes = [tuple(s.shape) for s in stages.features(torch.rand(1, 1, 20, 33))]
    assert shapes == [
        (1, 3, 20, 33),
        (1, 64, 20, 33),
        (1, 128, 10, 17),
        (1, 256, 5, 9),
        (1, 512, 3, 5),
        (1, 512, 2, 3),
    ]


def test_dists_calibration_errors_name_the_file(files, tmp_path):
    torch.save({"alpha": torch.ones(1, 1475, 1, 1)}, tmp_path / "alpha_only.pt")
    with pytest.raises(ValueError, match=r"alpha_only\.pt lacks the keys beta"):
        load_dists(files / "vgg16.pth", tmp_path / "alpha_only.pt")
    torch.save({"alpha": torch.ones(1475), "beta": torch.ones(1475)}, tmp_path / "flat.pt")
    with pytest.raises(ValueError, match=r"flat\.pt holds tensors of the wrong shape"):
        load_dists(files / "vgg16.pth", tmp_path / "flat.pt")
    with pytest.raises(ValueError, match=r"nothing\.pt does not exist"):
        load_dists(files / "vgg16.pth", tmp_path / "nothing.pt")
    with pytest.raises(ValueError, match=r"alexnet\.pth lacks the keys"):
        load_dists(files / "alexnet.pth", files / "weights.pt")


def test_availability_names_what_is_missing(files, tmp_path):
    assert perceptual_availability(None) == {
        "lpips": "lpips is not configured",
        "dists": "dists is not configured",
    }
    config = {
        "lpips": {"net": "alex", "backbone": files / "alexnet.pth", "calibration": None},
        "dists": {"backbone": tmp_path / "gone.pth", "calibration": files / "weights.pt"},
    }
    reasons = perceptual_availability(config)
    assert reasons["lpips"] == "no lpips calibration weights file configured"
    assert "gone.pth does not exist" in reasons["dists"]
    assert available_perceptual_metrics(config) == ()
    config["lpips"]["calibration"] = files / "alex.pth"
    config["dists"]["backbone"] = files / "vgg16.pth"
    assert perceptual_availability(config) == {"lpips": None, "dists": None}
    assert available_perceptual_metrics(config) == ("lpips", "dists")
    config["lpips"]["net"] = "squeeze"
    assert "unknown LPIPS net" in perceptual_availability(config)["lpips"]
    with pytest.raises(ValueError, match="lpips needs a backbone weights file"):
        load_perceptual("lpips", {"calibration": files / "alex.pth"})


def test_stack_scores_one_value_per_slice(files, images):
    config = {"backbone": files / "alexnet.pth", "calibration": files / "alex.pth"}
    metric = load_perceptual("lpips", config)
    assert isinstance(metric, LPIPS)
    x, y = images
    stack_x, stack_y = np.stack([x, y, x]), np.stack([x, x, x])
    scores = score_stack(metric, stack_x, stack_y, device="cpu")
    assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
    assert scores[0] == 0 == scores[2] and scores[1] == pytest.approx(score_slice(metric, y, x))


def test_scoring_checks_its_inputs(files, images):
    metric = lpips_of(files, "alex")
    x, y = images
    with pytest.raises(ValueError, match="same shape"):
        score_slice(metric, x, y[:-1])
    with pytest.raises(ValueError, match="expected 2-D images"):
        score_slice(metric, x[None], y[None])
    with pytest.raises(ValueError, match=r"at least 31×31"):
        score_slice(metric, x[:30], y[:30])
    with pytest.raises(ValueError, match="float image"):
        score_slice(metric, (255 * x).astype(np.uint8), (255 * y).astype(np.uint8))
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        score_slice(metric, 255 * x, y)
    with pytest.raises(ValueError, match="expected 3-D images"):
        score_stack(metric, x, y)


def test_dists_matches_the_formula_on_the_reference_stages(files, images):
    metric = load_dists(files / "vgg16.pth", files / "weights.pt")
    weights = torch.load(files / "weights.pt", weights_only=True)
    features = metric.backbone.features
    taps = np.hanning(5)[1:-1]
    window = torch.tensor(np.outer(taps, taps) / 4.0, dtype=torch.float32)

    def l2pool(h):  # DISTS_pytorch's L2pooling
        w = window.expand(h.shape[1], 1, 3, 3)
        return (
            torch.nn.functional.conv2d(h**2, w, stride=2, padding=1, groups=h.shape[1]) + 1e-12
        ).sqrt()

    def stages(a):
        x = torch.from_numpy(a)[None, None].expand(-1, 3, -1, -1)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        h = features[0:4]((x - mean) / std)
        out = [x, h]
        for pool, stop in ((4, 9), (9, 16), (16, 23), (23, 30)):
            h = features[pool + 1 : stop](l2pool(h))
            out.append(h)
        return [o.double().numpy()[0].reshape(o.shape[1], -1) for o in out]

    alpha, beta = (weights[k].double().numpy().ravel() for k in ("alpha", "beta"))
    total = alpha.sum() + beta.sum()
    edges = np.cumsum([0, 3, 64, 128, 256, 512, 512])
    with torch.no_grad():
        fxs, fys = stages(images[0]), stages(images[1])
    similarity = 0.0
    for k, (fx, fy) in enumerate(zip(fxs, fys, strict=True)):
        a, b = alpha[edges[k] : edges[k + 1]] / total, beta[edges[k] : edges[k + 1]] / total
        mx, my = fx.mean(1), fy.mean(1)
        cov = (fx * fy).mean(1) - mx * my
        s1 = (2 * mx * my + 1e-6) / (mx**2 + my**2 + 1e-6)
        s2 = (2 * cov + 1e-6) / (fx.var(1) + fy.var(1) + 1e-6)
        similarity += (a * s1).sum() + (b * s2).sum()
    assert score_slice(metric, *images, device="cpu") == pytest.approx(1 - similarity, abs=1e-5)
