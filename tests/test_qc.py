"""Reference-free QC: the one-image FRC and the QC of produced volumes."""

import math

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import ndimage

from emsrflow import figures, io
from emsrflow.metrics import single_image_frc
from emsrflow.phantom import Phantom, PhantomParams
from emsrflow.qc import QC_COLUMNS, QCSettings, volume_qc
from emsrflow.resize import bicubic

PIXEL_NM = 15.0
TAU = 2


@pytest.fixture(scope="module")
def clean_slice():
    """A noise-free phantom section (no charging or drift), on a [0, 1] scale."""
    params = PhantomParams.from_dict(
        {"hr": {"shape_yx": [128, 128], "sections": 1, "charging": 0.0, "drift_px": 0.0}}
    )
    return Phantom(params, seed=3).hr_clean(0, 1)[0][0].astype(np.float64)


def acquire(clean, blur_px=0.0, seed=0):
    """Image ``clean`` with a Gaussian PSF of ``blur_px`` pixels, then independent noise."""
    blurred = ndimage.gaussian_filter(clean, blur_px) if blur_px else clean
    return blurred + np.random.default_rng(seed).normal(0.0, 0.05, clean.shape)


# --------------------------------------------------------------------------------------
# single_image_frc
# --------------------------------------------------------------------------------------


def test_blurrier_acquisition_has_worse_resolution(clean_slice):
    sharp, *blurred = (
        single_image_frc(acquire(clean_slice, s), pixel_nm=PIXEL_NM)["resolution_nm"]
        for s in (0.0, 2.0, 3.0)
    )
    assert all(math.isfinite(r) for r in (sharp, *blurred))
    assert sharp < blurred[0] < blurred[1]
    assert blurred[0] > 1.3 * sharp


def test_blurring_a_noisy_image_afterwards_fools_the_one_image_frc(clean_slice):
    # The documented limitation: a filter correlates the noise of neighbouring pixels,
    # so the two sub-images agree beyond the real resolution; the blurred copy measures
    # better (or never crosses 1/7), not worse.
    noisy = acquire(clean_slice)
    sharp = single_image_frc(noisy, pixel_nm=PIXEL_NM)["resolution_nm"]
    copy = single_image_frc(ndimage.gaussian_filter(noisy, 2.0), pixel_nm=PIXEL_NM)
    assert math.isnan(copy["resolution_nm"]) or copy["resolution_nm"] < sharp


def test_noise_free_band_limited_field_is_resolved_to_about_nyquist():
    # Two sub-images of one band-limited field decorrelate only through their diagonal
    # shift; Koho et al.'s correction maps that crossing (x ≈ 0.9) to about 2 pixels.
    field = ndimage.gaussian_filter(np.random.default_rng(1).normal(size=(256, 256)), 1.2)
    result = single_image_frc(field, pixel_nm=1.0)
    assert 0.85 < result["crossing"] < 0.95
    assert 2.0 < result["resolution_nm"] < 3.0
    assert result["raw_resolution_nm"] == pytest.approx(4.0 / result["crossing"])
    assert result["resolution_nm"] == pytest.approx(
        result["raw_resolution_nm"] / result["correction"]
    )


def test_result_layout_and_frequencies_in_cycles_per_nm(clean_slice):
    result = single_image_frc(acquire(clean_slice), pixel_nm=PIXEL_NM)
    assert result["frequencies"].shape == result["correlation"].shape == (33,)
    assert result["frequencies"][-1] == pytest.approx(1 / (4 * PIXEL_NM))
    assert result["correlation"][0] == pytest.approx(1.0)
    assert isinstance(result["resolution_nm"], float)


def test_odd_sizes_are_cropped_to_even(clean_slice):
    image = acquire(clean_slice)[:101, :99]
    odd = single_image_frc(image, pixel_nm=PIXEL_NM)
    even = single_image_frc(image[:100, :98], pixel_nm=PIXEL_NM)
    assert math.isfinite(odd["resolution_nm"])
    assert odd["resolution_nm"] == even["resolution_nm"]


def test_constant_or_non_finite_image_gives_nan(clean_slice):
    assert math.isnan(single_image_frc(np.ones((32, 32)), pixel_nm=1)["resolution_nm"])
    image = acquire(clean_slice)
    image[5, 7] = np.nan
    assert math.isnan(single_image_frc(image, pixel_nm=1)["resolution_nm"])


@pytest.mark.parametrize(
    ("image", "pixel_nm", "message"),
    [
        (np.zeros((4, 32, 32)), 1.0, "2-D image"),
        (np.zeros(64), 1.0, "2-D image"),
        (np.zeros((15, 64)), 1.0, "at least 16"),
        (np.zeros((64, 15)), 1.0, "at least 16"),
        (np.random.default_rng(0).random((32, 32)), 0.0, "pixel_nm"),
        (np.random.default_rng(0).random((32, 32)), math.nan, "pixel_nm"),
    ],
)
def test_bad_input_is_rejected(image, pixel_nm, message):
    with pytest.raises(ValueError, match=message):
        single_image_frc(image, pixel_nm=pixel_nm)


# --------------------------------------------------------------------------------------
# volume_qc on real files
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lr(tmp_path_factory):
    """An LR phantom acquisition (4 sections of 86 × 86 at 50 nm) written as a TIFF."""
    params = PhantomParams.from_dict({"hr": {"shape_yx": [192, 192], "sections": 4}})
    phantom = Phantom(params, seed=3)
    path = str(tmp_path_factory.mktemp("qc") / "lr.tif")
    io.write_volume(path, phantom.lr(0, 4), phantom.lr_voxel_nm)
    return path


def upsample(path):
    """Bicubic ×τ upsampling of a volume: the output and its voxel size."""
    array, voxel = io.read_volume(path)
    up = bicubic(io.to_float01(array), (array.shape[1] * TAU, array.shape[2] * TAU))
    return up, (voxel[0], voxel[1] / TAU, voxel[2] / TAU)


def run_qc(source_path, output, voxel, tmp_path, name="out.ome.zarr", **settings):
    path = str(tmp_path / name)
    io.write_volume(path, output, voxel)
    with io.open_volume(source_path) as source, io.open_volume(path) as produced:
        return volume_qc(
            source,
            produced,
            input_voxel_nm=source.voxel_size,
            output_voxel_nm=produced.voxel_size,
            settings=QCSettings(**settings),
        )


def test_clean_bicubic_upsampling_is_not_flagged(lr, tmp_path):
    up, voxel = upsample(lr)
    table, summary = run_qc(lr, up, voxel, tmp_path)
    assert summary["flags"] == []
    assert list(table.columns) == list(QC_COLUMNS)
    assert list(table.section) == [0, 1, 2, 3]  # 8 requested, the output has 4
    assert list(table.input_section) == [0, 1, 2, 3]
    # Interpolation keeps everything the input holds: with the input's noise added the
    # output measures at least as well as the input ...
    assert summary["output_frc_matched_nm"] < summary["input_frc_nm"]
    assert summary["frc_ratio"] < 1
    # ... while its plain one-image FRC never crosses 1/7 (interpolated, correlated noise).
    assert table.output_frc_nm.isna().all()
    assert table.input_frc_nm.between(100, 400).all()
    assert summary["output_nonfinite"] == 0
    assert len(summary["histogram"]["edges"]) == 65
    assert sum(summary["histogram"]["input"]) == 4 * 86 * 86
    assert sum(summary["histogram"]["output"]) == 4 * 172 * 172


def test_blurred_upsampling_is_flagged_as_worse_resolution(lr, tmp_path):
    up, voxel = upsample(lr)
    blurred = ndimage.gaussian_filter(up, (0, 3, 3))
    table, summary = run_qc(lr, blurred, voxel, tmp_path)
    assert summary["output_frc_matched_nm"] > 1.2 * summary["input_frc_nm"]
    assert len(summary["flags"]) == 1
    assert summary["flags"][0].startswith("output resolution ")
    assert "worse than the input's" in summary["flags"][0]
    # The plain one-image FRC of the smooth output cannot see the blur.
    assert table.output_frc_nm.isna().all()


def test_nan_anywhere_in_the_output_is_flagged(lr, tmp_path):
    up, voxel = upsample(lr)
    up[0, 5, 9] = np.nan  # section 0 is not among the measured sections 1 and 3
    up[2, 0, 0] = np.inf
    table, summary = run_qc(lr, up, voxel, tmp_path, sections=2)
    assert list(table.section) == [1, 3]
    assert table.output_nonfinite.sum() == 0
    assert summary["output_nonfinite"] == 2
    assert "output holds 2 NaN/inf voxels" in summary["flags"]


def test_saturated_output_is_flagged_as_clipped(lr, tmp_path):
    up, voxel = upsample(lr)
    saturated = np.clip((up - 0.5) * 3 + 0.5, 0, 1)
    _, summary = run_qc(lr, saturated, voxel, tmp_path)
    assert summary["output_clipped_fraction"] > 0.1
    clipped = [f for f in summary["flags"] if "clipped at 0 or 1" in f]
    assert len(clipped) == 1
    assert clipped[0].startswith(f"{100 * summary['output_clipped_fraction']:.1f} % ")


def test_saturated_input_legitimately_gives_a_saturated_output(lr, tmp_path):
    array, voxel = io.read_volume(lr)
    bright = np.clip(array.astype(np.float64) * 1.6, 0, 255).astype(np.uint8)
    source = str(tmp_path / "bright.tif")
    io.write_volume(source, bright, voxel)
    up, out_voxel = upsample(source)
    _, summary = run_qc(source, up, out_voxel, tmp_path)
    assert summary["input_clipped_fraction"] > 0.05
    assert summary["output_clipped_fraction"] > 0.05
    assert not [f for f in summary["flags"] if "clipped" in f]


def test_isotropic_output_maps_sections_by_physical_depth(lr, tmp_path):
    array, voxel = io.read_volume(lr)
    thin = np.repeat(io.to_float01(array), 3, axis=0)  # 12 sections of 50/3 nm
    table, _ = run_qc(lr, thin, (voxel[0] / 3, voxel[1], voxel[2]), tmp_path, sections=6)
    # Every input section measured (6 asked, 4 there), at its centre on the output grid.
    assert list(table.section) == [1, 4, 7, 10]
    assert list(table.input_section) == [0, 1, 2, 3]
    assert np.allclose(table.input_mean, table.output_mean)


def test_outputs_over_another_field_of_view_are_rejected(lr, tmp_path):
    up, voxel = upsample(lr)
    with pytest.raises(ValueError, match="different fields of view"):
        run_qc(lr, up[:, :150], voxel, tmp_path)


@pytest.mark.parametrize(
    "settings", [{"sections": 0}, {"clip_fraction": 1.5}, {"bins": 1}, {"clip_factor": 0.5}]
)
def test_invalid_settings_are_rejected(settings):
    with pytest.raises(ValueError, match="QCSettings"):
        QCSettings(**settings)


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


def test_qc_figures(lr, tmp_path):
    up, voxel = upsample(lr)
    _, summary = run_qc(lr, np.clip((up - 0.5) * 3 + 0.5, 0, 1), voxel, tmp_path)
    array, in_voxel = io.read_volume(lr)
    source = io.to_float01(array)
    panels = figures.qc_panels(
        source[2],
        up[2],
        source[:, 43, :],
        up[:, 86, :],
        input_voxel_nm=in_voxel,
        output_voxel_nm=voxel,
        title="qc",
    )
    histogram = figures.qc_histograms(summary)
    for figure in (panels, histogram):
        assert isinstance(figure, Figure)
        FigureCanvasAgg(figure).draw()
    assert len(panels.axes) == 6
    full_in, full_out = panels.axes[0], panels.axes[1]
    assert full_in.get_xlim() == pytest.approx(full_out.get_xlim())  # same µm field
    crop_in, crop_out = panels.axes[2].images[0], panels.axes[3].images[0]
    assert crop_out.get_array().shape == tuple(TAU * n for n in crop_in.get_array().shape)
    xz = panels.axes[4].images[0].get_extent()
    assert xz[2] == pytest.approx(4 * in_voxel[0] / 1000)  # z extent in µm
    texts = [t.get_text() for t in histogram.axes[0].texts]
    assert any("clipped" in t for t in texts)
    with pytest.raises(ValueError, match="histogram"):
        figures.qc_histograms({"flags": []})
