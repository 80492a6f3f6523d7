import numpy as np
import pytest
import torch
from torch import nn

from emsrflow import archs, isotropic
from emsrflow.io import open_volume, read_volume, write_volume
from emsrflow.isotropic import (
    IsoPairSampler,
    IsoSettings,
    axial_degrade,
    isotropic_depth,
    projected_distribution_loss,
    reconstruct,
    simulate_anisotropic,
    upsample_axis,
)
from emsrflow.metrics import psnr
from emsrflow.phantom import Phantom, PhantomParams

RHO = 3.0


class RowRamp(nn.Module):
    """Adds c·(row index) to each plane: marks which plane axis the network saw as rows."""

    scale, window = 1, 1

    def __init__(self, c=1e-3):
        super().__init__()
        self.c = c
        self.spec = {"type": "rowramp", "scale": 1}

    def forward(self, x):
        rows = torch.arange(x.shape[-2], dtype=x.dtype, device=x.device)
        return x + self.c * rows[:, None]


def smooth_image(shape, seed=0):
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    image = ndimage.gaussian_filter(rng.standard_normal(shape), 3)
    return ((image - image.min()) / np.ptp(image)).astype(np.float32)


# ---------------------------------------------------------------------------- pairs


@pytest.mark.parametrize("axis", [0, 1])
def test_axial_degrade_acts_along_the_chosen_axis_only(axis):
    rng = np.random.default_rng(1)
    profile = smooth_image((60, 1))[:, 0]
    # Constant along `axis`, varying along the other: degrading along `axis` keeps it.
    image = np.broadcast_to(profile[None, :] if axis == 0 else profile[:, None], (60, 60))
    kept, target = axial_degrade(image, axis, RHO, blur=0.8)
    np.testing.assert_allclose(kept, target, atol=1e-5)
    # Varying along `axis`: degrading along it changes it; along the other, not.
    image_t = np.ascontiguousarray(image.T)
    changed, target = axial_degrade(image_t, axis, RHO, blur=0.8)
    assert np.abs(changed - target).max() > 0.02
    same, target = axial_degrade(image_t, 1 - axis, RHO, blur=0.8)
    np.testing.assert_allclose(same, target, atol=1e-5)
    # Line artefacts are one offset per thick slice: constant across the other axis.
    flat = np.full((60, 60), 0.5, np.float32)
    noisy, _ = axial_degrade(flat, axis, RHO, line_noise=20.0, rng=rng)
    spread = noisy.std(axis=1 - axis)
    assert spread.max() < 1e-5 and noisy.std() > 0.01


def test_axial_degrade_non_integer_rho_crops_to_whole_slices():
    image = smooth_image((50, 41))
    degraded, target = axial_degrade(image, 0, 2.4)
    assert degraded.shape == target.shape == (48, 41)  # floor(50 / 2.4) = 20 slices → 48
    np.testing.assert_array_equal(target, image[:48])


def test_upsample_axis_puts_slice_centres_where_the_axial_model_does():
    ramp = np.arange(48, dtype=np.float32)[:, None] / 47 * np.ones((1, 5), np.float32)
    thick = simulate_anisotropic(ramp[:, None, :], RHO)[:, 0]  # (16, 5)
    back = upsample_axis(thick, 0, 48)
    # A linear ramp survives box integration and cubic interpolation away from the ends.
    np.testing.assert_allclose(back[5:-5], ramp[5:-5], atol=1e-5)


def test_sampler_pairs_are_patch_sized_and_seeded():
    volume = (smooth_image((4, 64, 64)) * 255).astype(np.uint8)
    settings = IsoSettings(patch=40, batch=3)
    a = IsoPairSampler([volume], RHO, settings, np.random.default_rng(5)).batch(3)
    b = IsoPairSampler([volume], RHO, settings, np.random.default_rng(5)).batch(3)
    assert a[0].shape == a[1].shape == (3, 1, 39, 39)  # 13 slices of 3
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert a[1].max() <= 1.0 and a[1].min() >= 0.0
    with pytest.raises(ValueError, match="patch"):
        IsoPairSampler([volume], RHO, IsoSettings(patch=80), np.random.default_rng(0))


@pytest.mark.parametrize("axes", [(0,), (1,), (0, 1)])
def test_sampler_degrades_along_the_configured_axes(axes):
    volume = (smooth_image((4, 64, 64)) * 255).astype(np.uint8)
    settings = IsoSettings(patch=40, noise=(0, 0), line_noise=(0, 0), axial_blur=(0, 0), axes=axes)
    inputs, targets = IsoPairSampler([volume], RHO, settings, np.random.default_rng(2)).batch(12)
    seen = set()
    for x, y in zip(inputs[:, 0], targets[:, 0], strict=True):
        along = [a for a in (0, 1) if np.allclose(axial_degrade(y, a, RHO)[0], x, atol=1e-5)]
        assert len(along) == 1
        seen.update(along)
    assert seen == set(axes)


def test_settings_validation():
    s = IsoSettings.from_dict({"noise": [1, 2], "alpha": 0.05})
    assert s.noise == (1.0, 2.0) and IsoSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="noise"):
        IsoSettings(noise=(3, 1))
    with pytest.raises(ValueError, match="alpha"):
        IsoSettings(alpha=-1)
    with pytest.raises(ValueError, match="unknown"):
        IsoSettings.from_dict({"rho": 3})
    assert IsoSettings(axes=[1, 0, 0]).axes == (0, 1)
    with pytest.raises(ValueError, match="axes"):
        IsoSettings(axes=(2,))
    with pytest.raises(ValueError, match="axes"):
        IsoSettings(axes=())


def test_projected_distribution_loss():
    x = torch.rand(2, 1, 16, 16)
    assert projected_distribution_loss(x, x).item() == 0
    # A constant shift moves the value distribution by c and leaves differences alone.
    assert projected_distribution_loss(x + 0.3, x).item() == pytest.approx(0.1, rel=1e-5)
    # A permutation of the pixels keeps the value distribution (first feature).
    perm = x.flatten(2)[..., torch.randperm(256)].reshape(x.shape)
    assert projected_distribution_loss(perm, x) > 0


# ------------------------------------------------------------------------ stacking


def test_stacking_puts_planes_back_at_their_coordinates(tmp_path):
    k, y, x = 6, 7, 9
    # Each lateral position numbered, constant along z: cubic keeps it exactly.
    numbers = (np.arange(y * x, dtype=np.float32).reshape(1, y, x) + 1) / (2 * y * x)
    volume = np.repeat(numbers, k, axis=0)
    depth = isotropic_depth(k, RHO)
    out = tmp_path / "iso.ome.zarr"
    # One block holding every plane: the network's rows are the planes' z.
    reconstruct(RowRamp(), volume, RHO, str(out), voxel_size=(4, 4, 4), slab=depth, tile=64)
    result, voxel = read_volume(str(out))
    assert result.shape == (depth, y, x) and voxel == (4, 4, 4)
    # Both passes see z as the plane rows; each added c·z, so the mean adds c·z too.
    expect = numbers + 1e-3 * np.arange(depth, dtype=np.float32)[:, None, None]
    np.testing.assert_allclose(result, expect, atol=1e-6)
    # In blocks of 4 planes with a halo of 2, the rows of each block start at z0 − 2.
    reconstruct(RowRamp(), volume, RHO, str(out), voxel_size=(4, 4, 4), slab=4, halo=2)
    result = read_volume(str(out))[0]
    starts = np.maximum(np.arange(depth) // 4 * 4 - 2, 0)
    expect = numbers + 1e-3 * (np.arange(depth) - starts).astype(np.float32)[:, None, None]
    np.testing.assert_allclose(result, expect, atol=1e-6)


class Local(nn.Module):
    """A fixed 3×3 smoothing: each output pixel sees one pixel of context."""

    scale, window = 1, 1

    def forward(self, x):
        kernel = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
        return torch.nn.functional.conv2d(
            torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), kernel[None, None]
        )


def test_blocks_with_a_halo_equal_the_whole_volume_for_a_local_network(tmp_path):
    volume = (smooth_image((5, 20, 23)) * 255).astype(np.uint8)
    source = tmp_path / "aniso.h5:/raw"
    write_volume(str(source), volume, (12, 4, 4))
    results = []
    for slab in (3, 100):
        out = tmp_path / f"iso{slab}.ome.zarr"
        with open_volume(str(source)) as reader:
            reconstruct(Local(), reader, RHO, str(out), voxel_size=(4, 4, 4), slab=slab, halo=1)
        results.append(read_volume(str(out))[0])
    np.testing.assert_allclose(*results, atol=1e-6)
    # A block is what the whole reconstruction holds at its planes, whatever the job.
    whole = results[1]
    block = isotropic.reconstruct_block(Local(), volume, RHO, 4, 9, halo=1)
    np.testing.assert_allclose(block, whole[4:9], atol=1e-6)
    # Without a network: the cubic baseline; one pass only also works.
    out = tmp_path / "cubic.ome.zarr"
    reconstruct(None, volume, RHO, str(out), voxel_size=(4, 4, 4), passes=["xz"], slab=4)
    cubic = read_volume(str(out))[0]
    np.testing.assert_allclose(cubic, upsample_axis(volume / 255.0, 0, 15), atol=1e-6)
    with pytest.raises(ValueError, match="pass"):
        reconstruct(Local(), volume, RHO, str(out), voxel_size=(4, 4, 4), passes=["xy"])
    with pytest.raises(ValueError, match="outside"):
        isotropic.reconstruct_block(None, volume, RHO, 10, 16)


class RowBlur(nn.Module):
    """A [1, 2, 1] blur along the rows' axis only: flips leave it be, quarter turns not."""

    scale, window = 1, 1

    def forward(self, x):
        kernel = torch.tensor([1.0, 2, 1]).view(1, 1, 3, 1) / 4
        padded = torch.nn.functional.pad(x, (0, 0, 1, 1), mode="replicate")
        return torch.nn.functional.conv2d(padded, kernel)


def test_test_time_augmentation_keeps_z_along_the_rows():
    volume = smooth_image((6, 20, 23))
    plain = isotropic.reconstruct_block(RowBlur(), volume, RHO, 0, 18, halo=0)
    tta = isotropic.reconstruct_block(RowBlur(), volume, RHO, 0, 18, halo=0, tta=True)
    np.testing.assert_allclose(tta, plain, atol=1e-6)
    dihedral = isotropic.reconstruct_block(RowBlur(), volume, RHO, 0, 18, halo=0, tta="dihedral")
    assert np.abs(dihedral - plain).max() > 1e-3


def test_train_isotropic_needs_a_same_size_network(tmp_path):
    model = archs.build_network({"type": "bicubic", "scale": 3})
    with pytest.raises(ValueError, match="scale 1"):
        isotropic.train_isotropic(
            model,
            [np.zeros((2, 64, 64), np.uint8)],
            RHO,
            IsoSettings(),
            checkpoint=tmp_path / "c.pt",
            curve=tmp_path / "c.csv",
        )


# ------------------------------------------------------------------ validation protocol


@pytest.fixture(scope="module")
def phantom_truth():
    # Gray matter: its structures are isotropic, as self-similarity assumes (axons of
    # white matter run along z, so xy planes would teach the wrong axial structure).
    params = PhantomParams.from_dict(
        {
            "tissue": {"white_matter_fraction": 0.0},
            "hr": {"shape_yx": [96, 96], "sections": 2},
            "anisotropic": {"slices": 16},
        }
    )
    phantom = Phantom(params, seed=11)
    truth, _ = phantom.anisotropic_truth(0, 48)
    return truth


def test_short_training_beats_cubic_on_the_validation_protocol(tmp_path, phantom_truth):
    truth = phantom_truth
    anisotropic = simulate_anisotropic(truth, RHO)
    spec = {"type": "uformer", "scale": 1, "channels": 8, "levels": 1, "depths": 1, "window": 4}
    torch.manual_seed(0)
    model = archs.build_network(spec)
    settings = IsoSettings(
        steps=300,
        batch=4,
        patch=48,
        lr=3e-3,
        lr_halve_every=200,
        log_every=50,
        checkpoint_every=300,
        deterministic=True,
        device="cpu",
        noise=(0, 0),
        line_noise=(0, 0),
    )
    isotropic.train_isotropic(
        model,
        [anisotropic],
        RHO,
        settings,
        checkpoint=tmp_path / "c.pt",
        curve=tmp_path / "curve.csv",
        progress=False,
    )
    scores = {}
    for name, net in (("cubic", None), ("ours", model)):
        out = tmp_path / f"{name}.ome.zarr"
        reconstruct(net, anisotropic, RHO, str(out), voxel_size=(5, 5, 5), tile=96)
        result = read_volume(str(out))[0]
        scores[name] = np.mean(
            [
                psnr(t, r, data_range=1.0)
                for r, t in zip(result.transpose(1, 0, 2), truth.transpose(1, 0, 2), strict=True)
            ]
        )
    assert scores["ours"] > scores["cubic"] + 0.3, scores


def test_simulate_anisotropic_reads_slab_by_slab(tmp_path):
    volume = (smooth_image((14, 9, 11)) * 255).astype(np.uint8)
    write_volume(str(tmp_path / "iso.h5:/raw"), volume, (5, 5, 5))
    whole = isotropic.integrate_axis(volume / 255.0, 0, 2.5)
    with open_volume(str(tmp_path / "iso.h5:/raw")) as reader:
        parts = [simulate_anisotropic(reader, 2.5, k, min(k + 2, 5)) for k in range(0, 5, 2)]
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-6)
    assert simulate_anisotropic(volume, 2.5).shape == (5, 9, 11)
    with pytest.raises(ValueError, match="ρ"):
        simulate_anisotropic(volume[:2], 3.0)
