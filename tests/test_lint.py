"""The project's linters, so that CI fails on lint like on any other error."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*command):
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("ruff", "check", "."),
        ("ruff", "format", "--check", "."),
        ("snakefmt", "--check", "workflow"),
    ],
    ids=["ruff-check", "ruff-format", "snakefmt"],
)
def test_linter(command):
    tool = shutil.which(command[0], path=str(BIN)) or shutil.which(command[0])
    assert tool, f"{command[0]} is not installed (pip install -e '.[dev]')"
    _run(tool, *command[1:])


def test_snakemake_lint_is_clean():
    _run(str(BIN / "snakemake"), "--lint")
