"""Lateral ×3 super-resolution quality on real EM (ISBI 2012 ssTEM), EMSR paper Table II style.

HR: the 30 real slices of ../shared/data/isbi2012/train-volume.tif (512², 4 nm pixels),
cropped to 510² (a multiple of τ = 3). LR (170², 12 nm) made from them by two acquisition
models:

phantom
    The LR acquisition of the EM phantom (:mod:`emsrflow.phantom`, default
    :class:`~emsrflow.phantom.LRParams`): Gaussian PSF (``psf_nm`` relative to the LR pixel
    ``pixel_nm``: σ = 0.4 LR px = 1.2 HR px), exact area integration over each LR pixel
    (the phantom's ``_overlap_matrix``), then the phantom's detector (``_detect``: LR
    contrast ``offset + gain·x`` = 0.12 + 0.8·x, Poisson–Gaussian noise, scan-line noise,
    8-bit quantisation). The phantom's misregistration is left out (the pairs are aligned,
    as after registration), and the HR reference is the real slice as acquired.
synthetic2
    Synthetic (II) of :mod:`emsrflow.degrade` (blur κ, noise σ₁, bicubic down, noise σ₂)
    with the ranges and seed of ``degrade`` in config/config.yaml.

Folds: the 30 slices as 3 folds of 10 consecutive slices (0–9, 10–19, 20–29); each
network trains on the other 20 slices and is tested on the held-out 10, so every slice is
a test slice once. Methods: bicubic (:func:`emsrflow.resize.bicubic`), EMSRNet
(``emsrnet``) and the baselines registered in :mod:`emsrflow.archs` (SwinIR ``swinir``,
ResUNet/PSSR ``unet``), built by :func:`emsrflow.archs.build_network` and trained by
:func:`emsrflow.train.train` with the EMSR objective and the ``train.settings`` of
config/config.yaml, as scripts/train.py does (loss ℓ1), on ONE compute budget for all:
the same steps × batch × LR patch, stated in the output. Inference:
:func:`emsrflow.infer.predict_stack` (tiles of ``infer`` in config/config.yaml, float32);
metrics: :func:`emsrflow.metrics.slice_metrics` (PSNR, SSIM, mean FRC; intensities in
[0, 1], data range 1) per test slice, mean ± std over the 30 test slices of the 3 folds.

    python benchmarks/quality_lateral.py --threads 1            # full: 3 folds, 400 steps
    python benchmarks/quality_lateral.py --quick                # smoke run (< 1 min)
    python benchmarks/quality_lateral.py --folds 0 --steps 200 --archs emsrnet unet

Writes benchmarks/results/quality_lateral.json (quick: quality_lateral-quick.json),
rewritten after every (acquisition, fold) so that a cut-off run keeps what finished.
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
from common import (
    METRICS,
    describe,
    fold_slices,
    machine,
    mean_std_cell,
    network_specs,
    score,
    summarise,
    table,
    train_single_image,
    write_record,
)
from scipy import ndimage

from emsrflow.degrade import Synthetic2Ranges, degrade_stack
from emsrflow.infer import predict_stack
from emsrflow.io import open_volume, to_float01
from emsrflow.phantom import LRParams, _detect, _overlap_matrix
from emsrflow.resize import bicubic
from emsrflow.train import TrainSettings

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT.parent / "shared" / "data" / "isbi2012" / "train-volume.tif"
CONFIG = ROOT / "config" / "config.yaml"
TAU = 3
PIXEL_NM = 4.0  # ISBI 2012 lateral pixel
ACQUISITIONS = ("phantom", "synthetic2")
TRAINED = ("emsrnet", "swinir", "unet")
LABELS = {"bicubic": "Bicubic", "emsrnet": "EMSRNet", "swinir": "SwinIR", "unet": "ResUNet (PSSR)"}

#: Small networks of comparable size (≈0.2–0.3 M parameters) so that each training takes
#: a few minutes on one CPU thread; ``--spec NAME='{...}'`` overrides keys.
SPECS = {
    "emsrnet": {"type": "emsrnet", "channels": 32, "blocks": 1, "res_blocks": 2, "heads": 4},
    "swinir": {
        "type": "swinir",
        "embed_dim": 48,
        "depths": [2, 2],
        "heads": [4, 4],
        "window": 8,
        "upsample_channels": 32,
    },
    "unet": {"type": "unet", "widths": [16, 32, 64], "blocks": [1, 1, 1], "bottleneck": 1},
}

# Anchor of ../shared/anchors.md: bicubic down, bicubic up (Synthetic I) on ISBI 2012.
ANCHOR_SYNTHETIC1 = (22.06, 0.684)


# ---------------------------------------------------------------------------------------
# LR acquisitions


def phantom_acquisition(hr: np.ndarray, tau: int, seed: int, params: LRParams) -> np.ndarray:
    """LR stack by the phantom's LR acquisition model (PSF, area integration, detector)."""
    n_lr = hr.shape[1] // tau, hr.shape[2] // tau
    sigma = params.psf_nm / params.pixel_nm * tau  # PSF relative to the LR pixel, in HR px
    # Centres and width of the HR pixels in LR pixel coordinates, as the phantom's warp grid.
    centres = [-0.5 + (np.arange(n * tau) + 0.5) / tau for n in n_lr]
    my, mx = (_overlap_matrix(n, c, 1.0 / tau) for n, c in zip(n_lr, centres, strict=True))
    out = np.empty((hr.shape[0], *n_lr), np.float32)
    for k, image in enumerate(hr):
        blurred = ndimage.gaussian_filter(image.astype(np.float64), sigma, mode="nearest")
        rng = np.random.default_rng([seed, k])
        out[k] = to_float01(_detect(my @ blurred @ mx.T, rng, params))
    return out


def acquire(kind: str, hr: np.ndarray, config: dict) -> tuple[np.ndarray, dict]:
    degrade = config["degrade"]
    if kind == "phantom":
        params = LRParams()
        seed = int(degrade["seed"])
        lr = phantom_acquisition(hr, TAU, seed, params)
        info = {
            "model": "emsrflow.phantom LR acquisition (no misregistration)",
            "psf_sigma_hr_px": params.psf_nm / params.pixel_nm * TAU,
            "lr_params": {k: getattr(params, k) for k in params.__dataclass_fields__},
            "seed": seed,
        }
        return lr, info
    ranges = Synthetic2Ranges(**{k: tuple(v) for k, v in degrade["synthetic2"].items()})
    lr, _ = degrade_stack(hr, TAU, kind="synthetic2", seed=int(degrade["seed"]), ranges=ranges)
    info = {
        "model": "emsrflow.degrade synthetic2",
        "ranges": degrade["synthetic2"],
        "seed": degrade["seed"],
    }
    return lr, info


# ---------------------------------------------------------------------------------------
# Report


def report(record: dict) -> str:
    acqs = [a for a in record["acquisitions"] if record["summary"].get(a)]
    methods = ["bicubic", *record["archs"]]
    lines = []
    header = ["method", "params"] + [f"{a} {m.upper()}" for a in acqs for m in METRICS]
    rows = []
    for method in methods:
        row = [LABELS.get(method, method), f"{record['params'].get(method, 0):,}"]
        for a in acqs:
            s = record["summary"][a].get(method)
            row.extend(mean_std_cell(s, m) for m in METRICS)
        rows.append(row)
    n_test = {a: record["summary"][a]["bicubic"]["psnr"]["n"] for a in acqs}
    lines.append(
        f"Lateral ×{TAU} on ISBI 2012 ({record['crop']}² HR crops, {PIXEL_NM:g} nm): "
        f"mean ± std over the test slices of folds {record.get('folds_done', record['folds'])} "
        f"({', '.join(f'{a}: {n}' for a, n in n_test.items())} slices)"
    )
    lines.append(table(rows, header))
    lines.append("")
    gain_rows = []
    for method in record["archs"]:
        row = [LABELS.get(method, method)]
        for a in acqs:
            s, b = record["summary"][a].get(method), record["summary"][a]["bicubic"]
            for m in METRICS:
                if s is None:
                    row.append("-")
                else:
                    diff = s[m]["mean"] - b[m]["mean"]
                    row.append(f"{diff:+.2f} dB" if m == "psnr" else f"{diff:+.3f}")
        gain_rows.append(row)
    lines.append("Gain over bicubic (same test slices):")
    lines.append(table(gain_rows, ["method"] + [f"{a} {m.upper()}" for a in acqs for m in METRICS]))
    lines.append("")
    lines.extend(verdicts(record, acqs))
    return "\n".join(lines)


def verdicts(record: dict, acqs: list[str]) -> list[str]:
    """Say where a trained method does not beat bicubic or a baseline, and the goal."""
    lines, losses = [], []
    archs = record["archs"]
    for a in acqs:
        summary = record["summary"][a]
        for method in archs:
            if method not in summary:
                continue
            rivals = ["bicubic"] + (
                [r for r in archs if r != method] if method == "emsrnet" else []
            )
            for rival in rivals:
                if rival not in summary:
                    continue
                lost = [
                    f"{m.upper()} {summary[method][m]['mean']:.3f} vs "
                    f"{summary[rival][m]['mean']:.3f}"
                    for m in METRICS
                    if not summary[method][m]["mean"] > summary[rival][m]["mean"]
                ]
                if lost:
                    losses.append(
                        f"  {LABELS[method]} loses to {LABELS[rival]} on {a}: {'; '.join(lost)}"
                    )
    if losses:
        lines.append("Where a trained method does NOT beat bicubic (or EMSRNet a baseline):")
        lines.extend(losses)
    else:
        lines.append(
            "Every trained method beats bicubic, and EMSRNet beats every baseline, on "
            "every metric and acquisition model."
        )
    if "emsrnet" in archs:
        for a in acqs:
            summary = record["summary"][a]
            if "emsrnet" not in summary:
                continue
            gain = summary["emsrnet"]["psnr"]["mean"] - summary["bicubic"]["psnr"]["mean"]
            frc = summary["emsrnet"]["frc"]["mean"]
            above = all(
                frc > summary[b]["frc"]["mean"]
                for b in ["bicubic", *archs]
                if b in summary and b != "emsrnet"
            )
            ok = gain >= 1.5 and above
            lines.append(
                f"Goal on {a} (≥ +1.5 dB over bicubic, FRC above every baseline): "
                f"{'MET' if ok else 'NOT MET'} ({gain:+.2f} dB; FRC "
                f"{'above' if above else 'not above'} every baseline)"
            )
    return lines


# ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 fold, 2 steps, 255²")
    parser.add_argument("--folds", type=int, nargs="+", default=None, help="of 0 1 2 (default all)")
    parser.add_argument(
        "--acquisitions", nargs="+", default=list(ACQUISITIONS), choices=ACQUISITIONS
    )
    parser.add_argument("--archs", nargs="+", default=list(TRAINED), choices=TRAINED)
    parser.add_argument(
        "--spec",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="override keys of a network's spec, e.g. emsrnet='{\"channels\": 64}'",
    )
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 400)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--patch", type=int, default=32, help="LR patch side (HR: 3× it)")
    parser.add_argument("--lr", type=float, default=None, help="default: config's train lr")
    parser.add_argument("--loss", default="l1", choices=("l1", "l2"))
    parser.add_argument("--crop", type=int, default=None, help="HR crop side (multiple of 3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--report", type=Path, default=None, help="print the tables of a (partial) record, no run"
    )
    args = parser.parse_args()
    if args.report is not None:
        print(report(json.loads(args.report.read_text())))
        return 0
    if not args.data.exists():
        print(f"{args.data}: not found (ISBI 2012 volume, see ../shared/data/README.md)")
        return 1
    torch.set_num_threads(args.threads)
    folds = args.folds if args.folds is not None else ([0] if args.quick else [0, 1, 2])
    steps = args.steps if args.steps is not None else (2 if args.quick else 400)
    crop = args.crop if args.crop is not None else (255 if args.quick else 510)
    if crop % TAU:
        parser.error(f"--crop must be a multiple of {TAU}")
    out = args.out or HERE / "results" / (
        "quality_lateral-quick.json" if args.quick else "quality_lateral.json"
    )
    specs = network_specs(SPECS, args.archs, args.spec, parser, "--archs")

    config = yaml.safe_load(args.config.read_text())
    base = dict(config["train"]["settings"])
    settings = TrainSettings.from_dict(
        {
            **base,
            "loss": args.loss,
            "steps": steps,
            "batch": args.batch,
            "patch": args.patch,
            "lr": args.lr if args.lr is not None else base["lr"],
            "lr_halve_every": max(1, steps // 2),
            "checkpoint_every": steps,
            "log_every": max(1, steps // 10),
            "device": args.device,
        }
    )
    infer_options = {
        "tile": int(config["infer"]["tile"]),
        "overlap": int(config["infer"]["overlap"]),
        "batch": int(config["infer"]["batch"]),
        "precision": "fp32",
        "device": args.device,
    }

    with open_volume(str(args.data)) as reader:
        volume = to_float01(reader.read())
        voxel = reader.voxel_size
    z, h, w = volume.shape
    y0, x0 = (h - crop) // 2, (w - crop) // 2
    hr = np.ascontiguousarray(volume[:, y0 : y0 + crop, x0 : x0 + crop], dtype=np.float32)
    fold_size = z // 3
    print(describe(machine(args.device)))
    print(
        f"ISBI 2012: {z} slices {h}×{w} (voxel {voxel} nm), HR crop {crop}², LR "
        f"{crop // TAU}²; 3 folds of {fold_size} consecutive slices, train on the other "
        f"{z - fold_size}; running folds {folds}"
    )

    # Anchor check: Synthetic (I) (bicubic down) then bicubic up, all slices.
    lr1 = bicubic(hr, (crop // TAU, crop // TAU))
    anchor = summarise(score(hr, bicubic(lr1, (crop, crop)), pixel_nm=PIXEL_NM))
    print(
        f"anchor check, bicubic down/up on all {z} slices: {anchor['psnr']['mean']:.2f} dB / "
        f"{anchor['ssim']['mean']:.3f} (../shared/anchors.md, 512²: "
        f"{ANCHOR_SYNTHETIC1[0]} dB / {ANCHOR_SYNTHETIC1[1]})"
    )

    budget = (
        f"{steps} steps × batch {args.batch} × LR patch {args.patch}² (HR "
        f"{TAU * args.patch}²), EMSR objective (two branches y, y′ per sample, ℓ"
        f"{args.loss[1]}), Adam lr {settings.lr:g} halved every {settings.lr_halve_every}"
    )
    print(f"compute budget, every trained method: {budget}")
    record = {
        "benchmark": "quality_lateral",
        "data": args.data.name,
        "voxel_nm": list(voxel) if voxel else None,
        "scale": TAU,
        "crop": crop,
        "folds": folds,
        "fold_slices": {f: [f * fold_size, (f + 1) * fold_size] for f in folds},
        "acquisitions": args.acquisitions,
        "archs": args.archs,
        "specs": {name: {**spec, "scale": TAU} for name, spec in specs.items()},
        "budget": budget,
        "settings": settings.to_dict(),
        "infer": infer_options,
        "anchor_synthetic1": {
            "ours": {m: anchor[m]["mean"] for m in ("psnr", "ssim")},
            "anchors_md": dict(zip(("psnr", "ssim"), ANCHOR_SYNTHETIC1, strict=True)),
        },
        "params": {"bicubic": 0},
        "acquisition_models": {},
        "per_slice": {},
        "runs": [],
        "summary": {},
        "complete": False,
        "machine": machine(args.device),
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        # Folds outermost: a run cut short still has every acquisition model on the
        # folds it finished.
        acquired = {}
        for acq in args.acquisitions:
            acquired[acq], record["acquisition_models"][acq] = acquire(acq, hr, config)
        for fold in folds:
            for acq in args.acquisitions:
                lr = acquired[acq]
                per_slice = record["per_slice"].setdefault(acq, {})
                trainset, test = fold_slices(z, fold)
                hr_test, lr_test = hr[test], lr[test]
                outputs = {"bicubic": bicubic(lr_test, (crop, crop))}
                for name in args.archs:
                    workdir = Path(tmp) / f"{acq}-{fold}"
                    workdir.mkdir(exist_ok=True)
                    model, params, seconds, loss = train_single_image(
                        name,
                        specs[name],
                        TAU,
                        np.ascontiguousarray(lr[trainset]),
                        np.ascontiguousarray(hr[trainset]),
                        settings,
                        workdir,
                    )
                    tic = time.perf_counter()
                    outputs[name] = predict_stack(model, lr_test, **infer_options)
                    infer_seconds = time.perf_counter() - tic
                    record["params"][name] = params
                    record["runs"].append(
                        {
                            "acquisition": acq,
                            "fold": fold,
                            "arch": name,
                            "train_seconds": seconds,
                            "final_loss": loss,
                            "infer_seconds_per_slice": infer_seconds / len(test),
                        }
                    )
                    print(
                        f"  {acq} fold {fold} {name}: {params:,} parameters, trained in "
                        f"{seconds:.0f} s (final loss {loss:.4f}), inference "
                        f"{infer_seconds / len(test):.2f} s/slice",
                        flush=True,
                    )
                for name, sr in outputs.items():
                    rows = score(hr_test, sr, pixel_nm=PIXEL_NM)
                    for index, row in zip(test.tolist(), rows, strict=True):
                        per_slice.setdefault(name, []).append({"slice": index, **row})
                line = ", ".join(
                    f"{n} {np.mean([r['psnr'] for r in per_slice[n][-len(test) :]]):.2f}"
                    for n in outputs
                )
                print(f"{acq} fold {fold} (test slices {test[0]}–{test[-1]}) PSNR: {line}")
                record["summary"][acq] = {n: summarise(rows) for n, rows in per_slice.items()}
                record["folds_done"] = sorted({r["fold"] for r in record["runs"]} | {fold})
                record["wall_seconds"] = time.perf_counter() - started
                record["report"] = report(record)
                write_record(out, record)
    record["complete"] = True
    record["wall_seconds"] = time.perf_counter() - started
    record["machine"]["load_average_end"] = machine(args.device)["load_average"]
    print()
    print(f"compute budget, every trained method: {budget}")
    for name in args.archs:
        times = [r["train_seconds"] for r in record["runs"] if r["arch"] == name]
        print(
            f"  {LABELS[name]}: {record['params'][name]:,} parameters, spec "
            f"{record['specs'][name]}; training {np.mean(times):.0f} s on average"
        )
    print()
    text = report(record)
    print(text)
    record["report"] = text
    print(f"wall time {record['wall_seconds']:.0f} s")
    write_record(out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
