"""GPEMSR training (three stages), patches, distributed runs and volume inference, tiny."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emsrflow import io
from emsrflow import largefactor as L
from emsrflow.archs import build_network
from emsrflow.phantom import Phantom, PhantomParams
from emsrflow.resize import bicubic
from emsrflow.train import load_model

# Tiny Stage I/II architecture: five scales (compression p = 16) of 8 channels.
PRIOR = {
    "channels": [8, 8, 8, 8, 8],
    "latent_dim": 8,
    "codes": 16,
    "bottleneck_blocks": 1,
    "norm_groups": 4,
}
INDEXER = {"indexer_blocks": 1}
GPEMSR = {"channels": 8, "deform_groups": 2, "front_blocks": 1, "back_blocks": 1}
CRITIC = {"critic_channels": 8, "critic_layers": 2, "critic_padding": 1}
LOOP = {"device": "cpu", "deterministic": True, "patch": 64}
SCALE = 8


@pytest.fixture(scope="module")
def hr():
    """EM-like HR phantom (6 sections of 128²) in [0, 1]."""
    return io.to_float01(Phantom(PhantomParams(), seed=3).hr(0, 6))[:, :128, :128].copy()


@pytest.fixture(scope="module")
def pair(hr):
    return L.downsample_bicubic(hr, SCALE), hr


def codebook_settings(**changes):
    base = dict(
        steps=60,
        batch=4,
        lr=2e-3,
        log_every=10,
        checkpoint_every=30,
        adversarial_start=30,
        r1_every=4,
        critic_lr=1e-3,
        **CRITIC,
        **LOOP,
    )
    return L.CodebookSettings(**{**base, **changes})


def indexer_settings(**changes):
    base = dict(steps=60, batch=4, lr=2e-3, log_every=10, checkpoint_every=30, scale=SCALE)
    return L.IndexerSettings(**{**base, **LOOP, **changes})


def reconstruction_settings(**changes):
    base = dict(steps=40, batch=2, lr=2e-3, log_every=10, checkpoint_every=20, scale=SCALE)
    return L.ReconstructionSettings(**{**base, **LOOP, **changes})


def curve(path):
    with open(path, newline="") as file:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(file)]


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def assert_same_state(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_state(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


# ---------------------------------------------------------------------------------------
# Degradation and patches


def test_downsample_bicubic_is_antialiased_area_aligned_bicubic(hr):
    for factor in (8, 16):
        lr = L.downsample_bicubic(hr, factor)
        assert lr.shape == (6, 128 // factor, 128 // factor) and lr.dtype == np.float32
        np.testing.assert_array_equal(lr, bicubic(hr, lr.shape[1:], antialias=True))
        assert L.downsample_bicubic(hr[0], factor).shape == lr.shape[1:]
    flat = np.full((2, 32, 48), 200, np.uint8)
    np.testing.assert_allclose(L.downsample_bicubic(flat, 16), 200 / 255, rtol=1e-6)
    with pytest.raises(ValueError, match=r"100 × 128 is not a multiple of the factor 16"):
        L.downsample_bicubic(hr[:, :100], 16)


def test_sampler_shapes_and_divisibility(pair):
    lr, hr = pair
    rng = np.random.default_rng(0)
    five = L.SectionSampler([pair], SCALE, 64, rng)
    x, y = five.batch(3)
    assert x.shape == (3, 5, 8, 8) and y.shape == (3, 1, 64, 64)
    assert x.dtype == y.dtype == np.float32
    x, y = L.SectionSampler([pair], SCALE, 64, rng, sections=1, lr_multiple=2).batch(2)
    assert x.shape == (2, 1, 8, 8) and y.shape == (2, 1, 64, 64)
    (only,) = L.SectionSampler([(None, hr)], 1, 32, rng, sections=1).batch(2)
    assert only.shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="HR patch size 40 must be a multiple of 16"):
        L.SectionSampler([pair], SCALE, 40, rng)
    with pytest.raises(ValueError, match=r"LR patch size 6 \(HR patch 48 / factor 8\).*of 4"):
        L.SectionSampler([pair], SCALE, 48, rng)
    with pytest.raises(ValueError, match=r"HR shape .* does not match LR shape"):
        L.SectionSampler([(lr[:, :8], hr)], SCALE, 64, rng)
    with pytest.raises(ValueError, match="larger than the section"):
        L.SectionSampler([pair], SCALE, 256, rng)


def test_settings_validation_names_the_field():
    with pytest.raises(ValueError, match=r"'patch'.*multiple of 32.*got 48"):
        L.ReconstructionSettings(scale=8, patch=48)
    with pytest.raises(ValueError, match=r"'patch'.*multiple of 16"):
        L.CodebookSettings(patch=100)
    with pytest.raises(ValueError, match="'r1_every'"):
        L.CodebookSettings(r1_every=0)
    with pytest.raises(ValueError, match="'scale'"):
        L.IndexerSettings(scale=12)
    with pytest.raises(ValueError, match=r"'patch'.*multiple of 64.*got 32"):
        L.IndexerSettings(scale=16, patch=32)  # an LR patch of 2 pixels
    with pytest.raises(ValueError, match="'fidelity_weight'"):
        L.ReconstructionSettings(fidelity_weight=-1)
    with pytest.raises(ValueError, match=r"unknown training setting.*'critic_lrr'"):
        L.CodebookSettings.from_dict({"critic_lrr": 1})
    assert L.ReconstructionSettings(scale=16, patch=64).to_dict()["fidelity_weight"] is None


def test_sampler_keeps_alignment_and_replicates_the_end_sections():
    rng = np.random.default_rng(1)
    lr = rng.random((3, 10, 12)).astype(np.float32)
    hr = np.kron(lr, np.ones((4, 4), np.float32))  # HR pixel = its LR pixel
    sampler = L.SectionSampler([(lr, hr)], 4, 16, np.random.default_rng(7), lr_multiple=1)
    assert sampler.window(0, 3) == [0, 0, 0, 1, 2] and sampler.window(2, 3) == [0, 1, 2, 2, 2]
    replay = np.random.default_rng(7)
    centres = set()
    for _ in range(30):
        x, y = sampler.sample()
        # the same draws, by hand: pair, centre, corner, rotation, flips
        assert int(replay.integers(1)) == 0
        z, i, j = (int(replay.integers(n)) for n in (3, 10 - 4 + 1, 12 - 4 + 1))
        turns, fx, fy = int(replay.integers(4)), bool(replay.integers(2)), bool(replay.integers(2))
        ks = [min(max(k, 0), 2) for k in range(z - 2, z + 3)]
        want = np.rot90(lr[ks, i : i + 4, j : j + 4], turns, axes=(1, 2))
        want = want[..., ::-1] if fx else want
        want = want[:, ::-1] if fy else want
        np.testing.assert_array_equal(x, want)
        # the HR patch is the centre section over the same field of view
        np.testing.assert_array_equal(y[0].reshape(4, 4, 4, 4).mean((1, 3)), x[2])
        centres.add(z)
        if z == 0:
            assert np.array_equal(x[0], x[2]) and np.array_equal(x[1], x[2])
    assert centres == {0, 1, 2}


# ---------------------------------------------------------------------------------------
# Stage I


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, hr):
    folder = tmp_path_factory.mktemp("stage1")
    net = L.train_codebook(
        [hr],
        codebook_settings(),
        checkpoint=folder / "stage1.pt",
        curve=folder / "stage1.csv",
        network=PRIOR,
        progress=False,
    )
    return net, folder / "stage1.pt", curve(folder / "stage1.csv")


def test_stage1_lowers_the_loss_and_trains_the_critic(stage1):
    net, path, rows = stage1
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    early, late = rows[0]["loss"], np.mean([r["loss"] for r in rows[-2:]])
    assert late < 0.5 * early, (early, late)
    assert rows[-1]["l1"] < 0.8 * rows[0]["l1"]
    assert all(r["g_adversarial"] == r["d_adversarial"] == r["r1"] == 0 for r in rows[:3])
    assert all(r["d_adversarial"] != 0 and r["r1"] > 0 for r in rows[3:])
    for r in rows:
        total = r["l1"] + 10 * r["codebook"] + 0.05 * r["g_adversarial"]
        assert r["loss"] == pytest.approx(total, rel=1e-5, abs=1e-7)
    state = torch.load(path, weights_only=True)
    assert state["hooks"]["critic"]["step"] == 60 and state["hooks"]["world"] == 1
    assert state["spec"]["type"] == "gpemsr_codebook" and not net.training
    assert_same_weights(net, load_model(path))


def test_stage1_resumes_bit_identically(tmp_path, hr):
    s = codebook_settings(steps=12, adversarial_start=4, r1_every=3, log_every=3)

    def run(name, settings):
        return L.train_codebook(
            [hr],
            settings,
            checkpoint=tmp_path / name / "c.pt",
            curve=tmp_path / name / "c.csv",
            network=PRIOR,
            progress=False,
        )

    whole = run("whole", s)
    run("half", L.CodebookSettings(**{**s.to_dict(), "steps": 6}))  # critic and R1 active
    resumed = run("half", s)
    assert_same_weights(whole, resumed)
    a, b = (torch.load(tmp_path / f / "c.pt", weights_only=True) for f in ("whole", "half"))
    assert_same_state(a["hooks"], b["hooks"])  # the critic, its Adam and its step count
    assert_same_state(a["optimizer"], b["optimizer"])
    rows = [[v for k, v in r.items() if k != "seconds"] for r in curve(tmp_path / "half" / "c.csv")]
    assert rows == [
        [v for k, v in r.items() if k != "seconds"] for r in curve(tmp_path / "whole" / "c.csv")
    ]
    with pytest.raises(ValueError, match=r"settings differ.*critic_lr"):
        run("half", L.CodebookSettings(**{**s.to_dict(), "critic_lr": 1e-4}))


# ---------------------------------------------------------------------------------------
# Stage II


@pytest.fixture(scope="module")
def stage2(tmp_path_factory, stage1, pair):
    folder = tmp_path_factory.mktemp("stage2")
    net = L.train_indexer(
        [pair],
        indexer_settings(),
        codebook=stage1[1],
        checkpoint=folder / "stage2.pt",
        curve=folder / "stage2.csv",
        network=INDEXER,
        progress=False,
    )
    return net, folder / "stage2.pt", curve(folder / "stage2.csv")


def test_stage2_targets_are_the_frozen_encoders_codes(stage1, stage2):
    codebook, path, _ = stage1
    prior = L.build_prior(path, SCALE, **INDEXER)
    hr = torch.rand(2, 1, 32, 64)
    with torch.no_grad():
        torch.testing.assert_close(prior.targets(hr), codebook.autoencode(hr)[2], rtol=0, atol=0)
    assert_same_weights(stage2[0].vq, codebook)  # training left the Stage I network alone
    with pytest.raises(ValueError, match="belong to the Stage I architecture"):
        L.build_prior(path, SCALE, codes=32)


def test_stage2_lowers_the_loss(stage2):
    net, path, rows = stage2
    early, late = rows[0]["cross_entropy"], np.mean([r["cross_entropy"] for r in rows[-2:]])
    assert late < 0.5 * early, (early, late)
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]
    assert load_model(path).spec == {**net.spec}


def test_stage2_resumes_bit_identically(tmp_path, stage1, pair):
    s = indexer_settings(steps=8, log_every=2)

    def run(name, settings):
        return L.train_indexer(
            [pair],
            settings,
            codebook=stage1[1],
            checkpoint=tmp_path / name / "c.pt",
            curve=tmp_path / name / "c.csv",
            network=INDEXER,
            progress=False,
        )

    whole = run("whole", s)
    run("half", L.IndexerSettings(**{**s.to_dict(), "steps": 3}))
    assert_same_weights(whole, run("half", s))


# ---------------------------------------------------------------------------------------
# Stage III


@pytest.fixture(scope="module")
def stage3(tmp_path_factory, stage2, pair):
    folder = tmp_path_factory.mktemp("stage3")
    net = L.train_reconstruction(
        [pair],
        reconstruction_settings(),
        prior=stage2[1],
        checkpoint=folder / "stage3.pt",
        curve=folder / "stage3.csv",
        network=GPEMSR,
        progress=False,
    )
    return net, folder / "stage3.pt", curve(folder / "stage3.csv")


def test_stage3_lowers_the_loss_with_the_frozen_prior(stage2, stage3):
    net, path, rows = stage3
    early, late = rows[0]["loss"], np.mean([r["loss"] for r in rows[-2:]])
    assert late < 0.97 * early, (early, late)
    for r in rows:
        assert r["loss"] == pytest.approx(r["l1"] + 0.001 * r["fidelity"], rel=1e-5)
    assert_same_weights(net.prior, stage2[0])
    assert load_model(path, expect={"type": "gpemsr", "scale": SCALE}).sections == 5


def test_stage3_resumes_bit_identically(tmp_path, stage2, pair):
    s = reconstruction_settings(steps=6, batch=1, log_every=2)

    def run(name, settings):
        return L.train_reconstruction(
            [pair],
            settings,
            prior=stage2[1],
            checkpoint=tmp_path / name / "c.pt",
            curve=tmp_path / name / "c.csv",
            network=GPEMSR,
            progress=False,
        )

    whole = run("whole", s)
    run("half", L.ReconstructionSettings(**{**s.to_dict(), "steps": 3}))
    assert_same_weights(whole, run("half", s))


# ---------------------------------------------------------------------------------------
# Inference


@pytest.mark.parametrize("scale", [8, 16])
def test_predict_volume_shapes_for_odd_and_even_sizes(scale):
    torch.manual_seed(0)
    net = build_network({"type": "gpemsr", "scale": scale, **GPEMSR, "prior": {**PRIOR, **INDEXER}})
    rng = np.random.default_rng(0)
    for shape in [(3, 7, 9), (4, 8, 12)]:
        lr = rng.random(shape, dtype=np.float32)
        out = L.predict_volume(net, lr, tile=8, overlap=2)
        assert out.shape == (shape[0], scale * shape[1], scale * shape[2])
        assert out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    # one tile: section z is the network's output for sections z-2..z+2 (ends replicated)
    lr = rng.random((3, 5, 6), dtype=np.float32)
    out = L.predict_volume(net, lr, tile=16, overlap=4)
    with torch.no_grad():
        for z, ks in [(0, [0, 0, 0, 1, 2]), (2, [0, 1, 2, 2, 2])]:
            expect = net.eval()(torch.from_numpy(lr[ks])[None])[0, 0].clamp(0, 1).numpy()
            np.testing.assert_allclose(out[z], expect, atol=1e-6)


def test_predict_volume_reads_and_writes_volumes(tmp_path, stage3):
    net, path, _ = stage3
    lr = (np.random.default_rng(2).random((3, 6, 5)) * 255).astype(np.uint8)
    io.write_volume(str(tmp_path / "lr.tif"), lr, (50, 40, 40))
    expect = L.predict_volume(net, lr, tile=8, overlap=2)
    with io.open_volume(str(tmp_path / "lr.tif")) as volume:
        got = L.predict_volume(net, volume, tile=8, overlap=2)
        np.testing.assert_array_equal(got, expect)
        L.predict_volume(net, volume, tile=8, overlap=2, output=str(tmp_path / "sr.tif"))
    written, voxel = io.read_volume(str(tmp_path / "sr.tif"))
    assert written.shape == (3, 48, 40) and written.dtype == np.float32
    np.testing.assert_allclose(written, expect)
    assert voxel == pytest.approx((50, 5, 5))
    # the command line, to uint8
    args = ["--model", str(path), "--input", str(tmp_path / "lr.tif"), "--device", "cpu"]
    out = str(tmp_path / "cli.tif")
    assert L.main(["predict", *args, "--output", out, "--tile", "8", "--overlap", "2"]) == 0
    written, _ = io.read_volume(out)
    assert written.dtype == np.uint8
    np.testing.assert_array_equal(written, io.from_float01(expect, np.uint8))


# ---------------------------------------------------------------------------------------
# Command line and torchrun


def write_config(path, hr_file, settings, **extra):
    config = {"settings": settings, "volumes": [{"hr": str(hr_file)}], **extra}
    path.write_text(json.dumps(config))
    return path


def test_cli_trains_stage2_from_hr_volumes_only(tmp_path, stage1, hr):
    io.write_volume(str(tmp_path / "hr.tif"), (hr[:3] * 255).astype(np.uint8), (50, 5, 5))
    config = write_config(
        tmp_path / "c.json",
        tmp_path / "hr.tif",
        {"steps": 3, "batch": 2, "patch": 64, "scale": SCALE, "device": "cpu"},
        network=INDEXER,
        codebook=str(stage1[1]),
    )
    args = ["--config", str(config), "--checkpoint", str(tmp_path / "s2.pt")]
    assert L.main(["stage2", *args, "--curve", str(tmp_path / "s2.csv"), "--no-progress"]) == 0
    assert torch.load(tmp_path / "s2.pt", weights_only=True)["step"] == 3


def test_torchrun_ddp_on_two_cpu_processes(tmp_path, hr):
    io.write_volume(str(tmp_path / "hr.tif"), (hr[:4] * 255).astype(np.uint8), (50, 5, 5))
    settings = {
        "steps": 8,
        "batch": 2,
        "log_every": 4,
        "checkpoint_every": 4,
        "adversarial_start": 4,
        "r1_every": 2,
        **CRITIC,
        **LOOP,
    }
    config = write_config(tmp_path / "c.json", tmp_path / "hr.tif", settings, network=PRIOR)
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
        *("-m", "emsrflow.largefactor", "stage1", "--config", str(config)),
        *("--checkpoint", str(tmp_path / "c.pt"), "--curve", str(tmp_path / "c.csv")),
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["step"] == 8 and state["hooks"]["world"] == 2
    ranks = state["hooks"]["ranks"]  # every rank's own patch stream
    assert ranks[0]["numpy"] != ranks[1]["numpy"]
    assert [r["step"] for r in curve(tmp_path / "c.csv")] == [4, 8]
    assert sorted(p.name for p in Path(tmp_path).iterdir() if ".tmp-" in p.name) == []
    load_model(tmp_path / "c.pt", expect={"type": "gpemsr_codebook"})
    # a single process cannot resume a run of two
    with pytest.raises(ValueError, match="run of 2 process"):
        L.train_codebook(
            [hr],
            L.CodebookSettings(**{**settings, "steps": 9}),
            checkpoint=tmp_path / "c.pt",
            curve=tmp_path / "c.csv",
            network=PRIOR,
            progress=False,
        )


DDP_SCRIPT = """
import json
import sys
import torch
import torch.distributed as dist
from emsrflow import largefactor as L
from emsrflow.io import open_volume

dist.init_process_group("gloo")
hr_file, folder, network = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
settings = L.CodebookSettings.from_dict(json.loads(sys.argv[4]))
half = L.CodebookSettings.from_dict({**settings.to_dict(), "steps": settings.steps // 2})


def run(name, s):
    with open_volume(hr_file) as hr:
        return L.train_codebook(
            [hr], s, checkpoint=f"{folder}/{name}.pt", curve=f"{folder}/{name}.csv",
            network=network, progress=False,
        )


whole = run("whole", settings)
run("resumed", half)
resumed = run("resumed", settings)
for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
    assert torch.equal(a, b), "resume is not bit-identical"
sums = torch.stack([p.detach().double().sum() for p in resumed.parameters()])
every = [torch.zeros_like(sums) for _ in range(dist.get_world_size())]
dist.all_gather(every, sums)
assert all(torch.equal(every[0], x) for x in every), "ranks hold different weights"
dist.destroy_process_group()
sys.stdout.write("rank ok\\n")  # one write: ranks do not interleave it
sys.stdout.flush()
"""


def test_ddp_resume_is_bit_identical_and_ranks_agree(tmp_path, hr):
    io.write_volume(str(tmp_path / "hr.tif"), (hr[:4] * 255).astype(np.uint8), (50, 5, 5))
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    settings = {
        "steps": 8,
        "batch": 2,
        "log_every": 2,
        "checkpoint_every": 4,
        "adversarial_start": 2,
        "r1_every": 3,
        **CRITIC,
        **LOOP,
    }
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"),
        *(
            str(script),
            str(tmp_path / "hr.tif"),
            str(tmp_path),
            json.dumps(PRIOR),
            json.dumps(settings),
        ),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("rank ok") == 2
