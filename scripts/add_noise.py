"""Rule add_noise: a volume with zero-mean Gaussian noise σ (0–255 scale) added, seeded per
section: the noisier LR inputs (EMSR paper Fig. 13) and noisy HR references (Fig. 14) of the
ablations."""

from emsrflow import io
from emsrflow.degrade import add_noise
from emsrflow.runlog import rule_logger

log = rule_logger(snakemake.log[0], "add_noise")
p, out = snakemake.params, snakemake.output
with io.open_volume(snakemake.input.volume) as source:
    io.write_slabs(
        out.volume,
        source.shape,
        source.voxel_size,
        lambda z0, z1: add_noise(io.to_float01(source.read(z0, z1)), p.sigma, seed=p.seed, z0=z0),
        slab=p.io["slab"],
        chunks=p.io["chunks"],
    )
    log.info("σ = %g (0–255) added to %s %s, seed %d", p.sigma, source.path, source.shape, p.seed)
