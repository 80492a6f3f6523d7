"""Peak memory and time of volume inference and isotropic reconstruction, by volume depth.

Two streaming data paths, each run on volumes of growing depth, every case in a fresh
process (its peak resident memory from ``os.wait4``, so that cases do not mix):

* super-resolution (SR): ``emsrflow.infer.predict_stack`` driven through
  ``emsrflow.io.write_slabs`` from an OME-Zarr LR volume (float32, 341×341 per section)
  to an OME-Zarr output (float32, 1023×1023 per section), slab by slab, exactly as
  scripts/infer.py does; the network is the demo-size EMSRNet of config/config.yaml.
* isotropic reconstruction (ISO): ``emsrflow.isotropic.reconstruct`` (ρ = 3, xz and yz
  passes, as scripts/iso_infer.py, in blocks of ``--iso-slab`` isotropic planes with
  ``--halo`` planes of context) reading an anisotropic uint8 OME-Zarr stack of
  1024×1024 sections; the network is a 2-layer, 8-channel same-size CNN standing in for
  the Uformer (``--iso-arch uformer`` runs the demo-size Uformer, about 60× slower here).

Memory is about the data path, not the network: a network's activations are bounded by
one batch of tiles whatever the volume, so small networks keep the runs short. The
volumes are a cheap seeded pattern (smooth sinusoids plus noise, written slab by slab
with ``emsrflow.io.write_slabs``), not the EM phantom, which would take longer to make
than the runs themselves; the content does not change memory or time.

Expected: both flat in depth. SR memory holds one slab of sections; ISO memory holds
one block of ``iso_slab + 2·halo`` isotropic planes (a few float32 copies of it) and the
network's tiles, whatever the depth.

    python benchmarks/memory.py                     # default sizes, 10-13 min on 2 cores
    python benchmarks/memory.py --quick             # tiny sizes: a smoke run
    python benchmarks/memory.py --sr-depths 64 256 1024 --iso-slices 8 32 128 256

Writes benchmarks/results/memory.json (memory-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import (
    RESULTS,
    describe,
    load_average,
    machine,
    peak_rss_mib,
    run_measured,
    table,
    write_record,
)
from torch import nn

from emsrflow import io
from emsrflow.archs import build_network
from emsrflow.infer import predict_stack
from emsrflow.isotropic import isotropic_depth, reconstruct

# config/config.yaml: the demo EMSRNet (train.archs.emsrnet) and Uformer (isotropic.arch).
EMSRNET = {
    "type": "emsrnet",
    "scale": 3,
    "channels": 16,
    "blocks": 1,
    "res_blocks": 2,
    "branch_blocks": 1,
    "heads": 4,
    "window": 4,
    "mlp_ratio": 2.0,
}
UFORMER = {"type": "uformer", "scale": 1, "channels": 16, "levels": 1, "depths": 1}
UFORMER.update({"heads": 2, "window": 4})
BICUBIC = {"type": "bicubic", "scale": 3}
LR_VOXEL = (30.0, 12.0, 12.0)  # nm
ANISO_VOXEL = (30.0, 10.0, 10.0)
RHO = 3.0


class ConvStub(nn.Module):
    """Same-size residual CNN, 1 → 8 → 1 channels, 3×3: a cheap stand-in network."""

    scale = 1
    window = 1

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


def pattern(z0: int, z1: int, shape_yx: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Sections z0:z1 of a seeded test volume in [0, 1], float32 (each section alone)."""
    ny, nx = shape_yx
    y = np.linspace(0, 1, ny, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, nx, dtype=np.float32)[None, :]
    out = np.empty((z1 - z0, ny, nx), np.float32)
    for k, z in enumerate(range(z0, z1)):
        rng = np.random.default_rng([seed, z])
        phase = 0.05 * z
        smooth = np.sin(2 * np.pi * (7 * x + 3 * y + phase)) * np.cos(2 * np.pi * (5 * y - phase))
        out[k] = 0.5 + 0.3 * smooth + 0.08 * rng.standard_normal((ny, nx), np.float32)
    return np.clip(out, 0, 1, out=out)


def make_input(path: Path, shape: tuple[int, int, int], voxel, dtype: str) -> float:
    """Write the test volume slab by slab; return the seconds it took."""
    start = time.perf_counter()

    def render(z0: int, z1: int) -> np.ndarray:
        block = pattern(z0, z1, shape[1:])
        return np.round(block * 255).astype(np.uint8) if dtype == "uint8" else block

    io.write_slabs(str(path), shape, voxel, render, slab=16, chunks=(1, 512, 512))
    return time.perf_counter() - start


def _model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    if arch == "conv":
        return ConvStub()
    return build_network({"emsrnet": EMSRNET, "uformer": UFORMER, "bicubic": BICUBIC}[arch])


# ---------------------------------------------------------------------------------------
# One case, in its own process


def child(job: dict) -> None:
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    model = _model(job["arch"])
    options = {k: job[k] for k in ("tile", "overlap", "batch", "precision", "device")}
    if job["kind"] != "baseline":  # first calls set up kernels: keep that out of the time
        with io.open_volume(job["input"]) as volume:
            z, y, x = volume.shape
        plane = (y, x) if job["kind"] == "sr" else (isotropic_depth(z, RHO), x)
        predict_stack(model, np.zeros((1, *plane), np.float32), **options)
    start = time.perf_counter()
    if job["kind"] == "sr":
        with io.open_volume(job["input"]) as source:
            scale = int(model.scale)
            shape = (source.shape[0], scale * source.shape[1], scale * source.shape[2])
            voxel = (source.voxel_size[0], *(n / scale for n in source.voxel_size[1:]))
            io.write_slabs(
                job["output"],
                shape,
                voxel,
                lambda z0, z1: predict_stack(model, source.read(z0, z1), **options),
                slab=job["slab"],
                chunks=(1, 512, 512),
            )
    elif job["kind"] == "iso":
        with io.open_volume(job["input"]) as volume:
            reconstruct(
                model,
                volume,
                RHO,
                job["output"],
                voxel_size=(ANISO_VOXEL[1],) * 3,
                slab=job["iso_slab"],
                halo=job["halo"],
                passes=("xz", "yz"),
                chunks=(64, 64, 64),
                **options,
            )
    # "baseline": imports and the network only
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "vmhwm_mib": peak_rss_mib()}
    Path(job["result"]).write_text(json.dumps(result))


def measure(job: dict, work: Path) -> dict:
    job = {**job, "result": str(work / "result.json")}
    outcome = run_measured([sys.executable, __file__, "--child", json.dumps(job)])
    if outcome["returncode"] != 0:
        raise RuntimeError(f"case {job['kind']} failed (exit {outcome['returncode']})")
    inner = json.loads(Path(job["result"]).read_text())
    if job.get("output"):
        out = Path(job["output"])
        outcome["output_disk_mib"] = sum(f.stat().st_size for f in out.rglob("*")) / 2**20
        shutil.rmtree(out)
    return {**outcome, **inner}


# ---------------------------------------------------------------------------------------
# Report


def flatness(peaks: list[float], volumes_mib: list[float]) -> str:
    """Say how the peak grows compared with the output volume.

    The verdict is taken on the last step (the two largest cases), where fixed costs
    that saturate with size (such as a writing buffer of up to 64 sections) have done
    so; the first-to-last growth is printed beside it.
    """
    grow, volume_grow = peaks[-1] - peaks[0], volumes_mib[-1] - volumes_mib[0]
    step = peaks[-1] - peaks[-2] if len(peaks) > 1 else 0.0
    volume_step = volumes_mib[-1] - volumes_mib[-2] if len(peaks) > 1 else 0.0
    share = step / volume_step if volume_step else 0.0
    if abs(grow) <= max(64.0, 0.1 * peaks[0]):
        verdict = "FLAT"
    elif share < 0.25:
        verdict = f"bounded: the last step adds {100 * share:.0f}% of the volume it adds"
    else:
        verdict = "GROWS WITH THE VOLUME"
    return (
        f"peak {peaks[0]:.0f} → {peaks[-1]:.0f} MiB ({grow:+.0f} MiB; last step "
        f"{step:+.0f} MiB) while the float32 output grows by {volume_grow:.0f} MiB "
        f"(last step {volume_step:+.0f} MiB): {verdict}; largest peak "
        f"{max(peaks) / 1024:.2f} GiB, target < 4 GiB: {'met' if max(peaks) < 4096 else 'NOT met'}"
    )


def linearity(seconds: list[float], units: list[float], what: str) -> str:
    rates = [s / u for s, u in zip(seconds, units, strict=True)]
    spread = max(rates) / min(rates)
    last = rates[-1] / rates[-2] if len(rates) > 1 else 1.0
    return (
        f"time per {what}: "
        + ", ".join(f"{1e3 * r:.1f} ms" for r in rates)
        + f" (largest/smallest {spread:.2f}, last/previous {last:.2f}: "
        + ("linear" if spread < 1.3 or 0.8 < last < 1.25 else "not linear")
        + (
            "; the smallest case carries the most fixed overhead)"
            if rates[0] == max(rates)
            else ")"
        )
    )


def measure_on_input(case: dict, shape, voxel, dtype: str, work: Path) -> tuple[dict, float]:
    """Make an input volume of ``shape``, measure ``case`` on it in a fresh process, delete it.

    Returns the measured row and the seconds spent making the input.
    """
    source = work / f"input-{case['kind']}-{shape[0]}.ome.zarr"
    made = make_input(source, shape, voxel, dtype)
    output = str(work / f"{case['kind']}.ome.zarr")
    row = measure({**case, "input": str(source), "output": output}, work)
    shutil.rmtree(source)
    return row, made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--sr-depths", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--sr-size", type=int, default=341, help="LR section side")
    parser.add_argument("--sr-arch", default="emsrnet", choices=("emsrnet", "bicubic"))
    parser.add_argument("--iso-slices", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--iso-size", type=int, default=1024, help="anisotropic section side")
    parser.add_argument("--iso-arch", default="conv", choices=("conv", "uformer"))
    parser.add_argument("--slab", type=int, default=16, help="SR: sections per slab")
    parser.add_argument("--iso-slab", type=int, default=32, help="ISO: isotropic planes per block")
    parser.add_argument("--halo", type=int, default=16, help="ISO: planes of context")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)"
    )
    parser.add_argument("--skip", choices=("sr", "iso"), default=None, help="skip one series")
    parser.add_argument("--workdir", type=Path, default=None, help="for the volumes (temporary)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    if args.quick:
        args.sr_depths, args.sr_size = [4, 8, 16], 48
        args.iso_slices, args.iso_size = [2, 4, 8], 64
    out = args.out or RESULTS / ("memory-quick.json" if args.quick else "memory.json")
    if args.threads:
        torch.set_num_threads(args.threads)
    common = {
        "slab": args.slab,
        "iso_slab": args.iso_slab,
        "halo": args.halo,
        "tile": args.tile,
        "overlap": args.overlap,
        "batch": args.batch,
        "precision": args.precision,
        "device": args.device,
        "threads": args.threads,
    }
    info = machine(args.device)
    print(describe(info))
    started = time.perf_counter()
    series: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="emsrflow-memory-") as tmp:
        work = Path(tmp)
        baseline = {}
        for arch in {args.sr_arch, args.iso_arch}:
            baseline[arch] = measure({**common, "kind": "baseline", "arch": arch}, work)
            print(
                f"baseline ({arch}: imports and network): {baseline[arch]['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
        if args.skip != "sr":
            series["sr"] = []
            for depth in args.sr_depths:
                shape = (depth, args.sr_size, args.sr_size)
                row, made = measure_on_input(
                    {**common, "kind": "sr", "arch": args.sr_arch}, shape, LR_VOXEL, "float32", work
                )
                side = 3 * args.sr_size
                row.update(
                    depth=depth,
                    input_shape=list(shape),
                    output_shape=[depth, side, side],
                    output_mib=depth * side * side * 4 / 2**20,
                    input_seconds=made,
                )
                series["sr"].append(row)
                print(
                    f"SR depth {depth}: peak {row['peak_rss_mib']:.0f} MiB, {row['seconds']:.1f} s",
                    flush=True,
                )
        if args.skip != "iso":
            series["iso"] = []
            for slices in args.iso_slices:
                shape = (slices, args.iso_size, args.iso_size)
                row, made = measure_on_input(
                    {**common, "kind": "iso", "arch": args.iso_arch},
                    shape,
                    ANISO_VOXEL,
                    "uint8",
                    work,
                )
                depth = isotropic_depth(slices, RHO)
                row.update(
                    slices=slices,
                    depth=depth,
                    input_shape=list(shape),
                    output_shape=[depth, args.iso_size, args.iso_size],
                    output_mib=depth * args.iso_size**2 * 4 / 2**20,
                    block_mib=(args.iso_slab + 2 * args.halo) * args.iso_size**2 * 4 / 2**20,
                    plane_pixels=2 * depth * args.iso_size**2,
                    input_seconds=made,
                )
                series["iso"].append(row)
                print(
                    f"ISO {slices} slices: peak {row['peak_rss_mib']:.0f} MiB, "
                    f"{row['seconds']:.1f} s",
                    flush=True,
                )
    seconds = time.perf_counter() - started

    print()
    print(describe(info))
    print(f"options: {common}")
    for arch, b in baseline.items():
        print(
            f"baseline peak ({arch}, imports and network, nothing run): {b['peak_rss_mib']:.0f} MiB"
        )
    verdicts = {}
    if "sr" in series:
        rows = series["sr"]
        print(
            f"\nSR ×3, {args.sr_arch} (demo size), LR {args.sr_size}² float32 OME-Zarr → "
            f"{3 * args.sr_size}² float32 OME-Zarr, slab {args.slab}:"
        )
        print(
            table(
                [
                    (
                        r["depth"],
                        f"{r['output_mib'] / 1024:.2f}",
                        f"{r['peak_rss_mib']:.0f}",
                        f"{r['seconds']:.1f}",
                        f"{r['seconds'] / r['depth']:.3f}",
                        f"{r['output_mib'] / 4 * 2**20 / r['seconds'] / 1e6:.2f}",
                    )
                    for r in rows
                ],
                ("depth", "output GiB", "peak MiB", "seconds", "s/section", "Mvox/s"),
            )
        )
        verdicts["sr"] = flatness(
            [r["peak_rss_mib"] for r in rows], [r["output_mib"] for r in rows]
        )
        verdicts["sr_time"] = linearity(
            [r["seconds"] for r in rows], [r["depth"] for r in rows], "section"
        )
        print(verdicts["sr"])
        print(verdicts["sr_time"])
    if "iso" in series:
        rows = series["iso"]
        print(
            f"\nISO ρ = {RHO:g}, {args.iso_arch} network, anisotropic {args.iso_size}² uint8 "
            f"OME-Zarr → isotropic float32 OME-Zarr, xz + yz passes, blocks of "
            f"{args.iso_slab} planes with a halo of {args.halo}:"
        )
        print(
            table(
                [
                    (
                        r["slices"],
                        r["depth"],
                        f"{r['output_mib'] / 1024:.2f}",
                        f"{r['block_mib']:.0f}",
                        f"{r['peak_rss_mib']:.0f}",
                        f"{r['seconds']:.1f}",
                        f"{r['plane_pixels'] / r['seconds'] / 1e6:.2f}",
                    )
                    for r in rows
                ],
                (
                    "slices",
                    "depth",
                    "output GiB",
                    "block MiB",
                    "peak MiB",
                    "seconds",
                    "Mpix/s",
                ),
            )
        )
        verdicts["iso"] = flatness(
            [r["peak_rss_mib"] for r in rows], [r["output_mib"] for r in rows]
        )
        verdicts["iso_time"] = linearity(
            [r["seconds"] for r in rows],
            [r["plane_pixels"] / 1e6 for r in rows],
            "million plane pixels",
        )
        print(verdicts["iso"])
        print(verdicts["iso_time"])
        print(
            "(block: iso_slab + 2·halo isotropic planes, float32; memory holds a few "
            "copies of it while the passes run)"
        )
    print(f"\ntotal {seconds:.0f} s")
    write_record(
        out,
        {
            "benchmark": "memory",
            "quick": args.quick,
            "options": common,
            "sr_spec": EMSRNET if args.sr_arch == "emsrnet" else BICUBIC,
            "iso_spec": UFORMER if args.iso_arch == "uformer" else "ConvStub (1→8→1, 3×3)",
            "rho": RHO,
            "volumes": "seeded sinusoid + noise pattern (benchmarks/memory.py:pattern)",
            "baseline": baseline,
            "series": series,
            "verdicts": verdicts,
            "total_seconds": seconds,
            "load_average_end": load_average(),
            "machine": info,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
