"""The A2I-3DEM U-shaped vision transformer (``uformer``)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emsrflow.archs import ARCHS, build_network
from emsrflow.archs.common import pad_to_multiple
from emsrflow.archs.uformer import GLEN, Uformer, ViTBlock
from emsrflow.infer import plan_tiles, predict_section

# grid 4 · 2² = 16 pixels; one block per stage reaches ≈ 29 pixels
TINY = {"type": "uformer", "scale": 1, "channels": 8, "depths": 1, "heads": 2, "window": 4}


def count(net):
    return sum(p.numel() for p in net.parameters())


def tiny(**kwargs):
    torch.manual_seed(0)
    return build_network({**TINY, **kwargs}).eval()


def test_registered_with_scale_one_and_window_grid():
    assert ARCHS["uformer"] is Uformer
    net = tiny()
    assert net.scale == 1 and net.window == 16
    assert build_network({"type": "uformer", "scale": 1, "levels": 3}).window == 64


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (1, 1), (1, 3), (17, 90)])
def test_output_shape_for_any_size(size):
    x = torch.rand(2, 1, *size)
    with torch.no_grad():
        y = tiny()(x)
    assert y.shape == x.shape and y.dtype == torch.float32 and torch.isfinite(y).all()


def test_pads_by_reflection_and_adds_the_input():
    net = tiny()
    x = torch.rand(1, 1, 37, 53)
    padded = pad_to_multiple(x, net.window)
    assert padded.shape[-2:] == (48, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(padded)[..., :37, :53])
        torch.nn.init.zeros_(net.output_proj.weight)
        torch.nn.init.zeros_(net.output_proj.bias)
        torch.testing.assert_close(net(x), x)  # no residual: the input itself


def test_spec_round_trip():
    net = tiny(depths=(1, 2, 1, 2, 1), heads=(2, 2, 4))
    assert net.spec == {
        "type": "uformer",
        "scale": 1,
        "channels": 8,
        "levels": 2,
        "depths": [1, 2, 1, 2, 1],
        "heads": [2, 2, 4],
        "window": 4,
        "mlp_ratio": 4.0,
    }
    again = build_network(net.spec)
    assert again.spec == net.spec
    again.load_state_dict(net.state_dict())
    assert len(again.encoders[1]) == 2 and len(again.decoders[0].blocks) == 2  # deepest first
    assert again.decoders[0].blocks[0].attn.heads == 2  # heads mirrored: level 1 has 2


def test_stage_sizes():
    net = tiny(levels=3, depths=[1, 1, 1, 1], heads=1)
    dims = [stage[0].norm1.normalized_shape[0] for stage in [*net.encoders, net.bottleneck]]
    assert dims == [8, 16, 32, 64]
    assert [stage[0].attn.heads for stage in net.encoders] == [1, 2, 4]  # doubled
    assert [d.blocks[0].norm1.normalized_shape[0] for d in net.decoders] == [32, 16, 8]
    assert net.decoders[-1].fuse.in_channels == 16 and net.output_proj.in_channels == 8


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_scale_other_than_one_is_rejected(scale):
    with pytest.raises(ValueError, match="scale must be 1"):
        build_network({**TINY, "scale": scale})


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="scale must be an integer"):
        build_network({**TINY, "scale": 0})
    with pytest.raises(ValueError, match=r"depths needs 3 values .* or 5"):
        build_network({**TINY, "depths": [1, 1]})
    with pytest.raises(ValueError, match="multiple of heads"):
        build_network({**TINY, "heads": 3})
    with pytest.raises(ValueError, match="window must be"):
        build_network({**TINY, "window": 1})
    with pytest.raises(ValueError, match="levels and channels"):
        build_network({**TINY, "levels": 0})


def test_relative_position_bias_depends_only_on_the_offset():
    window = 4
    attn = ViTBlock(8, 2, window, 2.0).attn
    assert attn.bias_table.shape == ((2 * window - 1) ** 2, 2)
    index = attn.bias_index
    assert index.shape == (window**2, window**2)
    yx = torch.stack(
        torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ).flatten(1)
    offsets = (yx[:, :, None] - yx[:, None, :]).permute(1, 2, 0).reshape(-1, 2)
    # one table row per offset (dy, dx) ∈ [−(M−1), M−1]², each used, none shared
    rows = {}
    for offset, row in zip(map(tuple, offsets.tolist()), index.flatten().tolist(), strict=True):
        assert rows.setdefault(offset, row) == row
    assert len(rows) == len(set(rows.values())) == (2 * window - 1) ** 2
    assert rows[(0, 0)] == (2 * window - 1) ** 2 // 2
    bias = attn.bias_table[index]  # M², M², heads: equal offsets, equal bias
    assert torch.equal(bias[0, 1], bias[5, 6]) and torch.equal(bias[0, 4], bias[11, 15])
    assert not torch.equal(bias[0, 1], bias[0, 4])


def test_glen_is_gated_and_local():
    torch.manual_seed(0)
    glen = GLEN(4, 6)
    assert glen.dwconv.groups == glen.dwconv.in_channels == 12
    x = torch.zeros(1, 9, 9, 4)
    x[0, 4, 4] = 1.0
    with torch.no_grad():
        torch.nn.init.zeros_(glen.project_in.bias)
        torch.nn.init.zeros_(glen.dwconv.bias)
        y = glen(x) - glen(torch.zeros_like(x))
    changed = torch.nonzero(y[0].abs().sum(-1) > 0)
    assert changed.min() == 3 and changed.max() == 5  # the 3×3 neighbourhood only


def test_gradients_reach_every_parameter():
    net = tiny(depths=2).train()
    loss = net(torch.rand(2, 1, 21, 30)).square().mean()
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_tiny_net_overfits_one_pair():
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    hr = (0.5 + 0.4 * torch.sin(11 * xx + 5 * yy) * torch.cos(7 * yy)).reshape(1, 1, 32, 32)
    lr = F.interpolate(F.avg_pool2d(hr, (4, 1)), size=(32, 32), mode="bilinear")
    net = Uformer(1, channels=8, depths=1, heads=2, window=4).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(50):
        optimizer.zero_grad()
        loss = F.l1_loss(net(lr), hr)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def residual(net, x):
    """The predicted residual, amplified to the size of the image."""
    return 100 * (net(x) - x)


def test_tile_on_the_grid_equals_the_whole_image_away_from_its_borders():
    net = tiny()
    image = torch.rand(1, 1, 160, 128)
    with torch.no_grad():
        for block in net.modules():
            if isinstance(block, ViTBlock):  # sharper attention than at initialisation
                block.attn.qkv.weight.mul_(20)
        net.output_proj.weight.mul_(100)  # undo the near-identity start
        whole = residual(net, image)
        tile = residual(net, image[..., 32:128, 16:112])  # origin, size multiples of 16
        shifted = residual(net, image[..., 36:132, 16:112])  # origin off the grid
    assert whole.std() > 0.1
    inner = (slice(None), slice(None), slice(32, 64), slice(32, 64))
    expected = whole[..., 64:96, 48:80]
    torch.testing.assert_close(tile[inner], expected, atol=1e-4, rtol=0)  # 1e-6 of the output
    assert (shifted[..., 28:60, 32:64] - expected).abs().max() > 0.1
    assert (tile - whole[..., 32:128, 16:112]).abs().max() > 1e-2  # borders differ


def test_predict_section_tiles_match_the_untiled_output():
    net = tiny()
    rng = np.random.default_rng(0)
    image = rng.random((170, 150), dtype=np.float32)
    with torch.no_grad():
        for block in net.modules():
            if isinstance(block, ViTBlock):
                block.attn.qkv.weight.mul_(20)
        net.output_proj.weight.mul_(500)
    with torch.inference_mode():
        expected = net(torch.from_numpy(image)[None, None])[0, 0].clamp(0, 1).numpy()
    options = {"tile": 96, "overlap": 64, "margin": 31, "device": "cpu"}  # reach ≈ 29 pixels
    assert len(plan_tiles(image.shape, tile=96, overlap=64, multiple=net.window)) == 9
    np.testing.assert_allclose(predict_section(net, image, **options), expected, atol=1e-5, rtol=0)
    net.window = 1  # tile origins leave the 16-pixel grid of the bottleneck windows
    assert np.abs(predict_section(net, image, **options) - expected).max() > 1e-2


def test_parameter_counts():
    default = count(build_network({"type": "uformer", "scale": 1}))
    uformer_s = count(build_network({"type": "uformer", "scale": 1, "levels": 4}))
    print(f"uformer parameters: default {default:,}, Uformer-S size (levels 4) {uformer_s:,}")
    assert default == 1_134_581
    assert abs(uformer_s - 20.6e6) < 0.15 * 20.6e6  # Uformer-S: 20.63 M


def test_channels_last_bfloat16_autocast():
    net = tiny()
    x = torch.rand(2, 1, 13, 18)
    with torch.no_grad():
        reference = net(x)
        net = net.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(x.contiguous(memory_format=torch.channels_last))
    assert y.shape == reference.shape
    assert (y.float() - reference).abs().max() < 0.05
