import numpy as np
import pytest
from scipy import ndimage

from emsrflow.errors import InputError
from emsrflow.resize import bicubic, integer_ratio, nearest, pair_shapes


@pytest.mark.parametrize(
    ("lr_nm", "hr_nm", "expected"), [(50, 15, 3), (50, 12.5, 4), (64, 8, 8), (45, 15, 3)]
)
def test_integer_ratio_is_nearest_integer(lr_nm, hr_nm, expected):
    assert integer_ratio(lr_nm, hr_nm) == expected


@pytest.mark.parametrize(("lr_nm", "hr_nm"), [(16, 15), (15, 50), (0, 15), (50, -1), (5000, 15)])
def test_integer_ratio_rejects_nonsense(lr_nm, hr_nm):
    with pytest.raises(InputError, match="nm"):
        integer_ratio(lr_nm, hr_nm)


def test_configured_ratio_far_from_pixel_sizes_is_rejected():
    assert integer_ratio(50, 15, ratio=4) == 4
    with pytest.raises(InputError, match="far from"):
        integer_ratio(50, 15, ratio=8)


def test_pair_shapes_follow_the_paper():
    assert pair_shapes((1024, 1024), 3) == ((341, 341), (1023, 1023))
    assert pair_shapes((192, 190), 3) == ((64, 63), (192, 189))
    with pytest.raises(InputError):
        pair_shapes((2, 2), 3)


@pytest.mark.parametrize("shape", [(2, 30, 33), (30, 33)])
def test_bicubic_keeps_constants_and_shapes(shape):
    image = np.full(shape, 0.25, np.float32)
    out = bicubic(image, (10, 11))
    assert out.shape == (*shape[:-2], 10, 11)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_bicubic_is_area_aligned():
    hr = np.zeros((90, 90), np.float32)
    hr[40:50, 20:30] = 1.0  # centre (44.5, 24.5) in HR pixels
    lr = bicubic(hr, (30, 30))
    centre = np.array(ndimage.center_of_mass(lr))
    np.testing.assert_allclose(centre, (np.array([44.5, 24.5]) + 0.5) / 3 - 0.5, atol=0.05)


def test_bicubic_clips_overshoot_unless_asked_not_to():
    image = np.zeros((32, 32), np.float32)
    image[:, 16:] = 1.0
    assert bicubic(image, (64, 64)).max() <= 1.0
    assert bicubic(image, (64, 64), clip=False).max() > 1.0


def test_nearest_keeps_labels_and_follows_the_area_aligned_grid():
    labels = np.arange(2 * 9 * 9, dtype=np.uint32).reshape(2, 9, 9)
    assert nearest(labels, (9, 9)).tolist() == labels.tolist()
    down = nearest(labels, (3, 3))  # the centre pixel of each 3 × 3 block
    assert down.dtype == np.uint32 and down.shape == (2, 3, 3)
    assert down[0].tolist() == labels[0][1::3, 1::3].tolist()
    up = nearest(labels[0], (18, 18))  # each pixel becomes a 2 × 2 block
    assert up.tolist() == np.repeat(np.repeat(labels[0], 2, 0), 2, 1).tolist()
    assert set(np.unique(nearest(labels, (7, 5)))) <= set(np.unique(labels))
    with pytest.raises(ValueError, match="output shape"):
        nearest(labels, (0, 3))
