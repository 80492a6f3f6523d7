"""Network architectures: shapes, sizes, registry, precision and trainability."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emsrflow.archs import ARCHS, Registry, build_network
from emsrflow.archs.common import pad_to_multiple, reflect_pad
from emsrflow.archs.emsrnet import EMSRNet, ViTBlock
from emsrflow.archs.wavelet import B3_SPLINE, PRESMOOTH, AtrousWavelet

TINY = {
    "emsrnet": {"channels": 8, "blocks": 1, "res_blocks": 1, "heads": 2},
    "swinir": {"embed_dim": 12, "depths": [2, 2], "heads": [2, 3], "window": 4},
    "unet": {"widths": [8, 16, 16], "blocks": [1, 1, 1], "bottleneck": 1},
    "bicubic": {},
    "uformer": {"channels": 8, "depths": 1, "heads": 2, "window": 4},
    "gpemsr": {},
    "gpemsr_codebook": {},
    "gpemsr_prior": {},
}
# Super-resolution networks of one section (τ > 1); uformer works at the target size and
# the GPEMSR networks take stacks of sections (tests of their own).
SR = sorted(arch for arch in TINY if arch != "uformer" and not arch.startswith("gpemsr"))


def count(net):
    return sum(p.numel() for p in net.parameters())


def tiny(arch, scale, **kwargs):
    torch.manual_seed(0)
    return build_network({"type": arch, "scale": scale, **TINY[arch], **kwargs})


def test_every_arch_has_a_tiny_variant():
    assert set(ARCHS) == set(TINY)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("arch", SR)
def test_output_shape(arch, scale):
    net = tiny(arch, scale)
    assert net.scale == scale and isinstance(net.window, int)
    for h, w in [(17, 23), (8, 8), (1, 3)]:
        with torch.no_grad():
            y = net(torch.rand(2, 1, h, w))
        assert y.shape == (2, 1, scale * h, scale * w)
        assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_emsrnet_parameters_match_the_authors_code():
    net = build_network({"type": "emsrnet", "scale": 3})
    # 3,164,992 in the authors' code, of which 3,124,032 reach the output
    assert count(net) == 3_124_032
    assert abs(count(net) - 3_164_992) < 0.1 * 3_164_992


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_swinir_parameters(scale):
    assert abs(count(build_network({"type": "swinir", "scale": scale})) - 11.8e6) < 1.18e6


def test_unet_parameters():
    assert 20e6 < count(build_network({"type": "unet", "scale": 3})) < 50e6


def test_bicubic_is_torch_bicubic_clamped():
    net = build_network({"type": "bicubic", "scale": 3})
    x = torch.rand(1, 1, 9, 7)
    expected = F.interpolate(x, scale_factor=3, mode="bicubic", align_corners=False).clamp(0, 1)
    torch.testing.assert_close(net(x), expected)
    assert count(net) == 0


def test_registry_errors():
    registry = Registry("thing")
    registry.register("a")(int)
    with pytest.raises(ValueError, match="'a' is already registered"):
        registry.register("a")(float)
    with pytest.raises(KeyError, match="unknown thing 'b'; registered: a"):
        registry["b"]
    assert "a" in registry and list(registry) == ["a"] and len(registry) == 1


def test_build_network_errors():
    with pytest.raises(
        KeyError,
        match=r"edsr.*bicubic, emsrnet, gpemsr, gpemsr_codebook, gpemsr_prior, swinir, "
        r"uformer, unet",
    ):
        build_network({"type": "edsr", "scale": 2})
    with pytest.raises(TypeError, match="'emsrnet' has no keyword 'chanels'"):
        build_network({"type": "emsrnet", "scale": 2, "chanels": 8})
    with pytest.raises(TypeError, match="needs 'scale'"):
        build_network({"type": "bicubic"})
    with pytest.raises(KeyError, match="no 'type'"):
        build_network({"scale": 2})
    with pytest.raises(ValueError, match="scale must be an integer"):
        build_network({"type": "bicubic", "scale": 2.5})
    with pytest.raises(ValueError, match="multiple of heads"):
        build_network({"type": "emsrnet", "scale": 2, "channels": 8, "heads": 3})


@pytest.mark.parametrize("arch", SR)
def test_spec_round_trip(arch):
    net = tiny(arch, 3)
    assert net.spec["type"] == arch and net.spec["scale"] == 3
    assert all(not isinstance(v, tuple) for v in net.spec.values())
    again = build_network(net.spec)
    assert again.spec == net.spec
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    assert shapes == {k: v.shape for k, v in again.state_dict().items()}
    again.load_state_dict(net.state_dict())


def test_spec_holds_defaults_and_plain_values():
    spec = build_network({"type": "emsrnet", "scale": np.int64(2), "channels": 8, "heads": 2}).spec
    assert spec["blocks"] == 3 and spec["window"] == 4 and spec["channels"] == 8
    assert type(spec["scale"]) is int and spec["scale"] == 2


@pytest.mark.parametrize("arch", SR)
def test_channels_last_bfloat16_autocast(arch):
    net = tiny(arch, 3).eval()
    x = torch.rand(2, 1, 13, 18)
    with torch.no_grad():
        reference = net(x)
        net = net.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(x.contiguous(memory_format=torch.channels_last))
    assert y.shape == reference.shape
    assert (y.float() - reference).abs().max() < 0.05 * (1 + reference.abs().max())


def test_swinir_pads_by_reflection():
    # any size is processed as its reflect-padding to a window multiple, cropped back
    net = tiny("swinir", 2).eval()
    x = torch.rand(1, 1, 13, 18)
    padded = pad_to_multiple(x, net.window)
    assert padded.shape == (1, 1, 16, 20)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(padded)[..., :26, :36])


def test_vit_block_pads_by_reflection():
    torch.manual_seed(0)
    vit = ViTBlock(8, heads=2, window=4, mlp_ratio=2.0)
    x = torch.randn(2, 8, 9, 14)
    with torch.no_grad():
        y = vit(x)
        y_padded = vit(reflect_pad(x, 0, 2, 0, 3))
    assert y.shape == x.shape
    torch.testing.assert_close(y, y_padded[..., :9, :14])


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 40)])
def test_reflect_pad_any_size(size):
    x = torch.rand(1, 2, *size)
    y = reflect_pad(x, 9, 8, 7, 6)
    assert y.shape == (1, 2, size[0] + 13, size[1] + 17)
    torch.testing.assert_close(y[..., 7 : 7 + size[0], 9 : 9 + size[1]], x)
    assert set(y.unique().tolist()) <= set(x.unique().tolist())
    if min(size) > 9:
        torch.testing.assert_close(y, F.pad(x, (9, 8, 7, 6), mode="reflect"))


def test_wavelet_kernels():
    assert sum(B3_SPLINE) == pytest.approx(1.0)
    assert [16 * t for t in B3_SPLINE] == pytest.approx([1, 4, 6, 4, 1])
    assert sum(PRESMOOTH) == pytest.approx(1.0)


@pytest.mark.parametrize("size", [(20, 30), (3, 2)])
def test_wavelet_constant_image_has_no_details(size):
    atw = AtrousWavelet(3)
    details, coarse = atw.decompose(torch.full((2, 1, *size), 0.37))
    assert details.shape == (2, 3, *size)
    torch.testing.assert_close(details, torch.zeros_like(details), atol=1e-6, rtol=0)
    torch.testing.assert_close(coarse, torch.full_like(coarse, 0.37))


def test_wavelet_details_reconstruct_the_image():
    x = torch.rand(1, 2, 24, 19)
    details, coarse = AtrousWavelet(3, presmooth=False).decompose(x)
    assert details.shape == (1, 6, 24, 19)
    torch.testing.assert_close(details.reshape(1, 3, 2, 24, 19).sum(1) + coarse, x)
    # details of a ramp vanish beyond the reach of the borders (2 + 2 + 4 + 8 pixels)
    ramp = torch.arange(48.0).expand(1, 1, 48, 48) / 48
    assert AtrousWavelet(3)(ramp)[..., 16:-16, 16:-16].abs().max() < 1e-6


def test_tiny_emsrnet_overfits_one_pair():
    torch.manual_seed(0)
    net = EMSRNet(3, channels=8, blocks=1, res_blocks=1, heads=2)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 48), indexing="ij")
    hr = (0.5 + 0.4 * torch.sin(9 * xx + 4 * yy) * torch.cos(6 * yy)).reshape(1, 1, 48, 48)
    lr = F.avg_pool2d(hr, 3)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for step in range(50):
        optimizer.zero_grad()
        loss = F.l1_loss(net(lr), hr)
        loss.backward()
        if step == 0:
            block = net.blocks[0]
            for module in [block.to_image, block.edge_in, block.edge, block.attention, block.vit]:
                grads = [p.grad for p in module.parameters()]
                assert all(g is not None and g.abs().sum() > 0 for g in grads), module
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
