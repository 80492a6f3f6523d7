"""The study's figures: structure of each plot, crop choice, aspect ratios, PNG output."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imread

from emsrflow import figures
from emsrflow.metrics import frc_curve, psnr
from emsrflow.phantom import Phantom, PhantomParams


@pytest.fixture(scope="module")
def sections():
    """A phantom HR section and two degraded copies (blurred, noisy), in [0, 1]."""
    from scipy import ndimage

    params = PhantomParams.from_dict({"hr": {"shape_yx": [128, 128], "sections": 4}})
    hr = Phantom(params, seed=3).hr(0, 2).astype(np.float64)
    hr = (hr - hr.min()) / (hr.max() - hr.min())
    rng = np.random.default_rng(0)
    blurred = ndimage.gaussian_filter(hr, (0, 2, 2))
    noisy = np.clip(hr + rng.normal(0, 0.2, hr.shape), 0, 1)
    return hr, blurred, noisy


def _draw(figure):
    FigureCanvasAgg(figure).draw()
    return figure


def _legend_texts(axes):
    return [text.get_text() for text in axes.get_legend().get_texts()]


def test_average_curves_skips_slices_without_power_and_checks_frequencies(sections):
    hr, blurred, _ = sections
    curves = [frc_curve(hr[z], blurred[z]) for z in range(2)]
    flat = frc_curve(hr[0], np.full(hr[0].shape, 0.5))
    assert np.isnan(flat[1]).any()
    _, mean, std, n = figures.average_curves([*curves, flat])
    assert n == 2
    np.testing.assert_allclose(mean, (curves[0][1] + curves[1][1]) / 2)
    np.testing.assert_allclose(std, np.abs(curves[0][1] - curves[1][1]) / 2)
    assert figures.average_curves([flat])[3] == 0
    with pytest.raises(ValueError, match="share their frequencies"):
        figures.average_curves([curves[0], frc_curve(hr[0, :64, :64], blurred[0, :64, :64])])


def test_frc_curves_axes_threshold_and_physical_frequency(sections):
    hr, blurred, noisy = sections
    curves = {
        "blurred": figures.average_curves([frc_curve(hr[0], blurred[0])])[:3],
        "noisy": frc_curve(hr[0], noisy[0]),
    }
    figure = figures.frc_curves(curves, pixel_nm=15.0, title="t")
    (axes,) = figure.axes
    assert _legend_texts(axes) == ["blurred", "noisy", "1/7 threshold"]
    assert "1/nm" in axes.get_xlabel()
    threshold = [line for line in axes.get_lines() if line.get_label() == "1/7 threshold"]
    assert threshold[0].get_ydata()[0] == pytest.approx(1 / 7)
    # the x data are cycles per pixel over the pixel size: Nyquist at 1 / (2 · 15 nm)
    blurred_line = axes.get_lines()[0]
    assert blurred_line.get_xdata().max() == pytest.approx(0.5 / 15.0)
    assert len(axes.collections) == 1  # the ± std band of the averaged curve only
    pixel_axes = figures.frc_curves(curves).axes[0]
    assert "cycles/pixel" in pixel_axes.get_xlabel()
    assert pixel_axes.get_lines()[0].get_xdata().max() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no FRC curves"):
        figures.frc_curves({})


def _slice_table():
    rng = np.random.default_rng(1)
    rows = []
    for dataset, offset in (("brain1_ipsi", 0.0), ("brain2_contra", 1.0), ("brain3_ipsi", 2.0)):
        for method, gain in (("bicubic", 0.0), ("emsrnet_real_l1", 1.5)):
            for z in range(10):
                rows.append(
                    {
                        "dataset": dataset,
                        "method": method,
                        "slice": z,
                        "status": "ok",
                        "psnr": 20 + offset + gain + rng.normal(0, 0.3),
                    }
                )
    rows.append({"dataset": "brain1_ipsi", "method": "bicubic", "slice": 10})
    rows[-1].update(status="constant slice", psnr=np.nan)
    rows.append({"dataset": "brain1_ipsi", "method": "bicubic", "slice": 11})
    rows[-1].update(status="ok", psnr=np.inf)
    return pd.DataFrame(rows)


def test_metric_boxplots_one_box_per_dataset_and_method():
    slices = _slice_table()
    figure = figures.metric_boxplots(slices, "psnr", higher_is_better=True)
    (axes,) = figure.axes
    assert [t.get_text() for t in axes.get_xticklabels()] == [
        "brain1_ipsi",
        "brain2_contra",
        "brain3_ipsi",
    ]
    assert _legend_texts(axes) == ["bicubic", "emsrnet_real_l1"]
    assert len(axes.patches) == 3 * 2  # patch_artist boxes
    assert axes.get_ylabel() == "PSNR (dB) ↑"
    # the excluded and the infinite slice are left out: whiskers stay near 20–24 dB
    low, high = axes.get_ylim()
    assert 18 < low and high < 26
    ordered = figures.metric_boxplots(
        slices, "psnr", datasets=["brain3_ipsi"], methods=["emsrnet_real_l1", "bicubic"]
    ).axes[0]
    assert len(ordered.patches) == 2
    assert _legend_texts(ordered) == ["emsrnet_real_l1", "bicubic"]
    with pytest.raises(ValueError, match="lacks the columns"):
        figures.metric_boxplots(slices, "ssim")


def test_choose_crop_finds_the_textured_window_deterministically():
    rng = np.random.default_rng(2)
    image = np.full((100, 120), 0.5)
    image[60:80, 30:50] = rng.random((20, 20))
    assert figures.choose_crop(image, 20) == (60, 30, 20)
    y0, x0, size = figures.choose_crop(image)
    assert size == 25 and 0 <= y0 <= 100 - size and 0 <= x0 <= 120 - size
    # the default window covers the textured block entirely
    assert y0 <= 60 and y0 + size >= 80 and x0 <= 30 and x0 + size >= 50
    assert figures.choose_crop(image) == (y0, x0, size)
    # a constant image has no preferred window: the first one
    assert figures.choose_crop(np.ones((40, 40)), 10) == (0, 0, 10)
    with pytest.raises(ValueError, match="crop size"):
        figures.choose_crop(image, 101)


def test_choose_crop_stays_inside_phantom_sections(sections):
    hr = sections[0][0]
    for size in (8, 33, min(hr.shape)):
        y0, x0, s = figures.choose_crop(hr, size)
        assert s == size and 0 <= y0 <= hr.shape[0] - s and 0 <= x0 <= hr.shape[1] - s
        assert figures.choose_crop(hr.copy(), size) == (y0, x0, s)


def test_comparison_panel_full_fields_crops_and_scores(sections):
    hr, blurred, noisy = (a[0] for a in sections)
    images = {"blurred": blurred, "noisy": noisy, "HR": hr}
    figure = figures.comparison_panel(images, reference="HR")
    assert len(figure.axes) == 2 * len(images)
    full, zoom = figure.axes[0], figure.axes[1]
    assert full.get_title() == "blurred"
    y0, x0, size = figures.choose_crop(hr)
    assert zoom.get_images()[0].get_array().shape == (size, size)
    (rectangle,) = full.patches
    assert rectangle.get_xy() == (x0 - 0.5, y0 - 0.5) and rectangle.get_width() == size
    expected = psnr(hr, blurred, data_range=1.0)
    assert f"PSNR {expected:.2f} dB" in zoom.get_xlabel() and "SSIM" in zoom.get_xlabel()
    assert figure.axes[5].get_xlabel() == "reference"
    # an explicit crop, several rows, no reference: no scores
    many = {f"m{i}": blurred for i in range(7)}
    figure = figures.comparison_panel(many, (10, 20, 16), columns=3)
    assert len(figure.axes) == 14
    assert figure.axes[1].get_images()[0].get_array().shape == (16, 16)
    assert all(axes.get_xlabel() == "" for axes in figure.axes)
    with pytest.raises(ValueError, match="leaves the image"):
        figures.comparison_panel(images, (hr.shape[0] - 4, 0, 8))
    with pytest.raises(ValueError, match="one shape"):
        figures.comparison_panel({"a": hr, "b": hr[:-1]})
    with pytest.raises(ValueError, match="reference"):
        figures.comparison_panel(images, reference="GT")


def test_training_curves_log_loss_and_learning_rate():
    steps = np.arange(10, 110, 10)
    curves = {
        name: pd.DataFrame(
            {"step": steps, "loss": scale / steps, "lr": np.where(steps <= 50, 1e-3, 5e-4)}
        )
        for name, scale in (("emsrnet_real_l1", 1.0), ("emsrnet_synthetic2_l1", 2.0))
    }
    figure = figures.training_curves(curves, title="fold brain1")
    loss_axes, lr_axes = figure.axes
    assert loss_axes.get_yscale() == "log" and lr_axes.get_yscale() == "log"
    assert _legend_texts(loss_axes) == list(curves)
    assert len(lr_axes.get_lines()) == 2
    assert lr_axes.get_xlabel() == "step" and "learning rate" in lr_axes.get_ylabel()
    np.testing.assert_allclose(loss_axes.get_lines()[1].get_ydata(), 2.0 / steps)
    with pytest.raises(ValueError, match="lacks the columns"):
        figures.training_curves({"m": pd.DataFrame({"step": steps, "loss": 1.0 / steps})})


def _box_ratio(axes):
    """Height over width of an axes box on the page, after drawing."""
    box = axes.get_position()
    width, height = axes.figure.get_size_inches()
    return box.height * height / (box.width * width)


def test_xz_views_follow_the_voxel_size():
    rng = np.random.default_rng(4)
    volume = rng.random((20, 60, 90))
    figure = _draw(figures.xz_views({"a": volume, "b": volume}, 30, (50.0, 10.0, 10.0)))
    assert len(figure.axes) == 4  # xz and yz of both volumes
    xz, yz = figure.axes[0], figure.axes[2]
    assert xz.get_title() == "a: xz" and yz.get_title() == "a: yz"
    assert _box_ratio(xz) == pytest.approx(20 * 50 / (90 * 10), rel=0.02)
    assert _box_ratio(yz) == pytest.approx(20 * 50 / (60 * 10), rel=0.02)
    # the section drawn is row y of the volume
    np.testing.assert_array_equal(xz.get_images()[0].get_array(), volume[:, 30, :])
    # isotropic voxels: the box ratio is the pixel ratio
    iso = _draw(figures.xz_views({"a": volume}, voxel_size=(10.0, 10.0, 10.0), planes=["xz"]))
    assert len(iso.axes) == 1
    assert _box_ratio(iso.axes[0]) == pytest.approx(20 / 90, rel=0.02)


def test_xz_views_line_up_volumes_on_different_grids():
    coarse = np.arange(10 * 20 * 30, dtype=float).reshape(10, 20, 30)
    fine = np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2)
    voxels = {"coarse": (40.0, 20.0, 20.0), "fine": (40.0, 10.0, 10.0)}
    figure = figures.xz_views({"coarse": coarse, "fine": fine}, 7, voxels, planes=["xz"])
    a, b = (axes.get_images()[0] for axes in figure.axes)
    np.testing.assert_array_equal(b.get_array()[:, ::2], a.get_array())
    assert a.get_extent() == pytest.approx(b.get_extent())
    with pytest.raises(ValueError, match="voxel_size"):
        figures.xz_views({"a": coarse}, 3)
    with pytest.raises(ValueError, match="outside"):
        figures.xz_views({"a": coarse}, 20, (1, 1, 1))
    with pytest.raises(ValueError, match="planes"):
        figures.xz_views({"a": coarse}, 3, (1, 1, 1), planes=["xy"])


def test_section_views_takes_cut_sections():
    xz, yz = np.zeros((8, 40)), np.ones((8, 30))
    figure = _draw(figures.section_views({"m": {"xz": xz, "yz": yz}}, (30.0, 15.0, 15.0)))
    assert len(figure.axes) == 2
    assert _box_ratio(figure.axes[1]) == pytest.approx(8 * 30 / (30 * 15), rel=0.02)
    with pytest.raises(ValueError, match="differ"):
        figures.section_views({"m": {"xz": xz}, "n": {"yz": yz}}, (1, 1, 1))


def test_every_figure_saves_as_png(tmp_path, sections):
    hr, blurred, _ = sections
    built = {
        "frc": figures.frc_curves({"b": frc_curve(hr[0], blurred[0])}, pixel_nm=15.0),
        "box": figures.metric_boxplots(_slice_table(), "psnr"),
        "panel": figures.comparison_panel({"b": blurred[0], "HR": hr[0]}, reference="HR"),
        "training": figures.training_curves(
            {"m": pd.DataFrame({"step": [1, 2], "loss": [1.0, 0.5], "lr": [1e-3, 1e-3]})}
        ),
        "xz": figures.xz_views({"HR": hr}, 5, (50.0, 15.0, 15.0)),
    }
    for name, figure in built.items():
        assert isinstance(figure, Figure)
        path = tmp_path / f"{name}.png"
        figure.savefig(path, dpi=50)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = imread(path)
        assert pixels.ndim == 3 and pixels[..., :3].std() > 0.01  # something was drawn


def test_ablation_curves_one_axes_per_metric_one_line_per_series():
    rows = [
        {
            "dataset": d,
            "series": m,
            "level": str(sigma),
            "psnr_mean": p - sigma / 10,
            "psnr_std": 0.2,
            "ssim_mean": 0.7,
            "ssim_std": float("nan"),
        }
        for d in ("b3", "ALL DATASETS")
        for m, p in (("emsrnet", 23.0), ("bicubic", 20.0))
        for sigma in (0, 4, 8)
    ]
    summary = pd.DataFrame(rows)
    figure = _draw(
        figures.ablation_curves(
            summary, ["psnr", "ssim"], higher_is_better={"psnr": True}, xlabel="σ", title="t"
        )
    )
    psnr_axes, ssim_axes = figure.axes
    assert psnr_axes.get_ylabel() == "PSNR (dB) ↑" and ssim_axes.get_ylabel() == "SSIM"
    assert psnr_axes.get_xlabel() == "σ"
    assert _legend_texts(ssim_axes) == ["emsrnet", "bicubic"]
    line = psnr_axes.lines[0]
    assert list(line.get_xdata()) == [0, 4, 8]
    assert list(line.get_ydata()) == pytest.approx([23.0, 22.6, 22.2])
    categorical = figures.ablation_curves(summary, ["psnr"], numeric=False, dataset="b3")
    labels = [t.get_text() for t in categorical.axes[0].get_xticklabels()]
    assert labels == ["0", "4", "8"] * 2
    with pytest.raises(ValueError, match="frc_mean"):
        figures.ablation_curves(summary, ["frc"])
    with pytest.raises(ValueError, match="numeric"):
        figures.ablation_curves(summary.assign(level="window=2"), ["psnr"])
