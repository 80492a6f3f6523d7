"""Modulated deformable convolution (DCNv2) in plain PyTorch."""

import pytest
import torch
import torch.nn.functional as F

from emsrflow.archs.dcn import (
    DCNPack,
    ModulatedDeformConv2d,
    flow_to_offset,
    modulated_deform_conv2d,
)


def _zeros(layer, x, value=0.0):
    n, _, h, w = x.shape
    h_out = h + 2 * layer.padding[0] - layer.dilation[0] * (layer.kernel_size[0] - 1) - 1
    h_out = h_out // layer.stride[0] + 1
    w_out = w + 2 * layer.padding[1] - layer.dilation[1] * (layer.kernel_size[1] - 1) - 1
    w_out = w_out // layer.stride[1] + 1
    k = layer.deform_groups * layer.taps
    return torch.full((n, 2 * k, h_out, w_out), value), torch.full((n, k, h_out, w_out), 0.5)


@pytest.mark.parametrize(
    ("stride", "padding", "dilation", "groups", "deform_groups"),
    [(1, 1, 1, 1, 1), (2, 1, 1, 2, 4), (1, 2, 2, 4, 2)],
)
def test_zero_offsets_half_mask_is_half_a_convolution(
    stride, padding, dilation, groups, deform_groups
):
    torch.manual_seed(0)
    layer = ModulatedDeformConv2d(8, 12, 3, stride, padding, dilation, groups, deform_groups)
    nn_bias = torch.randn(12)
    layer.bias.data.copy_(nn_bias)
    x = torch.randn(2, 8, 11, 9)
    offset, mask = _zeros(layer, x)
    plain = F.conv2d(x, layer.weight, None, stride, padding, dilation, groups)
    expected = 0.5 * plain + nn_bias[:, None, None]
    torch.testing.assert_close(layer(x, offset, mask), expected, atol=1e-5, rtol=0)


def test_integer_offset_is_a_shifted_convolution():
    torch.manual_seed(0)
    layer = ModulatedDeformConv2d(6, 4, 3, padding=1, deform_groups=3)
    x = torch.randn(1, 6, 10, 12)
    offset, _ = _zeros(layer, x)
    offset[:, 1::2] = 1.0  # every tap displaced by +1 in x
    out = layer(x, offset, None)
    shifted = F.pad(x[..., 1:], (0, 1))  # x(p + 1), zero beyond the border
    expected = F.conv2d(shifted, layer.weight, layer.bias, padding=1)
    torch.testing.assert_close(out[..., 1:-2], expected[..., 1:-2], atol=1e-5, rtol=0)
    assert (out - expected).abs().max() > 1e-3  # the borders do differ: zeros outside x


def test_gradients_reach_offsets_masks_input_and_weights():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 4, 3, dtype=torch.double, requires_grad=True)
    offset = (0.3 * torch.randn(1, 2 * 2 * 9, 4, 3, dtype=torch.double)).requires_grad_()
    mask = torch.rand(1, 2 * 9, 4, 3, dtype=torch.double, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.double, requires_grad=True)

    def f(x, offset, mask, weight):
        return modulated_deform_conv2d(x, offset, mask, weight, None, 1, 1, 1, 1, 2)

    assert torch.autograd.gradcheck(
        f, (x, offset, mask, weight), eps=1e-6, atol=1e-5, fast_mode=True
    )
    f(x, offset, mask, weight).square().sum().backward()
    assert offset.grad.abs().sum() > 0 and mask.grad.abs().sum() > 0


def test_dcn_pack_starts_on_the_grid_and_follows_a_base_offset():
    torch.manual_seed(0)
    pack = DCNPack(4, 4, 3, padding=1, deform_groups=2, feature_channels=6)
    x, feature = torch.randn(2, 4, 8, 9), torch.randn(2, 6, 8, 9)
    plain = F.conv2d(x, pack.weight, None, padding=1)
    torch.testing.assert_close(pack(x, feature), 0.5 * plain + pack.bias[:, None, None])
    flow = torch.zeros(2, 2, 8, 9)
    flow[:, 1] = -2.0  # y displacement: sample x(p − 2 rows)
    out = pack(x, feature, flow_to_offset(flow, 2, 9))
    shifted = F.pad(x[..., :-2, :], (0, 0, 2, 0))
    expected = 0.5 * F.conv2d(shifted, pack.weight, None, padding=1) + pack.bias[:, None, None]
    torch.testing.assert_close(out[..., 3:-1, :], expected[..., 3:-1, :], atol=1e-5, rtol=0)
    (out.sum()).backward()
    assert pack.conv_offset.weight.grad.abs().sum() > 0


def test_shape_errors():
    layer = ModulatedDeformConv2d(4, 4, 3, padding=1, deform_groups=2)
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match="offset must have shape"):
        layer(x, torch.zeros(1, 18, 5, 5))
    with pytest.raises(ValueError, match="mask must have shape"):
        layer(x, torch.zeros(1, 36, 5, 5), torch.zeros(1, 9, 5, 5))
    with pytest.raises(ValueError, match="not divisible"):
        ModulatedDeformConv2d(6, 4, 3, deform_groups=4)


def _random_case(seed=0):
    """Input, offsets, masks, weight and bias of a 3×3 DCN with 2 deformable groups."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 9, 11, generator=g)
    offset = 2 * torch.randn(2, 2 * 2 * 9, 9, 11, generator=g)
    mask = torch.rand(2, 2 * 9, 9, 11, generator=g)
    weight, bias = torch.randn(6, 4, 3, 3, generator=g), torch.randn(6, generator=g)
    return x, offset, mask, weight, bias


def test_the_compiled_kernel_agrees_with_plain_pytorch():
    from emsrflow.archs import dcn

    args = _random_case()
    if dcn.compiled_kernel() is None:
        with pytest.raises(ValueError, match="torchvision does not import"):
            dcn.modulated_deform_conv2d(
                *args, padding=1, deform_groups=2, implementation="torchvision"
            )
        pytest.skip("torchvision does not import beside this torch (no compiled kernel)")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        case = [a.to(device) if a is not None else None for a in args]
        plain = dcn.modulated_deform_conv2d(
            *case, padding=1, deform_groups=2, implementation="torch"
        )
        compiled = dcn.modulated_deform_conv2d(
            *case, padding=1, deform_groups=2, implementation="torchvision"
        )
        torch.testing.assert_close(compiled, plain, atol=1e-4, rtol=1e-4)
