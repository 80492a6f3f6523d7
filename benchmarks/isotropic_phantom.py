"""Isotropic reconstruction on a 256³ EM phantom, the A2I validation protocol in 3D.

A clean isotropic volume of N³ voxels (default 256: N sections of N×N at the phantom's
15 nm voxel) is rendered by :class:`emsrflow.phantom.Phantom` (the clean tissue over its
HR field of view, :meth:`~emsrflow.phantom.Phantom.anisotropic_truth`), averaged along z
into slices ρ = 3 thick (:func:`emsrflow.isotropic.simulate_anisotropic`: ⌊N/ρ⌋ slices),
and reconstructed back to ``isotropic_depth`` planes by
:func:`emsrflow.isotropic.reconstruct`: with ``model=None`` (cubic interpolation along z,
the baseline) and with the A2I Uformer trained self-supervised on the xy planes of that
anisotropic stack alone (:func:`emsrflow.isotropic.train_isotropic`), xz and yz passes
averaged as in the workflow. The network, its settings and the passes are those of
``isotropic`` in config/config.yaml (the demo Uformer), with a fixed step budget (default
3000 steps). PSNR and SSIM (and mean FRC) of every xz plane (and, besides, every yz
plane) against the clean volume, intensities in [0, 1], data range 1; the dB gain is the
figure to compare with A2I-3DEM's +2.46 dB at ρ = 3.

    python benchmarks/isotropic_phantom.py --threads 1            # full: 256³, 3000 steps
    python benchmarks/isotropic_phantom.py --quick                # smoke run (64³, 20 steps)
    python benchmarks/isotropic_phantom.py --steps 6000 --spec '{"channels": 32}'

Writes benchmarks/results/isotropic_phantom.json (quick: isotropic_phantom-quick.json).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from common import describe, machine, table, write_record

from emsrflow.archs import build_network
from emsrflow.io import open_volume
from emsrflow.isotropic import (
    IsoSettings,
    isotropic_depth,
    reconstruct,
    simulate_anisotropic,
    train_isotropic,
)
from emsrflow.metrics import finite_mean_std, slice_metrics
from emsrflow.phantom import Phantom, PhantomParams

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "config" / "config.yaml"
METRICS = ("psnr", "ssim", "frc")


def phantom_volume(size: int, seed: int, tissue: dict) -> tuple[np.ndarray, float, dict]:
    """Clean isotropic phantom volume (size³, float32 in [0, 1]) and its voxel size."""
    params = PhantomParams.from_dict(
        {
            "tissue": {**tissue, "depth": size},
            "hr": {"shape_yx": [size, size], "sections": 1},
            "anisotropic": {"slices": 1},
            # The LR acquisition is not used; without misregistration margins small
            # (--quick) volumes are valid set-ups too.
            "lr": {"max_shift_nm": 0.0, "max_rotation_deg": 0.0, "max_scale_error": 0.0},
        }
    )
    phantom = Phantom(params, seed=seed)
    clean, _ = phantom.anisotropic_truth(0, size)
    return clean, float(params.tissue.voxel_nm), params.to_dict()["tissue"]


def plane_scores(reference: np.ndarray, volume: np.ndarray, axis: int, pixel_nm: float) -> dict:
    """Metrics of every plane along ``axis`` (1: xz planes, fixed y; 2: yz planes)."""
    rows = []
    for i in range(reference.shape[axis]):
        ref, out = np.take(reference, i, axis=axis), np.take(volume, i, axis=axis)
        m = slice_metrics(ref, out, data_range=1.0, pixel_nm=pixel_nm)
        rows.append([m[k] for k in METRICS])
    values = np.asarray(rows)
    summary = {}
    for j, name in enumerate(METRICS):
        mean, std, n = finite_mean_std(values[:, j])
        summary[name] = {"mean": mean, "std": std, "n": n}
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--quick", action="store_true", help="smoke run: 64³, 20 steps")
    parser.add_argument("--size", type=int, default=None, help="volume side (default 256)")
    parser.add_argument("--rho", type=float, default=None, help="default: config simulate_rho")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 3000)")
    parser.add_argument("--batch", type=int, default=None, help="default: config's")
    parser.add_argument("--patch", type=int, default=None, help="default: config's")
    parser.add_argument("--lr", type=float, default=None, help="default: config's")
    parser.add_argument(
        "--spec", default=None, metavar="JSON", help="override keys of the config's Uformer spec"
    )
    parser.add_argument(
        "--tissue",
        default=None,
        metavar="JSON",
        help='overrides of emsrflow.phantom.TissueParams, e.g. \'{"axon_axis": "x"}\' '
        "(default: the phantom's defaults, axons mostly along z)",
    )
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = yaml.safe_load(args.config.read_text())["isotropic"]
    size = args.size or (64 if args.quick else 256)
    steps = args.steps or (20 if args.quick else 3000)
    rho = args.rho or float(config["simulate_rho"])
    out = args.out or HERE / "results" / (
        "isotropic_phantom-quick.json" if args.quick else "isotropic_phantom.json"
    )
    spec = {**config["arch"], **(json.loads(args.spec) if args.spec else {}), "scale": 1}
    base = dict(config["settings"])
    settings = IsoSettings.from_dict(
        {
            **base,
            "steps": steps,
            "batch": args.batch or base["batch"],
            "patch": min(args.patch or base["patch"], size),
            "lr": args.lr or base["lr"],
            "lr_halve_every": max(1, steps * 2 // 3),
            "checkpoint_every": steps,
            "log_every": max(1, steps // 10),
            "device": args.device,
        }
    )
    passes = list(config["passes"])
    options = {"tile": args.tile, "overlap": args.overlap, "device": args.device}
    info = machine(args.device)
    print(describe(info))

    started = time.perf_counter()
    tissue_overrides = json.loads(args.tissue) if args.tissue else {}
    clean, voxel_nm, tissue = phantom_volume(size, args.seed, tissue_overrides)
    phantom_seconds = time.perf_counter() - started
    anisotropic = simulate_anisotropic(clean, rho)
    depth = isotropic_depth(anisotropic.shape[0], rho)
    reference = clean[:depth]
    print(
        f"phantom: clean {clean.shape} at {voxel_nm:g} nm isotropic (seed {args.seed}, "
        f"{phantom_seconds:.0f} s); anisotropic {anisotropic.shape} (ρ = {rho:g}); "
        f"reconstruction {depth} planes, compared with clean sections 0–{depth - 1}"
    )

    torch.manual_seed(settings.seed)
    model = build_network(spec)
    params = sum(p.numel() for p in model.parameters())
    budget = (
        f"{steps} steps × batch {settings.batch} × {settings.patch}² patches, L1 + "
        f"{settings.alpha:g}·PDL, Adam lr {settings.lr:g} halved every {settings.lr_halve_every}"
    )
    print(f"network {spec}: {params:,} parameters; budget {budget}")
    results, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tic = time.perf_counter()
        train_isotropic(
            model,
            [anisotropic],
            rho,
            settings,
            checkpoint=Path(tmp) / "checkpoint.pt",
            curve=Path(tmp) / "curve.csv",
            progress=False,
        )
        seconds["train"] = time.perf_counter() - tic
        curve = (Path(tmp) / "curve.csv").read_text()
        print(f"training: {seconds['train']:.0f} s", flush=True)
        for name, net in (("cubic", None), ("ours", model)):
            target = str(Path(tmp) / f"{name}.zarr")
            tic = time.perf_counter()
            reconstruct(
                net,
                anisotropic,
                rho,
                target,
                voxel_size=(voxel_nm,) * 3,
                slab=int(config["slab"]),
                passes=passes,
                **({} if net is None else options),
            )
            seconds[f"reconstruct_{name}"] = time.perf_counter() - tic
            with open_volume(target) as reader:
                volume = reader.read()
            if volume.shape != reference.shape:
                raise RuntimeError(f"{name}: shape {volume.shape}, expected {reference.shape}")
            results[name] = {
                "xz": plane_scores(reference, volume, 1, voxel_nm),
                "yz": plane_scores(reference, volume, 2, voxel_nm),
            }
            print(f"{name}: reconstructed in {seconds[f'reconstruct_{name}']:.0f} s", flush=True)
    wall = time.perf_counter() - started

    rows = []
    for name, label in (("cubic", "cubic"), ("ours", "ours (Uformer)")):
        row = [label]
        for plane in ("xz", "yz"):
            for m in METRICS:
                s = results[name][plane][m]
                digits = 2 if m == "psnr" else 3
                row.append(f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}")
        rows.append(row)
    gain = {
        plane: {
            m: results["ours"][plane][m]["mean"] - results["cubic"][plane][m]["mean"]
            for m in METRICS
        }
        for plane in ("xz", "yz")
    }
    rows.append(
        ["gain"]
        + [
            f"{gain[p][m]:+.2f} dB" if m == "psnr" else f"{gain[p][m]:+.3f}"
            for p in ("xz", "yz")
            for m in METRICS
        ]
    )
    print()
    print(curve)
    print(
        f"A2I protocol on a {size}³ phantom ({voxel_nm:g} nm), ρ = {rho:g}: mean ± std over "
        f"{reference.shape[1]} xz planes (and {reference.shape[2]} yz planes) of "
        f"{depth}×{size}"
    )
    text = table(rows, ["method"] + [f"{p} {m.upper()}" for p in ("xz", "yz") for m in METRICS])
    print(text)
    verdict = (
        f"xz gain over cubic: {gain['xz']['psnr']:+.2f} dB PSNR, {gain['xz']['ssim']:+.3f} SSIM "
        f"(goal ≥ +2.5 dB: {'MET' if gain['xz']['psnr'] >= 2.5 else 'NOT MET'}; "
        "A2I-3DEM reports +2.46 dB on FIB-SEM)"
    )
    print(verdict)
    print(
        f"wall time {wall:.0f} s (phantom {phantom_seconds:.0f} s, "
        f"training {seconds['train']:.0f} s, "
        f"reconstruction cubic {seconds['reconstruct_cubic']:.0f} s, "
        f"ours {seconds['reconstruct_ours']:.0f} s)"
    )
    record = {
        "benchmark": "isotropic_phantom",
        "size": size,
        "voxel_nm": voxel_nm,
        "phantom_seed": args.seed,
        "tissue_overrides": tissue_overrides,
        "tissue": tissue,
        "rho": rho,
        "anisotropic_shape": list(anisotropic.shape),
        "isotropic_depth": depth,
        "spec": model.spec,
        "params": params,
        "budget": budget,
        "settings": settings.to_dict(),
        "passes": passes,
        "infer": options,
        "scores": results,
        "gain": gain,
        "table": text,
        "verdict": verdict,
        "curve": curve,
        "seconds": {"phantom": phantom_seconds, **seconds, "wall": wall},
        "machine": {**info, "load_average_end": machine(args.device)["load_average"]},
    }
    write_record(out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
