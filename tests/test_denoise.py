import numpy as np
import pytest

from emsrflow.denoise import denoise_section, denoise_stack, noise_sigma


def _psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((a - b) ** 2))


@pytest.fixture
def clean():
    y, x = np.mgrid[0:96, 0:96]
    image = 0.6 + 0.2 * np.sin(x / 6.0)
    image[(x - 48) ** 2 + (y - 48) ** 2 < 400] = 0.2  # a dark disc with sharp edges
    return image.astype(np.float32)


def test_noise_sigma_matches_added_noise(clean):
    rng = np.random.default_rng(0)
    noisy = clean + rng.normal(0, 20 / 255, clean.shape)
    assert noise_sigma(noisy) * 255 == pytest.approx(20, rel=0.15)


@pytest.mark.parametrize("method", ["nlm", "bm3d"])
def test_denoisers_remove_noise(clean, method):
    rng = np.random.default_rng(1)
    noisy = np.clip(clean + rng.normal(0, 20 / 255, clean.shape), 0, 1).astype(np.float32)
    out, sigma = denoise_section(noisy, method=method)
    assert out.dtype == np.float32 and out.shape == clean.shape
    assert sigma * 255 == pytest.approx(20, rel=0.2)
    assert _psnr(out, clean) > _psnr(noisy, clean) + 4
    assert noise_sigma(out) < 0.5 * sigma


def test_denoise_stack_reports_sigma_before_and_after(clean):
    rng = np.random.default_rng(2)
    stack = np.clip(clean + rng.normal(0, 15 / 255, (3, *clean.shape)), 0, 1).astype(np.float32)
    out, rows = denoise_stack(stack, method="nlm", z0=7)
    assert out.shape == stack.shape
    assert [r["slice"] for r in rows] == [7, 8, 9]
    assert all(r["sigma_after"] < r["sigma_before"] for r in rows)


def test_bad_method_or_strength(clean):
    with pytest.raises(ValueError, match="unknown denoising method"):
        denoise_section(clean, method="median")
    with pytest.raises(ValueError, match="strength"):
        denoise_section(clean, strength=0)
