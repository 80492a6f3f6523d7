"""Convolutional feature stacks of ImageNet classifiers (VGG16, VGG19, AlexNet).

The modules are laid out exactly like torchvision's ``features`` (same indices of the
convolutions, ReLUs and max-poolings), so that the state-dict files torchvision
distributes (``vgg16-397923af.pth``, ``vgg19-dcbb9e9d.pth``,
``alexnet-owt-7be5be79.pth``) load by key, without torchvision. Nothing is ever
downloaded: :func:`load_backbone` reads a local file, and a :class:`Backbone` built
without one has random weights (useful only for tests).

Layer names
    VGG: ``conv{b}_{k}``, ``relu{b}_{k}`` (block ``b`` = 1…5, convolution ``k`` in the
    block) and ``pool{b}``; VGG16 ends at ``relu5_3``, VGG19 at ``relu5_4``.
    AlexNet: ``conv1``…``conv5``, ``relu1``…``relu5``, ``pool1``, ``pool2``, ``pool5``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "backbone_layers",
    "load_backbone",
    "load_backbone_weights",
    "load_checked",
    "load_state_dict_file",
]

#: Names of the supported backbones.
BACKBONES = ("vgg16", "vgg19", "alexnet")

#: Per-channel (R, G, B) mean and standard deviation of the ImageNet normalisation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Convolutions per block; every block ends with a 2×2 max-pooling (torchvision's cfgs).
_VGG_BLOCKS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
_VGG_CHANNELS = (64, 128, 256, 512, 512)


def _vgg_features(blocks: Sequence[int]) -> tuple[nn.Sequential, dict[str, int]]:
    """Build a VGG feature stack and the index of every named layer in it."""
    layers: list[nn.Module] = []
    names: dict[str, int] = {}
    channels = 3
    for block, (convs, width) in enumerate(zip(blocks, _VGG_CHANNELS, strict=True), start=1):
        for k in range(1, convs + 1):
            names[f"conv{block}_{k}"] = len(layers)
            names[f"relu{block}_{k}"] = len(layers) + 1
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU()]
            channels = width
        names[f"pool{block}"] = len(layers)
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers), names


def _alexnet_features() -> tuple[nn.Sequential, dict[str, int]]:
    """Build the AlexNet feature stack (torchvision's "one weird trick" variant)."""
    layers = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )
    names = {"pool1": 2, "pool2": 5, "pool5": 12}
    for k, index in enumerate((0, 3, 6, 8, 10), start=1):
        names[f"conv{k}"], names[f"relu{k}"] = index, index + 1
    return layers, names


def _build(name: str) -> tuple[nn.Sequential, dict[str, int]]:
    """Return the feature stack and layer indices of the backbone ``name``."""
    if name in _VGG_BLOCKS:
        return _vgg_features(_VGG_BLOCKS[name])
    if name == "alexnet":
        return _alexnet_features()
    raise ValueError(f"unknown backbone {name!r}: use one of {', '.join(BACKBONES)}")


def backbone_layers(name: str) -> tuple[str, ...]:
    """Return the layer names of a backbone, in the order they are computed.

    Parameters
    ----------
    name : str
        ``"vgg16"``, ``"vgg19"`` or ``"alexnet"``.

    Returns
    -------
    tuple of str
        Names accepted by :meth:`Backbone.forward`.
    """
    names = _build(name)[1]
    return tuple(sorted(names, key=names.__getitem__))


class Backbone(nn.Module):
    """Convolutional feature stack of an ImageNet classifier, tapped at named layers.

    The state dict has torchvision's keys ``features.{i}.weight`` and
    ``features.{i}.bias``; the normalisation constants are non-persistent buffers.

    Parameters
    ----------
    name : str
        ``"vgg16"``, ``"vgg19"`` or ``"alexnet"``. The weights are random: use
        :func:`load_backbone` for ImageNet weights.

    Attributes
    ----------
    name : str
        The backbone's name.
    features : torch.nn.Sequential
        The layers, indexed as in torchvision.
    layer_index : dict of str to int
        Index in :attr:`features` of every named layer.
    """

    def __init__(self, name: str):
        super().__init__()
        self.features, self.layer_index = _build(name)
        self.name = name
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)

    def preprocess(self, x: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """Replicate grey images to three channels and apply the ImageNet normalisation.

        Parameters
        ----------
        x : torch.Tensor
            Images of shape (N, 1, H, W) or (N, 3, H, W), values in [0, 1].
        normalize : bool, optional
            Subtract the ImageNet mean and divide by its standard deviation; with
            ``False`` the (three-channel) images are returned as they are.

        Returns
        -------
        torch.Tensor
            Images of shape (N, 3, H, W).

        Raises
        ------
        ValueError
            If ``x`` is not a 4D tensor with 1 or 3 channels.
        """
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(
                f"{self.name} expects images of shape (N, 1 or 3, H, W), got {tuple(x.shape)}"
            )
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if normalize:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return x

    def forward(
        self, x: torch.Tensor, layers: Sequence[str], *, normalize: bool = True
    ) -> dict[str, torch.Tensor]:
        """Return the activations at the named layers.

        Only the layers up to the deepest one requested are computed.

        Parameters
        ----------
        x : torch.Tensor
            Images of shape (N, 1, H, W) or (N, 3, H, W) with values in [0, 1]; grey
            images are replicated to three channels.
        layers : sequence of str
            Layer names (see :func:`backbone_layers`), e.g. ``["relu1_2", "relu3_3"]``.
        normalize : bool, optional
            Apply the ImageNet normalisation first (default). With ``False`` the images
            are fed as they are, for callers with their own scaling (LPIPS).

        Returns
        -------
        dict of str to torch.Tensor
            Activations, keyed and ordered as ``layers``.

        Raises
        ------
        ValueError
            If no layer or an unknown layer is requested, or ``x`` has a wrong shape.
        """
        if isinstance(layers, str):
            layers = [layers]
        unknown = [layer for layer in layers if layer not in self.layer_index]
        if unknown or not layers:
            raise ValueError(
                f"{self.name} has no layer {', '.join(map(repr, unknown)) or '(none given)'}: "
                f"use some of {', '.join(backbone_layers(self.name))}"
            )
        wanted = {self.layer_index[layer]: layer for layer in layers}
        h = self.preprocess(x, normalize=normalize)
        taps = {}
        for index in range(max(wanted) + 1):
            h = self.features[index](h)
            if index in wanted:
                taps[wanted[index]] = h
        return {layer: taps[layer] for layer in layers}


def load_state_dict_file(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Read a file holding a mapping of names to tensors (``torch.load``, weights only).

    Parameters
    ----------
    path : str or pathlib.Path
        File written by ``torch.save``: the mapping itself, or (BasicSR's files) a
        mapping holding it under ``"params"``.
    what : str
        What the file holds, for the error messages (e.g. ``"vgg16 weights"``).

    Returns
    -------
    dict of str to torch.Tensor
        The file's tensors, on the CPU.

    Raises
    ------
    ValueError
        If the file does not exist, cannot be read by ``torch.load`` with
        ``weights_only=True``, or does not hold a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights-only errors alike
        raise ValueError(f"{what} file {path} is not a readable PyTorch file: {error}") from error
    if isinstance(state, Mapping) and isinstance(state.get("params"), Mapping):
        state = state["params"]
    if not isinstance(state, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise ValueError(f"{what} file {path} does not hold a mapping of names to tensors")
    return dict(state)


def load_backbone(name: str, path: str | Path) -> Backbone:
    """Build a backbone and load its ImageNet weights from a local torchvision file.

    Parameters
    ----------
    name : str
        ``"vgg16"``, ``"vgg19"`` or ``"alexnet"``.
    path : str or pathlib.Path
        State-dict file: the whole torchvision model's (``features.*`` and the ignored
        ``classifier.*``, e.g. ``vgg19-dcbb9e9d.pth``) or that of its ``features`` only
        (keys ``features.{i}.*`` or ``{i}.*``).

    Returns
    -------
    Backbone
        In eval mode, with ``requires_grad`` off for every parameter.

    Raises
    ------
    ValueError
        If ``name`` is unknown, or the file is absent, unreadable, lacks keys, holds
        unexpected ones or tensors of the wrong shape (the message names the file).
    """
    return load_backbone_weights(Backbone(name), path)


def load_backbone_weights(backbone: Backbone, path: str | Path) -> Backbone:
    """Fill a backbone with its ImageNet weights from a local torchvision file.

    Parameters
    ----------
    backbone : Backbone
        The backbone to fill (e.g. one inside a larger network).
    path : str or pathlib.Path
        State-dict file, as for :func:`load_backbone`.

    Returns
    -------
    Backbone
        ``backbone``, in eval mode, with ``requires_grad`` off for every parameter.

    Raises
    ------
    ValueError
        If the file is absent, unreadable, lacks keys, holds unexpected ones or tensors
        of the wrong shape (the message names the file).
    """
    what = f"{backbone.name} weights"
    state = load_state_dict_file(path, what)
    if any(key.startswith("features.") for key in state):
        state = {
            key.removeprefix("features."): value
            for key, value in state.items()
            if not key.startswith("classifier.")
        }
    load_checked(backbone.features, state, path, what, prefix="features.")
    return backbone.eval().requires_grad_(False)


def load_checked(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str | Path,
    what: str,
    *,
    prefix: str = "",
) -> nn.Module:
    """Load a file's state dict into ``module`` after checking its keys and shapes.

    Parameters
    ----------
    module : torch.nn.Module
        Module to fill.
    state : mapping
        The file's tensors (:func:`load_state_dict_file`), keyed as ``module``'s.
    path : str or pathlib.Path
        The file, for the error messages.
    what : str
        What the file holds, for the error messages.
    prefix : str, optional
        Shown before the keys in the messages (the file's own key prefix).

    Returns
    -------
    torch.nn.Module
        ``module``.

    Raises
    ------
    ValueError
        If ``state`` lacks keys, holds unexpected ones or tensors of the wrong shape
        (the message names the file and the keys).
    """
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong = [
        f"{key} {tuple(state[key].shape)} (expected {tuple(value.shape)})"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    for problem, keys in (
        ("lacks the keys", missing),
        ("holds unexpected keys", unexpected),
        ("holds tensors of the wrong shape:", wrong),
    ):
        if keys:
            shown = ", ".join(f"{prefix}{key}" for key in keys[:6])
            shown += ", …" if len(keys) > 6 else ""
            raise ValueError(f"{what} file {path} {problem} {shown}")
    module.load_state_dict(state)
    return module
