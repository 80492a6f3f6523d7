"""A tiny trained EMSRNet, its data and its bioimage.io package, for the package tests.

Shared by tests/test_bioimage.py and tests/test_cli.py: a few training steps of a small
EMSRNet (τ = 3) on a smooth texture, written as a training checkpoint, and LR/HR
volumes with voxel sizes (LR 45 nm pixels, HR 15 nm, sections 50 nm).
"""

import zipfile

import numpy as np
import torch
from scipy import ndimage

from emsrflow import archs, io, train

TAU = 3
LR_VOXEL = (50.0, 45.0, 45.0)
HR_VOXEL = (50.0, 15.0, 15.0)
TINY_EMSRNET = {
    "type": "emsrnet",
    "scale": TAU,
    "channels": 8,
    "blocks": 1,
    "res_blocks": 1,
    "heads": 2,
    "window": 4,
}
PROVENANCE = {
    "strategy": "real",
    "loss": "l1",
    "fold": "brain1",
    "training_datasets": ["brain2_contra", "brain3_ipsi"],
    "config_sha256": "ab" * 32,
}


def texture(shape, seed=0, sigma=2.0):
    """Smooth random texture in [0.1, 0.9], float32."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.standard_normal(shape), (0, sigma, sigma))
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (0.1 + 0.8 * smooth).astype(np.float32)


def block_mean(image, tau=TAU):
    """Average τ×τ blocks of the last two axes."""
    *lead, h, w = image.shape
    return image.reshape(*lead, h // tau, tau, w // tau, tau).mean(axis=(-3, -1))


def make_data(folder):
    """HR and LR OME-Zarr volumes (with voxel sizes) and a uint8 TIFF of the LR."""
    folder.mkdir(parents=True, exist_ok=True)
    hr = texture((3, 120, 120))
    lr = block_mean(hr).astype(np.float32)
    paths = {
        "hr": str(folder / "hr.ome.zarr"),
        "lr": str(folder / "lr.ome.zarr"),
        "lr_tif": str(folder / "lr.tif"),
    }
    io.write_volume(paths["hr"], hr, HR_VOXEL)
    io.write_volume(paths["lr"], lr, LR_VOXEL)
    io.write_volume(paths["lr_tif"], io.from_float01(lr, np.uint8), LR_VOXEL)
    return paths, lr, hr


def tiny_checkpoint(folder, lr, hr):
    """Train the tiny EMSRNet a few steps; return its checkpoint (a rule train model.pt)."""
    torch.manual_seed(0)
    model = archs.build_network(TINY_EMSRNET)
    settings = train.TrainSettings(
        steps=6,
        batch=2,
        patch=12,
        lr=1e-3,
        lr_halve_every=100,
        checkpoint_every=6,
        log_every=3,
        deterministic=True,
        device="cpu",
    )
    checkpoint = folder / "model.pt"
    train.train(
        model,
        [(lr, hr)],
        settings,
        checkpoint=checkpoint,
        curve=folder / "curve.csv",
        progress=False,
    )
    return checkpoint


def rewrite_zip(source, target, change):
    """Copy a zip, passing every member through ``change(name, data) -> data | None``
    (None drops the member)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = change(info.filename, old.read(info))
            if data is not None:
                new.writestr(info.filename, data)
    return target
