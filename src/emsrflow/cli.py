"""The ``emsrflow`` command: apply, export and inspect trained models as packages.

A trained model travels as a bioimage.io model package (a ``.zip``, see
:mod:`emsrflow.bioimage`). The subcommands call the functions the workflow's rules call:

``emsrflow apply --model PACKAGE INPUT OUTPUT``
    :func:`emsrflow.process.apply_package`: super-resolve a whole volume section by
    section (or, with an isotropic package, reconstruct an isotropic volume from an
    anisotropic stack), slab by slab as the workflow's slab jobs do.
``emsrflow export CHECKPOINT PACKAGE --test-data VOLUME``
    :func:`emsrflow.bioimage.export_package` (rules ``export`` and ``iso_export``).
``emsrflow inspect PACKAGE``
    :func:`emsrflow.bioimage.inspect`.

Errors in the input (a missing or damaged file, a package that is not emsrflow's, a
voxel size that contradicts the package) end the command with a one-line message and
exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import InputError

__all__ = ["build_parser", "main"]

log = logging.getLogger("emsrflow")

_DESCRIPTION = """\
Apply trained emsrflow models to electron-microscopy volumes, and package them.

A trained model is one .zip file, a bioimage.io model package: the network, the pixel
size it was trained for, its scale factor τ and how it was trained. The workflow writes
one per trained model to results/packages/; `emsrflow export` makes one from a
training checkpoint.

examples:
  emsrflow inspect results/packages/brain1/emsrnet_real_l1.zip
  emsrflow apply --model results/packages/brain1/emsrnet_real_l1.zip lr.tif sr.ome.zarr
  emsrflow apply --model model.zip --voxel-size 50,45,45 --device cuda lr.tif sr.ome.zarr

Run `emsrflow COMMAND --help` for the options of a command.
"""

_APPLY = """\
Run a model package over a whole volume and write the result.

Volumes are read and written as TIFF stacks (.tif), OME-Zarr (.ome.zarr, .zarr) or
HDF5 (file.h5:/dataset); 8- and 16-bit data are scaled to [0, 1] for the network and
back. The volume is processed a few sections at a time (--slab), so it can be larger
than the memory; each section is cut into overlapping tiles (--tile, --overlap) that
are blended smoothly.

A super-resolution package makes every section τ times larger: the output's pixel size
is the input's divided by τ, the section thickness stays. An isotropic package takes an
anisotropic stack (thick sections) and writes a volume of cubic voxels.

The pixel size of the input (from the file, or --voxel-size) must be the one the model
was trained on (see `emsrflow inspect`): within --tolerance it runs silently, up to 50 %
off it warns, beyond that, or if the input looks already super-resolved, it stops
(override with --ignore-voxel-size).

example:
  emsrflow apply --model emsrnet_real_l1.zip --tile 256 --overlap 32 --device cuda \\
      --precision bf16 lr.tif sr.ome.zarr
"""

_EXPORT = """\
Package a training checkpoint (results/models/.../model.pt) as a bioimage.io model.

The package holds the weights, the network's architecture (no emsrflow needed to run
it in bioimage.io tools), a test crop of --test-data and the network's output for it,
a cover image and a README, and the training provenance given by the options. The
package is checked with bioimage.io's model test before it is written (--no-test skips
that).

--test-data is a volume the model was not trained on, at the model's input pixel size:
for a super-resolution model an LR volume, for an isotropic model an anisotropic stack.

example:
  emsrflow export results/models/brain1/emsrnet_real_l1/model.pt emsrnet_real_l1.zip \\
      --test-data results/brain1_ipsi/prepare/lr.ome.zarr \\
      --reference results/brain1_ipsi/prepare/hr.ome.zarr \\
      --strategy real --loss l1 --fold brain1 --config config/config.yaml
"""


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 50,45,45, got {text!r}") from None
    if len(values) != 3 or not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected three positive numbers z,y,x, got {text!r}")
    return values


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers like 1,512,512, got {text!r}"
        ) from None
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive integers z,y,x, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the descriptions' layout and show the defaults."""


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``emsrflow`` command."""
    parser = argparse.ArgumentParser(
        prog="emsrflow", description=_DESCRIPTION, formatter_class=_Formatter
    )
    parser.add_argument("--version", action="version", version=f"emsrflow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    apply = commands.add_parser(
        "apply",
        help="super-resolve (or isotropically reconstruct) a volume with a model package",
        description=_APPLY,
        formatter_class=_Formatter,
    )
    apply.add_argument(
        "--model",
        required=True,
        metavar="PACKAGE",
        help="model package (.zip, or its unzipped folder)",
    )
    apply.add_argument(
        "input", metavar="INPUT", help="volume to process (.tif, .ome.zarr, .h5:/dataset)"
    )
    apply.add_argument(
        "output", metavar="OUTPUT", help="volume to write (.ome.zarr, .tif, .h5:/dataset)"
    )
    apply.add_argument(
        "--voxel-size",
        type=_floats,
        metavar="Z,Y,X",
        help="voxel size of the input in nm (section thickness, pixel height, width); "
        "default: from the file",
    )
    apply.add_argument("--tile", type=int, default=256, help="tile side in input pixels")
    apply.add_argument("--overlap", type=int, default=32, help="overlap of tiles in input pixels")
    apply.add_argument("--batch", type=int, default=4, help="tiles per network pass")
    apply.add_argument(
        "--device",
        default="auto",
        help="auto (a GPU if there is one), cpu, cuda or cuda:N",
    )
    apply.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16 is faster on recent GPUs and CPUs, falls back to fp32 elsewhere",
    )
    apply.add_argument(
        "--tta",
        action="store_true",
        help="average the 8 flips and rotations (8× slower; isotropic: the 4 flips, 4×)",
    )
    apply.add_argument(
        "--slab",
        type=int,
        default=16,
        help="output sections computed at a time (memory grows with it); isotropic: the "
        "block of planes reconstructed together",
    )
    apply.add_argument(
        "--halo",
        type=int,
        default=16,
        help="isotropic packages: planes of context above and below each block",
    )
    apply.add_argument(
        "--overwrite", action="store_true", help="replace OUTPUT if it already exists"
    )
    apply.add_argument(
        "--dtype",
        choices=["input", "float32", "uint8", "uint16"],
        default="input",
        help="output type; input keeps 8/16-bit data in their type (float input: float32)",
    )
    apply.add_argument(
        "--chunks", type=_ints, metavar="Z,Y,X", help="chunk shape of a Zarr or HDF5 output"
    )
    apply.add_argument(
        "--passes",
        type=_names,
        default=["xz", "yz"],
        metavar="xz,yz",
        help="isotropic packages: plane orientations run and averaged",
    )
    apply.add_argument(
        "--tolerance",
        type=float,
        default=0.1,
        help="relative pixel-size difference from the training data accepted silently",
    )
    apply.add_argument(
        "--ignore-voxel-size",
        action="store_true",
        help="only warn where the input's voxel size contradicts the package",
    )
    apply.add_argument("--quiet", action="store_true", help="no progress bar")

    export = commands.add_parser(
        "export",
        help="package a training checkpoint as a bioimage.io model",
        description=_EXPORT,
        formatter_class=_Formatter,
    )
    export.add_argument("checkpoint", metavar="CHECKPOINT", help="model.pt of a training run")
    export.add_argument("package", metavar="PACKAGE", help="package to write (.zip)")
    export.add_argument(
        "--test-data",
        required=True,
        metavar="VOLUME",
        help="held-out volume at the model's input pixel size; its centre is the test crop",
    )
    export.add_argument(
        "--reference",
        metavar="VOLUME",
        help="the same field of view at the output resolution (HR), shown on the cover",
    )
    export.add_argument(
        "--kind",
        choices=["auto", "super-resolution", "isotropic"],
        default="auto",
        help="auto: isotropic for networks that keep the size (τ = 1)",
    )
    export.add_argument("--crop", type=int, default=64, help="test crop side in input pixels")
    export.add_argument(
        "--voxel-size",
        type=_floats,
        metavar="Z,Y,X",
        help="voxel size of --test-data in nm, where its file gives none",
    )
    export.add_argument("--name", help="package name (default: from the model)")
    export.add_argument("--strategy", help="training strategy (real, denoised, ...)")
    export.add_argument("--loss", help="training loss (l1, l2, ...)")
    export.add_argument("--fold", help="held-out animal of the training run")
    export.add_argument(
        "--training-datasets", type=_names, default=[], metavar="A,B", help="training datasets"
    )
    export.add_argument(
        "--config", metavar="YAML", help="study configuration, recorded by its sha256"
    )
    export.add_argument(
        "--author",
        action="append",
        metavar="NAME",
        help="author of the package (repeat for several); default: emsrflow",
    )
    export.add_argument("--license", default="MIT", help="SPDX license id of the package")
    export.add_argument(
        "--no-torchscript", action="store_true", help="leave out the TorchScript weights"
    )
    export.add_argument("--no-test", action="store_true", help="skip bioimage.io's model test")

    inspect = commands.add_parser(
        "inspect",
        help="print what a model package holds: network, τ, pixel sizes, training",
        description="Check a model package and print its network, scale factor τ, the "
        "voxel sizes of its input and output, and how it was trained.",
        formatter_class=_Formatter,
    )
    inspect.add_argument(
        "package", metavar="PACKAGE", help="model package (.zip, or its unzipped folder)"
    )
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser


def _nm(values: Sequence[float]) -> str:
    return " × ".join(f"{v:g}" for v in values) + " nm (z, y, x)"


def format_info(info: dict[str, Any]) -> str:
    """Human-readable :func:`emsrflow.bioimage.inspect` of a package."""
    training = info.get("training") or {}
    settings = training.get("settings") or {}
    sizes = {k: v for k, v in info["spec"].items() if k not in ("type", "scale")}
    lines = [
        f"{info['name']}",
        f"  package:        {info['path']}",
        f"  kind:           {info['kind']}",
        f"  architecture:   {info['architecture']} ({info.get('parameters') or 0:,} parameters)",
        f"  sizes:          {', '.join(f'{k}={v}' for k, v in sizes.items())}",
        f"  τ (scale):      {info['tau']}",
        f"  input voxel:    {_nm(info['voxel_size_nm']['input'])}",
        f"  output voxel:   {_nm(info['voxel_size_nm']['output'])}",
        f"  strategy:       {training.get('strategy') or '-'}",
        f"  loss:           {training.get('loss') or '-'}",
        f"  fold:           {training.get('fold') or '-'}",
        f"  trained on:     {', '.join(training.get('datasets') or []) or '-'}",
        f"  steps:          {training.get('steps', '-')}"
        + (
            f" (batch {settings['batch']}, patch {settings['patch']})"
            if "batch" in settings
            else ""
        ),
        f"  config sha256:  {info.get('config_sha256') or '-'}",
        f"  weights:        {', '.join(info['weights'])}",
    ]
    torchscript = info.get("torchscript") or {}
    if not torchscript.get("included") and torchscript.get("reason"):
        lines.append(f"  no TorchScript: {torchscript['reason']}")
    for key, value in (info.get("extra") or {}).items():
        lines.append(f"  {key + ':':<15} {value}")
    lines += [
        f"  exported by:    emsrflow {info.get('emsrflow')} on {info.get('created')}",
        f"  format:         bioimage.io model {info.get('format_version')}, "
        f"{len(info['files'])} files, sha256 checked",
    ]
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from . import bioimage, process

    if args.command == "inspect":
        info = bioimage.inspect(args.package)
        print(json.dumps(info, indent=2) if args.json else format_info(info))
        return 0
    if args.command == "apply":
        result = process.apply_package(
            args.model,
            args.input,
            args.output,
            voxel_size_nm=args.voxel_size,
            tile=args.tile,
            overlap=args.overlap,
            batch=args.batch,
            tta=args.tta,
            precision=args.precision,
            device=args.device,
            slab=args.slab,
            halo=args.halo,
            overwrite=args.overwrite,
            dtype=args.dtype,
            chunks=args.chunks,
            passes=args.passes,
            tolerance=args.tolerance,
            ignore_voxel_size=args.ignore_voxel_size,
            progress=not args.quiet,
        )
        log.info(
            "wrote %s: %s voxels of %s nm (from %s of %s nm)",
            args.output,
            "×".join(map(str, result["output_shape"])),
            "×".join(f"{v:g}" for v in result["output_voxel_size_nm"]),
            "×".join(map(str, result["input_shape"])),
            "×".join(f"{v:g}" for v in result["input_voxel_size_nm"]),
        )
        return 0
    # export
    import yaml

    from .train import load_model

    model = load_model(args.checkpoint)
    kind = args.kind
    if kind == "auto":
        kind = "isotropic" if int(model.scale) == 1 else "super-resolution"
    if kind == "isotropic":
        data = bioimage.isotropic_test_data(
            args.test_data, size=args.crop, reference=args.reference, voxel_size_nm=args.voxel_size
        )
    else:
        data = bioimage.sr_test_data(
            args.test_data,
            scale=int(model.scale),
            size=args.crop,
            reference=args.reference,
            voxel_size_nm=args.voxel_size,
        )
    config_sha256 = None
    if args.config:
        config_sha256 = bioimage.config_hash(yaml.safe_load(Path(args.config).read_text()))
    result = bioimage.export_package(
        args.checkpoint,
        args.package,
        **data,
        kind=kind,
        name=args.name,
        strategy=args.strategy,
        loss=args.loss,
        fold=args.fold,
        training_datasets=args.training_datasets,
        config_sha256=config_sha256,
        authors=[{"name": name} for name in args.author or ["emsrflow"]],
        license=args.license,
        torchscript=not args.no_torchscript,
        test=not args.no_test,
    )
    if "test" in result:
        checks = result["test"]["details"]
        log.info(
            "bioimage.io model test %s: %d of %d checks passed",
            result["test"]["status"],
            sum(d["status"] == "passed" for d in checks),
            len(checks),
        )
    log.info("wrote %s (%s)", args.package, ", ".join(result["weights"]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``emsrflow`` command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(levelname)s: %(message)s",
    )
    try:
        return _run(args)
    except (InputError, ValueError, FileNotFoundError, RuntimeError) as err:
        message = textwrap.shorten(str(err), 2000, placeholder=" …") or type(err).__name__
        print(f"emsrflow {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
