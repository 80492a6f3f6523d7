import itertools
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from emsrflow import infer
from emsrflow.archs import build_network
from emsrflow.device import resolve_device
from emsrflow.infer import (
    enhance_section,
    enhance_stack,
    plan_tiles,
    predict_section,
    predict_stack,
    time_sections,
)

TINY_EMSRNET = {
    "type": "emsrnet",
    "scale": 3,
    "channels": 8,
    "blocks": 1,
    "res_blocks": 1,
    "heads": 2,
}


class ConvSR(nn.Module):
    """`layers` 3×3 convolutions (receptive radius `layers` LR pixels) and an upsampling.

    ``upsample="shuffle"``: the last convolution gives τ² channels for PixelShuffle;
    ``"nearest"``: one channel, upsampled by nearest neighbour (a constant image then gives
    a constant output away from the image border). Both add the input (a skip).
    """

    def __init__(
        self, *, scale=3, layers=3, channels=8, padding_mode="zeros", upsample="shuffle", seed=0
    ):
        super().__init__()
        self.scale = scale
        self.upsample = upsample
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            widths = (
                [1] + [channels] * (layers - 1) + [scale * scale if upsample == "shuffle" else 1]
            )
            convs = [
                nn.Conv2d(a, b, 3, padding=1, padding_mode=padding_mode)
                for a, b in itertools.pairwise(widths)
            ]
        self.body = nn.Sequential(*[m for conv in convs for m in (conv, nn.GELU())][:-1])

    def forward(self, x):
        if self.upsample == "nearest":
            return F.interpolate(self.body(x) + x, scale_factor=self.scale, mode="nearest")
        skip = F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return F.pixel_shuffle(self.body(x), self.scale) + skip


class EquivariantSR(nn.Module):
    """A D4-symmetric kernel, a pointwise nonlinearity and nearest upsampling."""

    def __init__(self, scale=2):
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(
            torch.tensor([[[[0.1, 0.2, 0.1], [0.2, 0.4, 0.2], [0.1, 0.2, 0.1]]]])
        )

    def forward(self, x):
        y = torch.tanh(F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.weight))
        return F.interpolate(y, scale_factor=self.scale, mode="nearest")


class WindowSR(nn.Module):
    """Mixes each pixel with the mean of its `window`-pixel window (grid from the top left).

    Like window attention, the image is reflect-padded at the bottom and right to a
    multiple of the window and cropped back.
    """

    def __init__(self, scale=2, window=8):
        super().__init__()
        self.scale = scale
        self.size = self.window = window  # `window` tells predict_section the grid

    def forward(self, x):
        h, w = x.shape[-2:]
        padded = F.pad(x, (0, -w % self.size, 0, -h % self.size), mode="reflect")
        means = F.avg_pool2d(padded, self.size)
        means = F.interpolate(means, scale_factor=self.size, mode="nearest")[..., :h, :w]
        return F.interpolate(0.5 * (x + means), scale_factor=self.scale, mode="nearest")


class ConstantSR(nn.Module):
    def __init__(self, scale=3, value=0.3):
        super().__init__()
        self.scale = scale
        self.value = value

    def forward(self, x):
        return torch.full(
            (x.shape[0], 1, self.scale * x.shape[2], self.scale * x.shape[3]), self.value
        )


def _image(shape, seed=0):
    """Natural-ish test section: smooth blobs with sharp membranes and a little noise."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 3.0)
    field = (field - field.min()) / np.ptp(field)
    membranes = np.abs(field - 0.5) < 0.04
    image = 0.2 + 0.6 * field - 0.15 * membranes + 0.02 * rng.standard_normal(shape)
    return np.clip(image, 0, 1).astype(np.float32)


def _untiled(model, image):
    with torch.inference_mode():
        out = model.eval()(torch.from_numpy(image)[None, None])[0, 0]
    return out.clamp(0, 1).numpy()


def _psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2))


@pytest.mark.parametrize("shape", [(70, 53), (128, 128), (5, 300), (1, 1), (33, 34)])
@pytest.mark.parametrize(("tile", "overlap", "multiple"), [(16, 4, 1), (32, 8, 4), (30, 17, 8)])
def test_plan_tiles_cover_the_image_with_overlap_and_aligned_origins(
    shape, tile, overlap, multiple
):
    tiles = plan_tiles(shape, tile=tile, overlap=overlap, multiple=multiple)
    count = np.zeros(shape, int)
    for t in tiles:
        count[t.slices()] += 1
    assert count.min() >= 1
    for axis in ("y", "x"):
        spans = sorted({getattr(t, axis) for t in tiles}, key=lambda s: s.start)
        n = shape[0 if axis == "y" else 1]
        assert spans[0].start == 0 and spans[-1].stop == n
        assert spans[0].before == 0 and spans[-1].after == 0
        if n <= tile:
            assert spans == [infer.Span(0, n, 0, 0)]
        else:  # no more tiles than strides as long as the overlap and the grid allow
            assert len(spans) <= -(-(n - overlap) // ((tile - overlap) // multiple * multiple))
        for span in spans:
            assert span.start % multiple == 0
            assert span.size < tile + multiple
        for a, b in itertools.pairwise(spans):
            assert a.after == b.before == a.stop - b.start >= overlap


def test_plan_tiles_is_row_major_and_clamped():
    tiles = plan_tiles((40, 20), tile=64, overlap=8)
    assert [t.shape for t in tiles] == [(40, 20)]
    tiles = plan_tiles((40, 100), tile=32, overlap=8)
    assert [(t.y.start, t.x.start) for t in tiles[:2]] == [(0, 0), (0, 23)]
    # a 341² paper section: 4 tiles per axis, shortened from 128 to 112 pixels
    spans = [t.x for t in plan_tiles((341, 341), tile=128, overlap=32, multiple=4)[:4]]
    assert [(s.start, s.stop) for s in spans] == [(0, 112), (80, 192), (160, 272), (228, 341)]


@pytest.mark.parametrize(
    ("tile", "overlap", "multiple"), [(16, 16, 1), (16, -1, 1), (16, 10, 8), (8, 0, 0)]
)
def test_plan_tiles_rejects_bad_options(tile, overlap, multiple):
    with pytest.raises(ValueError, match=r"overlap|multiple"):
        plan_tiles((50, 50), tile=tile, overlap=overlap, multiple=multiple)


@pytest.mark.parametrize("shape", [(70, 53), (33, 90)])
@pytest.mark.parametrize(
    ("tile", "overlap", "margin", "batch"),
    [(16, 12, None, 4), (24, 8, 3, 1), (20, 16, None, 3), (100, 32, None, 4)],
)
def test_tiled_equals_untiled_when_margin_covers_the_receptive_field(
    shape, tile, overlap, margin, batch
):
    model = ConvSR(layers=3)  # receptive radius 3 LR pixels
    image = _image(shape)
    out = predict_section(
        model, image, tile=tile, overlap=overlap, margin=margin, batch=batch, device="cpu"
    )
    assert out.shape == (3 * shape[0], 3 * shape[1])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _untiled(model, image), atol=1e-4, rtol=0)


def test_window_nets_see_the_untiled_window_grid():
    model = WindowSR(window=8)  # reaches up to 7 pixels within its window
    image = _image((70, 53))
    options = {"tile": 30, "overlap": 17, "margin": 7, "device": "cpu"}
    np.testing.assert_allclose(
        predict_section(model, image, **options), _untiled(model, image), atol=1e-6, rtol=0
    )
    model.window = 1  # tile origins leave the 8-pixel grid: windows no longer line up
    assert np.abs(predict_section(model, image, **options) - _untiled(model, image)).max() > 1e-3


def test_tiled_emsrnet_equals_untiled_on_its_window_grid():
    torch.manual_seed(0)
    model, image = build_network(TINY_EMSRNET), _image((150, 123))
    assert model.window == 4
    options = {"tile": 96, "overlap": 61, "margin": 28, "device": "cpu"}  # reach ≈ 25 pixels
    expected = _untiled(model, image)
    np.testing.assert_allclose(predict_section(model, image, **options), expected, atol=1e-4)
    model.window = 1  # tile origins leave the 4-pixel grid of the attention windows
    assert np.abs(predict_section(model, image, **options) - expected).max() > 1e-3


def test_bicubic_net_tiled_and_tta():
    model, image = build_network({"type": "bicubic", "scale": 3}), _image((45, 37))
    expected = _untiled(model, image)
    for tta in (False, True):  # bicubic commutes with flips and rotations
        out = predict_section(model, image, tile=16, overlap=8, tta=tta, device="cpu")
        np.testing.assert_allclose(out, expected, atol=1e-4)


def test_bf16_emsrnet_is_close_to_fp32():
    torch.manual_seed(0)
    model, image = build_network(TINY_EMSRNET), _image((96, 80))
    fp32 = predict_section(model, image, tile=64, overlap=32, device="cpu")
    bf16 = predict_section(model, image, tile=64, overlap=32, precision="bf16", device="cpu")
    assert _psnr(bf16, fp32) > 40


def test_constant_image_and_constant_net_give_no_seams():
    image = np.full((61, 47), 0.4, np.float32)
    model = ConvSR(upsample="nearest", layers=2)  # zero padding darkens tile borders
    out = predict_section(model, image, tile=16, overlap=8, device="cpu")
    np.testing.assert_allclose(out, _untiled(model, image), atol=1e-6, rtol=0)
    assert np.ptp(out[6:-6, 6:-6]) < 1e-6  # constant but at the image border
    out = predict_section(ConstantSR(value=0.3), _image((61, 47)), tile=16, overlap=4, device="cpu")
    np.testing.assert_allclose(out, 0.3, atol=1e-6)


def test_tta_with_an_equivariant_net_changes_nothing():
    model, image = EquivariantSR(), _image((45, 37))
    options = {"tile": 20, "overlap": 8, "device": "cpu"}
    plain = predict_section(model, image, **options)
    np.testing.assert_allclose(predict_section(model, image, tta=True, **options), plain, atol=1e-6)


def test_tta_averages_the_eight_dihedral_transforms():
    model, image = ConvSR(layers=2), _image((45, 37))
    x = torch.from_numpy(image)[None, None]
    outs = []
    with torch.inference_mode():
        for k in range(4):
            for flip in (False, True):
                view = torch.rot90(x.flip(-1) if flip else x, k, (-2, -1))
                out = torch.rot90(model(view), -k, (-2, -1))
                outs.append(out.flip(-1) if flip else out)
    expected = torch.stack(outs).mean(0)[0, 0].clamp(0, 1).numpy()
    for tile in (64, 16):  # whole image, and non-square tiles of several shapes
        out = predict_section(model, image, tile=tile, overlap=12, tta=True, batch=3, device="cpu")
        assert out.shape == (135, 111)
        np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)
    assert np.abs(predict_section(model, image, tile=64, device="cpu") - expected).max() > 1e-3


def test_tta_flips_averages_the_four_flips_only():
    model, image = ConvSR(layers=2), _image((45, 37))
    x = torch.from_numpy(image)[None, None]
    with torch.inference_mode():
        outs = [model(x.flip(d)).flip(d) for d in ((), (-2,), (-1,), (-2, -1))]
    expected = torch.stack(outs).mean(0)[0, 0].clamp(0, 1).numpy()
    out = predict_section(model, image, tile=16, overlap=12, tta="flips", device="cpu")
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)
    dihedral = predict_section(model, image, tile=16, overlap=12, tta="dihedral", device="cpu")
    np.testing.assert_allclose(
        dihedral, predict_section(model, image, tile=16, overlap=12, tta=True, device="cpu")
    )
    assert np.abs(dihedral - expected).max() > 1e-3


def test_an_unknown_tta_is_refused():
    with pytest.raises(ValueError, match="tta must be true, false or one of"):
        predict_section(ConvSR(layers=1), _image((20, 20)), tta="rotations", device="cpu")


def test_bf16_is_close_to_fp32():
    model, image = ConvSR(layers=4, channels=16), _image((96, 80))
    fp32 = predict_section(model, image, tile=48, overlap=16, precision="fp32", device="cpu")
    bf16 = predict_section(model, image, tile=48, overlap=16, precision="bf16", device="cpu")
    assert bf16.dtype == np.float32
    assert _psnr(bf16, fp32) > 40


def test_bf16_falls_back_to_fp32_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(infer, "_no_bf16_reason", lambda device: "no bfloat16 here")
    model, image = ConvSR(), _image((40, 30))
    with caplog.at_level(logging.WARNING, logger="emsrflow.infer"):
        out = predict_section(model, image, tile=16, overlap=8, precision="bf16", device="cpu")
    assert "falls back to float32: no bfloat16 here" in caplog.text
    np.testing.assert_array_equal(
        out, predict_section(model, image, tile=16, overlap=8, device="cpu")
    )


def test_predict_stack_is_section_by_section():
    model, stack = ConvSR(), np.stack([_image((40, 37), seed=s) for s in range(3)])
    out = predict_stack(model, stack, tile=16, overlap=8, batch=2, device="cpu")
    assert out.shape == (3, 120, 111)
    assert out.dtype == np.float32
    for section, expected in zip(stack, out, strict=True):
        np.testing.assert_array_equal(
            predict_section(model, section, tile=16, overlap=8, batch=2, device="cpu"), expected
        )


def test_output_is_clipped():
    class Overshoot(ConstantSR):
        def forward(self, x):
            return 3 * F.interpolate(x, scale_factor=self.scale, mode="nearest") - 1

    image = _image((30, 30))
    out = predict_section(Overshoot(), image, tile=16, overlap=8, device="cpu")
    assert out.min() == 0 and out.max() == 1
    np.testing.assert_allclose(out, _untiled(Overshoot(), image), atol=1e-6)


def test_enhance_section_keeps_the_shape():
    image = _image((40, 37))
    out = enhance_section(ConvSR(), image, tile=16, overlap=8, device="cpu")
    assert out.shape == image.shape
    assert out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1
    constant = enhance_section(EquivariantSR(), np.full((20, 25), 0.5, np.float32), device="cpu")
    np.testing.assert_allclose(constant, np.tanh(0.8), atol=1e-5)


def test_bad_options_and_outputs_are_reported():
    image = _image((20, 20))
    with pytest.raises(ValueError, match="precision"):
        predict_section(ConvSR(), image, precision="fp16")
    with pytest.raises(ValueError, match="margin"):
        predict_section(ConvSR(), image, tile=16, overlap=8, margin=4)
    with pytest.raises(ValueError, match="batch"):
        predict_section(ConvSR(), image, batch=0)
    with pytest.raises(ValueError, match="2D"):
        predict_section(ConvSR(), image[None])
    with pytest.raises(ValueError, match=r"\(z, y, x\)"):
        predict_stack(ConvSR(), image)
    wrong = nn.Upsample(scale_factor=2)
    wrong.scale = 3
    with pytest.raises(RuntimeError, match="expected"):
        predict_section(wrong, image)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDA requested"):
        resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_matches_cpu(precision):
    model, image = ConvSR(layers=4, channels=16), _image((96, 80))
    options = {"tile": 48, "overlap": 16, "tta": True}
    cpu = predict_section(model, image, device="cpu", **options)
    cuda = predict_section(model, image, precision=precision, device="cuda", **options)
    assert cuda.shape == cpu.shape
    assert _psnr(cuda, cpu) > 40


def test_enhance_stack_matches_sections():
    from emsrflow.archs import build_network

    model = build_network({"type": "bicubic", "scale": 3})
    stack = np.random.default_rng(0).random((2, 20, 17)).astype(np.float32)
    out = enhance_stack(model, stack, tile=16, overlap=4)
    assert out.shape == stack.shape
    for section, enhanced in zip(stack, out, strict=True):
        np.testing.assert_allclose(enhanced, enhance_section(model, section, tile=16, overlap=4))


def test_time_sections_times_each_section_after_a_warm_up(monkeypatch):
    calls = []
    monkeypatch.setattr(infer, "predict_stack", lambda model, stack, **o: calls.append(o))
    stack = np.zeros((3, 8, 8), np.float32)
    seconds = time_sections(None, stack, warmup=2, tile=8)
    assert seconds.shape == (3,) and (seconds >= 0).all()
    assert len(calls) == 5 and calls[0] == {"tile": 8}
    model = build_network(TINY_EMSRNET)
    seconds = time_sections(model, np.random.default_rng(0).random((2, 16, 16)), tile=16)
    assert seconds.shape == (2,) and (seconds > 0).all()
    with pytest.raises(ValueError, match="z ≥ 1"):
        time_sections(model, np.zeros((0, 8, 8)))
