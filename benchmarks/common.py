"""Helpers shared by the benchmark scripts: machine description, timing, peak memory, JSON,
SR quality scores and single-image network training.

Import it from a script in this folder (``from common import machine``): the scripts put
their own folder on ``sys.path`` when run as ``python benchmarks/<name>.py``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MIB = 2**20


# ---------------------------------------------------------------------------------------
# Machine


def _cpuinfo() -> dict[str, str]:
    """First processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _meminfo_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / 2**30, 1)
    except OSError:
        pass
    return None


def cpu_features() -> dict[str, Any]:
    """The CPU's model and the instruction sets that decide bfloat16 speed."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count()
    return {
        "cpu_model": info.get("model name") or platform.processor() or platform.machine(),
        "cores": cores,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "amx_tile": "amx_tile" in flags,
        "memory_gib": _meminfo_gib(),
    }


def machine(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Describe the machine a benchmark ran on (CPU, threads, versions, GPU)."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    info: dict[str, Any] = {
        "host_os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        **cpu_features(),
        "threads": torch.get_num_threads(),
        "load_average": load_average(),
        "device": str(device),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
        info["gpu_bf16"] = torch.cuda.is_bf16_supported()
    return info


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on the machine skews the timings."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def describe(info: dict[str, Any]) -> str:
    """One line for the printout."""
    text = (
        f"{info['cpu_model']}, {info['cores']} cores, {info['threads']} torch threads, "
        f"capability {info['cpu_capability']} (AVX512-BF16 {_yes(info['avx512_bf16'])}, "
        f"AMX-BF16 {_yes(info['amx_bf16'])}), torch {info['torch']}"
    )
    if info.get("load_average"):
        text += f"; load average {info['load_average'][0]:.1f}"
    if "gpu" in info:
        text += f"; GPU {info['gpu']} ({info['gpu_memory_gib']} GiB, CUDA {info['cuda']})"
    return text


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


# ---------------------------------------------------------------------------------------
# Timing


def synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(
    fn: Callable[[], Any],
    *,
    repeats: int = 3,
    warmup: int = 1,
    device: str | torch.device = "cpu",
    budget: float | None = None,
) -> dict[str, Any]:
    """Median wall time of ``fn()`` after ``warmup`` untimed calls.

    With ``budget`` (seconds), fewer repeats are made where another call would take the
    timed calls past it (at least one timed call is always made).
    """
    for _ in range(warmup):
        synchronize(device)
        fn()
        synchronize(device)
    times: list[float] = []
    while len(times) < repeats:
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        if budget is not None and sum(times) + times[-1] > budget:
            break
    return {"median": statistics.median(times), "min": min(times), "times": times}


# ---------------------------------------------------------------------------------------
# Memory


def peak_rss_mib(pid: int | str = "self") -> float | None:
    """Peak resident memory (VmHWM) of a live process in MiB, from /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_measured(command: Sequence[str], **popen: Any) -> dict[str, Any]:
    """Run ``command`` in a fresh process; return its exit code, wall time and peak RSS.

    The peak comes from ``os.wait4`` for that child alone (``ru_maxrss``), so runs do
    not mix, unlike ``getrusage(RUSAGE_CHILDREN)``, which keeps the largest child so far.
    """
    start = time.perf_counter()
    process = subprocess.Popen(list(command), **popen)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return {
        "returncode": process.returncode,
        "wall_seconds": seconds,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # kilobytes on Linux
    }


# ---------------------------------------------------------------------------------------
# Records


def command_line() -> str:
    return " ".join(["python", *sys.argv])


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write a JSON record (with the command that made it) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**record, "command": record.get("command", command_line())}
    path.write_text(json.dumps(record, indent=2, default=_plain) + "\n")
    print(f"written {path}")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path | torch.device | torch.dtype):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain-text table, columns right-aligned except the first."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for k, row in enumerate(cells):
        rest = zip(row[1:], widths[1:], strict=True)
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in rest]
        lines.append("  ".join(parts))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Super-resolution quality (quality_lateral.py, largefactor_isbi.py)

#: Full-reference metrics of the quality tables, in their column order.
METRICS = ("psnr", "ssim", "frc")
#: Segmentation metrics, where the test slices have labels: VOI (split + merge, bits; the
#: GPEMSR paper's VOI) and adapted Rand error. Lower is better.
SEGMENTATION_METRICS = ("voi", "arand")


def score(
    hr: np.ndarray,
    sr: np.ndarray,
    *,
    pixel_nm: float,
    labels: np.ndarray | None = None,
    segmentation: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Per-slice PSNR, SSIM, mean FRC (and FRC resolution) of an SR stack against its HR.

    :func:`emsrflow.metrics.slice_metrics` with intensities in [0, 1] (data range 1) and
    HR pixels of ``pixel_nm``. With the slices' instance ``labels`` and the SR stack's
    ``segmentation`` also VOI split, merge and their sum, and the adapted Rand error.
    """
    from emsrflow.metrics import slice_metrics

    if (labels is None) != (segmentation is None):
        raise ValueError("score needs both the labels and the segmentation, or neither")
    rows = []
    for index, (reference, prediction) in enumerate(zip(hr, sr, strict=True)):
        m = slice_metrics(
            reference,
            prediction,
            data_range=1.0,
            pixel_nm=pixel_nm,
            labels=None if labels is None else labels[index],
            segmentation=None if segmentation is None else segmentation[index],
        )
        row = {k: m[k] for k in (*METRICS, "frc_resolution_nm", "status")}
        if labels is not None:
            row.update(
                voi_split=m["voi_split"],
                voi_merge=m["voi_merge"],
                voi=m["voi_split"] + m["voi_merge"],
                arand=m["arand"],
            )
        rows.append(row)
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, std and count of the finite values of each metric over :func:`score` rows."""
    from emsrflow.metrics import finite_mean_std

    out = {}
    for metric in (*METRICS, "frc_resolution_nm", "voi_split", "voi_merge", "voi", "arand"):
        if metric in rows[0]:
            mean, std, n = finite_mean_std([r[metric] for r in rows])
            out[metric] = {"mean": mean, "std": std, "n": n}
    return out


def better(metric: str, value: float, than: float) -> bool:
    """Whether ``value`` of ``metric`` is strictly better than ``than`` (VOI and ARAND:
    lower)."""
    return value < than if metric in SEGMENTATION_METRICS else value > than


def mean_std_cell(summary: dict[str, Any] | None, metric: str) -> str:
    """``mean ± std`` of a :func:`summarise` metric (2 decimals for PSNR, else 3)."""
    if summary is None:
        return "-"
    digits = 2 if metric == "psnr" else 3
    s = summary[metric]
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


#: The real-EM benchmarks' folds: ISBI 2012's 30 slices as 3 folds of 10 consecutive slices.
FOLDS = 3


def fold_slices(z: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and test slice indices of ``fold`` of :data:`FOLDS` folds of ``z`` slices.

    The test slices are the fold's ``z // FOLDS`` consecutive slices; the network trains on
    all the others, so that over the folds every slice is a test slice once.
    """
    size = z // FOLDS
    test = np.arange(fold * size, (fold + 1) * size)
    return np.setdiff1d(np.arange(z), test), test


def network_specs(
    defaults: dict[str, dict[str, Any]],
    names: Sequence[str],
    overrides: Sequence[str],
    parser: argparse.ArgumentParser,
    option: str,
) -> dict[str, dict[str, Any]]:
    """The specs of the networks ``names`` (copies of ``defaults``) with ``--spec``
    overrides ``NAME={json}`` applied; a name not among ``names`` is a parser error
    naming ``option``, the option that lists them."""
    specs = {name: dict(defaults[name]) for name in names}
    for item in overrides:
        name, _, text = item.partition("=")
        if name not in specs:
            parser.error(f"--spec {name}: not one of {option} {list(names)}")
        specs[name].update(json.loads(text))
    return specs


def parameters(model: torch.nn.Module) -> int:
    """Trainable parameters (those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def final_row(curve: Path) -> dict[str, float]:
    """The last row of a training curve CSV (``step, loss, …``), by column name."""
    with open(curve, newline="") as f:
        *_, last = csv.DictReader(f)
    return {key: float(value) for key, value in last.items()}


def train_single_image(
    name: str,
    spec: dict[str, Any],
    scale: int,
    lr_train: np.ndarray,
    hr_train: np.ndarray,
    settings: Any,
    workdir: Path,
) -> tuple[torch.nn.Module, int, float, float]:
    """Train a registered single-image network on one (LR, HR) stack pair, as
    scripts/train.py does (rules train and gp_train_baseline).

    :func:`emsrflow.archs.build_network` of ``spec`` at ``scale`` (initial weights seeded
    with ``settings.seed``), trained by :func:`emsrflow.train.train` with ``settings`` (a
    :class:`emsrflow.train.TrainSettings`; checkpoint and loss curve in ``workdir``).
    Returns the model, its trainable parameters, the training seconds and the final loss
    of the curve.
    """
    from emsrflow.archs import build_network
    from emsrflow.train import train

    torch.manual_seed(settings.seed)  # the initial weights, as scripts/train.py
    model = build_network({**spec, "scale": scale})
    params = parameters(model)
    started = time.perf_counter()
    train(
        model,
        [(lr_train, hr_train)],
        settings,
        checkpoint=workdir / f"{name}.pt",
        curve=workdir / f"{name}.csv",
        progress=False,
    )
    seconds = time.perf_counter() - started
    return model, params, seconds, final_row(workdir / f"{name}.csv")["loss"]
