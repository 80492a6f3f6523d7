from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.segmentation import find_boundaries

from emsrflow import metrics
from emsrflow import segment as seg
from emsrflow.io import open_volume
from emsrflow.phantom import Phantom

ISBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012"


def one_to_one(labels_true, labels_pred):
    """True if the nonzero ground-truth labels and the prediction match as a bijection there."""
    inside = labels_true != 0
    pairs = np.unique(np.stack([labels_true[inside], labels_pred[inside]]), axis=1)
    n_true = np.unique(labels_true[inside]).size
    n_pred = np.unique(labels_pred[inside]).size
    return pairs.shape[1] == n_true == n_pred


def prisms(shape=(6, 48, 48), n_cells=12, seed=0, membranes=True):
    """2D Voronoi cells extruded along z, each cut in two at a random section.

    With ``membranes``, the 2D cell boundaries are label 0 (1–2 px); the z cuts are
    touching labels (no membrane), so the z-affinities must separate them.
    """
    rng = np.random.default_rng(seed)
    depth, height, width = shape
    points = np.zeros((height, width), np.int64)
    points[rng.integers(0, height, n_cells), rng.integers(0, width, n_cells)] = np.arange(
        1, n_cells + 1
    )
    _, (iy, ix) = ndimage.distance_transform_edt(points == 0, return_indices=True)
    cells = points[iy, ix]
    if membranes:
        cells[find_boundaries(cells, mode="inner")] = 0
    cut = rng.integers(1, depth, cells.max() + 1)
    z = np.arange(depth)[:, None, None]
    labels = np.where(z < cut[cells][None], cells[None], cells[None] + n_cells)
    return np.where(cells[None] == 0, 0, labels).astype(np.int64)


# ---------------------------------------------------------------------------------------
# Ground truth


def test_affinities_from_labels_exact():
    labels = np.array([[[1, 1, 2], [0, 2, 2]], [[1, 3, 2], [0, 2, 2]]])
    affinities, mask = seg.affinities_from_labels(labels)
    expected = np.zeros((3, 2, 2, 3), np.float32)
    expected[0, 1] = [[1, 0, 1], [0, 1, 1]]  # z: section 1 against section 0
    expected[1, :, 1] = [[0, 0, 1], [0, 0, 1]]  # y: row 1 against row 0
    expected[2, 0, :, 1:] = [[1, 0], [0, 1]]  # x: column c against c − 1
    expected[2, 1, :, 1:] = [[0, 0], [0, 1]]
    assert affinities.dtype == mask.dtype == np.float32
    np.testing.assert_array_equal(affinities, expected)
    boundary = np.ones((3, 2, 2, 3), np.float32)
    boundary[0, 0], boundary[1, :, 0], boundary[2, :, :, 0] = 0, 0, 0
    np.testing.assert_array_equal(mask, boundary)
    _, unknown = seg.affinities_from_labels(labels, background="unknown")
    nonzero = labels != 0
    np.testing.assert_array_equal(unknown[0, 1], nonzero[1] & nonzero[0])
    np.testing.assert_array_equal(unknown[1, :, 1], nonzero[:, 1] & nonzero[:, 0])
    np.testing.assert_array_equal(unknown[2, :, :, 1:], nonzero[:, :, 1:] & nonzero[:, :, :-1])
    assert unknown[0, 0].sum() == unknown[1, :, 0].sum() == unknown[2, :, :, 0].sum() == 0


@pytest.mark.parametrize(
    "labels, background",
    [(np.zeros((4, 4)), "boundary"), (np.zeros((2, 3, 3)), "membrane")],
)
def test_affinities_from_labels_rejects(labels, background):
    with pytest.raises(ValueError):
        seg.affinities_from_labels(labels, background=background)


def test_instances_from_membrane_labels():
    labels = np.full((2, 5, 5), 255, np.uint8)
    labels[0, 2] = 0  # one membrane row: two cells
    labels[1, :, 1] = labels[1, :, 3] = 0  # two membrane columns: three cells
    instances = seg.instances_from_membrane_labels(labels)
    assert instances.dtype == np.uint32
    assert [np.unique(s[s > 0]).size for s in instances] == [2, 3]
    assert np.unique(instances[instances > 0]).size == 5  # sections never share an id
    np.testing.assert_array_equal(instances == 0, labels == 0)
    diagonal = np.array([[255, 0], [0, 255]], np.uint8)
    assert seg.instances_from_membrane_labels(diagonal).max() == 2
    assert seg.instances_from_membrane_labels(diagonal, connectivity=2).max() == 1


# ---------------------------------------------------------------------------------------
# Watershed and agglomeration


@pytest.mark.parametrize("membranes", [True, False])
@pytest.mark.parametrize("fragments_in_xy", [True, False])
def test_segment_recovers_labels_from_perfect_affinities(membranes, fragments_in_xy):
    labels = prisms(seed=3, membranes=membranes)
    affinities, _ = seg.affinities_from_labels(labels)
    result = seg.segment(affinities, fragments_in_xy=fragments_in_xy)
    assert result.dtype == np.uint64 and result.shape == labels.shape and result.min() == 1
    assert one_to_one(labels, result)
    split, merge = metrics.voi(labels, result)
    assert split < 1e-9 and merge < 1e-9
    assert metrics.adapted_rand_error(labels, result) < 1e-9
    if not membranes:  # every voxel is labelled: the segmentation is a relabelling
        assert np.unique(result).size == np.unique(labels).size


def test_segment_in_plane_segments_sections_apart():
    labels = prisms(seed=4)
    affinities, _ = seg.affinities_from_labels(labels)
    result = seg.segment(affinities, in_plane=True)
    per_section = seg.instances_from_membrane_labels(labels)
    assert one_to_one(per_section, result)
    assert not set(np.unique(result[0])) & set(np.unique(result[1]))


def test_agglomerate_thresholds():
    labels = prisms(seed=5, membranes=False)
    affinities, _ = seg.affinities_from_labels(labels)
    rng = np.random.default_rng(0)
    noisy = np.clip(affinities + rng.normal(0, 0.1, affinities.shape), 0, 1)
    pieces = seg.fragments(noisy, h=0)
    n_pieces = np.unique(pieces).size
    assert n_pieces > np.unique(labels).size  # over-segmented
    same = seg.agglomerate(pieces, noisy, threshold=1.0)
    assert np.unique(same).size == n_pieces and one_to_one(pieces.astype(np.int64) + 1, same)
    assert seg.agglomerate(pieces, noisy, threshold=0.0).max() == 1
    merged = seg.agglomerate(pieces, noisy, threshold=0.5)
    assert one_to_one(labels, merged)
    with pytest.raises(ValueError, match="threshold"):
        seg.agglomerate(pieces, noisy, threshold=1.5)
    with pytest.raises(ValueError, match="do not match"):
        seg.agglomerate(pieces[:-1], noisy)


def test_agglomerate_matches_waterz():
    waterz = pytest.importorskip("waterz")
    labels = prisms(shape=(6, 64, 64), n_cells=20, seed=6)
    affinities, _ = seg.affinities_from_labels(labels)
    rng = np.random.default_rng(1)
    noisy = np.clip(
        ndimage.gaussian_filter(affinities, (0, 0, 0.7, 0.7)) + rng.normal(0, 0.15, labels.shape),
        0,
        1,
    ).astype(np.float32)
    pieces = seg.fragments(noisy, h=0)
    for threshold in (0.4, 0.6):
        ours = seg.agglomerate(pieces, noisy, threshold=threshold).astype(np.int64)
        theirs = next(waterz.agglomerate(noisy, [1 - threshold], fragments=pieces.copy()))
        split, merge = metrics.voi(ours, theirs.astype(np.int64), ignore_labels=())
        assert split + merge < 0.01


def test_segment_rejects_bad_affinities():
    with pytest.raises(ValueError, match=r"\(3, z, y, x\)"):
        seg.segment(np.ones((2, 3, 4, 4)))
    with pytest.raises(ValueError, match="finite"):
        seg.segment(np.full((3, 2, 4, 4), np.nan))


# ---------------------------------------------------------------------------------------
# Network and tiled prediction


@pytest.mark.parametrize("pool_z", [False, True])
def test_unet_keeps_odd_shapes(pool_z):
    torch.manual_seed(0)
    net = seg.AffinityUNet(4, 3, pool_z=pool_z).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, 5, 37, 23))
    assert out.shape == (2, 3, 5, 37, 23)
    for norm in ("batch", "none"):
        out = seg.AffinityUNet(4, 2, pool_z=pool_z, norm=norm)(torch.rand(2, 1, 3, 9, 10))
        assert out.shape == (2, 3, 3, 9, 10)
        out.sum().backward()
    assert net.spec == {
        "type": "affinity_unet",
        "channels": 4,
        "levels": 3,
        "growth": 2,
        "pool_z": pool_z,
        "norm": "group",
    }
    with pytest.raises(ValueError, match="levels"):
        seg.AffinityUNet(4, 0)
    with pytest.raises(ValueError, match="norm"):
        seg.AffinityUNet(4, 2, norm="instance")


def test_predict_affinities_tiles_match_whole():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 3, padding=1)  # receptive field: one voxel each way
    volume = np.random.default_rng(0).random((7, 40, 33), dtype=np.float32)
    with torch.no_grad():
        whole = torch.sigmoid(net(torch.from_numpy(volume)[None, None]))[0].numpy()
    tiled = seg.predict_affinities(net, volume, tile=(4, 16, 16), overlap=(2, 4, 4))
    np.testing.assert_allclose(tiled, whole, atol=1e-6)
    integers = seg.predict_affinities(net, (volume * 255).astype(np.uint8), tile=64, overlap=0)
    assert integers.shape == (3, 7, 40, 33) and 0 <= integers.min() <= integers.max() <= 1
    with pytest.raises(ValueError, match="overlap"):
        seg.predict_affinities(net, volume, tile=8, overlap=8)


def test_predict_affinities_unet_tiles_on_the_pooling_grid():
    torch.manual_seed(0)
    net = seg.AffinityUNet(4, 2, norm="none").eval()  # receptive field: about ±10 pixels
    volume = np.random.default_rng(1).random((5, 50, 45), dtype=np.float32)
    with torch.no_grad():
        whole = torch.sigmoid(net(torch.from_numpy(volume)[None, None]))[0].numpy()
    tiled = seg.predict_affinities(net, volume, tile=(5, 32, 32), overlap=(0, 24, 24))
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_settings():
    settings = seg.Settings(patch=[2, 16, 24], steps=5)
    assert settings.patch == (2, 16, 24)
    assert seg.Settings.from_dict(settings.to_dict()) == settings
    with pytest.raises(ValueError, match="patch"):
        seg.Settings(patch=16)
    with pytest.raises(ValueError, match="background"):
        seg.Settings(background="membrane")


# ---------------------------------------------------------------------------------------
# Training on the phantom


@pytest.fixture(scope="module")
def phantom_volume():
    image, labels = Phantom(seed=0).hr_clean(0, 12)
    return image, labels


def test_training_lowers_loss_and_clean_segments_better(phantom_volume, tmp_path):
    image, labels = phantom_volume
    settings = seg.Settings(
        steps=150, batch=2, patch=(4, 48, 48), lr=2e-3, seed=0, device="cpu", log_every=10
    )
    torch.manual_seed(0)
    net = seg.AffinityUNet(8, 3)
    checkpoint = tmp_path / "affinity.pt"
    net, curve = seg.train_affinity_net(image, labels, settings, net=net, checkpoint=checkpoint)
    assert list(curve) == ["step", "loss", "loss_z", "loss_y", "loss_x", "lr", "seconds"]
    assert curve["step"][-1] == 150
    assert curve["loss"][-3:].mean() < 0.75 * curve["loss"][:3].mean()

    crop = (slice(None), slice(0, 96), slice(0, 96))
    rng = np.random.default_rng(0)
    degraded = ndimage.gaussian_filter(image, (0, 2, 2)) + rng.normal(0, 0.15, image.shape)
    degraded = np.clip(degraded, 0, 1).astype(np.float32)
    scores = {}
    for name, volume in (("clean", image), ("degraded", degraded)):
        result = seg.segment_volume(net, volume[crop], tile=(12, 64, 64), overlap=(0, 16, 16))
        scores[name] = sum(metrics.voi(labels[crop], result))
    assert scores["clean"] < scores["degraded"]

    loaded = seg.load_affinity_net(checkpoint)
    probe = torch.from_numpy(image[None, None, :4, :32, :32])
    with torch.no_grad():
        torch.testing.assert_close(loaded(probe), net.cpu()(probe))


def test_train_pipeline_gives_the_keywords_of_segment_volume(phantom_volume, tmp_path):
    image, labels = (v[:, :64, :64] for v in phantom_volume)
    options = {
        "net": {"channels": 4, "levels": 2},
        "settings": {"steps": 6, "batch": 1, "patch": [4, 32, 32], "seed": 0, "device": "cpu"},
        "thresholds": [0.3, 0.5],
        "tile": [12, 64, 64],
        "overlap": [0, 16, 16],
    }
    net, calibration = seg.train_pipeline(
        [image], [labels], options, linked=False, checkpoint=tmp_path / "net.pt"
    )
    assert (tmp_path / "net.pt").exists()
    assert calibration["threshold"] in (0.3, 0.5) and len(calibration["voi"]) == 2
    assert calibration["in_plane"] and calibration["tile"] == [12, 64, 64]
    keywords = {k: calibration[k] for k in ("threshold", "tile", "overlap", "in_plane")}
    segments = seg.segment_volume(net, image, **keywords)
    assert segments.shape == image.shape
    best = sum(sum(metrics.voi(t, s)) for t, s in zip(labels, segments, strict=True))
    assert best / len(labels) == pytest.approx(min(calibration["voi"]), abs=1e-3)


# ---------------------------------------------------------------------------------------
# ISBI 2012


@pytest.mark.skipif(
    not (ISBI / "train-labels.tif").exists(),
    reason=f"ISBI 2012 data not found at {ISBI} (shared data folder absent)",
)
def test_isbi_instances_from_membrane_labels():
    with open_volume(str(ISBI / "train-labels.tif")) as reader:
        labels = reader[0:3, :, :]
    assert set(np.unique(labels).tolist()) == {0, 255}
    instances = seg.instances_from_membrane_labels(labels)
    counts = [np.unique(section[section > 0]).size for section in instances]
    assert min(counts) > 100
    np.testing.assert_array_equal(instances == 0, labels == 0)
    affinities, mask = seg.affinities_from_labels(instances)
    assert affinities[0].max() == 0  # sections are not linked
    assert 0.5 < affinities[1:].mean() < 1 and mask[1:, :, 1:, 1:].min() == 1


def test_binary_membrane_labels_become_per_section_instances():
    membrane = np.full((2, 8, 8), 255, np.uint8)
    membrane[:, :, 4] = 0  # one membrane line: two cells per section
    assert seg.is_membrane_labels(membrane)
    instances, linked = seg.as_instances(membrane)
    assert not linked and len(np.unique(instances[instances > 0])) == 4
    ids = np.arange(128, dtype=np.uint32).reshape(2, 8, 8)
    assert not seg.is_membrane_labels(ids)
    assert seg.as_instances(ids)[1] and seg.as_instances(ids)[0] is not None
    assert not seg.is_membrane_labels(np.zeros((2, 4, 4), np.float32))
