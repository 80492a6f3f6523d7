import io
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from scipy import ndimage
from skimage import data

from emsrflow.errors import InputError, RegistrationError
from emsrflow.register import (
    RegistrationResult,
    estimate_transform,
    qc_figure,
    resample_lr,
    residuals,
)
from emsrflow.transform import Similarity

ISBI = Path("/work/shared/data/isbi2012/train-volume.tif")
HR_SIZE = 192
NOMINAL = 0.3  # 15 nm HR / 50 nm LR pixels


def truth_for(rotation_deg, scale_error, offset, lr_shape):
    """Similarity mapping the HR centre to the LR centre + offset (LR px)."""
    scale = NOMINAL * (1 + scale_error)
    centre = np.full(2, (HR_SIZE - 1) / 2)
    target = (np.array(lr_shape) - 1) / 2 + offset
    linear = Similarity(scale, rotation_deg, (0.0, 0.0)).apply(centre[None])[0]
    return Similarity(scale, rotation_deg, tuple(map(float, target - linear)))


def make_pair(tissue, truth, *, lr_shape=(110, 110), noise=0.03, gain=0.7, offset=0.15, seed=0):
    """HR: central crop of ``tissue`` (z, y, x) in [0, 1] plus noise. LR: the tissue warped
    by ``truth``, integrated over each LR pixel (4×4 supersampling), blurred, with
    independent noise and a gain/offset change."""
    rng = np.random.default_rng(seed)
    tissue = np.asarray(tissue, dtype=np.float64)
    origin = (np.array(tissue.shape[1:]) - HR_SIZE) // 2
    hr = tissue[:, origin[0] : origin[0] + HR_SIZE, origin[1] : origin[1] + HR_SIZE]
    hr = np.clip(hr + rng.normal(0, noise, hr.shape), 0, 1)
    k = 4
    fine = [(np.arange(n * k) + 0.5) / k - 0.5 for n in lr_shape]
    points = np.column_stack([a.ravel() for a in np.meshgrid(*fine, indexing="ij")])
    where = (truth.inverse().apply(points) + origin).T
    lr = np.stack(
        [
            ndimage.map_coordinates(section, where, order=1, mode="reflect")
            .reshape(lr_shape[0], k, lr_shape[1], k)
            .mean(axis=(1, 3))
            for section in tissue
        ]
    )
    lr = ndimage.gaussian_filter(lr, (0, 0.5, 0.5))
    lr = np.clip(gain * lr + offset + rng.normal(0, noise, lr.shape), 0, 1)
    return lr, hr


@pytest.fixture(scope="module")
def camera():
    """Fallback tissue, always available: six flips/transposes of the camera image."""
    image = data.camera() / 255.0
    return np.stack([image, image.T, image[::-1], image[:, ::-1], image.T[::-1], image[::-1, ::-1]])


@pytest.fixture(scope="module", params=["isbi", "camera"])
def tissue(request, camera):
    """Six (z, 512, 512) sections in [0, 1]: ssTEM data (ISBI 2012) or the camera fallback."""
    if request.param == "camera":
        return camera
    if not ISBI.exists():
        pytest.skip(f"ISBI 2012 EM data not found at {ISBI} (the camera fallback still runs)")
    tifffile = pytest.importorskip("tifffile")
    return tifffile.imread(ISBI)[:6] / 255.0


@pytest.fixture(scope="module")
def case(tissue):
    truth = truth_for(2.0, 0.01, (7.3, -9.6), (110, 110))
    lr, hr = make_pair(tissue, truth)
    return truth, lr, hr, estimate_transform(lr, hr, scale=NOMINAL)


@pytest.mark.parametrize(
    ("rotation", "scale_error", "offset", "noise"),
    [(2.0, 0.01, (7.3, -9.6), 0.03), (-4.5, 0.04, (12.0, 11.0), 0.08), (0.0, 0.0, (0, 0), 0.05)],
)
def test_recovers_transform(tissue, rotation, scale_error, offset, noise):
    truth = truth_for(rotation, scale_error, offset, (110, 110))
    lr, hr = make_pair(tissue, truth, noise=noise, seed=1)
    result = estimate_transform(lr, hr, scale=NOMINAL)
    assert result.transform.max_displacement(truth, (HR_SIZE, HR_SIZE)) < 0.5
    assert result.score > 0.6
    assert result.sections == (0, 1, 2, 4, 5)


def test_registers_a_single_section(camera):
    truth = truth_for(-3.0, -0.02, (-10.0, 8.5), (110, 110))
    lr, hr = make_pair(camera[:1], truth, noise=0.05)
    result = estimate_transform(lr[0], hr[0], scale=NOMINAL)
    assert result.sections == (0,)
    assert result.transform.max_displacement(truth, (HR_SIZE, HR_SIZE)) < 0.5


def test_large_offset_within_a_wide_lr(camera):
    truth = truth_for(1.0, 0.02, (35.0, -38.0), (150, 150))
    lr, hr = make_pair(camera[:1], truth, lr_shape=(150, 150))
    result = estimate_transform(lr, hr, scale=NOMINAL)
    assert result.transform.max_displacement(truth, (HR_SIZE, HR_SIZE)) < 0.5


def test_invariant_to_lr_gain_and_offset(case):
    _, lr, hr, result = case
    other = estimate_transform(0.4 * lr + 0.5, hr, scale=NOMINAL)
    assert other.transform.max_displacement(result.transform, (HR_SIZE, HR_SIZE)) < 1e-3
    assert other.score == pytest.approx(result.score, abs=1e-6)


def test_result_to_dict_is_json(case):
    result = case[3]
    d = json.loads(json.dumps(result.to_dict()))
    assert Similarity.from_dict(d["transform"]) == result.transform
    assert d["score"] == result.score and d["sections"] == list(result.sections)
    assert isinstance(result, RegistrationResult)


def test_resample_lr_aligns_with_hr(case):
    _, lr, hr, result = case
    registered = resample_lr(lr, result.transform, hr.shape)
    n = round(HR_SIZE * result.transform.scale)
    assert registered.shape == (len(lr), n, n) and registered.dtype == np.float32
    assert registered.min() >= 0 and registered.max() <= 1
    table = residuals(registered, hr)
    assert list(table.columns) == ["slice", "ncc", "shift_row", "shift_col", "shift_norm"]
    assert len(table) == len(lr)
    assert (table.shift_norm < 0.3).all() and (table.ncc > 0.8).all()
    single = resample_lr(lr[2], result.transform, hr.shape[1:])
    np.testing.assert_array_equal(single, registered[2])


def test_residuals_report_the_remaining_shift(case):
    truth, lr, hr, _ = case
    off = Similarity(truth.scale, truth.rotation_deg, (truth.shift[0] + 1.0, truth.shift[1]))
    table = residuals(resample_lr(lr, off, hr.shape), hr)
    # sampling the LR one pixel further down moves its content up by one pixel
    assert table.shift_row.mean() == pytest.approx(-1.0, abs=0.15)
    assert table.shift_col.abs().max() < 0.3


@pytest.mark.parametrize("kind", ["other tissue", "random texture"])
def test_lr_without_the_hr_tissue_is_rejected(tissue, kind):
    truth = truth_for(2.0, 0.01, (5.0, -5.0), (110, 110))
    _, hr = make_pair(tissue, truth)
    if kind == "other tissue":
        lr, _ = make_pair(tissue.transpose(0, 2, 1)[:, ::-1], truth, seed=2)
    else:
        texture = np.random.default_rng(3).random(tissue.shape)
        lr, _ = make_pair(ndimage.gaussian_filter(texture, (0, 2, 2)) * 4 - 1.5, truth, seed=2)
    with pytest.raises(RegistrationError, match=r"cross-correlation -?0\.\d\d < 0\.5"):
        estimate_transform(lr, hr, scale=NOMINAL)


def test_out_of_bounds_scale_is_rejected(camera):
    truth = truth_for(0.5, 0.04, (3.0, 2.0), (110, 110))
    lr, hr = make_pair(camera[:1], truth)
    with pytest.raises(RegistrationError, match=r"scale .* > 1\.0% \(normalised cross-corr"):
        estimate_transform(lr, hr, scale=NOMINAL, max_scale_error=0.01)


def test_bad_inputs(camera):
    truth = truth_for(0.0, 0.0, (0, 0), (110, 110))
    lr, hr = make_pair(camera[:2], truth)
    with pytest.raises(InputError, match="sections"):
        estimate_transform(lr, hr[:1], scale=NOMINAL)
    with pytest.raises(RegistrationError, match="larger than the LR image"):
        estimate_transform(lr[:, :40, :40], hr, scale=NOMINAL)


def test_qc_figure(case):
    _, lr, hr, result = case
    registered = resample_lr(lr[0], result.transform, hr.shape)
    figure = qc_figure(hr[0], registered)
    assert isinstance(figure, Figure) and len(figure.axes) == 2
    assert all(axes.get_title() for axes in figure.axes)
    figure.savefig(io.BytesIO(), format="png")


def test_registers_the_phantom():
    from emsrflow.phantom import Phantom, PhantomParams

    phantom = Phantom(PhantomParams(), seed=0)
    n = phantom.hr_shape[0]
    hr, lr = phantom.hr(0, n) / 255.0, phantom.lr(0, n) / 255.0
    scale = phantom.hr_voxel_nm[2] / phantom.lr_voxel_nm[2]
    result = estimate_transform(lr, hr, scale=scale)
    assert result.transform.max_displacement(phantom.hr_to_lr, hr.shape[1:]) < 0.5
    assert (residuals(resample_lr(lr, result.transform, hr.shape), hr).shift_norm < 0.3).all()
