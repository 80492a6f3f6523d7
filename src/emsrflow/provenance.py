"""Provenance of a run: what produced the results, written beside them.

A record holds the resolved configuration, the seeds that drive every random draw,
the versions of the installed Python distributions, the git commit (and whether the
tree was dirty) of the workflow, and the container images the configuration names.
:func:`collect` gathers it; :func:`write` stores it atomically as YAML or JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "KEY_PACKAGES",
    "collect",
    "container_images",
    "git_state",
    "package_versions",
    "read",
    "seeds",
    "write",
]

#: Distributions whose versions head the record (all installed ones follow).
KEY_PACKAGES = (
    "emsrflow",
    "torch",
    "numpy",
    "scipy",
    "scikit-image",
    "zarr",
    "snakemake",
)

_DIGEST = re.compile(r"@(sha256:[0-9a-f]{64})$")
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
# Environment variables that Apptainer (and Singularity before it) set inside a container.
_CONTAINER_VARIABLES = ("APPTAINER_CONTAINER", "APPTAINER_NAME", "SINGULARITY_CONTAINER")


def _plain(value: Any) -> Any:
    """Copy ``value`` into dicts, lists, strings, numbers, booleans and None."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _plain(value.item())
    return str(value)


def _git(workdir: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(workdir), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout


def _git_dir(workdir: Path) -> Path | None:
    """Find the ``.git`` folder of the repository holding ``workdir`` (worktrees followed)."""
    for folder in (workdir, *workdir.parents):
        dot_git = folder / ".git"
        if dot_git.is_dir():
            return dot_git
        if dot_git.is_file():
            text = dot_git.read_text().strip()
            if text.startswith("gitdir:"):
                return (folder / text.removeprefix("gitdir:").strip()).resolve()
    return None


def _head_without_git(workdir: Path) -> str | None:
    """HEAD's commit read from the ``.git`` folder, for a machine without git."""
    git_dir = _git_dir(workdir)
    if git_dir is None:
        return None
    head = (git_dir / "HEAD").read_text().strip()
    if not head.startswith("ref:"):
        return head if _SHA.match(head) else None
    ref = head.removeprefix("ref:").strip()
    # A linked worktree keeps its HEAD apart but shares refs with the main repository.
    common = git_dir / "commondir"
    roots = [git_dir]
    if common.is_file():
        roots.append((git_dir / common.read_text().strip()).resolve())
    for root in roots:
        loose = root / ref
        if loose.is_file():
            return loose.read_text().strip()
        packed = root / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                sha, _, name = line.partition(" ")
                if name == ref and _SHA.match(sha):
                    return sha
    return None


def git_state(workdir: str | os.PathLike) -> dict[str, Any]:
    """Commit and dirty flag of the git repository holding ``workdir``.

    Parameters
    ----------
    workdir : str or PathLike
        A folder inside the workflow's repository.

    Returns
    -------
    dict
        ``commit`` (the full SHA of HEAD, None outside a repository), ``dirty`` (True
        when tracked or untracked files differ from HEAD; None when unknown), ``branch``
        (None when detached or unknown) and ``source`` (how it was read: ``git``, or
        ``.git`` when no git executable exists, which cannot tell dirtiness).
        ``error`` says why a field is None.
    """
    workdir = Path(workdir).resolve()
    try:
        commit = _git(workdir, "rev-parse", "--verify", "HEAD").strip()
        status = _git(workdir, "status", "--porcelain", "--untracked-files=normal")
        branch = _git(workdir, "rev-parse", "--abbrev-ref", "HEAD").strip()
    except FileNotFoundError:
        commit = _head_without_git(workdir)
        return {
            "commit": commit,
            "dirty": None,
            "branch": None,
            "source": ".git",
            "error": "no git executable: the dirty flag is unknown"
            + ("" if commit else f"; no commit found above {workdir}"),
        }
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        message = getattr(error, "stderr", None) or str(error)
        return {
            "commit": None,
            "dirty": None,
            "branch": None,
            "source": "git",
            "error": f"{workdir} is not in a readable git repository: {message.strip()}",
        }
    return {
        "commit": commit,
        "dirty": bool(status.strip()),
        "branch": None if branch == "HEAD" else branch,
        "source": "git",
    }


def package_versions(
    distributions: Iterable[metadata.Distribution] | None = None,
) -> dict[str, str]:
    """Versions of the installed Python distributions (``pip freeze`` as a mapping).

    Parameters
    ----------
    distributions : iterable of importlib.metadata.Distribution, optional
        The distributions to list; by default every one the running interpreter sees.

    Returns
    -------
    dict
        Normalised (lower-case, ``-``-separated) name → version, sorted by name. The
        first of several distributions with one name (as ``sys.path`` orders them) wins.
    """
    versions: dict[str, str] = {}
    for dist in metadata.distributions() if distributions is None else distributions:
        name = dist.metadata["Name"] if dist.metadata else None
        if name:
            versions.setdefault(re.sub(r"[-_.]+", "-", name).lower(), dist.version)
    return dict(sorted(versions.items()))


def seeds(config: Mapping[str, Any], derived: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Gather the seeds of a run's random draws.

    Parameters
    ----------
    config : Mapping
        The resolved workflow configuration.
    derived : Mapping, optional
        Seeds the workflow derives from the configured ones (such as each dataset's
        phantom and degradation seed), stored under ``derived``.

    Returns
    -------
    dict
        ``phantom`` (``phantom: seed``), ``degrade`` (``degrade: seed``) and ``train``
        (``train: settings: seed``), None where the configuration lacks one, and
        ``derived`` when given.
    """
    train = config.get("train", {}).get("settings", {}) or {}
    record = {
        "phantom": config.get("phantom", {}).get("seed"),
        "degrade": config.get("degrade", {}).get("seed"),
        "train": train.get("seed"),
    }
    if derived is not None:
        record["derived"] = _plain(derived)
    return record


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def container_images(
    config: Mapping[str, Any], workdir: str | os.PathLike = ".", *, hash_files: bool = True
) -> dict[str, dict[str, Any]]:
    """List the container images the configuration names, with digests where known.

    Parameters
    ----------
    config : Mapping
        The resolved workflow configuration (its ``containers`` section).
    workdir : str or PathLike
        Folder that relative image paths are relative to.
    hash_files : bool
        Hash local image files (SHA-256 of the ``.sif``); a few seconds per GB.

    Returns
    -------
    dict
        Per image key: ``reference`` (as configured), ``digest`` (``sha256:…`` of a
        reference pinned by digest, or of a local image file; None otherwise) and
        ``local`` (whether it names a file that exists here).
    """
    images: dict[str, dict[str, Any]] = {}
    for key, reference in (config.get("containers") or {}).items():
        reference = str(reference)
        pinned = _DIGEST.search(reference)
        path = Path(workdir, reference)
        local = "://" not in reference and path.is_file()
        digest = pinned.group(1) if pinned else None
        if digest is None and local and hash_files:
            digest = _file_sha256(path)
        images[str(key)] = {"reference": reference, "digest": digest, "local": local}
    return images


def collect(
    config: Mapping[str, Any],
    workdir: str | os.PathLike,
    *,
    repository: str | os.PathLike | None = None,
    derived_seeds: Mapping[str, Any] | None = None,
    files: Mapping[str, str | os.PathLike] | None = None,
    distributions: Iterable[metadata.Distribution] | None = None,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
    hash_images: bool = True,
) -> dict[str, Any]:
    """Gather the provenance record of a run.

    Parameters
    ----------
    config : Mapping
        The resolved workflow configuration (after ``--config`` and ``--configfile``).
    workdir : str or PathLike
        The run's working directory: relative paths of the ``containers`` section and
        of ``files`` are relative to it.
    repository : str or PathLike, optional
        A folder inside the workflow's git repository (default: ``workdir``).
    derived_seeds : Mapping, optional
        Seeds the workflow derives per dataset (see :func:`seeds`).
    files : Mapping, optional
        Input files to fingerprint by name (such as the sample sheet).
    distributions : iterable of importlib.metadata.Distribution, optional
        Installed distributions to list (default: those of the running interpreter).
    environ : Mapping, optional
        Environment to read the running container from (default: ``os.environ``).
    now : datetime, optional
        Time stamp of the record (default: the current UTC time).
    hash_images : bool
        Hash local image files named by the configuration.

    Returns
    -------
    dict
        ``created``, ``emsrflow``, ``python``, ``platform``, ``git``, ``seeds``,
        ``containers`` (``images`` configured and ``running`` — the image this
        process runs in, None outside a container), ``packages`` (``key`` versions of
        :data:`KEY_PACKAGES`, None when not installed, and ``all``), ``files`` (``path``
        and ``sha256`` of each of ``files``) and ``config``.
    """
    environ = os.environ if environ is None else environ
    now = datetime.now(UTC) if now is None else now
    versions = package_versions(distributions)
    running = {name: environ[name] for name in _CONTAINER_VARIABLES if environ.get(name)}
    return {
        "created": now.isoformat(timespec="seconds"),
        "emsrflow": versions.get("emsrflow"),
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "node": platform.node(),
        },
        "git": git_state(workdir if repository is None else repository),
        "seeds": seeds(config, derived_seeds),
        "containers": {
            "images": container_images(config, workdir, hash_files=hash_images),
            "running": running or None,
        },
        "packages": {
            "key": {name: versions.get(name) for name in KEY_PACKAGES},
            "all": versions,
        },
        "files": {
            str(name): {"path": str(path), "sha256": _file_sha256(Path(workdir, path))}
            for name, path in (files or {}).items()
        },
        "config": _plain(config),
    }


def _dumps(record: Mapping[str, Any], suffix: str) -> str:
    record = _plain(record)
    if suffix == ".json":
        return json.dumps(record, indent=2) + "\n"
    if suffix in {".yaml", ".yml"}:
        return yaml.safe_dump(record, sort_keys=False, allow_unicode=True)
    raise ValueError(f"provenance files are .yaml, .yml or .json, not {suffix!r}")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write(path: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write a record atomically, as YAML (``.yaml``, ``.yml``) or JSON (``.json``).

    The text goes to a temporary sibling that is flushed to disk and then renamed over
    ``path``: readers see the old file or the whole new one, never a part, and a
    failure leaves ``path`` as it was.

    Parameters
    ----------
    path : str or PathLike
        Destination; its suffix picks the format.
    record : Mapping
        The record (see :func:`collect`).

    Returns
    -------
    Path
        ``path``.
    """
    final = Path(path)
    text = _dumps(record, final.suffix.lower())
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def read(path: str | os.PathLike) -> dict[str, Any]:
    """Read a record written by :func:`write`.

    Parameters
    ----------
    path : str or PathLike
        A ``.yaml``, ``.yml`` or ``.json`` record.

    Returns
    -------
    dict
    """
    text = Path(path).read_text(encoding="utf-8")
    return json.loads(text) if Path(path).suffix.lower() == ".json" else yaml.safe_load(text)
