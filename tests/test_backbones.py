"""ImageNet backbones laid out as torchvision's, loaded from local state-dict files."""

import pytest
import torch

from emsrflow.archs.backbones import BACKBONES, Backbone, backbone_layers, load_backbone

# torchvision's ``features`` layouts: index of every convolution → its weight shape.
VGG16_CONVS = {
    0: (64, 3),
    2: (64, 64),
    5: (128, 64),
    7: (128, 128),
    10: (256, 128),
    12: (256, 256),
    14: (256, 256),
    17: (512, 256),
    19: (512, 512),
    21: (512, 512),
    24: (512, 512),
    26: (512, 512),
    28: (512, 512),
}
VGG19_CONVS = {
    0: (64, 3),
    2: (64, 64),
    5: (128, 64),
    7: (128, 128),
    10: (256, 128),
    12: (256, 256),
    14: (256, 256),
    16: (256, 256),
    19: (512, 256),
    21: (512, 512),
    23: (512, 512),
    25: (512, 512),
    28: (512, 512),
    30: (512, 512),
    32: (512, 512),
    34: (512, 512),
}
EXPECTED = {
    "vgg16": {f"features.{i}.weight": (o, c, 3, 3) for i, (o, c) in VGG16_CONVS.items()},
    "vgg19": {f"features.{i}.weight": (o, c, 3, 3) for i, (o, c) in VGG19_CONVS.items()},
    "alexnet": {
        "features.0.weight": (64, 3, 11, 11),
        "features.3.weight": (192, 64, 5, 5),
        "features.6.weight": (384, 192, 3, 3),
        "features.8.weight": (256, 384, 3, 3),
        "features.10.weight": (256, 256, 3, 3),
    },
}
for _shapes in EXPECTED.values():
    _shapes.update({key.replace("weight", "bias"): (s[0],) for key, s in list(_shapes.items())})


def torchvision_state(name, seed=0, classifier=True):
    """Random tensors in the key layout of torchvision's whole model."""
    generator = torch.Generator().manual_seed(seed)
    state = {
        key: 0.05 * torch.randn(shape, generator=generator) for key, shape in EXPECTED[name].items()
    }
    if classifier:
        state["classifier.0.weight"] = torch.randn(10, 7, generator=generator)
        state["classifier.0.bias"] = torch.randn(10, generator=generator)
    return state


@pytest.mark.parametrize("name", BACKBONES)
def test_state_dict_has_the_torchvision_keys_and_shapes(name):
    state = Backbone(name).state_dict()
    assert {key: tuple(value.shape) for key, value in state.items()} == EXPECTED[name]


@pytest.mark.parametrize("name", BACKBONES)
def test_full_torchvision_file_loads_frozen(name, tmp_path):
    path = tmp_path / f"{name}.pth"
    state = torchvision_state(name)
    torch.save(state, path)
    backbone = load_backbone(name, path)
    assert not backbone.training
    assert not any(p.requires_grad for p in backbone.parameters())
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def test_features_only_file_loads(tmp_path):
    state = torchvision_state("alexnet", classifier=False)
    torch.save({key.removeprefix("features."): v for key, v in state.items()}, tmp_path / "a.pth")
    backbone = load_backbone("alexnet", tmp_path / "a.pth")
    torch.testing.assert_close(backbone.features[3].weight, state["features.3.weight"])


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"nowhere\.pth does not exist"):
        load_backbone("vgg19", tmp_path / "nowhere.pth")


def test_unreadable_file_names_the_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pth is not a readable PyTorch file"):
        load_backbone("alexnet", path)


def test_missing_key_names_the_file_and_key(tmp_path):
    state = torchvision_state("alexnet")
    del state["features.8.bias"]
    torch.save(state, tmp_path / "alex.pth")
    with pytest.raises(ValueError, match=r"alex\.pth lacks the keys features\.8\.bias"):
        load_backbone("alexnet", tmp_path / "alex.pth")


def test_vgg19_file_is_not_a_vgg16(tmp_path):
    torch.save(torchvision_state("vgg19"), tmp_path / "vgg19.pth")
    with pytest.raises(ValueError, match=r"vgg19\.pth lacks the keys features\.17\.weight"):
        load_backbone("vgg16", tmp_path / "vgg19.pth")


def test_wrong_shape_names_the_file_and_key(tmp_path):
    state = torchvision_state("alexnet")
    state["features.3.weight"] = torch.zeros(192, 64, 3, 3)
    torch.save(state, tmp_path / "alex.pth")
    with pytest.raises(
        ValueError, match=r"alex\.pth holds tensors of the wrong shape: features\.3"
    ):
        load_backbone("alexnet", tmp_path / "alex.pth")


def test_unknown_backbone_and_layer():
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'"):
        Backbone("resnet50")
    with pytest.raises(ValueError, match="has no layer 'relu5_4'"):
        Backbone("vgg16")(torch.rand(1, 1, 16, 16), ["relu5_4"])
    with pytest.raises(ValueError, match=r"shape \(N, 1 or 3, H, W\)"):
        Backbone("vgg16")(torch.rand(1, 2, 16, 16), ["relu1_1"])


def test_layer_names():
    assert backbone_layers("vgg19")[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
    relus = [layer for layer in backbone_layers("vgg19") if layer.startswith("relu")]
    assert len(relus) == 16 and relus[-1] == "relu5_4"
    assert [layer for layer in backbone_layers("vgg16") if layer.startswith("relu")][
        -1
    ] == "relu5_3"
    assert [layer for layer in backbone_layers("alexnet") if layer.startswith("relu")] == [
        f"relu{k}" for k in range(1, 6)
    ]


def test_grey_equals_three_equal_channels():
    torch.manual_seed(0)
    backbone = Backbone("vgg16").eval()
    grey = torch.rand(2, 1, 20, 24)
    for normalize in (True, False):
        a = backbone(grey, ["relu2_2"], normalize=normalize)["relu2_2"]
        b = backbone(grey.repeat(1, 3, 1, 1), ["relu2_2"], normalize=normalize)["relu2_2"]
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_normalisation_is_imagenet_and_optional():
    torch.manual_seed(0)
    backbone = Backbone("alexnet").eval()
    x = torch.rand(1, 3, 40, 40)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = backbone((x - mean) / std, ["conv1"], normalize=False)["conv1"]
    torch.testing.assert_close(backbone(x, ["conv1"])["conv1"], expected)


@pytest.mark.parametrize(
    ("name", "taps"),
    [
        (
            "vgg19",
            {"relu1_1": (64, 1), "relu2_1": (128, 2), "relu3_4": (256, 4), "relu4_4": (512, 8)}
            | {"relu5_4": (512, 16), "conv5_4": (512, 16), "pool5": (512, 32)},
        ),
        ("vgg16", {"relu1_2": (64, 1), "relu3_3": (256, 4), "relu5_3": (512, 16)}),
    ],
)
def test_vgg_taps_have_their_channels_and_strides(name, taps):
    out = Backbone(name).eval()(torch.rand(1, 1, 64, 96), list(taps))
    assert list(out) == list(taps)
    for layer, (channels, stride) in taps.items():
        assert out[layer].shape == (1, channels, 64 // stride, 96 // stride), layer
        if layer.startswith("relu"):
            assert out[layer].min() >= 0


def test_alexnet_taps_have_their_channels_and_sizes():
    out = Backbone("alexnet").eval()(torch.rand(1, 3, 63, 63), [f"relu{k}" for k in range(1, 6)])
    sizes = {"relu1": 15, "relu2": 7, "relu3": 3, "relu4": 3, "relu5": 3}
    channels = {"relu1": 64, "relu2": 192, "relu3": 384, "relu4": 256, "relu5": 256}
    for layer, tap in out.items():
        assert tap.shape == (1, channels[layer], sizes[layer], sizes[layer]), layer


def test_only_layers_up_to_the_deepest_are_computed():
    backbone = Backbone("vgg19").eval()
    calls = []
    for index, layer in enumerate(backbone.features):
        layer.register_forward_hook(lambda *_, index=index: calls.append(index))
    backbone(torch.rand(1, 1, 16, 16), ["relu2_1", "relu1_1"])
    assert calls == list(range(7))  # relu2_1 is features[6]
