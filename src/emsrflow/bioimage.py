"""Trained networks as bioimage.io model packages (format 0.5), and back.

:func:`export_package` turns a training checkpoint (rules ``train`` and ``iso_train``)
into a zipped bioimage.io model package that ``bioimageio test`` / ``bioimageio
predict`` (bioimage.io core) and other bioimage.io consumers run, and
:func:`load_package` rebuilds the network from such a package for ``emsrflow apply``.

What a package holds (every file but the description is listed with its sha256 in the
metadata, and the description's own ``sha256`` entries cover the weights, the
architecture and the test tensors):

``rdf.yaml``
    The bioimage.io model description: 2D input (batch, channel, y, x) of intensities
    in [0, 1] with the training voxel size as the y/x axis scales (nanometres), output
    of τ times the size at voxel size / τ, clipped to [0, 1] (``clip`` post-processing,
    as :func:`emsrflow.infer.predict_stack` does); its ``config.emsrflow`` field holds
    the provenance: architecture spec, τ, voxel sizes (z, y, x) of input and output,
    training strategy, loss, fold, training datasets, training settings, the sha256 of
    the study configuration and of every file.
``weights.pt``
    ``pytorch_state_dict`` weights (the ``state_dict`` of the network).
``emsrflow_archs.py``
    The architecture of those weights: one generated, self-contained file that needs
    only PyTorch. It bundles the source of :mod:`emsrflow.archs`, installs it under a
    private package name when imported, and its callable ``build_network(**spec)``
    builds the network exactly as :func:`emsrflow.archs.build_network` does; the
    package's architecture ``kwargs`` are the spec. This is the
    ``ArchitectureFromFileDescr`` form of bioimage.io: a consumer needs no emsrflow
    installation (an ``ArchitectureFromLibraryDescr`` pointing at
    ``emsrflow.archs`` would need emsrflow importable wherever the package is run).
``weights_torchscript.pt``
    TorchScript weights, where the network can be scripted (``torch.jit.script``) and
    the scripted module reproduces the network at other sizes than the test tensor's;
    otherwise they are left out and the reason is logged and recorded in the metadata.
    Tracing (``torch.jit.trace``) is not used: it freezes the padding of window
    attention for the traced size, and the traced networks fail at other sizes.
``test_input.npy``, ``test_output.npy``
    A small crop of held-out data and the network's output for it (bioimage.io's
    reproducibility test).
``cover.png``, ``README.md``
    LR | network | reference crop, and the documentation.

:func:`load_package` reads the zip itself (bioimage.io libraries are not needed to
apply a package): it refuses a damaged package (a file whose sha256 differs from the
recorded one), a foreign one (a bioimage.io model not exported by emsrflow, or no
bioimage.io package at all), an unregistered architecture, or a τ that contradicts the
voxel sizes, with an :class:`~emsrflow.errors.InputError` naming the file.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.resources
import importlib.util
import io as _io
import json
import logging
import math
import os
import re
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
import yaml
from torch import nn

from . import __version__
from .errors import InputError

__all__ = [
    "ARCHITECTURE_FILE",
    "FORMAT",
    "KINDS",
    "architecture_source",
    "check_intensities",
    "check_voxel_size",
    "config_hash",
    "export_package",
    "inspect",
    "intensity_profile",
    "isotropic_test_data",
    "load_package",
    "run_bioimageio_test",
    "sr_test_data",
]

log = logging.getLogger(__name__)

#: Value of ``config.emsrflow.format`` in every package emsrflow writes.
FORMAT = "emsrflow-bioimage-package"
_FORMAT_VERSION = 1
#: Kinds of models: super-resolution (rule ``train``), isotropic reconstruction
#: (rule ``iso_train``; τ = 1, the input is a plane of the z-interpolated stack).
KINDS = ("super-resolution", "isotropic")
ARCHITECTURE_FILE = "emsrflow_archs.py"
_CALLABLE = "build_network"
_WEIGHTS = "weights.pt"
_TORCHSCRIPT = "weights_torchscript.pt"
_TEST_INPUT, _TEST_OUTPUT = "test_input.npy", "test_output.npy"
_SAMPLE_INPUT, _SAMPLE_OUTPUT = "sample_input.tif", "sample_output.tif"
_COVER, _DOC = "cover.png", "README.md"
_RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
#: What the bundled architecture may import besides its own modules and the stdlib.
_BUNDLE_IMPORTS = frozenset({"torch", "numpy"})
_STDLIB = frozenset(sys.stdlib_module_names)
#: Input sizes the package declares: min + n·step pixels along y and x.
_SIZE_MIN, _SIZE_STEP = 16, 8
_EMSR_PAPER = (
    "Khateri M, Ghahremani M, Sierra A, Tohka J. No-Clean-Reference Image "
    "Super-Resolution: Application to Electron Microscopy. IEEE Transactions on "
    "Computational Imaging, 2024.",
    "https://arxiv.org/abs/2401.08115",
)

_ARCH_TEMPLATE = '''"""emsrflow network architectures, bundled for a bioimage.io model package.

Generated by emsrflow {version} from the source of its package ``emsrflow.archs`` so
that the model package needs only PyTorch. Importing this file installs those modules
under the private package name ``{package}`` (an import hook serving the sources
below); ``{callable}(**spec)`` builds a network as ``emsrflow.archs.build_network(spec)``
does, ``spec`` being the architecture ``kwargs`` of the package (``type``, ``scale``
and the network's sizes).
"""

import importlib
import importlib.abc
import importlib.util
import sys

_PACKAGE = {package!r}
_SOURCES = {sources}


class _BundledSources(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import hook serving the bundled modules as the package ``_PACKAGE``."""

    package = _PACKAGE

    def find_spec(self, fullname, path=None, target=None):
        if fullname == _PACKAGE:
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        head, _, name = fullname.rpartition(".")
        if head == _PACKAGE and name in _SOURCES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        name = module.__name__.rpartition(".")[2] if module.__name__ != _PACKAGE else "__init__"
        code = compile(_SOURCES[name], f"<{{_PACKAGE}}/{{name}}.py>", "exec")
        exec(code, module.__dict__)


if not any(getattr(finder, "package", None) == _PACKAGE for finder in sys.meta_path):
    sys.meta_path.append(_BundledSources())


def {callable}(**spec):
    """Build the network of an architecture spec (``type``, ``scale``, sizes)."""
    return importlib.import_module(_PACKAGE).build_network(spec)
'''


# ---------------------------------------------------------------------------------------
# Helpers


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """Plain YAML/JSON types: tuples → lists, NumPy scalars → Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of a study configuration: its canonical JSON (sorted keys, no spaces).

    Two runs with the same resolved configuration (after ``--config`` overrides) have
    the same hash, whatever the key order or YAML layout.
    """
    text = json.dumps(_plain(config), sort_keys=True, separators=(",", ":"), default=str)
    return _sha256(text.encode())


def architecture_source() -> str:
    """Source of :data:`ARCHITECTURE_FILE`: :mod:`emsrflow.archs` bundled in one file.

    The private package name is derived from the bundled sources, so that packages
    made from different versions of the architectures import side by side.
    """
    folder = importlib.resources.files("emsrflow.archs")
    sources = {
        entry.name.removesuffix(".py"): entry.read_text(encoding="utf-8")
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".py")
    }
    for name, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom):
                modules = [] if node.level == 1 else [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            outside = [m for m in modules if m.split(".")[0] not in _BUNDLE_IMPORTS | _STDLIB]
            if outside:
                raise ValueError(
                    f"emsrflow.archs.{name} imports {outside[0]} (line {node.lineno}), which "
                    "is outside emsrflow.archs, PyTorch, NumPy and the standard library: the "
                    "bundled architecture of a model package would not be self-contained"
                )
    digest = _sha256(json.dumps(sources, sort_keys=True).encode())[:16]
    lines = ["{"]
    lines += [f"    {name!r}: {text!r}," for name, text in sources.items()]
    lines.append("}")
    return _ARCH_TEMPLATE.format(
        version=__version__,
        package=f"_emsrflow_archs_{digest}",
        callable=_CALLABLE,
        sources="\n".join(lines),
    )


def _as_crop(array: Any, what: str) -> np.ndarray:
    """Return a 2D float32 image in [0, 1] (integers scaled by their dtype's maximum)."""
    from .io import to_float01

    image = to_float01(np.asarray(array))
    if image.ndim != 2:
        raise ValueError(f"{what} must be a 2D image (y, x), got shape {image.shape}")
    if not np.isfinite(image).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    return image


def _voxel(values: Sequence[float] | None, what: str) -> tuple[float, float, float] | None:
    if values is None:
        return None
    voxel = tuple(float(v) for v in values)
    if len(voxel) != 3 or not all(math.isfinite(v) and v > 0 for v in voxel):
        raise ValueError(f"{what} must be three positive numbers (z, y, x) in nm, got {values}")
    return voxel  # type: ignore[return-value]


def _forward(model: nn.Module, image: np.ndarray) -> np.ndarray:
    """Run the network on one (h, w) image; float32 on the CPU, clipped to [0, 1]."""
    with torch.inference_mode():
        out = model(torch.from_numpy(np.ascontiguousarray(image))[None, None])
    return out.clamp(0.0, 1.0).numpy().astype(np.float32)


def _scripted(model: nn.Module, image: np.ndarray) -> tuple[Any, str | None]:
    """TorchScript of ``model`` checked at two sizes, or None and why it cannot be made."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of export
            scripted = torch.jit.script(model)
    except Exception as err:  # the TorchScript compiler raises several kinds of errors
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        where = next((line for line in lines if line.startswith("File ")), "")
        where = re.sub(r'File "(?:.*/)?([^/"]+)", line (\d+)', r"at \1 line \2", where)
        message = " ".join(filter(None, [lines[0] if lines else "", where]))
        return None, f"torch.jit.script fails: {type(err).__name__}: {message}"
    h, w = image.shape
    odd = image[: max(1, h - 3), : max(1, w - 5)]  # another size, not a window multiple
    for sample in (image, odd):
        expected = _forward(model, sample)
        got = _forward(scripted, sample)
        if got.shape != expected.shape or not np.allclose(got, expected, atol=1e-5, rtol=0):
            return None, (f"the scripted network differs from the network at size {sample.shape}")
    return scripted, None


def _check_architecture(path: Path, model: nn.Module, image: np.ndarray, output: np.ndarray):
    """Check that the bundled architecture file reproduces the network's ``output``.

    The network is built from the file as bioimage.io does, with the same weights.
    """
    name = f"_emsrflow_check_{_file_sha256(path)[:16]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    network = getattr(module, _CALLABLE)(**model.spec)
    network.load_state_dict(model.state_dict())
    got = _forward(network.eval(), image)
    if got.shape != output.shape or not np.allclose(got, output, atol=1e-6, rtol=0):
        raise ValueError(
            f"the bundled architecture {ARCHITECTURE_FILE} does not reproduce the network "
            f"{model.spec['type']}"
        )


def _cover(path: Path, panels: Sequence[tuple[str, np.ndarray]]) -> None:
    """PNG of the crops side by side, each titled (inputs enlarged to the output size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(p.shape[0] for _, p in panels)
    # 2:1, the aspect ratio bioimage.io asks covers to have
    fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 1.2 * len(panels)))
    for ax, (title, image) in zip(np.atleast_1d(axes), panels, strict=True):
        factor = max(1, size // image.shape[0])
        ax.imshow(np.kron(image, np.ones((factor, factor))), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _documentation(info: Mapping[str, Any], torchscript_reason: str | None) -> str:
    m = info
    voxel_in, voxel_out = m["voxel_size_nm"]["input"], m["voxel_size_nm"]["output"]
    training = m["training"]
    nm = "×".join(f"{v:g}" for v in voxel_in)
    nm_out = "×".join(f"{v:g}" for v in voxel_out)
    if m["kind"] == "isotropic":
        what = (
            f"Isotropic reconstruction of anisotropic 3D EM stacks (A2I-3DEM): the "
            f"`{m['spec']['type']}` network restores an axial (xz or yz) plane of the stack "
            f"after the stack was interpolated along z, cubic, to its lateral pixel size "
            f"({voxel_in[2]:g} nm). It keeps the plane's size (τ = 1)."
        )
        apply = (
            "`emsrflow apply --model this.zip stack.tif isotropic.ome.zarr` interpolates "
            "the stack along z and runs the network on every xz and yz plane (the two "
            "passes are averaged)."
        )
    else:
        what = (
            f"Super-resolution of electron-microscopy sections: the `{m['spec']['type']}` "
            f"network enlarges a section τ = {m['tau']} times, from {voxel_in[2]:g} nm "
            f"pixels to {voxel_out[2]:g} nm pixels, and removes noise."
        )
        apply = (
            "`emsrflow apply --model this.zip lr.tif sr.ome.zarr` super-resolves a whole "
            "volume section by section, in overlapping tiles blended smoothly."
        )
    rows = [
        ("architecture", f"`{m['spec']['type']}` ({m['parameters']:,} parameters)"),
        ("τ (upsampling factor)", str(m["tau"])),
        ("input voxel size (z, y, x)", f"{nm} nm"),
        ("output voxel size (z, y, x)", f"{nm_out} nm"),
        ("training strategy", str(training.get("strategy") or "–")),
        ("loss", str(training.get("loss") or "–")),
        ("fold (held-out animal)", str(training.get("fold") or "–")),
        ("training datasets", ", ".join(training.get("datasets") or []) or "–"),
        ("study configuration sha256", f"`{m.get('config_sha256') or '–'}`"),
        ("emsrflow version", m["emsrflow"]),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    protocol = (
        "self-supervised on the stack's own xy planes"
        if m["kind"] == "isotropic"
        else "leave-one-animal-out cross-validation: the fold's animal was held out"
    )
    torchscript = (
        "TorchScript weights are included."
        if torchscript_reason is None
        else f"No TorchScript weights: {torchscript_reason}."
    )
    return f"""# {m["name"]}

{what}

| | |
|---|---|
{table}

## Input and output

One 2D image (batch, channel, y, x), float32 intensities in [0, 1]: divide 8-bit data
by 255 and 16-bit data by 65535. Any size of at least {_SIZE_MIN} pixels per side works
(the package declares {_SIZE_MIN} + n·{_SIZE_STEP}); the output is τ = {m["tau"]} times as
large and clipped to [0, 1]. The network was trained on data of the input voxel size
above: data of another pixel size should be resampled to it first.

## How to apply

- {apply}
- `emsrflow inspect this.zip` prints the architecture, τ, voxel sizes and the training
  provenance.
- `bioimageio predict this.zip --inputs image.npy` (bioimage.io core) and other
  bioimage.io consumers run the `pytorch_state_dict` weights; the architecture is the
  self-contained file `{ARCHITECTURE_FILE}` (PyTorch only). {torchscript}

## Training

Trained by emsrflow's Snakemake workflow ({protocol}).
The training settings and the file checksums are in the `config.emsrflow` field of the
package description.

## Validation

`test_input.npy` is a crop of held-out data and `test_output.npy` the network's output
for it; `bioimageio test this.zip` reproduces it. The study's evaluation (PSNR, SSIM,
FRC against the acquired HR, per held-out dataset) is in its `results/tables/`. The
cover shows the test crop: input, network output and reference.

## Limitations

Trained on a few datasets of one imaging setup; check the output against acquired
high-resolution data before you rely on it. Noise and contrast unlike the training
data's can produce artefacts.

## Citation

{_EMSR_PAPER[0]} {_EMSR_PAPER[1]}
"""


# ---------------------------------------------------------------------------------------
# Export


def export_package(
    checkpoint: str | os.PathLike | nn.Module,
    out_zip: str | os.PathLike,
    *,
    test_input: np.ndarray,
    voxel_size_nm: Sequence[float],
    reference: np.ndarray | None = None,
    kind: str = "super-resolution",
    name: str | None = None,
    strategy: str | None = None,
    loss: str | None = None,
    fold: str | None = None,
    training_datasets: Sequence[str] = (),
    config_sha256: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    authors: Sequence[Mapping[str, str]] = ({"name": "emsrflow"},),
    license: str = "MIT",
    torchscript: bool = True,
    test: bool = True,
) -> dict[str, Any]:
    """Write a trained network as a bioimage.io model package (format 0.5, zipped).

    Parameters
    ----------
    checkpoint : str, os.PathLike or torch.nn.Module
        Training checkpoint or model file (rules ``train``, ``iso_train``), or a network
        built by :func:`emsrflow.archs.build_network` (it has a ``spec``).
    out_zip : str or os.PathLike
        The package, written atomically.
    test_input : numpy.ndarray
        (h, w) crop of held-out input data, intensities as :func:`emsrflow.io.to_float01`
        (for an isotropic model: a crop of an axial plane of the z-interpolated stack).
        Cropped to a size the package declares (16 + n·8 pixels a side).
    voxel_size_nm : sequence of float
        (z, y, x) voxel size of the input data in nm; the output's is (z, y/τ, x/τ).
    reference : numpy.ndarray, optional
        The same field of view at the output resolution (τh, τw), for the cover.
    kind : {'super-resolution', 'isotropic'}
        What the network does.
    name : str, optional
        Package name (default: made from the architecture, τ, strategy, loss and fold).
    strategy, loss, fold : str, optional
        Training strategy, loss and held-out animal, recorded in the metadata.
    training_datasets : sequence of str
        Dataset ids the network was trained on.
    config_sha256 : str, optional
        :func:`config_hash` of the study configuration.
    metadata : mapping, optional
        Further provenance stored under ``config.emsrflow.extra`` (e.g. ρ).
    authors : sequence of mapping
        bioimage.io authors (``name``, optionally ``affiliation``, ``email``,
        ``github_user``, ``orcid``).
    license : str
        SPDX license id of the package.
    torchscript : bool
        Add TorchScript weights where the network can be scripted.
    test : bool
        Run bioimage.io's model test (:func:`run_bioimageio_test`) on the written package;
        a failure raises and leaves no package.

    Returns
    -------
    dict
        :func:`inspect` of the written package, plus ``test`` (the test summary's
        status and details) when ``test`` is true.

    Raises
    ------
    ValueError
        If an argument is invalid, or the package fails bioimage.io's validation or test.
    """
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5

    from .archs import build_network
    from .io import atomic_output
    from .train import load_model

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if isinstance(checkpoint, nn.Module):
        model = build_network(checkpoint.spec)
        model.load_state_dict(checkpoint.state_dict())
        model.eval()
    else:
        model = load_model(checkpoint, device="cpu")
    model = model.float().cpu().eval()
    spec, tau = _plain(dict(model.spec)), int(model.scale)
    if kind == "isotropic" and tau != 1:
        raise ValueError(f"an isotropic model keeps the size (τ = 1), this one has τ = {tau}")
    voxel_in = _voxel(voxel_size_nm, "voxel_size_nm")
    voxel_out = (voxel_in[0], voxel_in[1] / tau, voxel_in[2] / tau)
    image = _as_crop(test_input, "test_input")
    h, w = (max(0, n - _SIZE_MIN) // _SIZE_STEP * _SIZE_STEP + _SIZE_MIN for n in image.shape)
    if min(image.shape) < _SIZE_MIN:
        raise ValueError(
            f"test_input must be at least {_SIZE_MIN} pixels a side, got {image.shape}"
        )
    image = np.ascontiguousarray(image[:h, :w])
    if reference is not None:
        reference = _as_crop(reference, "reference")[: h * tau, : w * tau]
        if reference.shape != (h * tau, w * tau):
            raise ValueError(
                f"reference must cover test_input at τ = {tau} ({h * tau}×{w * tau} pixels "
                f"or more), got {reference.shape}"
            )
    output = _forward(model, image)
    parameters = sum(p.numel() for p in model.parameters())
    training = {
        "strategy": strategy,
        "loss": loss,
        "fold": fold,
        "datasets": list(training_datasets),
    }
    if not isinstance(checkpoint, nn.Module):
        with contextlib.suppress(Exception):
            saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
            training["settings"] = _plain(saved.get("settings"))
            training["steps"] = int(saved.get("step"))
    label = "isotropic reconstruction" if kind == "isotropic" else f"x{tau} super-resolution"
    details = " ".join(str(v) for v in (strategy, loss, fold and f"fold {fold}") if v)
    name = name or f"emsrflow {spec['type']} {label}" + (f" ({details})" if details else "")
    info: dict[str, Any] = {
        "format": FORMAT,
        "format_version": _FORMAT_VERSION,
        "emsrflow": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "name": name,
        "kind": kind,
        "spec": spec,
        "tau": tau,
        "parameters": parameters,
        "voxel_size_nm": {"input": list(voxel_in), "output": list(voxel_out)},
        "training": training,
        "config_sha256": config_sha256,
        "extra": _plain(dict(metadata or {})),
    }

    with tempfile.TemporaryDirectory(prefix="emsrflow-package-") as tmp:
        folder = Path(tmp)
        torch.save(model.state_dict(), folder / _WEIGHTS)
        (folder / ARCHITECTURE_FILE).write_text(architecture_source(), encoding="utf-8")
        _check_architecture(folder / ARCHITECTURE_FILE, model, image, output)
        np.save(folder / _TEST_INPUT, image[None, None])
        np.save(folder / _TEST_OUTPUT, output)
        tifffile.imwrite(folder / _SAMPLE_INPUT, image)  # the same, for bioimage.io's pages
        tifffile.imwrite(folder / _SAMPLE_OUTPUT, output[0, 0])
        scripted, reason = _scripted(model, image) if torchscript else (None, "not asked for")
        if scripted is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.jit.save(scripted, str(folder / _TORCHSCRIPT))
        elif torchscript:
            log.warning("%s: no TorchScript weights for %s: %s", out_zip, spec["type"], reason)
        info["torchscript"] = {"included": scripted is not None, "reason": reason}
        panels = [("input" if kind == "isotropic" else f"LR ({voxel_in[2]:g} nm)", image)]
        panels.append((f"{spec['type']} ({voxel_out[2]:g} nm)", output[0, 0]))
        if reference is not None:
            panels.append(("reference", reference))
        _cover(folder / _COVER, panels)
        (folder / _DOC).write_text(_documentation(info, reason), encoding="utf-8")
        files = [_WEIGHTS, ARCHITECTURE_FILE, _TEST_INPUT, _TEST_OUTPUT, _COVER, _DOC]
        files += [_SAMPLE_INPUT, _SAMPLE_OUTPUT]
        files += [_TORCHSCRIPT] if scripted is not None else []
        info["files"] = {f: _file_sha256(folder / f) for f in sorted(files)}

        descr = _description(v0_5, folder, info, authors, license)
        with atomic_output(out_zip) as tmp_zip:
            try:
                save_bioimageio_package(descr, output_path=tmp_zip)
            except ValueError as err:
                raise ValueError(f"{out_zip}: the package is not valid: {err}") from err
            result = inspect(tmp_zip)
            if test:
                summary = run_bioimageio_test(tmp_zip)
                result["test"] = summary
                if summary["status"] != "passed":
                    failed = [d for d in summary["details"] if d["status"] == "failed"]
                    raise ValueError(f"{out_zip}: bioimage.io model test failed: {failed}")
    result["path"] = str(out_zip)
    return result


def _description(v0_5, folder, info, authors, license):
    """Describe the files in ``folder`` as a bioimage.io ModelDescr."""
    from bioimageio.spec.model.v0_5 import (
        ArchitectureFromFileDescr,
        Author,
        AxisId,
        BatchAxis,
        ChannelAxis,
        CiteEntry,
        ClipDescr,
        ClipKwargs,
        FileDescr,
        Identifier,
        InputTensorDescr,
        IntervalOrRatioDataDescr,
        OutputTensorDescr,
        ParameterizedSize,
        PytorchStateDictWeightsDescr,
        SizeReference,
        SpaceInputAxis,
        SpaceOutputAxis,
        TensorId,
        TorchscriptWeightsDescr,
        Version,
        WeightsDescr,
    )

    tau, (voxel_in, voxel_out) = info["tau"], info["voxel_size_nm"].values()
    data = IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0))
    size = ParameterizedSize(min=_SIZE_MIN, step=_SIZE_STEP)
    inputs = InputTensorDescr(
        id=TensorId("input"),
        description=(
            "2D EM image, intensities in [0, 1]"
            + (
                ", an axial plane of the stack interpolated along z to isotropic voxels"
                if info["kind"] == "isotropic"
                else f", {voxel_in[2]:g} nm pixels"
            )
        ),
        axes=[
            BatchAxis(),
            ChannelAxis(channel_names=[Identifier("intensity")]),
            SpaceInputAxis(id=AxisId("y"), size=size, scale=voxel_in[1], unit="nanometer"),
            SpaceInputAxis(id=AxisId("x"), size=size, scale=voxel_in[2], unit="nanometer"),
        ],
        test_tensor=FileDescr(source=folder / _TEST_INPUT),
        sample_tensor={"source": folder / _SAMPLE_INPUT},
        data=data,
    )
    outputs = OutputTensorDescr(
        id=TensorId("output"),
        description=f"the image at {voxel_out[2]:g} nm pixels (×{tau}), clipped to [0, 1]",
        axes=[
            BatchAxis(),
            ChannelAxis(channel_names=[Identifier("intensity")]),
            *(
                SpaceOutputAxis(
                    id=AxisId(axis),
                    size=SizeReference(tensor_id=TensorId("input"), axis_id=AxisId(axis)),
                    scale=voxel_out[i],
                    unit="nanometer",
                )
                for i, axis in ((1, "y"), (2, "x"))
            ),
        ],
        test_tensor=FileDescr(source=folder / _TEST_OUTPUT),
        sample_tensor={"source": folder / _SAMPLE_OUTPUT},
        data=data,
        postprocessing=[ClipDescr(kwargs=ClipKwargs(min=0.0, max=1.0))],
    )
    torch_version = Version(torch.__version__.split("+")[0])
    weights = WeightsDescr(
        pytorch_state_dict=PytorchStateDictWeightsDescr(
            source=folder / _WEIGHTS,
            architecture=ArchitectureFromFileDescr(
                source=folder / ARCHITECTURE_FILE,
                callable=Identifier(_CALLABLE),
                kwargs=info["spec"],
            ),
            pytorch_version=torch_version,
        ),
        torchscript=(
            TorchscriptWeightsDescr(
                source=folder / _TORCHSCRIPT,
                pytorch_version=torch_version,
                parent="pytorch_state_dict",
            )
            if info["torchscript"]["included"]
            else None
        ),
    )
    training = info["training"]
    task = "isotropic reconstruction" if info["kind"] == "isotropic" else "super-resolution"
    tags = ["electron-microscopy", "2d", "pytorch", "emsrflow", info["spec"]["type"]]
    tags += ["isotropic-reconstruction"] if info["kind"] == "isotropic" else ["super-resolution"]
    return v0_5.ModelDescr(
        name=info["name"],
        description=(
            f"{info['spec']['type']} {task} of electron-microscopy images"
            f" (τ = {tau}, {voxel_in[2]:g} → {voxel_out[2]:g} nm pixels)"
            + "".join(
                f", {k} {v}"
                for k, v in (
                    ("strategy", training["strategy"]),
                    ("loss", training["loss"]),
                    ("fold", training["fold"]),
                )
                if v
            )
            + "; exported by emsrflow."
        ),
        authors=[Author(**dict(a)) for a in authors],
        cite=[CiteEntry(text=_EMSR_PAPER[0], url=_EMSR_PAPER[1])],
        license=license,
        tags=tags,
        documentation={"source": folder / _DOC},
        covers=[{"source": folder / _COVER}],
        inputs=[inputs],
        outputs=[outputs],
        weights=weights,
        config={
            "bioimageio": {
                "architecture_type": info["spec"]["type"],
                "modality": "electron microscopy",
                "task": task,
                "model_parameter_count": info["parameters"],
            },
            "emsrflow": _plain(info),
        },
    )


def run_bioimageio_test(path: str | os.PathLike, *, devices: Sequence[str] | None = None) -> dict:
    """Run bioimage.io's model test (``bioimageio.core.test_model``) on a package.

    Every weight format is tested: the test tensors are reproduced, and the declared
    input sizes are run.

    Returns
    -------
    dict
        ``status`` ('passed' or 'failed') and ``details``: one dict per check
        (``name``, ``status``, ``errors``).
    """
    from bioimageio.core import test_model
    from loguru import logger

    logger.disable("bioimageio")  # its progress log; the summary is returned
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = test_model(Path(path), devices=list(devices) if devices else ["cpu"])
    finally:
        logger.enable("bioimageio")
    details = [
        {
            "name": d.name,
            "status": d.status,
            "errors": [f"{e.loc}: {e.msg}" for e in d.errors],
        }
        for d in summary.details
    ]
    return {"status": summary.status, "details": details}


def _centre(n: int, size: int) -> slice:
    start = max(0, (n - size) // 2)
    return slice(start, start + min(n, size))


def _voxel_of(volume: Any, given: Sequence[float] | None) -> tuple[float, float, float]:
    voxel = _voxel(given, "voxel size") or volume.voxel_size
    if voxel is None:
        raise InputError(f"{volume.path}: the file gives no voxel size; pass one (z, y, x nm)")
    return tuple(float(v) for v in voxel)  # type: ignore[return-value]


def sr_test_data(
    lr: str,
    *,
    scale: int,
    size: int = 64,
    reference: str | None = None,
    voxel_size_nm: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Test crop of a super-resolution package: the centre of an LR volume's middle section.

    Parameters
    ----------
    lr : str
        LR volume (see :func:`emsrflow.io.parse_path`), held out from training.
    scale : int
        τ of the network.
    size : int
        Crop side in LR pixels (smaller if the section is).
    reference : str, optional
        HR volume on the same field of view, τ times larger (rule ``resize``'s output):
        the same crop of it goes on the cover.
    voxel_size_nm : sequence of float, optional
        (z, y, x) of the LR volume, where its file gives none.

    Returns
    -------
    dict
        ``test_input``, ``reference`` (or None), ``voxel_size_nm`` and ``metadata``
        (``input_intensity``, the volume's :func:`intensity_profile`): keywords of
        :func:`export_package`.
    """
    from .io import open_volume

    with open_volume(lr) as volume:
        z = volume.shape[0] // 2
        rows, cols = (_centre(n, size) for n in volume.shape[1:])
        crop = volume[z, rows, cols]
        voxel = _voxel_of(volume, voxel_size_nm)
        profile = intensity_profile(volume)
    ref = None
    if reference is not None:
        with open_volume(reference) as hr:
            if hr.shape[0] <= z or hr.shape[1:] != tuple(n * scale for n in volume.shape[1:]):
                raise InputError(
                    f"{reference}: shape {hr.shape} is not the LR volume's {volume.shape} "
                    f"enlarged τ = {scale} times"
                )
            ref = hr[
                z,
                slice(rows.start * scale, rows.stop * scale),
                slice(cols.start * scale, cols.stop * scale),
            ]
    return {
        "test_input": crop,
        "reference": ref,
        "voxel_size_nm": voxel,
        "metadata": {"input_intensity": profile},
    }


def isotropic_test_data(
    stack: str,
    *,
    size: int = 64,
    reference: str | None = None,
    voxel_size_nm: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Test crop of an isotropic package: an axial plane of a stack, interpolated along z.

    The xz plane through the middle row of the anisotropic stack is interpolated, cubic
    along z, to ``round(slices · ρ)`` planes (:func:`emsrflow.isotropic.upsample_axis`,
    as the reconstruction does), ρ being the z voxel over the lateral one, and its
    centre is cropped.

    Parameters
    ----------
    stack : str
        Anisotropic stack (z, y, x).
    size : int
        Crop side in lateral pixels (smaller if the plane is).
    reference : str, optional
        Isotropic volume on the reconstruction's grid (rule ``iso_reference``), whose
        same plane goes on the cover.
    voxel_size_nm : sequence of float, optional
        (z, y, x) of the stack, where its file gives none.

    Returns
    -------
    dict
        ``test_input``, ``reference`` (or None), ``voxel_size_nm`` (the isotropic voxel)
        and ``metadata`` (``rho``, the stack's voxel size, its
        :func:`intensity_profile`): keywords of
        :func:`export_package`.
    """
    from .io import open_volume, to_float01
    from .isotropic import isotropic_depth, upsample_axis

    with open_volume(stack) as volume:
        voxel = _voxel_of(volume, voxel_size_nm)
        rho = voxel[0] / voxel[2]
        if not rho >= 1:
            raise InputError(f"{stack}: voxel size {voxel} nm: slices thinner than the pixels")
        y, cols = volume.shape[1] // 2, _centre(volume.shape[2], size)
        plane = to_float01(volume[:, y : y + 1, cols])[:, 0]
        depth = isotropic_depth(volume.shape[0], rho)
        profile = intensity_profile(volume)
    plane = upsample_axis(plane, 0, depth)
    rows = _centre(depth, size)
    ref = None
    if reference is not None:
        with open_volume(reference) as iso:
            if iso.shape[0] < rows.stop or iso.shape[1:] != volume.shape[1:]:
                raise InputError(
                    f"{reference}: shape {iso.shape} is not the reconstruction grid of "
                    f"{stack} ({depth}, {volume.shape[1]}, {volume.shape[2]})"
                )
            ref = iso[rows, y : y + 1, cols][:, 0]
    return {
        "test_input": plane[rows],
        "reference": ref,
        "voxel_size_nm": (voxel[2], voxel[1], voxel[2]),
        "metadata": {
            "rho": rho,
            "stack_voxel_size_nm": list(voxel),
            "input_intensity": profile,
        },
    }


# ---------------------------------------------------------------------------------------
# Import


def _read_package(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Read a package's description and files, and check them; see :func:`inspect`."""
    path = Path(path)
    if path.is_dir():  # an unzipped package: its files, by their paths inside it
        members = {
            f.relative_to(path).as_posix(): f.read_bytes() for f in path.rglob("*") if f.is_file()
        }
        return _check_members(path, members)
    if not path.is_file():
        raise InputError(f"{path}: package not found")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: archive.read(info) for info in archive.infolist()}
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise InputError(
            f"{path}: not a bioimage.io model package (not a zip file: {err})"
        ) from None
    except (zipfile.LargeZipFile, RuntimeError, ValueError) as err:
        raise InputError(f"{path}: damaged package: {err}") from err
    return _check_members(path, members)


def _check_members(path: Path, members: dict[str, bytes]):
    """Check a package's files (a zip's members or a folder's files); see :func:`inspect`."""
    rdf_name = next((n for n in _RDF_NAMES if n in members), None)
    rdf_name = rdf_name or next((n for n in members if n.endswith(".bioimageio.yaml")), None)
    if rdf_name is None:
        raise InputError(
            f"{path}: not a bioimage.io model package (no {' or '.join(_RDF_NAMES)} in it)"
        )
    try:
        rdf = yaml.safe_load(members[rdf_name].decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: damaged package: {rdf_name} is no YAML: {err}") from err
    if not isinstance(rdf, dict) or rdf.get("type") != "model":
        raise InputError(f"{path}: {rdf_name} does not describe a bioimage.io model")
    meta = (rdf.get("config") or {}).get("emsrflow")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(
            f"{path}: a bioimage.io model ({rdf.get('name')!r}) not exported by emsrflow "
            f"(its {rdf_name} has no config.emsrflow of format {FORMAT!r}); emsrflow applies "
            "only its own packages, run others with `bioimageio predict`"
        )
    if meta.get("format_version") != _FORMAT_VERSION:
        raise InputError(
            f"{path}: emsrflow package format version {meta.get('format_version')!r}; this "
            f"emsrflow ({__version__}) reads version {_FORMAT_VERSION}"
        )
    expected = dict(meta.get("files") or {})
    for entry in _sha256_entries(rdf):  # the description's own checksums
        expected.setdefault(Path(str(entry["source"])).name, entry["sha256"])
        if expected[Path(str(entry["source"])).name] != entry["sha256"]:
            raise InputError(
                f"{path}: damaged package: {rdf_name} gives two sha256 for {entry['source']}"
            )
    for name, sha in sorted(expected.items()):
        if name not in members:
            raise InputError(f"{path}: damaged package: {name} is missing")
        actual = _sha256(members[name])
        if actual != sha:
            raise InputError(
                f"{path}: damaged package: {name} has sha256 {actual}, the package "
                f"description records {sha}"
            )
    for required in (_WEIGHTS, ARCHITECTURE_FILE):
        if required not in expected:
            raise InputError(f"{path}: damaged package: {required} is not listed")
    return {"rdf": rdf, "rdf_name": rdf_name, "meta": meta}, members


def _sha256_entries(node: Any) -> list[dict[str, Any]]:
    """Every mapping with ``source`` and ``sha256`` in a description, recursively."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("source"), str) and isinstance(node.get("sha256"), str):
            found.append(node)
        for value in node.values():
            found += _sha256_entries(value)
    elif isinstance(node, list):
        for value in node:
            found += _sha256_entries(value)
    return found


def _summary(path: Path, package: Mapping[str, Any]) -> dict[str, Any]:
    """Summarise a checked package (:func:`inspect`), checking its architecture and τ."""
    from .archs import ARCHS

    meta, rdf = package["meta"], package["rdf"]
    spec = dict(meta.get("spec") or {})
    arch = spec.get("type")
    if arch not in ARCHS:
        raise InputError(
            f"{path}: architecture {arch!r} of the package is not registered in this "
            f"emsrflow ({__version__}); registered: {', '.join(ARCHS)}"
        )
    tau = meta.get("tau")
    voxel = meta.get("voxel_size_nm") or {}
    try:
        voxel_in = _voxel(voxel.get("input"), "input voxel size")
        voxel_out = _voxel(voxel.get("output"), "output voxel size")
    except ValueError as err:
        raise InputError(f"{path}: {err}") from None
    if (
        not isinstance(tau, int)
        or isinstance(tau, bool)
        or tau < 1
        or spec.get("scale") != tau
        or voxel_in is None
        or voxel_out is None
        or any(abs(voxel_in[i] / tau - voxel_out[i]) > 1e-6 * voxel_in[i] for i in (1, 2))
    ):
        raise InputError(
            f"{path}: τ unknown or inconsistent: τ = {tau!r}, network scale "
            f"{spec.get('scale')!r}, voxel sizes {voxel_in} → {voxel_out} nm"
        )
    if meta.get("kind") not in KINDS:
        raise InputError(f"{path}: unknown model kind {meta.get('kind')!r}")
    weights = sorted(k for k, v in (rdf.get("weights") or {}).items() if v)
    return {
        "path": str(path),
        "name": rdf.get("name"),
        "description": rdf.get("description"),
        "kind": meta["kind"],
        "architecture": arch,
        "spec": spec,
        "tau": tau,
        "parameters": meta.get("parameters"),
        "voxel_size_nm": {"input": list(voxel_in), "output": list(voxel_out)},
        "training": meta.get("training") or {},
        "config_sha256": meta.get("config_sha256"),
        "extra": meta.get("extra") or {},
        "emsrflow": meta.get("emsrflow"),
        "created": meta.get("created"),
        "format_version": rdf.get("format_version"),
        "weights": weights,
        "torchscript": meta.get("torchscript"),
        "files": dict(meta.get("files") or {}),
        "authors": [a.get("name") for a in rdf.get("authors") or [] if isinstance(a, dict)],
        "license": rdf.get("license"),
    }


def inspect(path: str | os.PathLike) -> dict[str, Any]:
    """Describe an emsrflow model package, after checking it.

    Returns
    -------
    dict
        ``name``, ``kind``, ``architecture``, ``spec``, ``tau``, ``parameters``,
        ``voxel_size_nm`` (``input``, ``output``: (z, y, x) nm), ``training``
        (``strategy``, ``loss``, ``fold``, ``datasets``, ``settings``, ``steps``),
        ``config_sha256``, ``extra``, ``emsrflow`` (the exporting version), ``created``,
        ``format_version``, ``weights`` (formats), ``torchscript``, ``files`` (name →
        sha256), ``authors``, ``license``.

    Raises
    ------
    InputError
        If the file is no bioimage.io model package, not one of emsrflow, damaged (a
        file missing or with another sha256 than recorded), or its architecture is not
        registered or its τ is unknown or contradicts its voxel sizes.
    """
    package, _ = _read_package(path)
    return _summary(Path(path), package)


def load_package(
    path: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network of an emsrflow model package.

    Parameters
    ----------
    path : str or os.PathLike
        Package written by :func:`export_package`.
    device : str or torch.device
        Where to put the network (see :func:`emsrflow.device.resolve_device`).

    Returns
    -------
    model : torch.nn.Module
        The network in eval mode, built by :func:`emsrflow.archs.build_network` from the
        package's spec with its ``pytorch_state_dict`` weights.
    info : dict
        :func:`inspect` of the package.

    Raises
    ------
    InputError
        As :func:`inspect`, or if the weights do not fit the architecture.
    """
    from .archs import build_network
    from .device import resolve_device

    path = Path(path)
    package, members = _read_package(path)
    info = _summary(path, package)
    try:
        state = torch.load(_io.BytesIO(members[_WEIGHTS]), map_location="cpu", weights_only=True)
        model = build_network(info["spec"])
        model.load_state_dict(state)
    except Exception as err:  # torch raises many kinds of errors for bad weights
        raise InputError(
            f"{path}: damaged package: {_WEIGHTS} does not load into {info['architecture']}: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from err
    return model.to(resolve_device(device)).eval(), info


#: Intensity percentiles recorded for the training data and compared with new input.
_PERCENTILES = (1.0, 50.0, 99.0)


# ---------------------------------------------------------------------------------------
# Intensities of the training data and of new input


def intensity_profile(volume: Any, *, sections: int = 8) -> dict[str, Any]:
    """Voxel type and intensity percentiles of a volume, from evenly spaced sections.

    Parameters
    ----------
    volume : emsrflow.io.VolumeReader or numpy.ndarray
        (z, y, x) volume.
    sections : int
        How many sections to read.

    Returns
    -------
    dict
        ``dtype`` (str) and ``percentiles``: {"1": …, "50": …, "99": …} of the
        intensities scaled by :func:`emsrflow.io.to_float01`.
    """
    from .io import to_float01

    depth = int(volume.shape[0])
    picks = np.unique(np.linspace(0, depth - 1, min(sections, depth)).round().astype(int))
    values = np.concatenate(
        [to_float01(np.asarray(volume[z : z + 1, :, :])).ravel() for z in picks]
    )
    finite = values[np.isfinite(values)]
    levels = np.percentile(finite, _PERCENTILES) if finite.size else [np.nan] * 3
    return {
        "dtype": str(np.dtype(volume.dtype)),
        "percentiles": {
            f"{p:g}": round(float(v), 4) for p, v in zip(_PERCENTILES, levels, strict=True)
        },
    }


def check_intensities(info: Mapping[str, Any], found: Mapping[str, Any], *, what: str) -> list[str]:
    """Compare a new input's :func:`intensity_profile` with the package's training data.

    Parameters
    ----------
    info : mapping
        :func:`inspect` of the package; its ``extra["input_intensity"]`` is the
        :func:`intensity_profile` of the training input (none in older packages:
        nothing to compare).
    found : mapping
        The new input's profile.
    what : str
        Name of the input, for the messages.

    Returns
    -------
    list of str
        A warning for a different integer voxel type (training data in floating point
        were normalised and say nothing of the acquisition's type), and one for a median
        shifted by more than
        0.15 or a 1–99 % range more than 2× wider or narrower, each with the figures.
    """
    trained = info["extra"].get("input_intensity")
    if not trained:
        return []
    messages = []
    if (
        trained.get("dtype")
        and np.dtype(trained["dtype"]).kind in "ui"  # float training data: normalised
        and trained["dtype"] != found["dtype"]
    ):
        messages.append(
            f"{what}: voxel type {found['dtype']}, the model was trained on "
            f"{trained['dtype']} data; intensities are compared after scaling to [0, 1]"
        )
    old, new = trained.get("percentiles") or {}, found["percentiles"]
    if {"1", "50", "99"} <= set(old):
        spread_old, spread_new = old["99"] - old["1"], new["99"] - new["1"]
        ratio = spread_new / spread_old if spread_old > 0 else math.inf
        if abs(new["50"] - old["50"]) > 0.15 or not 0.5 <= ratio <= 2.0:
            messages.append(
                f"{what}: intensities (1/50/99 %: {new['1']:.2f}/{new['50']:.2f}/"
                f"{new['99']:.2f} of the full range) differ from the training data's "
                f"({old['1']:.2f}/{old['50']:.2f}/{old['99']:.2f}); the output may be "
                "poorer: normalise the contrast like the training data's"
            )
    return messages


# ---------------------------------------------------------------------------------------
# Voxel sizes of the training data and of new input


def check_voxel_size(
    info: Mapping[str, Any],
    voxel_size_nm: Sequence[float],
    *,
    tolerance: float = 0.1,
    strict: bool = True,
) -> list[str]:
    """Compare a volume's voxel size with the one a package was trained at.

    The lateral (y, x) pixel of the volume should be the package's input pixel (for an
    isotropic model: the stack's lateral pixel, its z voxel at least as large).

    Parameters
    ----------
    info : mapping
        :func:`inspect` of the package.
    voxel_size_nm : sequence of float
        (z, y, x) of the volume.
    tolerance : float
        Relative difference of the lateral pixel accepted silently.
    strict : bool
        Raise on a contradiction (else return it as a warning).

    Returns
    -------
    list of str
        Warnings: a lateral pixel off by more than ``tolerance`` but less than 50 %.

    Raises
    ------
    InputError
        If ``strict`` and the volume's pixel is the package's *output* pixel (data
        already at the target resolution: τ contradicts it), is off by 50 % or more, or
        (isotropic) its slices are thinner than its pixels.
    """
    voxel = _voxel(voxel_size_nm, "voxel size")
    trained, out = info["voxel_size_nm"]["input"], info["voxel_size_nm"]["output"]
    tau, lateral = info["tau"], (voxel[1] + voxel[2]) / 2
    expected = (trained[1] + trained[2]) / 2
    relative = lateral / expected - 1
    pixel = f"{voxel[1]:g}×{voxel[2]:g} nm pixels"
    problems, warnings_ = [], []
    if info["kind"] == "isotropic" and voxel[0] < 0.999 * voxel[2]:
        problems.append(
            f"the stack's slices ({voxel[0]:g} nm) are thinner than its pixels "
            f"({voxel[2]:g} nm); isotropic reconstruction needs an anisotropic stack"
        )
    if tau > 1 and abs(lateral / ((out[1] + out[2]) / 2) - 1) <= tolerance:
        problems.append(
            f"the volume has {pixel}, the pixel size the package produces (τ = {tau}: "
            f"{trained[2]:g} → {out[2]:g} nm); it looks already super-resolved, or its "
            "voxel size is wrong"
        )
    elif abs(relative) >= 0.5:
        problems.append(
            f"the volume has {pixel}, the package was trained on {trained[1]:g}×"
            f"{trained[2]:g} nm pixels ({relative:+.0%}); resample the volume to "
            f"{trained[2]:g} nm first, or correct its voxel size"
        )
    elif abs(relative) > tolerance:
        warnings_.append(
            f"the volume has {pixel}, the package was trained on {trained[1]:g}×"
            f"{trained[2]:g} nm pixels ({relative:+.0%}); the output may be poorer"
        )
    if problems and strict:
        raise InputError("; ".join(problems))
    return problems + warnings_
