"""Snakemake runs part of the demo study through a real single-node SLURM cluster.

The cluster (tests/slurm_cluster.py) needs root and ``.ci/install-slurm.sh``; the test
skips without them, or fails if ``EMSRFLOW_REQUIRE_SLURM`` is set (as in CI). The run
uses the shipped profile workflow/profiles/slurm with the options a cluster without an
accounting database needs (README.md, "Running on a SLURM cluster"); its outputs must
equal those of a local run of the same targets, bit for bit.
"""

import collections
import concurrent.futures
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import slurm_cluster
import torch
import yaml
from package_helpers import LR_VOXEL, TINY_EMSRNET, make_data
from test_workflow import ROOT, SNAKEMAKE, TINY_INFER, TINY_TRAIN, make_study, snakemake

from emsrflow import archs, bioimage, io, process

pytestmark = pytest.mark.workflow

# Two animals, so that fold brain1 trains on brain2_ipsi (its network, and its segmentation
# network for VOI) and is applied to brain1_ipsi.
DATASETS = ["brain1_ipsi", "brain2_ipsi"]
TARGETS = ["results/brain1_ipsi/evaluate/emsrnet_real_l1.tsv"]
JOBS = {
    "phantom": 2,
    "register": 2,
    "resize": 2,
    "train": 1,
    "infer": 1,
    "segmenter": 1,
    "evaluate": 1,
}
GPU_RULES = {"train", "infer", "segmenter"}
# What workflow/rules/train.smk asks for a training job.
TRAIN_MEM_MB, TRAIN_TIME_LIMIT = 8000, "1-00:00:00"
# The profile's runtime default (minutes) for rules that declare none, as SLURM shows it.
DEFAULT_TIME_LIMIT = "01:00:00"
ACCOUNT = "emsr_test"


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    try:
        cluster = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    except slurm_cluster.ClusterUnavailable as error:
        if os.environ.get("EMSRFLOW_REQUIRE_SLURM"):
            pytest.fail(f"EMSRFLOW_REQUIRE_SLURM is set but no SLURM cluster started: {error}")
        pytest.skip(f"no SLURM cluster: {error}")
    yield cluster
    cluster.stop()


def study_config(workdir, gpus):
    train, infer = {**TINY_TRAIN, "gpus": gpus}, {**TINY_INFER, "gpus": gpus}
    return make_study(workdir, datasets=DATASETS, train=train, infer=infer)


def run_on_slurm(workdir, cluster):
    """Run the targets with the SLURM profile; the result and the training memory asked."""
    train_mem_mb = TRAIN_MEM_MB if TRAIN_MEM_MB <= cluster.memory_mb else cluster.memory_mb // 2
    command = [
        SNAKEMAKE,
        *TARGETS,
        "--snakefile",
        str(ROOT / "workflow" / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(study_config(workdir, cluster.gpus)),
        "--profile",
        str(ROOT / "workflow" / "profiles" / "slurm"),
        # A cluster without an accounting database: follow jobs with squeue.
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "5",
        "--slurm-keep-successful-logs",
        # Partition and account as a user sets them (here for one rule); the others
        # keep the profile's placeholders: the cluster's default partition, no account.
        "--set-resources",
        f"evaluate:slurm_partition={cluster.partition}",
        f"evaluate:slurm_account={ACCOUNT}",
        # A small machine's node cannot offer what training asks for.
        f"train:mem_mb={train_mem_mb}",
    ]
    result = subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900
    )
    return result, train_mem_mb


@pytest.fixture(scope="module")
def runs(slurm, tmp_path_factory):
    """The run through SLURM and, meanwhile (SLURM leaves the CPUs idle between
    polls), a local run of the same targets and configuration as a reference."""
    on_slurm, local = map(tmp_path_factory.mktemp, ("slurm_study", "local_study"))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        reference = pool.submit(snakemake, local, *TARGETS, config=study_config(local, slurm.gpus))
        result, train_mem_mb = run_on_slurm(on_slurm, slurm)
        reference = reference.result()
    assert result.returncode == 0, result.stdout[-5000:]
    assert reference.returncode == 0, reference.stdout[-5000:]
    return {"workdir": on_slurm, "output": result.stdout, "train_mem_mb": train_mem_mb}, local


@pytest.fixture(scope="module")
def slurm_run(runs):
    """The SLURM run's folder, its Snakemake output and the training memory asked."""
    return runs[0]


@pytest.fixture(scope="module")
def local_run(runs):
    """The local run's folder."""
    return runs[1]


@pytest.fixture(scope="module")
def jobs(slurm, slurm_run):
    """SLURM's record of the run's jobs by rule (scontrol fields)."""
    found = collections.defaultdict(list)
    for job in slurm.jobs():
        if Path(job["WorkDir"]).resolve() == slurm_run["workdir"].resolve():
            rule = next(r for r in JOBS if job["Comment"].startswith(f"rule_{r}_wildcards_"))
            found[rule].append(job)
    return found


def test_every_job_went_through_slurm_and_completed(slurm_run, jobs):
    workdir, output = slurm_run["workdir"], slurm_run["output"]
    assert {rule: len(found) for rule, found in jobs.items()} == JOBS
    assert f"{sum(JOBS.values())} of {sum(JOBS.values())} steps (100%) done" in output
    for rule, found in jobs.items():
        for job in found:
            assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", job
            # The plugin's log of the job: Snakemake ran the rule inside the allocation.
            log = Path(job["StdOut"])
            assert log.is_relative_to(workdir / ".snakemake" / "slurm_logs")
            assert log.name == f"{job['JobId']}.log"
            text = log.read_text()
            assert f"(Rule: {rule})" in text and "1 of 1 steps (100%) done" in text


def test_resources_reach_sbatch(slurm, slurm_run, jobs):
    train_mem_mb = slurm_run["train_mem_mb"]
    for rule, found in jobs.items():
        for job in found:
            assert job["Partition"] == slurm.partition
            assert job["Account"] == (ACCOUNT if rule == "evaluate" else "(null)")
            assert job["NumCPUs"] == "1"  # threads: 1 in the test config
            if rule == "train":
                assert job["TimeLimit"] == TRAIN_TIME_LIMIT
                assert f"mem={train_mem_mb}M" in job["TRES"]
            else:
                assert job["TimeLimit"] == DEFAULT_TIME_LIMIT


def test_gpu_rules_request_gpus(slurm, jobs):
    if not slurm.gpus:
        pytest.skip("SLURM accepted no stand-in GPU on this machine")
    for rule, found in jobs.items():
        for job in found:
            wanted = f"gres:gpu:{slurm.gpus}" if rule in GPU_RULES else None
            assert job.get("TresPerJob") == wanted, job


def outputs(workdir):
    """Output files and OME-Zarr volumes of a run by relative path (logs aside)."""
    found = {}
    for top in ("resources", "results"):
        for path in (workdir / top).rglob("*"):
            relative = path.relative_to(workdir)
            if relative.parts[1] in ("logs", "benchmarks") or any(
                part.endswith(".ome.zarr") for part in relative.parts[:-1]
            ):
                continue
            if path.name.endswith(".ome.zarr") or path.is_file():
                found[relative.as_posix()] = path
    return found


def test_outputs_equal_a_local_run(slurm_run, local_run):
    on_slurm, local = outputs(slurm_run["workdir"]), outputs(local_run)
    assert on_slurm.keys() == local.keys()
    assert "results/brain1_ipsi/sr/emsrnet_real_l1.ome.zarr" in on_slurm
    for name, path in on_slurm.items():
        other = local[name]
        if name.endswith(".ome.zarr"):
            (volume, voxel), (reference, reference_voxel) = (
                io.read_volume(str(p)) for p in (path, other)
            )
            np.testing.assert_array_equal(volume, reference, err_msg=name)
            assert voxel == reference_voxel, name
        elif name.endswith(".pt"):
            weights, expected = (torch.load(p, weights_only=True)["model"] for p in (path, other))
            assert weights.keys() == expected.keys()
            assert all(torch.equal(weights[k], expected[k]) for k in weights), name
        elif name.endswith("curve.csv"):  # its wall-clock column differs
            curve, expected = (pd.read_csv(p).drop(columns="seconds") for p in (path, other))
            pd.testing.assert_frame_equal(curve, expected)
        else:
            assert path.read_bytes() == other.read_bytes(), name


def test_processing_runs_each_slab_as_a_slurm_job(slurm, tmp_path):
    """config/process.yaml through SLURM: one job per slab, the output equal to one job."""
    paths, _, _ = make_data(tmp_path / "data")
    torch.manual_seed(0)
    net = archs.build_network(TINY_EMSRNET)
    data = bioimage.sr_test_data(paths["lr_tif"], scale=3, size=32)
    package = tmp_path / "model.zip"
    bioimage.export_package(net, package, **data, test=False)
    workdir = tmp_path / "process"
    config = study_config(workdir, slurm.gpus)
    pd.DataFrame({"acquisition": ["acq1"], "volume": [paths["lr_tif"]]}).to_csv(
        workdir / "acquisitions.tsv", sep="\t", index=False
    )
    settings = yaml.safe_load((ROOT / "config" / "process.yaml").read_text())["process"]
    settings.update(
        sheet="acquisitions.tsv", package=str(package), slab=1, tile=24, overlap=8, gpus=slurm.gpus
    )
    (workdir / "process.yaml").write_text(yaml.safe_dump({"process": settings}))
    command = [
        SNAKEMAKE,
        "--snakefile",
        str(ROOT / "workflow" / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
        str(workdir / "process.yaml"),
        "--profile",
        str(ROOT / "workflow" / "profiles" / "slurm"),
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "5",
    ]
    result = subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-5000:]
    slabs = [
        job
        for job in slurm.jobs()
        if Path(job["WorkDir"]).resolve() == workdir.resolve()
        and job["Comment"].startswith("rule_process_slab_wildcards_")
    ]
    assert len(slabs) == 3 and all(job["JobState"] == "COMPLETED" for job in slabs)
    assert len({job["JobId"] for job in slabs}) == 3
    single = str(tmp_path / "single.ome.zarr")
    plan = json.loads((workdir / "results/process/acq1/sr.plan.json").read_text())
    plan = process.Plan.from_dict(plan["plan"])
    process.apply_package(
        package, paths["lr_tif"], single, slab=1, progress=False, device="auto",
        **{k: plan.options[k] for k in ("tile", "overlap", "batch", "tta", "precision")},
    )  # fmt: skip
    sr, voxel = io.read_volume(str(workdir / "results/process/acq1/sr.ome.zarr"))
    np.testing.assert_array_equal(sr, io.read_volume(single)[0])
    assert voxel == pytest.approx((LR_VOXEL[0], LR_VOXEL[1] / 3, LR_VOXEL[2] / 3))
    assert (workdir / "results/process/qc.html").is_file()
