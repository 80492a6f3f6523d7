"""The provenance record of a run and its atomic writing."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import yaml

import emsrflow
from emsrflow import provenance

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(repo, *args):
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A git repository with one commit."""
    path = tmp_path / "repo"
    (path / "workflow").mkdir(parents=True)
    (path / "workflow" / "Snakefile").write_text("rule all:\n    input: []\n")
    git(path, "init", "--quiet", "--initial-branch=main")
    git(path, "add", ".")
    git(
        path,
        "-c",
        "user.name=test",
        "-c",
        "user.email=test@example.org",
        "commit",
        "--quiet",
        "-m",
        "first",
    )
    return path


@needs_git
def test_record_holds_the_commit_and_dirty_flag(repo):
    record = provenance.collect(CONFIG, repo / "workflow", hash_images=False)
    assert record["git"] == {
        "commit": git(repo, "rev-parse", "HEAD"),
        "dirty": False,
        "branch": "main",
        "source": "git",
    }
    (repo / "workflow" / "Snakefile").write_text("# edited\n")
    assert provenance.git_state(repo)["dirty"] is True
    git(repo, "checkout", "--quiet", "--", ".")
    (repo / "untracked.txt").write_text("new")
    assert provenance.git_state(repo)["dirty"] is True


@needs_git
def test_commit_is_read_from_dot_git_without_a_git_executable(repo, monkeypatch):
    head = git(repo, "rev-parse", "HEAD")

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    state = provenance.git_state(repo / "workflow")
    assert state["commit"] == head and state["dirty"] is None and state["source"] == ".git"
    assert "dirty flag is unknown" in state["error"]
    monkeypatch.undo()
    git(repo, "pack-refs", "--all")
    assert not (repo / ".git" / "refs" / "heads" / "main").exists()
    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    assert provenance.git_state(repo)["commit"] == head


def test_outside_a_repository_the_commit_is_none(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    state = provenance.git_state(tmp_path)
    assert state["commit"] is None and state["dirty"] is None and state["error"]


def test_record_holds_the_seeds():
    derived = {"phantom": {"brain1_ipsi": 11}, "degrade": {"brain1_ipsi": np.int64(12)}}
    record = provenance.collect(CONFIG, ROOT, derived_seeds=derived, hash_images=False)
    assert record["seeds"] == {
        "phantom": CONFIG["phantom"]["seed"],
        "degrade": CONFIG["degrade"]["seed"],
        "train": CONFIG["train"]["settings"]["seed"],
        "derived": {"phantom": {"brain1_ipsi": 11}, "degrade": {"brain1_ipsi": 12}},
    }
    assert type(record["seeds"]["derived"]["degrade"]["brain1_ipsi"]) is int
    assert provenance.seeds({"phantom": {}, "train": {"settings": {}}}) == {
        "phantom": None,
        "degrade": None,
        "train": None,
    }


def test_record_holds_the_package_versions():
    record = provenance.collect(CONFIG, ROOT, hash_images=False)
    key = record["packages"]["key"]
    assert key["emsrflow"] == emsrflow.__version__ == record["emsrflow"]
    assert key["numpy"] == np.__version__
    assert key["torch"] == metadata.version("torch")
    assert record["packages"]["all"]["pyyaml"] == metadata.version("pyyaml")
    assert list(record["packages"]["all"]) == sorted(record["packages"]["all"])
    assert set(key) == set(provenance.KEY_PACKAGES)


def test_package_versions_normalise_names():
    dists = [metadata.distribution("PyYAML"), metadata.distribution("scikit_image")]
    assert provenance.package_versions(dists) == {
        "pyyaml": metadata.version("PyYAML"),
        "scikit-image": metadata.version("scikit-image"),
    }


def test_record_holds_the_config_and_images(tmp_path):
    digest = "sha256:" + "ab" * 32
    image = tmp_path / "containers" / "emsrflow-cpu.sif"
    image.parent.mkdir()
    image.write_bytes(b"not really a SIF")
    (tmp_path / "samples.tsv").write_text("dataset\n")
    config = {
        **CONFIG,
        "containers": {
            "cpu": "containers/emsrflow-cpu.sif",
            "gpu": f"oras://ghcr.io/owner/emsrflow-gpu@{digest}",
        },
    }
    record = provenance.collect(
        config,
        tmp_path,
        repository=ROOT,
        files={"samples": "samples.tsv"},
        environ={"APPTAINER_CONTAINER": "/images/emsrflow-cpu.sif", "HOME": "/root"},
        now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    assert record["config"] == config
    assert record["created"] == "2026-01-02T03:04:05+00:00"
    assert record["containers"]["images"] == {
        "cpu": {
            "reference": "containers/emsrflow-cpu.sif",
            "digest": "sha256:" + hashlib.sha256(b"not really a SIF").hexdigest(),
            "local": True,
        },
        "gpu": {"reference": config["containers"]["gpu"], "digest": digest, "local": False},
    }
    assert record["containers"]["running"] == {"APPTAINER_CONTAINER": "/images/emsrflow-cpu.sif"}
    assert record["files"]["samples"] == {
        "path": "samples.tsv",
        "sha256": "sha256:" + hashlib.sha256(b"dataset\n").hexdigest(),
    }
    outside = provenance.collect(config, tmp_path, hash_images=False, environ={})
    assert outside["containers"]["running"] is None
    assert outside["containers"]["images"]["cpu"]["digest"] is None


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_write_round_trips(tmp_path, suffix):
    record = provenance.collect(CONFIG, ROOT, hash_images=False)
    path = provenance.write(tmp_path / "provenance" / f"provenance{suffix}", record)
    assert provenance.read(path) == record
    text = path.read_text()
    loaded = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    assert loaded["seeds"]["phantom"] == CONFIG["phantom"]["seed"]
    assert os.listdir(path.parent) == [path.name]


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "provenance.yaml"
    provenance.write(path, {"run": 1})

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(provenance.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        provenance.write(path, {"run": 2})
    assert provenance.read(path) == {"run": 1}
    assert os.listdir(tmp_path) == [path.name]


def test_write_rejects_unknown_formats(tmp_path):
    with pytest.raises(ValueError, match=r"\.yaml, \.yml or \.json"):
        provenance.write(tmp_path / "provenance.txt", {"run": 1})
    assert not list(tmp_path.iterdir())


def test_written_file_keeps_the_umask_permissions(tmp_path):
    path = provenance.write(tmp_path / "provenance.yaml", {"run": 1})
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.workflow
def test_rule_writes_the_record_and_reruns_when_the_config_changes(tmp_path):
    snakemake = [
        str(Path(sys.executable).parent / "snakemake"),
        "results/provenance/provenance.yaml",
        "--snakefile",
        str(ROOT / "workflow" / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--cores",
        "1",
        "--configfile",
        str(tmp_path / "config.yaml"),
    ]
    shutil.copy(ROOT / "config" / "samples.tsv", tmp_path / "samples.tsv")
    config = {**CONFIG, "samples": "samples.tsv"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))

    def run(*args):
        return subprocess.run([*snakemake, *args], capture_output=True, text=True, check=False)

    result = run()
    assert result.returncode == 0, result.stdout + result.stderr
    record = provenance.read(tmp_path / "results/provenance/provenance.yaml")
    assert record["config"] == config
    assert record["seeds"]["derived"]["phantom"]["brain1_ipsi"] == 1133381052
    assert record["packages"]["key"]["emsrflow"] == emsrflow.__version__
    assert record["files"]["samples"]["path"] == "samples.tsv"
    if shutil.which("git") and (ROOT / ".git").exists():
        assert record["git"]["commit"] == git(ROOT, "rev-parse", "HEAD")
    assert (tmp_path / "results/logs/provenance.log").read_text()
    dry = run("-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr

    config["degrade"] = {**config["degrade"], "seed": config["degrade"]["seed"] + 1}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    dry = run("-n")
    assert "Params have changed" in dry.stdout + dry.stderr
