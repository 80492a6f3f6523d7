"""Inference and training speed, beside the EMSR paper's Table IV and the conv peak.

In one run, on one device:

* lateral ×3 super-resolution of one 341×341 LR slice to 1023×1023 (batch 1) by bicubic,
  EMSRNet (paper size), SwinIR and ResUNet (PSSR), in float32 and bfloat16: seconds per
  slice through ``emsrflow.infer.predict_section`` (one tile holding the whole slice,
  host copies included) and through a bare forward pass, output voxels per second and
  the effective GFLOP/s (FLOPs counted on the meta device);
* the A2I Uformer on one 1023×1023 plane (same size in and out);
* EMSRNet training steps per second (EMSR objective, batch 2, LR patch 48, Adam);
* one 64→64 3×3 convolution on a 341×341 map in float32 NCHW, float32 channels-last and
  bfloat16 channels-last (autocast, and bf16 weights and input): the machine's practical
  peak, so that each network's fraction of it is visible on any CPU or GPU.

    python benchmarks/speed.py                      # CPU, every network (≥ 20 min on 2 cores)
    python benchmarks/speed.py --device cuda        # on a GPU
    python benchmarks/speed.py --quick              # tiny sizes: a smoke run
    python benchmarks/speed.py --archs emsrnet bicubic --precisions bf16

Writes benchmarks/results/speed.json (speed-quick.json with --quick): figures, sizes and
the machine (CPU model, cores, capability, AVX512-BF16/AMX, GPU).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, describe, load_average, machine, table, time_call, write_record
from torch.utils.flop_counter import FlopCounterMode

from emsrflow.archs import build_network
from emsrflow.device import resolve_device
from emsrflow.infer import _no_bf16_reason, predict_section

SPECS = {
    "bicubic": {"type": "bicubic", "scale": 3},
    "emsrnet": {"type": "emsrnet", "scale": 3},
    "swinir": {"type": "swinir", "scale": 3},
    "unet": {"type": "unet", "scale": 3},
    "uformer": {"type": "uformer", "scale": 1},
}
LABELS = {
    "bicubic": "bicubic",
    "emsrnet": "EMSRNet",
    "swinir": "SwinIR",
    "unet": "ResUNet (PSSR)",
    "uformer": "Uformer (A2I)",
}
# EMSR paper (Khateri et al., IEEE TCI 2024), Table IV: seconds per 1023×1023 slice, GPU.
PAPER_GPU = {"bicubic": 0.017, "emsrnet": 0.255, "swinir": 0.309, "unet": 0.412}
# ../shared/anchors.md, 2 cores of a Xeon with AMX: bicubic 3.4 ms; authors' EMSR code 3.7–4 s.
ANCHOR_CPU = {"bicubic": 0.0034, "emsrnet": 3.85}
GOAL = {("cpu", "bf16"): 0.4, ("cpu", "fp32"): 2.0, ("cuda", "bf16"): 0.1, ("cuda", "fp32"): 0.1}


def count_flops(model: torch.nn.Module, shape: tuple[int, ...]) -> float:
    """FLOPs of one forward pass, counted on the meta device (nothing is computed)."""
    try:
        meta = copy.deepcopy(model).to("meta")
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            meta(torch.zeros(shape, device="meta"))
        return float(counter.get_total_flops())
    except Exception as error:  # an op without a meta kernel: report no figure
        print(f"  (FLOPs not counted for {type(model).__name__}: {error})")
        return float("nan")


def image(size: int, seed: int = 0) -> np.ndarray:
    """A seeded EM-like test image in [0, 1] (speed does not depend on the content)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    smooth = 0.5 + 0.25 * np.sin(2 * np.pi * (5 * x + 3 * y)) * np.cos(2 * np.pi * 4 * y)
    return np.clip(smooth + 0.1 * rng.standard_normal((size, size)), 0, 1).astype(np.float32)


def conv_peak(size: int, device: torch.device, repeats: int, budget: float) -> list[dict]:
    """GFLOP/s of one 64→64 3×3 convolution on a size×size map, in four layouts/types."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(device).eval()
    x = torch.randn(1, 64, size, size, device=device)
    flops = 2 * 64 * 64 * 9 * size * size
    last = copy.deepcopy(conv).to(memory_format=torch.channels_last)
    xl = x.contiguous(memory_format=torch.channels_last)
    cases = [  # name, module, input, autocast
        ("fp32 NCHW", conv, x, False),
        ("fp32 channels-last", last, xl, False),
        ("bf16 autocast channels-last", last, xl, True),
        ("bf16 weights+input channels-last", copy.deepcopy(last).bfloat16(), xl.bfloat16(), False),
    ]
    rows = []
    for name, module, tensor, autocast in cases:

        def run(module=module, tensor=tensor, autocast=autocast):
            with (
                torch.inference_mode(),
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast),
            ):
                return module(tensor)

        timing = time_call(run, repeats=repeats, warmup=2, device=device, budget=budget)
        rows.append(
            {
                "case": name,
                "seconds": timing["median"],
                "gflops": flops / timing["median"] / 1e9,
                "gflop": flops / 1e9,
            }
        )
        print(f"  conv {name}: {rows[-1]['gflops']:.0f} GFLOP/s", flush=True)
    return rows


def infer_case(
    name: str,
    size: int,
    precision: str,
    device: torch.device,
    repeats: int,
    budget: float,
) -> dict:
    """Time one network on one size×size input, through predict_section and bare."""
    torch.manual_seed(0)
    model = build_network(SPECS[name]).eval()
    scale = int(model.scale)
    flops = count_flops(model, (1, 1, size, size))
    picture = image(size)
    fallback = _no_bf16_reason(device) if precision == "bf16" else None
    bf16 = precision == "bf16" and fallback is None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def section():
        return predict_section(
            model, picture, tile=size, overlap=0, batch=1, precision=precision, device=str(device)
        )

    # predict_section warms up and leaves the model on the device, channels-last
    warmup = 2 if device.type == "cuda" else 1
    tiled = time_call(section, repeats=repeats, warmup=warmup, device=device, budget=budget)
    x = torch.from_numpy(picture)[None, None].to(device)
    x = x.contiguous(memory_format=torch.channels_last)

    def forward():
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
        ):
            return model(x)

    # warm already: the same input shape just ran through predict_section
    bare = time_call(forward, repeats=repeats, warmup=0, device=device, budget=budget)
    pixels = (scale * size) ** 2
    row = {
        "arch": name,
        "spec": SPECS[name],
        "parameters": sum(p.numel() for p in model.parameters()),
        "input": [size, size],
        "output": [scale * size, scale * size],
        "precision": precision,
        "bf16_fallback": fallback,
        "seconds_per_slice": tiled["median"],
        "seconds_forward": bare["median"],
        "times_per_slice": tiled["times"],
        "times_forward": bare["times"],
        "voxels_per_second": pixels / tiled["median"],
        "gflop": flops / 1e9,
        "gflops_effective": flops / bare["median"] / 1e9 if flops else None,
    }
    if device.type == "cuda":
        row["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def training_case(
    patch: int, batch: int, precision: str, device: torch.device, repeats: int, budget: float
) -> dict:
    """EMSRNet (paper size) training steps per second: EMSR objective, Adam, as in fit."""
    from emsrflow.train import objective  # imports emsrflow.io (zarr): only where trained

    torch.manual_seed(0)
    model = build_network(SPECS["emsrnet"]).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scale = int(model.scale)
    lr = torch.rand(batch, 1, patch, patch, device=device)
    noisy = (lr + 0.02 * torch.randn_like(lr)).clamp(0, 1)
    hr = torch.rand(batch, 1, scale * patch, scale * patch, device=device)

    def step():
        total, _ = objective(model, lr, noisy, hr, precision=precision)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    warmup = 2
    timing = time_call(step, repeats=max(repeats, 3), warmup=warmup, device=device, budget=budget)
    flops = count_flops(model, (2 * batch, 1, patch, patch))
    return {
        "arch": "emsrnet",
        "batch": batch,
        "patch": patch,
        "precision": precision,
        "seconds_per_step": timing["median"],
        "steps_per_second": 1 / timing["median"],
        "times": timing["times"],
        # forward on the concatenated (y, y') batch; backward ≈ 2× forward
        "gflops_effective": 3 * flops / timing["median"] / 1e9,
    }


def _fmt_s(value: float | None) -> str:
    if value is None or value != value:
        return "—"
    return f"{value * 1e3:.1f} ms" if value < 0.1 else f"{value:.3f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median)")
    parser.add_argument(
        "--budget", type=float, default=30.0, help="seconds per measurement: fewer repeats"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument(
        "--archs", nargs="+", default=list(SPECS), choices=list(SPECS), metavar="ARCH"
    )
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--no-train", action="store_true", help="skip the training steps")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.quick:
        lr_size, plane, conv_size, patch, repeats = 32, 96, 64, 16, 1
    else:
        lr_size, plane, conv_size, patch, repeats = 341, 1023, 341, 48, args.repeats
    out = args.out or RESULTS / ("speed-quick.json" if args.quick else "speed.json")
    info = machine(device)
    print(describe(info))
    started = time.perf_counter()

    print(f"one 64→64 3×3 convolution on {conv_size}²:")
    conv = conv_peak(conv_size, device, repeats, args.budget)
    peak = {"fp32": conv[1]["gflops"], "bf16": conv[2]["gflops"]}

    rows = []
    for name in args.archs:
        size = plane if name == "uformer" else lr_size
        for precision in args.precisions:
            row = infer_case(name, size, precision, device, repeats, args.budget)
            rows.append(row)
            note = f" (bf16 → fp32: {row['bf16_fallback']})" if row["bf16_fallback"] else ""
            print(
                f"  {LABELS[name]} {precision}: {_fmt_s(row['seconds_per_slice'])} per slice, "
                f"forward {_fmt_s(row['seconds_forward'])}{note}",
                flush=True,
            )

    training = []
    try:
        import emsrflow.train  # noqa: F401
    except ImportError as error:
        print(f"  training not measured: {error}")
        args.no_train = True
    if not args.no_train:
        for precision in args.precisions:
            training.append(training_case(patch, 2, precision, device, repeats, args.budget))
            print(
                f"  EMSRNet training {precision}: {training[-1]['steps_per_second']:.2f} steps/s",
                flush=True,
            )
    seconds = time.perf_counter() - started

    print()
    print(describe(info))
    print(f"\nOne 64→64 3×3 convolution on {conv_size}² ({conv[0]['gflop']:.2f} GFLOP):")
    print(table([(r["case"], f"{r['gflops']:.0f}") for r in conv], ("layout and type", "GFLOP/s")))

    header = (
        "network",
        "prec",
        "s/slice",
        "forward",
        "Mvox/s",
        "GFLOP",
        "GFLOP/s",
        "% conv",
        "paper GPU",
        "anchor CPU",
    )
    body = []
    for r in rows:
        gflops = r["gflops_effective"]
        share = gflops / peak["bf16" if r["precision"] == "bf16" else "fp32"] if gflops else None
        body.append(
            (
                LABELS[r["arch"]],
                r["precision"] + ("*" if r["bf16_fallback"] else ""),
                _fmt_s(r["seconds_per_slice"]),
                _fmt_s(r["seconds_forward"]),
                f"{r['voxels_per_second'] / 1e6:.2f}",
                f"{r['gflop']:.0f}" if r["gflop"] else "—",
                f"{gflops:.0f}" if gflops else "—",
                f"{100 * share:.0f}%" if share else "—",
                _fmt_s(None if args.quick else PAPER_GPU.get(r["arch"])),
                _fmt_s(None if args.quick else ANCHOR_CPU.get(r["arch"])),
            )
        )
    out_size = 3 * lr_size
    print(
        f"\nSeconds per {out_size}×{out_size} output slice ({lr_size}² LR, ×3, batch 1; "
        f"Uformer: one {plane}² plane) on {device}"
        + (f" ({info['gpu']})" if "gpu" in info else "")
        + ":"
    )
    print(table(body, header))
    print(
        "s/slice: predict_section, one tile, host copies included; forward: the bare "
        "network; GFLOP/s and % conv from the forward time against the channels-last "
        "conv of the same type.\npaper GPU: EMSR paper Table IV (EMSR, SwinIR, PSSR, "
        "bicubic on their GPU); anchor CPU: ../shared/anchors.md (authors' EMSR code, "
        "2 cores of an AMX Xeon)."
        + (
            "\n* bf16 not available here: ran float32."
            if any(r["bf16_fallback"] for r in rows)
            else ""
        )
    )
    for r in rows:
        goal = GOAL.get((device.type, r["precision"]))
        if r["arch"] == "emsrnet" and goal and not args.quick:
            met = "met" if r["seconds_per_slice"] <= goal else "NOT met"
            print(
                f"EMSRNet {r['precision']} goal ≤ {goal} s/slice on {device.type}: {met} "
                f"({r['seconds_per_slice']:.3f} s; paper GPU 0.255 s)"
            )
    if training:
        print(f"\nEMSRNet training, batch 2, LR patch {patch} (HR {3 * patch}), Adam:")
        print(
            table(
                [
                    (
                        t["precision"],
                        f"{t['steps_per_second']:.2f}",
                        _fmt_s(t["seconds_per_step"]),
                        f"{t['gflops_effective']:.0f}",
                    )
                    for t in training
                ],
                ("precision", "steps/s", "s/step", "GFLOP/s"),
            )
        )
    print(f"\ntotal {seconds:.0f} s")

    write_record(
        out,
        {
            "benchmark": "speed",
            "quick": args.quick,
            "sizes": {"lr": lr_size, "uformer_plane": plane, "conv": conv_size, "patch": patch},
            "repeats": repeats,
            "budget_seconds": args.budget,
            "conv": conv,
            "inference": rows,
            "training": training,
            "paper_gpu_seconds": PAPER_GPU,
            "anchor_cpu_seconds": ANCHOR_CPU,
            "cuda_tf32": {
                "conv": torch.backends.cudnn.allow_tf32,
                "matmul": torch.backends.cuda.matmul.allow_tf32,
            }
            if device.type == "cuda"
            else None,
            "total_seconds": seconds,
            "load_average_end": load_average(),
            "machine": info,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
