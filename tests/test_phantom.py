import json

import numpy as np
import pytest
from scipy import ndimage

from emsrflow.phantom import (
    LABEL_CLASSES,
    HRParams,
    Phantom,
    PhantomParams,
    TissueParams,
)
from emsrflow.transform import Similarity

SMALL = {"hr": {"shape_yx": [96, 96], "sections": 6}, "anisotropic": {"slices": 6}}


def small(**overrides) -> PhantomParams:
    d = {key: dict(value) for key, value in SMALL.items()}
    for section, values in overrides.items():
        d.setdefault(section, {}).update(values)
    return PhantomParams.from_dict(d)


@pytest.fixture(scope="module")
def demo():
    return Phantom(PhantomParams(), seed=0)


@pytest.fixture(scope="module")
def ph():
    return Phantom(small(), seed=1)


# ------------------------------------------------------------------ shapes and sizes


def test_default_shapes_dtypes_and_voxel_sizes(demo):
    assert demo.hr_shape == (12, 192, 192)
    assert demo.lr_shape == (12, 86, 86)
    assert demo.anisotropic_shape == (16, 192, 192)
    assert demo.anisotropic_truth_shape == (48, 192, 192)
    assert demo.clean_voxel_nm == (15.0, 15.0, 15.0)
    assert demo.hr_voxel_nm == (50.0, 15.0, 15.0)
    assert demo.lr_voxel_nm == (50.0, 50.0, 50.0)
    assert demo.anisotropic_voxel_nm == (45.0, 15.0, 15.0)
    nz, ny, nx = demo.clean_shape
    assert nz >= 48 and ny >= 1.5 * 192 and nx >= 1.5 * 192
    assert list(demo.section_z) == [round(k * 50 / 15) for k in range(12)]
    # The HR field of view is near the centre of the clean volume.
    oy, ox = demo.hr_origin_yx
    assert abs(oy + 96 - ny / 2) <= 1 and abs(ox + 96 - nx / 2) <= 1
    # Scale: nominal 15/50 within the 1 % scale error; rotation and shift small.
    assert abs(demo.hr_to_lr.scale / 0.3 - 1) <= 0.01 + 1e-12
    assert abs(demo.hr_to_lr.rotation_deg) <= 2

    clean, labels = demo.clean(0, 1)
    assert clean.dtype == np.float32 and labels.dtype == np.uint32
    assert clean.shape == labels.shape == (1, ny, nx)
    assert 0 <= clean.min() and clean.max() <= 1
    assert demo.hr(0, 1).dtype == np.uint8 and demo.hr(0, 1).shape == (1, 192, 192)
    assert demo.lr(0, 1).dtype == np.uint8 and demo.lr(0, 1).shape == (1, 86, 86)
    an = demo.anisotropic(0, 1)
    assert an.dtype == np.uint8 and an.shape == (1, 192, 192)
    img, lab = demo.hr_clean(0, 2)
    assert img.shape == lab.shape == (2, 192, 192)
    assert img.dtype == np.float32 and lab.dtype == np.uint32
    assert demo.lr_clean(0, 1).dtype == np.float32


def test_truth_is_json_and_round_trips(ph):
    truth = json.loads(json.dumps(ph.truth()))
    assert Similarity.from_dict(truth["hr_to_lr"]) == ph.hr_to_lr
    assert PhantomParams.from_dict(truth["params"]) == ph.params
    assert truth["seed"] == 1
    assert truth["hr_shape"] == list(ph.hr_shape)
    assert truth["lr_voxel_nm"] == list(ph.lr_voxel_nm)
    assert truth["section_z"] == [int(z) for z in ph.section_z]
    assert truth["hr_origin_yx"] == list(ph.hr_origin_yx)
    bounds = truth["anisotropic_slice_bounds_z"]
    assert len(bounds) == ph.anisotropic_shape[0] and bounds[1] == [2.5, 5.5]


# ------------------------------------------------------------------ determinism


def test_same_seed_same_arrays_and_different_seed_different():
    a, b, c = Phantom(small(), 7), Phantom(small(), 7), Phantom(small(), 8)
    for name, args in (("hr", (1, 3)), ("lr", (1, 3)), ("anisotropic", (0, 2))):
        np.testing.assert_array_equal(getattr(a, name)(*args), getattr(b, name)(*args))
        assert not np.array_equal(getattr(a, name)(*args), getattr(c, name)(*args))
    np.testing.assert_array_equal(a.clean(3, 4)[1], b.clean(3, 4)[1])
    assert not np.array_equal(a.clean(3, 4)[0], c.clean(3, 4)[0])
    assert a.hr_to_lr == b.hr_to_lr != c.hr_to_lr


def test_slab_wise_equals_whole():
    whole = Phantom(small(), 3)
    parts = Phantom(small(), 3)
    img, lab = whole.clean(2, 8)
    pieces = [parts.clean(2, 5), parts.clean(5, 6), parts.clean(6, 8)]
    np.testing.assert_array_equal(img, np.concatenate([p[0] for p in pieces]))
    np.testing.assert_array_equal(lab, np.concatenate([p[1] for p in pieces]))
    for name in ("hr", "lr", "lr_clean"):
        full = getattr(whole, name)(0, 6)
        split = np.concatenate([getattr(parts, name)(4, 6), getattr(parts, name)(0, 4)])
        np.testing.assert_array_equal(full, np.concatenate([split[2:], split[:2]]))


def test_anisotropic_slab_wise_with_non_integer_thickness():
    params = small(anisotropic={"thickness": 2.5, "axial_sigma_nm": 20.0})
    whole, parts = Phantom(params, 4), Phantom(params, 4)
    assert whole.anisotropic_voxel_nm == (37.5, 15.0, 15.0)
    assert whole.anisotropic_truth_shape[0] == 15
    full = whole.anisotropic(0, 6)
    np.testing.assert_array_equal(
        full, np.concatenate([parts.anisotropic(k, k + 1) for k in range(6)])
    )


def test_windows_agree_with_the_clean_volume(ph):
    oy, ox = ph.hr_origin_yx
    ny, nx = ph.hr_shape[1:]
    k = 2
    z = int(ph.section_z[k])
    img, lab = ph.clean(z, z + 1)
    hr_img, hr_lab = ph.hr_clean(k, k + 1)
    np.testing.assert_array_equal(hr_img, img[:, oy : oy + ny, ox : ox + nx])
    np.testing.assert_array_equal(hr_lab, lab[:, oy : oy + ny, ox : ox + nx])
    t_img, t_lab = ph.anisotropic_truth(z, z + 1)
    np.testing.assert_array_equal(t_img, hr_img)
    np.testing.assert_array_equal(t_lab, hr_lab)


# ------------------------------------------------------------------ tissue


def _stats(wm: float, seed: int):
    phantom = Phantom(small(tissue={"white_matter_fraction": wm}), seed)
    img, lab = phantom.hr_clean(0, 2)
    cls = phantom.label_class(lab)
    return img, cls


def test_white_and_gray_matter_differ():
    white_img, white_cls = _stats(1.0, 5)
    gray_img, gray_cls = _stats(0.0, 5)
    myelin = LABEL_CLASSES["myelin"]
    assert (white_cls == myelin).mean() > 0.2
    assert (gray_cls == myelin).mean() < 0.05
    assert (white_img < 0.15).mean() > 3 * (gray_img < 0.15).mean()
    assert (white_cls == LABEL_CLASSES["axoplasm"]).mean() > 0.25
    assert (gray_cls == LABEL_CLASSES["cell"]).mean() > 0.6


@pytest.mark.parametrize("wm", [0.0, 1.0])
def test_labels_consistent_with_intensity(wm):
    img, cls = _stats(wm, 6)
    cell = img[cls == LABEL_CLASSES["cell"]].mean()
    membrane = img[cls == LABEL_CLASSES["membrane"]].mean()
    assert membrane < cell - 0.2
    if wm:
        axo = img[cls == LABEL_CLASSES["axoplasm"]].mean()
        myelin = img[cls == LABEL_CLASSES["myelin"]].mean()
        assert myelin < 0.2 < 0.6 < axo


def test_white_matter_fraction_controls_the_mix():
    fractions = []
    for wm in (0.2, 0.8):
        phantom = Phantom(small(tissue={"white_matter_fraction": wm}), 2)
        _, lab = phantom.clean(0, 1)
        cls = phantom.label_class(lab)
        fractions.append(np.isin(cls, [2, 3]).mean())
    assert fractions[0] < fractions[1]


def test_axons_along_x_run_along_x():
    phantom = Phantom(small(tissue={"white_matter_fraction": 1.0, "axon_axis": "x"}), 3)
    _, lab = phantom.hr_clean(0, 1)
    myelin = phantom.label_class(lab[0]) == LABEL_CLASSES["myelin"]
    assert myelin.mean() > 0.1
    # Myelin boundaries are crossed far more often going down than going across.
    assert np.sum(myelin[1:] != myelin[:-1]) > 3 * np.sum(myelin[:, 1:] != myelin[:, :-1])


# ------------------------------------------------------------------ acquisitions


@pytest.mark.parametrize("seed", [0, 11])
def test_hr_to_lr_ground_truth(seed):
    phantom = Phantom(small(), seed)
    tr = phantom.hr_to_lr
    k = 3
    hr = phantom.hr_clean(k, k + 1)[0][0].astype(float)
    lr = phantom.lr_clean(k, k + 1)[0].astype(float)
    sigma = phantom.params.lr.psf_nm / phantom.clean_voxel_nm[1]
    blurred = ndimage.uniform_filter(ndimage.gaussian_filter(hr, sigma), size=round(1 / tr.scale))
    rows, cols = np.mgrid[6:90, 6:90]
    points = np.c_[rows.ravel(), cols.ravel()]

    def corr(t):
        sampled = ndimage.map_coordinates(lr, t.apply(points).T, order=1)
        return np.corrcoef(sampled, blurred[rows, cols].ravel())[0, 1]

    good = corr(tr)
    off = Similarity(tr.scale, tr.rotation_deg, (tr.shift[0] + 1.0, tr.shift[1]))
    assert good > 0.95
    assert corr(off) < good - 0.1


def test_hr_noise_level_is_plausible():
    params = small(hr={"charging": 0.0, "drift_px": 0.0})
    phantom = Phantom(params, 2)
    hr = phantom.hr(0, 2).astype(float) / 255
    clean = phantom.hr_clean(0, 2)[0].astype(float)
    sigma = params.hr.psf_nm / params.tissue.voxel_nm
    blurred = np.stack([ndimage.gaussian_filter(c, sigma) for c in clean])
    residual = (hr - blurred)[:, 4:-4, 4:-4]
    expected = np.sqrt(blurred.mean() / params.hr.dose + params.hr.read_noise**2)
    assert 0.03 < residual.std() < 0.2
    assert 0.8 * expected < residual.std() < 1.4 * expected
    assert abs(residual.mean()) < 0.02


def test_lr_contrast_differs_from_hr():
    phantom = Phantom(small(hr={"charging": 0.0, "drift_px": 0.0}), 1)
    lr = phantom.lr(0, 3).astype(float).ravel() / 255
    lr_clean = phantom.lr_clean(0, 3).astype(float).ravel()
    gain, offset = np.polyfit(lr_clean, lr, 1)
    assert gain == pytest.approx(phantom.params.lr.gain, abs=0.08)
    assert offset == pytest.approx(phantom.params.lr.offset, abs=0.05)
    hr = phantom.hr(0, 3).astype(float) / 255
    sigma = phantom.params.hr.psf_nm / phantom.clean_voxel_nm[1]
    hr_clean = np.stack([ndimage.gaussian_filter(c, sigma) for c in phantom.hr_clean(0, 3)[0]])
    hr_gain, hr_offset = np.polyfit(hr_clean.ravel(), hr.ravel(), 1)
    assert hr_gain == pytest.approx(1.0, abs=0.08)
    assert abs(hr_offset) < 0.05
    assert hr_gain > gain + 0.1


def test_border_drift_displaces_only_the_border():
    quiet = {"charging": 0.0, "dose": 1e5, "read_noise": 0.0, "line_noise": 0.0}
    quiet |= {"line_offset": 0.0, "line_gain": 0.0}
    phantom = Phantom(small(hr=quiet | {"drift_px": 4.0}), 9)
    hr = phantom.hr(0, 6).astype(float) / 255
    sigma = phantom.params.hr.psf_nm / phantom.clean_voxel_nm[1]
    clean = np.stack([ndimage.gaussian_filter(c, sigma) for c in phantom.hr_clean(0, 6)[0]])
    diff = np.abs(hr - clean)
    assert diff[:, :4, 30:].mean() > 5 * diff[:, 60:, 60:].mean()
    assert diff[:, 30:, :4].mean() > 5 * diff[:, 60:, 60:].mean()
    assert diff[:, 60:, 60:].mean() < 0.01


def test_charging_brightens_hr_only():
    on = Phantom(small(hr={"charging": 1.0, "charging_prob": 1.0}), 4)
    off = Phantom(small(hr={"charging": 0.0}), 4)
    assert on.hr(0, 3).astype(float).mean() > off.hr(0, 3).astype(float).mean() + 0.5
    np.testing.assert_array_equal(on.lr(0, 2), off.lr(0, 2))


def test_anisotropic_slices_integrate_the_truth(ph):
    rho = ph.params.anisotropic.thickness
    truth = ph.anisotropic_truth(0, ph.anisotropic_truth_shape[0])[0].astype(float)
    stack = ph.anisotropic(0, 6).astype(float) / 255
    for k in range(1, 5):
        mean = truth[int(k * rho) : int((k + 1) * rho)].mean(axis=0)
        c = np.corrcoef(ndimage.gaussian_filter(stack[k], 1.5).ravel(), mean.ravel())[0, 1]
        assert c > 0.85


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"tissue": {"voxel_nm": -1}}, "tissue.voxel_nm"),
        ({"tissue": {"white_matter_fraction": 1.5}}, "white_matter_fraction"),
        ({"tissue": {"axon_axis": "w"}}, "axon_axis"),
        ({"tissue": {"shape_yx": [150, 150]}}, "tissue.shape_yx"),
        ({"tissue": {"depth": 5}}, "tissue.depth"),
        ({"hr": {"shape_yx": [0, 96]}}, "hr.shape_yx"),
        ({"hr": {"sections": 0}}, "hr.sections"),
        ({"hr": {"dose": 0}}, "hr.dose"),
        ({"hr": {"origin_yx": [-5, 0]}}, "hr.origin_yx"),
        ({"lr": {"fov_factor": 1.0}}, "lr.fov_factor"),
        ({"lr": {"pixel_nm": -50}}, "lr.pixel_nm"),
        ({"anisotropic": {"thickness": 0}}, "anisotropic.thickness"),
        ({"hr": {"bogus": 1}}, "hr.bogus"),
        ({"optics": {}}, "optics"),
    ],
)
def test_invalid_parameters(overrides, match):
    with pytest.raises(ValueError, match=match):
        PhantomParams.from_dict(overrides)


def test_params_from_dict_and_defaults():
    assert PhantomParams.from_dict({}) == PhantomParams()
    assert PhantomParams.from_dict(None) == PhantomParams()
    p = PhantomParams.from_dict(
        {"hr": {"shape_yx": [128, 160]}, "tissue": {"myelin_ratio": [0.2, 0.3]}}
    )
    assert p.hr.shape_yx == (128, 160) and isinstance(p.hr.shape_yx, tuple)
    assert p.tissue.myelin_ratio == (0.2, 0.3)
    assert PhantomParams.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="tissue"):
        PhantomParams(tissue=HRParams())
    assert TissueParams(shape_yx=None).shape_yx is None


def test_invalid_seed_and_ranges(ph):
    with pytest.raises(ValueError, match="seed"):
        Phantom(small(), -1)
    with pytest.raises(ValueError, match="section"):
        ph.hr(0, 99)
    with pytest.raises(ValueError, match="z range"):
        ph.clean(-1, 2)
    assert ph.lr(2, 2).shape == (0, *ph.lr_shape[1:])
