import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.segmentation import find_boundaries

from emsrflow import metrics

SK_SSIM = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}


def structured(shape, seed=0):
    """Smooth texture with edges, in [0, 1]."""
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.normal(size=shape), 3)
    edges = (ndimage.gaussian_filter(rng.normal(size=shape), 8) > 0).astype(float)
    img = 0.6 * edges + base / (6 * base.std()) + 0.2
    return np.clip(img, 0, 1)


def voronoi(shape=(256, 256), n_cells=60, seed=0):
    """Voronoi cells (light, textured) with dark 2-px membranes; labels 0 on membranes."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.int32)
    seeds[rng.integers(0, shape[0], n_cells), rng.integers(0, shape[1], n_cells)] = np.arange(
        1, n_cells + 1
    )
    _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[iy, ix]
    membrane = find_boundaries(labels, mode="thick")
    labels[membrane] = 0
    texture = ndimage.gaussian_filter(rng.normal(size=shape), 2)
    image = np.where(membrane, 0.2, 0.8) + 0.05 * texture / texture.std()
    return image, labels


def pair(kind, dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "random":
        ref = rng.uniform(size=shape)
        pred = np.clip(ref + rng.normal(0, 0.1, shape), 0, 1)
    else:
        ref = structured(shape, seed)
        pred = np.clip(ndimage.gaussian_filter(ref, 1) + rng.normal(0, 0.05, shape), 0, 1)
    if dtype == "uint8":
        return (ref * 255).round().astype(np.uint8), (pred * 255).round().astype(np.uint8), 255
    if dtype == "uint8-range":
        return (ref * 255).round(), (pred * 255).round(), 255
    return ref.astype(np.float32), pred.astype(np.float32), 1.0


CASES = [
    (kind, dtype, shape)
    for kind in ("random", "structured")
    for dtype in ("float32", "uint8", "uint8-range")
    for shape in ((64, 64), (48, 80), (97, 33))
]


# ---------------------------------------------------------------------- PSNR, SSIM


@pytest.mark.parametrize(("kind", "dtype", "shape"), CASES)
def test_psnr_ssim_agree_with_skimage(kind, dtype, shape):
    ref, pred, data_range = pair(kind, dtype, shape)
    assert metrics.psnr(ref, pred, data_range=data_range) == pytest.approx(
        peak_signal_noise_ratio(ref, pred, data_range=data_range), abs=1e-6
    )
    expected = structural_similarity(ref, pred, data_range=data_range, **SK_SSIM)
    assert metrics.ssim(ref, pred, data_range=data_range) == pytest.approx(expected, abs=1e-6)
    # metrics computes in float64: exactly skimage on float64 copies
    ref64, pred64 = ref.astype(np.float64), pred.astype(np.float64)
    assert metrics.ssim(ref, pred, data_range=data_range) == structural_similarity(
        ref64, pred64, data_range=data_range, **SK_SSIM
    )


def test_ssim_settings_are_wang_et_al():
    assert metrics.SSIM_SETTINGS == {**SK_SSIM, "K1": 0.01, "K2": 0.03}


def test_psnr_identical_is_inf_and_uint8_does_not_wrap():
    a = np.full((16, 16), 10, np.uint8)
    b = np.full((16, 16), 20, np.uint8)
    assert metrics.psnr(a, a, data_range=255) == math.inf
    assert metrics.psnr(b, a, data_range=255) == pytest.approx(10 * math.log10(255**2 / 100))


def test_constant_ssim_documented_values():
    a = np.full((16, 16), 0.5)
    assert metrics.ssim(a, a, data_range=1) == pytest.approx(1.0)
    b = np.full((16, 16), 0.25)
    c1 = 0.01**2
    assert metrics.ssim(a, b, data_range=1) == pytest.approx((2 * 0.5 * 0.25 + c1) / (0.3125 + c1))


@pytest.mark.parametrize(
    "func",
    [
        lambda a, b: metrics.psnr(a, b, data_range=1),
        lambda a, b: metrics.ssim(a, b, data_range=1),
        lambda a, b: metrics.frc_curve(a, b),
        lambda a, b: metrics.frc_score(a, b),
        lambda a, b: metrics.slice_metrics(a, b, data_range=1, pixel_nm=5),
    ],
)
def test_shape_mismatch_raises_naming_shapes(func):
    with pytest.raises(ValueError, match=r"\(32, 32\).*\(32, 31\)"):
        func(np.zeros((32, 32)), np.zeros((32, 31)))


@pytest.mark.parametrize("data_range", [None, 0, -1, math.nan, math.inf])
def test_data_range_is_required_and_positive(data_range):
    a = structured((32, 32))
    with pytest.raises((ValueError, TypeError)):
        metrics.psnr(a, a, data_range=data_range)
    with pytest.raises((ValueError, TypeError)):
        metrics.ssim(a, a, data_range=data_range)
    with pytest.raises(TypeError):
        metrics.psnr(a, a)


# ---------------------------------------------------------------------- FRC


@pytest.mark.parametrize("shape", [(64, 64), (65, 65), (48, 80), (97, 33)])
@pytest.mark.parametrize("apodize", [True, False])
def test_frc_of_image_with_itself_is_one(shape, apodize):
    a = structured(shape)
    freq, corr = metrics.frc_curve(a, a, apodize=apodize)
    n = min(shape)
    assert freq.shape == corr.shape == (n // 2 + 1,)
    np.testing.assert_allclose(freq, np.arange(n // 2 + 1) / n)
    assert freq[0] == 0 and freq[-1] <= 0.5
    np.testing.assert_allclose(corr, 1.0, atol=1e-12)
    assert metrics.frc_score(a, a, apodize=apodize) == pytest.approx(1.0)


def test_frc_ring_sizes():
    sizes = metrics.frc_ring_sizes((64, 64))
    assert sizes.shape == (33,)
    assert sizes[0] == 1 and sizes[1] == 8
    assert sizes.sum() < 64 * 64  # the corners beyond Nyquist are left out
    # non-square: rings in cycles per pixel hold ~ nx/ny more pixels along the longer axis
    assert metrics.frc_ring_sizes((64, 128))[10] > 1.5 * sizes[10]


@pytest.mark.parametrize("shape", [(128, 128), (96, 160)])
@pytest.mark.parametrize("apodize", [True, False])
def test_frc_of_independent_noise_stays_in_band(shape, apodize):
    rng = np.random.default_rng(1)
    a, b = rng.uniform(size=shape), rng.uniform(size=shape)  # positive mean: tests leakage
    _, corr = metrics.frc_curve(a, b, apodize=apodize)
    sizes = metrics.frc_ring_sizes(shape)
    inside = np.abs(corr) < 3 / np.sqrt(sizes)
    assert inside.mean() >= 0.95
    assert corr[0] == pytest.approx(1.0)  # DC ring: correlation of the (positive) means
    assert abs(metrics.frc_score(a, b, apodize=apodize)) < 0.05


def test_frc_resolution_blur_is_worse_than_sharp():
    rng = np.random.default_rng(2)
    sharp, _ = voronoi((256, 256), n_cells=80, seed=3)
    reference = sharp + rng.normal(0, 0.1, sharp.shape)
    blurred = ndimage.gaussian_filter(sharp, 2)
    res = {}
    for name, pred in (("sharp", sharp), ("blurred", blurred)):
        freq, corr = metrics.frc_curve(reference, pred)
        res[name] = metrics.frc_resolution(freq, corr, pixel_nm=5.0)
    assert 10.0 <= res["sharp"] < res["blurred"] < math.inf
    assert metrics.frc_score(reference, sharp) > metrics.frc_score(reference, blurred)


def test_frc_resolution_interpolation_and_special_cases():
    freq = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    corr = np.array([1.0, 0.9, 0.5, 0.1, 0.05, 0.0])
    # crossing of 0.3 between 0.2 (0.5) and 0.3 (0.1): f = 0.25
    assert metrics.frc_resolution(freq, corr, pixel_nm=4, threshold=0.3) == pytest.approx(16)
    # default 1/7: between 0.2 (0.5) and 0.3 (0.1)
    f = 0.2 + (0.5 - 1 / 7) / 0.4 * 0.1
    assert metrics.frc_resolution(freq, corr, pixel_nm=4) == pytest.approx(4 / f)
    never = np.ones(6)
    assert metrics.frc_resolution(freq, never, pixel_nm=4) == 8.0  # Nyquist, 2 pixels
    first = np.array([1.0, 0.05, 0.5, 0.5, 0.5, 0.5])
    assert metrics.frc_resolution(freq, first, pixel_nm=4) == math.inf
    with_nan = np.array([1.0, 0.9, np.nan, 0.1, 0.0, 0.0])
    assert math.isnan(metrics.frc_resolution(freq, with_nan, pixel_nm=4))
    with pytest.raises(ValueError, match="shapes"):
        metrics.frc_resolution(freq, corr[:-1], pixel_nm=4)
    with pytest.raises(ValueError, match="pixel_nm"):
        metrics.frc_resolution(freq, corr, pixel_nm=0)


def test_frc_constant_image_is_nan():
    a = structured((32, 32))
    _, corr = metrics.frc_curve(a, np.full_like(a, 0.5))
    assert np.isnan(corr[1:]).all()
    assert math.isnan(metrics.frc_score(a, np.full_like(a, 0.5)))


# ---------------------------------------------------------------------- segmentation


def test_membrane_watershed_clean_beats_degraded():
    image, labels = voronoi()
    clean = metrics.membrane_watershed(image)
    assert clean.dtype == np.int32 and clean.min() >= 1
    rng = np.random.default_rng(4)
    degraded = ndimage.gaussian_filter(image, 4) + rng.normal(0, 0.3, image.shape)
    bad = metrics.membrane_watershed(degraded)
    arand_clean = metrics.adapted_rand_error(labels, clean)
    arand_bad = metrics.adapted_rand_error(labels, bad)
    assert arand_clean < 0.05
    assert arand_bad > 5 * arand_clean + 0.1
    assert sum(metrics.voi(labels, clean)) < sum(metrics.voi(labels, bad))


def test_membrane_watershed_constant_is_one_segment():
    np.testing.assert_array_equal(metrics.membrane_watershed(np.ones((20, 20))), 1)
    with pytest.raises(ValueError, match="finite"):
        metrics.membrane_watershed(np.full((20, 20), np.nan))


def test_voi_split_merge_orientation_and_ignore_zero():
    _, labels = voronoi((64, 64), n_cells=10)
    assert metrics.voi(labels, labels) == pytest.approx((0.0, 0.0), abs=1e-12)
    assert metrics.adapted_rand_error(labels, labels) == pytest.approx(0.0, abs=1e-12)
    one = np.ones_like(labels)  # everything merged
    split, merge = metrics.voi(labels, one)
    assert split == pytest.approx(0.0, abs=1e-12) and merge > 1
    pixels = np.arange(1, labels.size + 1).reshape(labels.shape)  # everything split
    split, merge = metrics.voi(labels, pixels)
    assert merge == pytest.approx(0.0, abs=1e-12) and split > 1
    # membranes (label 0 of the ground truth) are ignored: relabelling them changes nothing
    pred = labels.copy()
    pred[labels == 0] = 999
    assert metrics.voi(labels, pred) == pytest.approx((0.0, 0.0), abs=1e-12)
    with pytest.raises(ValueError, match="integer"):
        metrics.voi(labels, one.astype(float))
    with pytest.raises(ValueError, match=r"\(64, 64\).*\(64, 63\)"):
        metrics.adapted_rand_error(labels, one[:, :-1])


# ---------------------------------------------------------------------- slice_metrics


def test_slice_metrics_ok_with_labels():
    image, labels = voronoi((96, 96), n_cells=15)
    rng = np.random.default_rng(5)
    reference = image + rng.normal(0, 0.05, image.shape)
    out = metrics.slice_metrics(reference, image, data_range=1, pixel_nm=5, labels=labels)
    assert out["status"] == "ok"
    assert set(out) == {
        "status", "psnr", "ssim", "frc", "frc_resolution_nm",
        "voi_split", "voi_merge", "voi", "arand",
    }  # fmt: skip
    assert out["psnr"] == pytest.approx(metrics.psnr(reference, image, data_range=1))
    assert out["ssim"] == pytest.approx(metrics.ssim(reference, image, data_range=1))
    assert out["frc"] == pytest.approx(metrics.frc_score(reference, image))
    assert 10 <= out["frc_resolution_nm"] < math.inf
    assert out["arand"] < 0.1
    no_labels = metrics.slice_metrics(reference, image, data_range=1, pixel_nm=5)
    assert set(no_labels) == {"status", "psnr", "ssim", "frc", "frc_resolution_nm"}


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_slice_metrics_non_finite_prediction(bad):
    image, labels = voronoi((64, 64), n_cells=8)
    pred = image.copy()
    pred[3, 4] = bad
    out = metrics.slice_metrics(image, pred, data_range=1, pixel_nm=5, labels=labels)
    assert out["status"] == "non-finite prediction"
    assert all(math.isnan(v) for k, v in out.items() if k != "status")
    out = metrics.slice_metrics(pred, image, data_range=1, pixel_nm=5)
    assert out["status"] == "non-finite reference"


@pytest.mark.parametrize("which", ["reference", "prediction", "both"])
def test_slice_metrics_constant_slice(which):
    image, labels = voronoi((64, 64), n_cells=8)
    const = np.full_like(image, 0.5)
    ref = const if which in ("reference", "both") else image
    pred = const if which in ("prediction", "both") else image
    out = metrics.slice_metrics(ref, pred, data_range=1, pixel_nm=5, labels=labels)
    assert out["status"] == "constant slice"
    for key in ("psnr", "ssim", "frc", "frc_resolution_nm"):
        assert math.isnan(out[key])
    assert math.isfinite(out["arand"])  # segmentation of the prediction is still scored


def test_slice_metrics_checks_shapes_and_units():
    a = np.zeros((32, 32))
    with pytest.raises(ValueError, match=r"labels.*\(31, 32\).*\(32, 32\)"):
        metrics.slice_metrics(a, a, data_range=1, pixel_nm=5, labels=np.zeros((31, 32), int))
    with pytest.raises(ValueError, match="pixel_nm"):
        metrics.slice_metrics(a, a, data_range=1, pixel_nm=-1)
    with pytest.raises(ValueError, match="2-D"):
        metrics.slice_metrics(
            np.zeros((2, 32, 32)), np.zeros((2, 32, 32)), data_range=1, pixel_nm=5
        )


# ---------------------------------------------------------------------- aggregation


def test_finite_mean_std_excludes_non_finite():
    values = [1.0, 2.0, np.nan, 3.0, np.inf, -np.inf]
    mean, std, n = metrics.finite_mean_std(values)
    assert (mean, n) == (2.0, 3)
    assert std == pytest.approx(np.std([1.0, 2.0, 3.0]))
    assert metrics.finite_mean_std(np.array(values), ddof=1)[1] == pytest.approx(1.0)
    mean, std, n = metrics.finite_mean_std([np.nan])
    assert math.isnan(mean) and math.isnan(std) and n == 0
    assert metrics.finite_mean_std([])[2] == 0
    assert math.isnan(metrics.finite_mean_std([5.0], ddof=1)[1])
