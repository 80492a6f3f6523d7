"""The Apptainer definitions, their lock files, and the images the workflow's rules name."""

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CONTAINERS = ROOT / "containers"
KINDS = ("cpu", "gpu")
SECTIONS = {"labels", "help", "files", "environment", "post", "test"}
DIGEST = re.compile(r"^[a-z0-9]+(?:[._/-][a-z0-9]+)*@sha256:[0-9a-f]{64}$")
HASH = re.compile(r"^--hash=sha256:[0-9a-f]{64}$")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())


def parse_definition(path):
    """Header keywords and sections (name -> body lines) of an Apptainer definition file."""
    header, sections, current = {}, {}, None
    for line in path.read_text().splitlines():
        if line.startswith("%"):
            current = line[1:].split()[0]
            assert current not in sections, f"{path.name}: %{current} twice"
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
        elif line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition(":")
            assert sep, f"{path.name}: header line {line!r} is not 'Key: value'"
            header[key.strip().lower()] = value.strip()
    return header, sections


def labels(sections):
    pairs = (line.split(None, 1) for line in sections["labels"] if line.strip())
    return {key: value.strip() for key, value in pairs}


def parse_lock(path):
    """Requirement lines of a pip lock file, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = (line.split(" #")[0].strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def lock_pins(path):
    """Name -> (version, hashes) of a lock file."""
    pins = {}
    for line in parse_lock(path):
        requirement, *options = line.split()
        parsed = Requirement(requirement)
        name = canonicalize_name(parsed.name)
        assert name not in pins, f"{path.name}: {name} twice"
        (spec,) = parsed.specifier
        pins[name] = (Version(spec.version), options)
    return pins


def env_pins():
    """Name -> version of the pip pins in envs/emsrflow.yaml, and its Python version."""
    env = yaml.safe_load((ROOT / "envs" / "emsrflow.yaml").read_text())
    pins, python = {}, None
    for dependency in env["dependencies"]:
        if isinstance(dependency, dict):
            for line in dependency["pip"]:
                name, version = line.split("==")
                pins[canonicalize_name(name)] = Version(version)
        elif dependency.startswith("python="):
            python = dependency.removeprefix("python=")
    return pins, python


@pytest.fixture(scope="module")
def rules():
    """Every rule of the workflow, loaded with Snakemake's API in a separate process."""
    script = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import OutputSettings, ResourceSettings

root = Path(sys.argv[1])
with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
    workflow = api.workflow(
        resource_settings=ResourceSettings(), snakefile=root / "workflow" / "Snakefile",
        workdir=root,
    )._workflow
    rules = {
        rule.name: {
            "container": rule.container_img,
            "runs": not rule.norun,
            "gpu": "gpu" in rule.resources,
            "snakefile": str(rule.snakefile),
            "params": list(rule.params.keys()),
        }
        for rule in workflow.rules
    }
print("RULES " + json.dumps(rules))
"""
    result = subprocess.run(
        [sys.executable, "-c", script, str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("RULES ")]
    return json.loads(line.removeprefix("RULES "))


@pytest.mark.parametrize("kind", KINDS)
def test_definition_parses_with_every_section(kind):
    header, sections = parse_definition(CONTAINERS / f"{kind}.def")
    assert header["bootstrap"] == "docker"
    assert SECTIONS <= set(sections), SECTIONS - set(sections)
    for name in SECTIONS:
        assert any(line.strip() for line in sections[name]), f"%{name} is empty"
    label = labels(sections)
    assert label["org.opencontainers.image.title"] == f"emsrflow-{kind}"
    assert label["org.opencontainers.image.version"] == PYPROJECT["project"]["version"]
    assert label["emsrflow.lock"] == f"containers/requirements-{kind}.lock"


@pytest.mark.parametrize("kind", KINDS)
def test_base_image_is_pinned_by_digest(kind):
    header, sections = parse_definition(CONTAINERS / f"{kind}.def")
    # name@sha256:… only: Apptainer rejects a reference with both a tag and a digest.
    assert DIGEST.match(header["from"]), header["from"]
    digest = header["from"].split("@")[1]
    assert labels(sections)["org.opencontainers.image.base.digest"] == digest


@pytest.mark.parametrize("kind", KINDS)
def test_definition_installs_the_lock_with_hashes(kind):
    _, sections = parse_definition(CONTAINERS / f"{kind}.def")
    files = dict(line.split() for line in sections["files"] if line.strip())
    for source in files:
        assert (ROOT / source).exists(), source
    assert f"containers/requirements-{kind}.lock" in files
    assert {"pyproject.toml", "README.md", "src/emsrflow"} <= set(files)
    lock = files[f"containers/requirements-{kind}.lock"]
    post = re.sub(r"\\\n", " ", "\n".join(sections["post"]))
    installs = [line for line in post.splitlines() if f"--requirement {lock}" in line]
    assert len(installs) == 1 and "--require-hashes" in installs[0]
    assert "--no-deps" in installs[0]
    assert "import emsrflow" in "\n".join(sections["test"])


@pytest.mark.parametrize("kind", KINDS)
def test_every_locked_requirement_is_pinned_with_hashes(kind):
    lines = parse_lock(CONTAINERS / f"requirements-{kind}.lock")
    assert len(lines) > 20
    for line in lines:
        requirement, *options = line.split()
        parsed = Requirement(requirement)
        assert len(parsed.specifier) == 1, line
        (spec,) = parsed.specifier
        assert spec.operator == "==" and "*" not in spec.version, line
        assert not parsed.marker and not parsed.url, line
        assert options and all(HASH.match(option) for option in options), line


def test_torch_builds_differ_only_by_their_local_label():
    cpu = lock_pins(CONTAINERS / "requirements-cpu.lock")
    gpu = lock_pins(CONTAINERS / "requirements-gpu.lock")
    assert cpu["torch"][0].local == "cpu" and gpu["torch"][0].local is None
    assert cpu["torch"][0].public == gpu["torch"][0].public
    assert any(name.startswith("nvidia-") for name in gpu)
    assert not any(name.startswith("nvidia-") for name in cpu)
    shared = cpu.keys() & gpu.keys() - {"torch"}
    assert {name: cpu[name][0] for name in shared} == {name: gpu[name][0] for name in shared}


@pytest.mark.parametrize("kind", KINDS)
def test_lock_matches_the_conda_environment(kind):
    pins, python = env_pins()
    lock = lock_pins(CONTAINERS / f"requirements-{kind}.lock")
    for name, version in pins.items():
        assert name in lock, f"{name} of envs/emsrflow.yaml is not in the {kind} lock"
        assert Version(lock[name][0].public) == version, (name, lock[name][0], version)
    header = (CONTAINERS / f"requirements-{kind}.lock").read_text()
    assert f"with Python {python}\n" in header
    assert labels(parse_definition(CONTAINERS / f"{kind}.def")[1])[
        "org.opencontainers.image.base.name"
    ].startswith(f"docker.io/library/python:{python}-")


@pytest.mark.parametrize("kind", KINDS)
def test_lock_satisfies_the_package_requirements(kind):
    lock = lock_pins(CONTAINERS / f"requirements-{kind}.lock")
    for line in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{name} of pyproject.toml is not in the {kind} lock"
        assert requirement.specifier.contains(lock[name][0], prereleases=True), (
            name,
            lock[name][0],
            str(requirement.specifier),
        )
    build = PYPROJECT["build-system"]["requires"]
    for line in build:
        requirement = Requirement(line)
        assert requirement.specifier.contains(lock[canonicalize_name(requirement.name)][0])


@pytest.mark.parametrize("kind", KINDS)
def test_lock_inputs_agree_with_the_lock(kind):
    lock = lock_pins(CONTAINERS / f"requirements-{kind}.lock")
    source = (CONTAINERS / f"requirements-{kind}.in").read_text().splitlines()
    for line in source:
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert lock[canonicalize_name(requirement.name)][0] == Version(spec.version)


def test_config_names_one_image_per_definition():
    assert set(CONFIG["containers"]) == set(KINDS)
    assert {path.stem for path in CONTAINERS.glob("*.def")} == set(KINDS)
    for kind, image in CONFIG["containers"].items():
        assert f"emsrflow-{kind}" in Path(image).name, image
    schema = SCHEMA["properties"]["containers"]
    assert set(schema["required"]) == set(KINDS) and schema["additionalProperties"] is False
    assert "containers" in SCHEMA["required"]


def test_every_rule_names_an_image_of_the_config(rules):
    images = {image: kind for kind, image in CONFIG["containers"].items()}
    running = {name: rule for name, rule in rules.items() if rule["runs"]}
    assert {"phantom", "train", "infer", "provenance"} <= set(running)
    for name, rule in running.items():
        assert rule["container"] in images, f"rule {name} has no image of config containers"
        kind = images[rule["container"]]
        assert (CONTAINERS / f"{kind}.def").is_file()
        # Rules that ask the scheduler for GPUs run in the GPU image, every other in the CPU one.
        assert kind == ("gpu" if rule["gpu"] else "cpu"), name
    assert {images[running[name]["container"]] for name in ("train", "infer")} == {"gpu"}


def test_every_rule_file_spells_its_container_from_the_config(rules):
    files = {Path(rule["snakefile"]) for rule in rules.values() if rule["runs"]}
    assert files >= set((ROOT / "workflow" / "rules").glob("*.smk")) - {
        ROOT / "workflow" / "rules" / "common.smk"
    }
    for path in files:
        text = path.read_text()
        count = len(re.findall(r"(?m)^(?:rule|checkpoint) \w+:", text))
        spelled = re.findall(
            r'(?m)^    container:\n        config\["containers"\]\["(\w+)"\]', text
        )
        assert len(spelled) == count, path.name
