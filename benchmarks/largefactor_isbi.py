"""Large-factor (8×, 16×) GPEMSR quality on real EM (ISBI 2012), GPEMSR paper Table 1 style.

HR: the 30 real slices of ../shared/data/isbi2012/train-volume.tif (512², 4 × 4 × 50 nm),
cropped to 512² (a multiple of the codebook's compression, 16). LR:
:func:`emsrflow.largefactor.downsample_bicubic` (anti-aliased, area-aligned PyTorch
bicubic) by the factor f ∈ {8, 16}: 64² at 8×, 32² at 16×.

Folds: the 30 slices as 3 folds of 10 consecutive slices (0–9, 10–19, 20–29); the
networks train on the other 20 slices and are tested on the held-out 10 (the training
part is one volume of 20 sections: the section before and after the gap become
neighbours, as in a volume with a missing stretch). Methods:

bicubic
    :func:`emsrflow.resize.bicubic` upsampling of the LR slice (no parameters).
EMSRNet, SwinIR
    The single-image baselines of the workflow's rule ``gp_train_baseline``: registered
    networks (:func:`emsrflow.archs.build_network`, small specs in ``BASELINES`` of about
    the Stage III network's parameters) trained at the factor on the fold's real (LR, HR)
    pairs by :func:`emsrflow.train.train` (as scripts/train.py: the EMSR objective, ℓ1,
    the other ``largefactor: baselines: settings`` of config/config.yaml), every one on
    the same budget (``--baseline-steps``; batch and LR patch as Stage III), then
    :func:`emsrflow.infer.predict_stack` slice by slice with ``largefactor: infer``'s
    tiles (fp32), as the rule ``gp_infer``.
GPEMSR (single-section)
    Stage III with ``single_section=True``: the centre LR section only, with the prior
    (MPF), no alignment or 3D fusion.
GPEMSR (full)
    Stage III on the five sections z − 2 … z + 2 (POD alignment, 3DA fusion, MPF).

Both GPEMSR rows share the fold's Stage I codebook (:func:`train_codebook`, HR patches
only, independent of the factor) and the factor's Stage II indexer
(:func:`train_indexer`); Stage III (:func:`train_reconstruction`) is trained for each.
Stages II, III and the baselines train on LR patches of ``--lr-patch``² (8², HR 64² at
8× and 128² at 16×; the paper: 32² and 16²): a 4² LR patch at 16× is all border, and an
EMSRNet trained on it came out 9 dB below bicubic, far too bright.
Networks are SMALL (see ``STAGE1``, ``INDEXER``, ``STAGE3``) and the budget tiny, so that
``--folds 0 --factors 8`` finishes in about 15 min on one CPU thread; the paper trains
networks some 20× larger for hundreds of thousands of steps on GPUs. GPEMSR inference:
:func:`emsrflow.largefactor.predict_volume` on the 10 test slices (one tile per slice);
metrics: :func:`emsrflow.metrics.slice_metrics` (PSNR, SSIM, mean FRC; data range 1,
4 nm pixels) per test slice, mean ± std over the test slices of the folds run. VOI
(split + merge, bits) and ARAND against the challenge's labels
(../shared/data/isbi2012/train-labels.tif; cells are the connected components of each
section's interior) of one fixed segmentation pipeline per fold, applied alike to every
method's output, as the workflow's rule ``segmenter``
(:func:`emsrflow.segment.train_pipeline`: the affinity U-Net and thresholds of
config.yaml's ``segmentation``, trained ``--segment-steps`` on the fold's 20 training
HR slices and labels, its threshold chosen on them); the HR test slices' own VOI is
the pipeline's ceiling. Rows in
the order of the paper's Table 1: bicubic, EMSRNet, SwinIR, GPEMSR single-section,
GPEMSR full; parameters: the trained ones (GPEMSR: Stage III, the frozen prior apart).

    python benchmarks/largefactor_isbi.py --quick                        # smoke (≈1 min)
    python benchmarks/largefactor_isbi.py --folds 0 --factors 8 --threads 1
    python benchmarks/largefactor_isbi.py --folds 0 --factors 16 \\
        --out benchmarks/results/largefactor_isbi-x16.json

Writes benchmarks/results/largefactor_isbi.json (quick: largefactor_isbi-quick.json),
rewritten after every (fold, factor) so that a cut-off run keeps what finished.
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
    SEGMENTATION_METRICS,
    better,
    describe,
    final_row,
    fold_slices,
    machine,
    mean_std_cell,
    network_specs,
    parameters,
    score,
    summarise,
    table,
    train_single_image,
    write_record,
)

from emsrflow import largefactor as L
from emsrflow import segment
from emsrflow.infer import predict_stack
from emsrflow.io import open_volume, to_float01
from emsrflow.metrics import adapted_rand_error, voi
from emsrflow.resize import bicubic
from emsrflow.train import TrainSettings

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT.parent / "shared" / "data" / "isbi2012" / "train-volume.tif"
LABELS_DATA = DATA.with_name("train-labels.tif")
CONFIG = ROOT / "config" / "config.yaml"
CROP = 512
PIXEL_NM = 4.0
FACTORS = (8, 16)
#: Table 1's rows, in its order.
METHODS = ("bicubic", "emsrnet", "swinir", "gpemsr_single", "gpemsr")
GPEMSR = ("gpemsr_single", "gpemsr")
LABELS = {
    "bicubic": "Bicubic",
    "emsrnet": "EMSRNet",
    "swinir": "SwinIR",
    "gpemsr_single": "GPEMSR (single-section)",
    "gpemsr": "GPEMSR (full, 5 sections)",
}

#: Small networks (the paper's: channels 64…512, 1024 codes of 512, Stage III 64 wide).
STAGE1 = {
    "channels": [16, 16, 32, 32, 32],
    "latent_dim": 32,
    "codes": 64,
    "bottleneck_blocks": 1,
    "norm_groups": 8,
}
INDEXER = {"indexer_blocks": 1}
STAGE3 = {"channels": 16, "deform_groups": 2, "front_blocks": 1, "back_blocks": 2}
CRITIC = {"critic_channels": 16, "critic_layers": 2, "critic_padding": 1}
#: Single-image baselines of about the Stage III network's trainable parameters (247,654
#: full / 103,570 single-section at 8×): EMSRNet 236,180 at 8× (264,404 at 16×), SwinIR
#: 237,033 (265,369); the window of 4 fits the LR patches (8², ``--lr-patch``) and
#: every test slice (32² at 16×). ``--spec NAME='{...}'`` overrides keys.
BASELINES = {
    "emsrnet": {"type": "emsrnet", "channels": 28, "blocks": 1, "res_blocks": 2, "heads": 4},
    "swinir": {
        "type": "swinir",
        "embed_dim": 48,
        "depths": [2, 2],
        "heads": [4, 4],
        "window": 4,
        "upsample_channels": 28,
    },
}


# ---------------------------------------------------------------------------------------
# Report


def report(record: dict) -> str:
    factors = [f for f in record["factors"] if str(f) in record["summary"]]
    methods = [m for m in METHODS if any(m in record["summary"][str(f)] for f in factors)]
    trained = [m for m in methods if m != "bicubic"]
    bicubic_summary = record["summary"][str(factors[0])]["bicubic"]
    metrics = METRICS + tuple(m for m in SEGMENTATION_METRICS if m in bicubic_summary)
    lines = [
        f"Large-factor SR on ISBI 2012 ({CROP}² HR, {PIXEL_NM:g} nm; LR by anti-aliased "
        f"bicubic), GPEMSR Table 1 layout: mean ± std over the test slices of folds "
        f"{record.get('folds_done')}",
    ]
    header = (
        ["method"]
        + [f"×{f} {m.upper()}" for f in factors for m in metrics]
        + ["params (trained)"]
        + [f"×{f} s/slice" for f in factors]
    )
    rows = []
    for method in methods:
        row = [LABELS[method]]
        for f in factors:
            s = record["summary"][str(f)].get(method)
            row.extend(mean_std_cell(s, m) for m in metrics)
        params = [record["params"][str(f)].get(method) for f in factors]
        row.append(" / ".join("-" if p is None else f"{p:,}" for p in params))
        for f in factors:
            t = record["seconds_per_slice"][str(f)].get(method)
            row.append("-" if t is None else f"{t:.3f}")
        rows.append(row)
    lines.append(table(rows, header))
    if len(factors) > 1:
        lines.append(f"(params: {' / '.join(f'×{f}' for f in factors)})")
    lines.append("")
    gain_rows = []
    for method in trained:
        row = [LABELS[method]]
        for f in factors:
            summary = record["summary"][str(f)]
            for m in metrics:
                if method not in summary:
                    row.append("-")
                    continue
                diff = summary[method][m]["mean"] - summary["bicubic"][m]["mean"]
                row.append(f"{diff:+.2f} dB" if m == "psnr" else f"{diff:+.3f}")
        gain_rows.append(row)
    direction = "VOI and ARAND: lower" if len(metrics) > len(METRICS) else "higher"
    lines.append(f"Gain over bicubic (same test slices; {direction} is better):")
    lines.append(
        table(gain_rows, ["method"] + [f"×{f} {m.upper()}" for f in factors for m in metrics])
    )
    lines.append("")
    losses = []
    for f in factors:
        summary = record["summary"][str(f)]
        for method in trained:
            if method not in summary:
                continue
            lost = [
                f"{m.upper()} {summary[method][m]['mean']:.3f} vs "
                f"{summary['bicubic'][m]['mean']:.3f}"
                for m in metrics
                if not better(m, summary[method][m]["mean"], summary["bicubic"][m]["mean"])
            ]
            if lost:
                losses.append(f"  ×{f} {LABELS[method]}: {'; '.join(lost)}")
    if losses:
        lines.append("Where a trained method does NOT beat bicubic:")
        lines.extend(losses)
    else:
        lines.append("Every trained method beats bicubic on every metric and factor run.")
    if record.get("segmentation"):
        hr_scores = record["segmentation"]
        lines.append(
            "Segmentation of the HR test slices themselves (the pipeline's ceiling): "
            + "; ".join(
                f"fold {fold} VOI {v['hr_voi']:.3f}, ARAND {v['hr_arand']:.3f} "
                f"(threshold {v['threshold']:g})"
                for fold, v in hr_scores.items()
            )
        )
    for f in factors:  # GPEMSR against the single-image baselines
        summary = record["summary"][str(f)]
        for method in GPEMSR:
            rivals = [b for b in BASELINES if b in summary]
            if method not in summary or not rivals:
                continue
            parts = []
            for rival in rivals:
                d = [summary[method][m]["mean"] - summary[rival][m]["mean"] for m in METRICS]
                parts.append(
                    f"{LABELS[rival]} PSNR {d[0]:+.2f} dB, SSIM {d[1]:+.3f}, FRC {d[2]:+.3f}"
                )
            lines.append(f"×{f} {LABELS[method]} minus {'; minus '.join(parts)}")
    for f in factors:  # what the four neighbouring sections add (POD + 3DA)
        summary = record["summary"][str(f)]
        if "gpemsr" in summary and "gpemsr_single" in summary:
            diffs = [
                summary["gpemsr"][m]["mean"] - summary["gpemsr_single"][m]["mean"] for m in METRICS
            ]
            lines.append(
                f"×{f} full minus single-section: PSNR {diffs[0]:+.2f} dB, SSIM "
                f"{diffs[1]:+.3f}, FRC {diffs[2]:+.3f}"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--config", type=Path, default=CONFIG, help="baseline settings, infer")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budget, < 1 min")
    parser.add_argument("--folds", type=int, nargs="+", default=None, help="of 0 1 2 (default all)")
    parser.add_argument("--factors", type=int, nargs="+", default=list(FACTORS), choices=FACTORS)
    parser.add_argument("--steps1", type=int, default=None, help="Stage I steps (default 2000)")
    parser.add_argument("--steps2", type=int, default=None, help="Stage II steps (default 1500)")
    parser.add_argument("--steps3", type=int, default=None, help="Stage III steps (default 1000)")
    parser.add_argument(
        "--baselines",
        nargs="*",
        default=list(BASELINES),
        choices=list(BASELINES),
        help="single-image baselines to train (none: GPEMSR and bicubic only)",
    )
    parser.add_argument(
        "--baseline-steps",
        type=int,
        default=None,
        help="training steps of every baseline (default: the Stage III steps)",
    )
    parser.add_argument(
        "--spec",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="override keys of a baseline's spec, e.g. emsrnet='{\"channels\": 32}'",
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--patch", type=int, default=64, help="Stage I HR patch side")
    parser.add_argument(
        "--lr-patch",
        type=int,
        default=8,
        help="LR patch side of Stages II, III and the baselines (HR: this × the factor); "
        "the paper's: 32 at 8×, 16 at 16×",
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (all stages)")
    parser.add_argument(
        "--segment-steps",
        type=int,
        default=None,
        help="training steps of the fold's affinity U-Net (VOI, ARAND; default 1500; "
        "0: no segmentation metrics); its other settings are config.yaml's segmentation",
    )
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
    factors = args.factors if not args.quick or args.factors != list(FACTORS) else [8]
    steps1 = args.steps1 if args.steps1 is not None else (4 if args.quick else 2000)
    steps2 = args.steps2 if args.steps2 is not None else (4 if args.quick else 1500)
    steps3 = args.steps3 if args.steps3 is not None else (3 if args.quick else 1000)
    steps_b = args.baseline_steps if args.baseline_steps is not None else steps3
    batch, patch = (2 if args.quick else args.batch), args.patch
    if patch % 16 or args.lr_patch % 4:
        parser.error(
            f"--patch {patch} must be a multiple of 16 and --lr-patch {args.lr_patch} of 4"
        )
    specs = network_specs(BASELINES, args.baselines, args.spec, parser, "--baselines")
    full_config = yaml.safe_load(args.config.read_text())
    config = full_config["largefactor"]
    segment_steps = args.segment_steps
    if segment_steps is None:
        segment_steps = 4 if args.quick else 1500
    segmentation = None
    if segment_steps:
        options = full_config["segmentation"]
        segmentation = {
            **options,
            "settings": {**options["settings"], "steps": segment_steps, "device": args.device},
        }
    # The workflow's baseline settings (rule gp_train_baseline: real pairs, loss ℓ1) with
    # this benchmark's budget and LR patch.
    baseline_base = {
        **config["baselines"]["settings"],
        "loss": "l1",
        "steps": steps_b,
        "batch": batch,
        "lr": args.lr,
        "lr_halve_every": max(1, steps_b // 2),
        "checkpoint_every": steps_b,
        "log_every": max(1, steps_b // 10),
        "device": args.device,
    }
    infer_options = {
        **{k: config["infer"][k] for k in ("tile", "overlap", "batch")},
        "precision": "fp32",
        "device": args.device,
    }
    out = args.out or HERE / "results" / (
        "largefactor_isbi-quick.json" if args.quick else "largefactor_isbi.json"
    )

    with open_volume(str(args.data)) as reader:
        volume = reader.read()
        voxel = reader.voxel_size
    z, h, w = volume.shape
    y0, x0 = (h - CROP) // 2, (w - CROP) // 2
    hr = np.ascontiguousarray(to_float01(volume[:, y0 : y0 + CROP, x0 : x0 + CROP]), np.float32)
    instances = None
    if segmentation:
        with open_volume(str(LABELS_DATA)) as reader:
            labels = reader.read()[:, y0 : y0 + CROP, x0 : x0 + CROP]
        instances, linked = segment.as_instances(labels)
    fold_size = z // 3
    info = machine(args.device)
    print(describe(info))
    print(
        f"ISBI 2012: {z} slices {h}×{w} (voxel {voxel} nm), HR crop {CROP}²; 3 folds of "
        f"{fold_size} consecutive slices, train on the other {z - fold_size}; folds {folds}, "
        f"factors {factors}"
    )
    loop = {"batch": batch, "lr": args.lr, "device": args.device}

    def optim(steps: int) -> dict:
        return {
            "steps": steps,
            "lr_halve_every": max(1, steps // 2),
            "checkpoint_every": steps,
            "log_every": max(1, steps // 10),
        }

    adversarial_start = (3 * steps1) // 4
    budget = (
        f"Stage I {steps1} steps (critic from step {adversarial_start}), Stage II {steps2} "
        f"steps, Stage III {steps3} steps (each GPEMSR row); batch {batch}, HR patch "
        f"{patch}² (Stage I), LR patch {args.lr_patch}² (Stages II, III: HR "
        f"{args.lr_patch}·f), Adam lr {args.lr:g} halved at half-way; one CPU thread"
        if args.threads == 1 and args.device == "cpu"
        else f"Stage I {steps1}, II {steps2}, III {steps3} steps; batch {batch}, HR patch "
        f"{patch}² (Stage I), LR patch {args.lr_patch}², lr {args.lr:g}, {args.threads} "
        f"threads on {args.device}"
    )
    if specs:
        budget += (
            f"; baselines ({', '.join(LABELS[n] for n in specs)}) {steps_b} steps each, "
            f"batch {batch}, LR patch {args.lr_patch}², EMSR objective ℓ1 "
            f"(rule gp_train_baseline), "
            f"Adam lr {args.lr:g} halved at half-way"
        )
    print(f"budget: {budget}")
    print(f"networks: Stage I {STAGE1}, indexer {INDEXER}, Stage III {STAGE3}")
    for name, spec in specs.items():
        print(f"  {LABELS[name]}: {spec}")
    record = {
        "benchmark": "largefactor_isbi",
        "data": args.data.name,
        "voxel_nm": list(voxel) if voxel else None,
        "crop": CROP,
        "folds": folds,
        "fold_slices": {f: [f * fold_size, (f + 1) * fold_size] for f in folds},
        "factors": factors,
        "networks": {"stage1": STAGE1, "indexer": INDEXER, "stage3": STAGE3, "critic": CRITIC},
        "baselines": specs,
        "baseline_settings": {k: v for k, v in baseline_base.items() if k != "patch"},
        "infer": infer_options,
        "budget": budget,
        "steps": {"stage1": steps1, "stage2": steps2, "stage3": steps3, "baselines": steps_b},
        "batch": batch,
        "patch": patch,
        "lr_patch": args.lr_patch,
        "lr": args.lr,
        "params": {},
        "frozen_prior_params": {},
        "seconds_per_slice": {},
        "per_slice": {},
        "runs": [],
        "summary": {},
        "segmentation": {},
        "segmentation_settings": segmentation,
        "complete": False,
        "machine": info,
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for fold in folds:
            trainset, test = fold_slices(z, fold)
            hr_train, hr_test = np.ascontiguousarray(hr[trainset]), hr[test]
            work = Path(tmp) / f"fold{fold}"
            work.mkdir()
            tic = time.perf_counter()
            L.train_codebook(
                [hr_train],
                L.CodebookSettings(
                    **loop,
                    patch=patch,
                    **optim(steps1),
                    **CRITIC,
                    adversarial_start=adversarial_start,
                    r1_every=4,
                    critic_lr=args.lr / 2,
                ),
                checkpoint=work / "stage1.pt",
                curve=work / "stage1.csv",
                network=STAGE1,
                progress=False,
            )
            seconds1 = time.perf_counter() - tic
            l1 = final_row(work / "stage1.csv")["l1"]
            print(f"fold {fold}: Stage I {seconds1:.0f} s (L1 {l1:.4f})", flush=True)
            truth = segmenting = None
            if segmentation:
                tic = time.perf_counter()
                net, calibration = segment.train_pipeline(
                    [hr_train],
                    [np.ascontiguousarray(instances[trainset])],
                    segmentation,
                    linked=linked,
                    checkpoint=work / "segmenter.pt",
                )
                segmenting = {"net": net, **segment.segment_keywords(calibration)}
                truth = instances[test]
                pairs_hr = list(
                    zip(truth, segment.segment_volume(volume=hr_test, **segmenting), strict=True)
                )
                record["segmentation"][str(fold)] = {
                    **calibration,
                    "train_seconds": time.perf_counter() - tic,
                    "hr_voi": float(np.mean([sum(voi(t, s)) for t, s in pairs_hr])),
                    "hr_arand": float(np.mean([adapted_rand_error(t, s) for t, s in pairs_hr])),
                }
                print(
                    f"fold {fold}: affinity U-Net and threshold "
                    f"{calibration['threshold']:g} in {time.perf_counter() - tic:.0f} s; "
                    f"HR test slices VOI {record['segmentation'][str(fold)]['hr_voi']:.3f}",
                    flush=True,
                )
            for f in factors:
                key = str(f)
                lr_all = L.downsample_bicubic(hr, f)
                lr_train, lr_test = np.ascontiguousarray(lr_all[trainset]), lr_all[test]
                pairs = [(lr_train, hr_train)]
                tic = time.perf_counter()
                prior = L.train_indexer(
                    pairs,
                    L.IndexerSettings(**loop, patch=args.lr_patch * f, **optim(steps2), scale=f),
                    codebook=work / "stage1.pt",
                    checkpoint=work / f"stage2-x{f}.pt",
                    curve=work / f"stage2-x{f}.csv",
                    network=INDEXER,
                    progress=False,
                )
                seconds2 = time.perf_counter() - tic
                accuracy = final_row(work / f"stage2-x{f}.csv")["accuracy"]
                print(
                    f"  ×{f}: Stage II {seconds2:.0f} s (code accuracy {accuracy:.3f})",
                    flush=True,
                )
                record["frozen_prior_params"][key] = sum(p.numel() for p in prior.parameters())
                params = record["params"].setdefault(key, {"bicubic": 0})
                timing = record["seconds_per_slice"].setdefault(key, {})
                tic = time.perf_counter()
                outputs = {"bicubic": bicubic(lr_test, (CROP, CROP))}
                timing["bicubic"] = (time.perf_counter() - tic) / len(test)
                settings = TrainSettings.from_dict({**baseline_base, "patch": args.lr_patch})
                for name, spec in specs.items():
                    model, params[name], seconds, loss = train_single_image(
                        f"{name}-x{f}", spec, f, lr_train, hr_train, settings, work
                    )
                    tic = time.perf_counter()
                    outputs[name] = predict_stack(model, lr_test, **infer_options)
                    timing[name] = (time.perf_counter() - tic) / len(test)
                    record["runs"].append(
                        {
                            "fold": fold,
                            "factor": f,
                            "method": name,
                            "train_seconds": seconds,
                            "final_loss": loss,
                            "infer_seconds_per_slice": timing[name],
                        }
                    )
                    print(
                        f"  ×{f} {name}: {params[name]:,} trainable parameters, trained in "
                        f"{seconds:.0f} s (final loss {loss:.4f}), inference "
                        f"{timing[name]:.2f} s/slice",
                        flush=True,
                    )
                for method in GPEMSR:
                    network = {**STAGE3, "single_section": method == "gpemsr_single"}
                    tic = time.perf_counter()
                    net = L.train_reconstruction(
                        pairs,
                        L.ReconstructionSettings(
                            **loop, patch=args.lr_patch * f, **optim(steps3), scale=f
                        ),
                        prior=work / f"stage2-x{f}.pt",
                        checkpoint=work / f"{method}-x{f}.pt",
                        curve=work / f"{method}-x{f}.csv",
                        network=network,
                        progress=False,
                    )
                    seconds3 = time.perf_counter() - tic
                    loss3 = final_row(work / f"{method}-x{f}.csv")["loss"]
                    tic = time.perf_counter()
                    outputs[method] = L.predict_volume(
                        net, lr_test, tile=CROP // f, overlap=0, device=args.device
                    )
                    timing[method] = (time.perf_counter() - tic) / len(test)
                    params[method] = parameters(net)
                    record["runs"].append(
                        {
                            "fold": fold,
                            "factor": f,
                            "method": method,
                            "stage1_seconds": seconds1,
                            "stage2_seconds": seconds2,
                            "stage2_accuracy": accuracy,
                            "stage3_seconds": seconds3,
                            "stage3_final_loss": loss3,
                            "infer_seconds_per_slice": timing[method],
                        }
                    )
                    print(
                        f"  ×{f} {method}: {params[method]:,} trainable parameters, Stage III "
                        f"{seconds3:.0f} s (final loss {loss3:.4f}), "
                        f"inference {timing[method]:.2f} s/slice",
                        flush=True,
                    )
                per_slice = record["per_slice"].setdefault(key, {})
                for name, sr in outputs.items():
                    segments = None
                    if segmenting:
                        segments = segment.segment_volume(volume=sr, **segmenting)
                    rows = score(
                        hr_test, sr, pixel_nm=PIXEL_NM, labels=truth, segmentation=segments
                    )
                    for index, row in zip(test.tolist(), rows, strict=True):
                        per_slice.setdefault(name, []).append({"slice": index, **row})
                line = ", ".join(
                    f"{n} {np.mean([r['psnr'] for r in per_slice[n][-len(test) :]]):.2f}"
                    for n in outputs
                )
                print(f"  ×{f} fold {fold} (test slices {test[0]}–{test[-1]}) PSNR: {line}")
                record["summary"][key] = {n: summarise(rows) for n, rows in per_slice.items()}
                record["folds_done"] = sorted({r["fold"] for r in record["runs"]})
                record["wall_seconds"] = time.perf_counter() - started
                record["report"] = report(record)
                write_record(out, record)
    record["complete"] = True
    record["wall_seconds"] = time.perf_counter() - started
    record["machine"]["load_average_end"] = machine(args.device)["load_average"]
    print()
    print(f"budget: {budget}")
    for key, n in record["frozen_prior_params"].items():
        print(f"  ×{key}: frozen prior (Stage I + indexer) {n:,} parameters")
    text = report(record)
    print(text)
    record["report"] = text
    print(f"wall time {record['wall_seconds']:.0f} s")
    write_record(out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
