import numpy as np
import pytest

from emsrflow.degrade import (
    Synthetic2Ranges,
    add_noise,
    degrade_section,
    degrade_stack,
    integrate_axis,
    slice_weights,
)
from emsrflow.resize import bicubic


@pytest.fixture
def hr_stack():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:96, 0:96]
    base = 0.5 + 0.3 * np.sin(x / 5.0) * np.cos(y / 7.0)
    return np.stack([base + 0.02 * rng.standard_normal(base.shape) for _ in range(12)]).astype(
        np.float32
    )


def test_synthetic1_is_bicubic_downsampling(hr_stack):
    lr, rows = degrade_stack(hr_stack, 3, kind="synthetic1", seed=1)
    np.testing.assert_array_equal(lr, bicubic(hr_stack, (32, 32)))
    assert [r["slice"] for r in rows] == list(range(12))


def test_synthetic2_parameters_stay_in_their_ranges(hr_stack):
    ranges = Synthetic2Ranges()
    stack = np.concatenate([hr_stack] * 5)
    lr, rows = degrade_stack(stack, 3, kind="synthetic2", seed=3)
    assert lr.shape == (60, 32, 32) and lr.dtype == np.float32
    assert 0.0 <= lr.min() and lr.max() <= 1.0
    for name in ("blur_sigma", "noise_hr", "noise_lr"):
        values = np.array([r[name] for r in rows])
        lo, hi = getattr(ranges, name)
        assert values.min() >= lo and values.max() <= hi
        # 60 uniform draws cover most of the range
        assert values.max() - values.min() > 0.7 * (hi - lo)


def test_synthetic2_adds_noise_of_the_drawn_level():
    flat = np.full((300, 300), 0.5, np.float32)
    rng = np.random.default_rng(5)
    lr, params = degrade_section(flat, 3, kind="synthetic2", rng=rng)
    noise = 255.0 * lr.std()
    # at least the LR noise, at most the LR and the full HR noise together
    assert params["noise_lr"] * 0.9 < noise < np.hypot(params["noise_lr"], params["noise_hr"])


def test_seeding_is_per_section(hr_stack):
    whole, rows = degrade_stack(hr_stack, 3, kind="synthetic2", seed=11)
    first, _ = degrade_stack(hr_stack[:5], 3, kind="synthetic2", seed=11)
    rest, rest_rows = degrade_stack(hr_stack[5:], 3, kind="synthetic2", seed=11, z0=5)
    np.testing.assert_array_equal(whole, np.concatenate([first, rest]))
    assert rest_rows == rows[5:]
    other, _ = degrade_stack(hr_stack, 3, kind="synthetic2", seed=12)
    assert not np.array_equal(whole, other)


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple"):
        degrade_section(np.zeros((10, 10)), 3, kind="synthetic1", rng=np.random.default_rng())
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade_section(np.zeros((9, 9)), 3, kind="gaussian", rng=np.random.default_rng())
    with pytest.raises(ValueError, match="noise_hr"):
        Synthetic2Ranges(noise_hr=(40.0, 20.0))


@pytest.mark.parametrize(("rho", "sigma"), [(3.0, 0.0), (2.5, 0.0), (3.0, 0.7), (1.7, 1.3)])
def testslice_weights(rho, sigma):
    for k in range(4):
        js, ws = slice_weights(k, rho, sigma)
        assert ws.sum() == pytest.approx(1.0)
        centre = np.dot(js, ws)
        assert centre == pytest.approx(k * rho + (rho - 1) / 2, abs=0.1)
    if rho == 3.0 and sigma == 0:
        assert slice_weights(2, 3.0, 0.0)[0] == [6, 7, 8]


def test_integrate_axis_box_and_blur():
    rng = np.random.default_rng(0)
    image = rng.random((30, 7)).astype(np.float32)
    thick = integrate_axis(image, 0, 3.0)
    assert thick.shape == (10, 7)
    np.testing.assert_allclose(thick, image.reshape(10, 3, 7).mean(1), rtol=1e-6)
    # Only the chosen axis changes: integrating columns leaves rows alone.
    np.testing.assert_allclose(integrate_axis(image.T, 1, 3.0), thick.T, rtol=1e-6)
    # Non-integer thickness: floor(n / ρ) slices, each a weighted mean (constant kept).
    assert integrate_axis(np.ones((10, 4)), 0, 2.5).shape == (4, 4)
    np.testing.assert_allclose(integrate_axis(np.ones((10, 4)), 0, 2.5, 1.0), 1.0, rtol=1e-6)
    # Blur reaching past the ends is mirrored inside: a ramp keeps its mean.
    ramp = np.arange(12, dtype=np.float32)[:, None]
    assert integrate_axis(ramp, 0, 3.0, 2.0).mean() == pytest.approx(ramp.mean(), abs=0.6)
    with pytest.raises(ValueError, match="ρ"):
        integrate_axis(image, 0, 0.5)
    with pytest.raises(ValueError, match="no slice"):
        integrate_axis(image[:2], 0, 3.0)


def test_add_noise_has_the_level_asked_and_is_seeded_per_section(hr_stack):
    noisy = add_noise(hr_stack, 10.0, seed=4)
    assert noisy.dtype == np.float32 and noisy.shape == hr_stack.shape
    assert np.std(noisy - hr_stack) * 255 == pytest.approx(10.0, rel=0.05)
    assert noisy.min() >= 0 and noisy.max() <= 1
    slabs = np.concatenate(
        [add_noise(hr_stack[z : z + 5], 10.0, seed=4, z0=z) for z in range(0, 12, 5)]
    )
    np.testing.assert_array_equal(slabs, noisy)
    assert not np.array_equal(add_noise(hr_stack, 10.0, seed=5), noisy)
    np.testing.assert_array_equal(add_noise(hr_stack, 0.0, seed=4), hr_stack)
    with pytest.raises(ValueError, match="sigma"):
        add_noise(hr_stack, -1.0, seed=4)
