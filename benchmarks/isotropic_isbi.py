"""Isotropic reconstruction on real EM, the A2I validation protocol in 2D (ISBI 2012 ssTEM).

The xy slices of ../shared/data/isbi2012/train-volume.tif (512², 4 nm pixels) play the
isotropic reference. Each test slice is integrated along one in-plane axis into rows
ρ = 3 pixels thick, exactly as the axial degradation model integrates z
(emsrflow.degrade.integrate_axis), and interpolated back, cubic: the cubic baseline. The
network, trained self-supervised on the *other* slices (emsrflow.isotropic.train_isotropic,
pairs made the same way with random axis, blur and noise), restores the cubic image. PSNR,
SSIM and FRC against the original slice, for both axes, beside cubic; the dB gain is
the figure to compare with A2I-3DEM's +2.46 dB (28.15 → 30.61 on EPFL FIB-SEM at ρ = 3).

A second baseline, ``linear``, tells how much of the gain needs a network at all: the
least-squares linear restoration filter (9×7 taps and a bias, one filter per row phase
modulo ρ), fit on the same training slices degraded the same way (no noise), applied
to the cubic image like the network.

Folds as the other real-EM benchmarks: 3 folds of 10 consecutive slices (0–9, 10–19,
20–29), a network trained for each on the other 20, so that with all folds every slice
is a test slice once (cubic over all 30: 25.59 dB, the anchors' figure). The volume's
noise is far from even: slices 15–29 are much noisier (cubic ≈ 23 dB against them)
than 0–14 (≈ 27.8 dB), so fold 2 alone (the last 10) is the hardest case.

    python benchmarks/isotropic_isbi.py --steps 3000 --device cuda   # on a GPU
    python benchmarks/isotropic_isbi.py --steps 300 --folds 0        # a short CPU run
    python benchmarks/isotropic_isbi.py --steps 0                    # cubic and linear only

Writes benchmarks/results/isotropic_isbi.json (figures, settings, machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import fold_slices, machine, parameters, write_record

from emsrflow import archs
from emsrflow.infer import predict_section
from emsrflow.io import read_volume, to_float01
from emsrflow.isotropic import IsoSettings, axial_degrade, train_isotropic
from emsrflow.metrics import frc_score, psnr, ssim

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "isbi2012" / "train-volume.tif"


LINEAR_TAPS = (9, 7)


def filter_phases(rho: float) -> int:
    """Row phases of the linear filter: ρ for an integer ρ (rows sit at ρ positions
    within a thick slice), else 1."""
    return int(rho) if float(rho).is_integer() else 1


def tap_windows(image: np.ndarray, taps: tuple[int, int] = LINEAR_TAPS) -> np.ndarray:
    """Every pixel's ``taps`` neighbourhood (mirrored borders) and a 1, (H, W, kh·kw + 1)."""
    kh, kw = taps
    padded = np.pad(image, ((kh // 2, kh // 2), (kw // 2, kw // 2)), mode="symmetric")
    windows = np.lib.stride_tricks.sliding_window_view(padded, taps).reshape(*image.shape, -1)
    return np.concatenate([windows, np.ones((*image.shape, 1), windows.dtype)], axis=-1)


def fit_linear_filter(slices: np.ndarray, rho: float) -> np.ndarray:
    """Least-squares restoration filters, (phases, kh·kw + 1), fit on ``slices``
    degraded along both axes (the degraded axis as rows)."""
    phases = filter_phases(rho)
    size = LINEAR_TAPS[0] * LINEAR_TAPS[1] + 1
    gram = np.zeros((phases, size, size))
    moment = np.zeros((phases, size))
    for image in slices:
        for axis in (0, 1):
            degraded, target = axial_degrade(image if axis == 0 else image.T, 0, rho)
            windows = tap_windows(degraded).astype(np.float64)
            for phase in range(phases):
                a = windows[phase::phases].reshape(-1, size)
                gram[phase] += a.T @ a
                moment[phase] += a.T @ target[phase::phases].reshape(-1)
    ridge = 1e-6 * np.trace(gram, axis1=1, axis2=2)[:, None, None] / size * np.eye(size)
    return np.linalg.solve(gram + ridge, moment[..., None])[..., 0]


def apply_linear_filter(weights: np.ndarray, degraded: np.ndarray) -> np.ndarray:
    """:func:`fit_linear_filter`'s filters applied to a cubic image (degraded axis 0)."""
    windows = tap_windows(degraded)
    output = np.empty(degraded.shape, np.float32)
    for phase, w in enumerate(weights):
        output[phase :: len(weights)] = windows[phase :: len(weights)] @ w.astype(np.float32)
    return output


def evaluate(
    model, linear: np.ndarray, slices: np.ndarray, rho: float, *, tta: bool, **options
) -> dict[str, dict[str, float]]:
    """Mean scores over both axes of every slice; the network sees the degraded axis as
    rows, as it sees z in the xz and yz planes of a volume. With ``tta`` also the
    network averaged over the 4 flips (``ours_tta``), as the workflow's isotropic TTA.
    ``linear``: the filters of :func:`fit_linear_filter`; ``model`` None: the baselines
    only."""
    variants = {} if model is None else {"ours": False, **({"ours_tta": "flips"} if tta else {})}
    rows = {"cubic": [], "linear": [], **{name: [] for name in variants}}
    for image in slices:
        for axis in (0, 1):
            degraded, target = axial_degrade(image, axis, rho)
            outputs = {"cubic": degraded}
            if axis == 0:
                outputs["linear"] = apply_linear_filter(linear, degraded)
            else:
                outputs["linear"] = apply_linear_filter(linear, degraded.T).T
            for name, flips in variants.items():
                if axis == 0:
                    outputs[name] = predict_section(model, degraded, tta=flips, **options)
                else:
                    outputs[name] = predict_section(model, degraded.T, tta=flips, **options).T
            for name, output in outputs.items():
                rows[name].append(
                    (
                        psnr(target, output, data_range=1.0),
                        ssim(target, output, data_range=1.0),
                        frc_score(target, output),
                    )
                )
    return {
        name: dict(zip(("psnr", "ssim", "frc"), np.mean(values, axis=0).tolist(), strict=True))
        for name, values in rows.items()
        if values
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--rho", type=float, default=3.0)
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2], help="of 0 1 2")
    parser.add_argument(
        "--downscale",
        type=int,
        default=1,
        help="average d×d pixels first (A2I-3DEM downscaled its FIB-SEM volume by 3 "
        "against noise before the protocol); 1 = the slices as acquired",
    )
    parser.add_argument(
        "--phases",
        action="store_true",
        help="with --downscale d: train on the training slices binned at all d² grid "
        "offsets (d² different images of each; test slices at offset 0 as without)",
    )
    parser.add_argument(
        "--steps", type=int, default=300, help="network training steps; 0: the baselines only"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--depths", type=int, default=2)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument(
        "--axes",
        default="0,1",
        help="in-plane axes training pairs are degraded along: 0,1 both; 0 the rows only",
    )
    parser.add_argument("--noise", type=float, nargs=2, default=(0.0, 2.0), metavar=("LOW", "HIGH"))
    parser.add_argument(
        "--line-noise", type=float, nargs=2, default=(0.0, 1.0), metavar=("LOW", "HIGH")
    )
    parser.add_argument("--blur", type=float, nargs=2, default=(0.0, 0.5), metavar=("LOW", "HIGH"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--tta", action="store_true", help="also score the 4-flip average")
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="stop each fold's training after this time (resumes)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "isotropic_isbi.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data.exists():
        print(f"{args.data}: not found (ISBI 2012 volume, see ../shared/data/README.md)")
        return 1

    volume, voxel = read_volume(str(args.data))
    volume = to_float01(volume)
    phases, binned = [(0, 0)], [volume]
    if args.downscale > 1:
        d = args.downscale
        if args.phases:
            phases = [(i, j) for i in range(d) for j in range(d)]
        binned = [downscale(volume, d, phase) for phase in phases]
        volume = binned[0]
        voxel = (voxel[0], voxel[1] * d, voxel[2] * d) if voxel else None
    spec = {
        "type": "uformer",
        "scale": 1,
        "channels": args.channels,
        "levels": args.levels,
        "depths": args.depths,
        "window": args.window,
    }
    settings = iso_settings(args) if args.steps else None
    options = {"tile": 256, "overlap": 64, "device": args.device, "precision": args.precision}
    record = {
        "benchmark": "isotropic_isbi",
        "data": str(args.data.name),
        "downscale": args.downscale,
        "training_phases": len(phases),
        "voxel_nm": list(voxel) if voxel else None,
        "rho": args.rho,
        "spec": spec if settings else None,
        "settings": settings.to_dict() if settings else None,
        "folds": {},
        "machine": machine(args.device),
    }
    print(
        f"ISBI 2012, {len(volume)} slices of {volume.shape[1:]}, downscaled "
        f"{args.downscale}×, ρ = {args.rho}; folds {args.folds} of 10 consecutive test slices"
    )
    for fold in args.folds:
        train, test = fold_slices(len(volume), fold)
        linear = fit_linear_filter(volume[train], args.rho)
        if args.steps:
            model, steps, seconds, curve = train_fold(
                [b[train] for b in binned], args.rho, spec, settings, args
            )
            print(curve)
            print(f"fold {fold}: network {spec}, {parameters(model):,} parameters")
            print(f"training: {steps} steps of {args.batch}×{args.patch}² in {seconds:.0f} s")
            model.eval()
        else:
            model, steps, seconds = None, 0, 0.0
        scores = evaluate(model, linear, volume[test], args.rho, tta=args.tta, **options)
        print_scores(f"fold {fold} (test slices {test[0]}–{test[-1]})", scores)
        record["folds"][str(fold)] = {
            "test_slices": test.tolist(),
            "train_steps": steps,
            "train_seconds": seconds,
            "scores": scores,
        }
        record["scores"] = pooled(record["folds"].values())
        record["gain_db"] = {
            name: row["psnr"] - record["scores"]["cubic"]["psnr"]
            for name, row in record["scores"].items()
            if name != "cubic"
        }
        write_record(args.out, record)
    if len(args.folds) > 1:
        print_scores(f"folds {args.folds}, all their test slices", record["scores"])
    return 0


def downscale(volume: np.ndarray, d: int, phase: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Average d × d pixels, the bins starting ``phase`` pixels in (rows, columns).

    Phase (0, 0) bins the whole slice (up to d − 1 pixels at the far ends); the others
    lose the bins that would pass the end.
    """
    i, j = phase
    z, h, w = volume.shape
    rows, cols = (h - i) // d, (w - j) // d
    crop = volume[:, i : i + rows * d, j : j + cols * d]
    return crop.reshape(z, rows, d, cols, d).mean((2, 4))


def iso_settings(args: argparse.Namespace) -> IsoSettings:
    """The network's training settings from the command line."""
    return IsoSettings(
        steps=args.steps,
        batch=args.batch,
        patch=args.patch,
        lr=args.lr,
        lr_halve_every=max(1, args.steps * 2 // 3),
        log_every=max(1, args.steps // 20),
        checkpoint_every=max(1, args.steps // 20),
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        noise=tuple(args.noise),
        line_noise=tuple(args.line_noise),
        axial_blur=tuple(args.blur),
        axes=tuple(int(a) for a in args.axes.split(",")),
    )


def train_fold(
    volumes: list[np.ndarray],
    rho: float,
    spec: dict,
    settings: IsoSettings,
    args: argparse.Namespace,
) -> tuple[torch.nn.Module, int, float, str]:
    """Train a fresh network on the slices of ``volumes``; returns it, its steps, seconds
    and curve CSV.

    Training runs in chunks resumed from the checkpoint, so that ``--minutes`` can stop it.
    """
    torch.manual_seed(args.seed)
    model = archs.build_network(spec)
    started = time.perf_counter()
    chunk = max(1, min(args.steps // 20, 250))
    with tempfile.TemporaryDirectory() as tmp:
        done = 0
        while done < args.steps:
            done = min(args.steps, done + chunk)
            train_isotropic(
                model,
                volumes,
                rho,
                dataclasses.replace(settings, steps=done),
                checkpoint=Path(tmp) / "checkpoint.pt",
                curve=Path(tmp) / "curve.csv",
                progress=False,
            )
            elapsed = time.perf_counter() - started
            print(f"step {done}: {elapsed:.0f} s", flush=True)
            if args.minutes is not None and elapsed > 60 * args.minutes:
                break
        curve = (Path(tmp) / "curve.csv").read_text()
    return model, done, time.perf_counter() - started, curve


def pooled(folds) -> dict[str, dict[str, float]]:
    """Scores over the test slices of all ``folds`` (equal-sized, so the mean of means)."""
    folds = list(folds)
    return {
        name: {
            metric: float(np.mean([f["scores"][name][metric] for f in folds]))
            for metric in ("psnr", "ssim", "frc")
        }
        for name in folds[0]["scores"]
    }


def print_scores(title: str, scores: dict[str, dict[str, float]]) -> None:
    """A scores table and the gain over cubic."""
    print(title)
    print(f"{'method':8} {'PSNR dB':>8} {'SSIM':>7} {'FRC':>7}")
    for name, row in scores.items():
        print(f"{name:8} {row['psnr']:8.2f} {row['ssim']:7.3f} {row['frc']:7.3f}")
    for name in [n for n in scores if n != "cubic"]:
        gain = scores[name]["psnr"] - scores["cubic"]["psnr"]
        target = "" if name == "linear" else " (target ≥ +2.5 dB; A2I-3DEM: +2.46 dB)"
        print(f"{name} gain over cubic: {gain:+.2f} dB{target}")


if __name__ == "__main__":
    raise SystemExit(main())
