import zlib

import pandas as pd
from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

samples = pd.read_csv(
    config["samples"], sep="\t", dtype=str, keep_default_na=False, comment="#"
)
validate(samples, schema="../schemas/samples.schema.yaml")
_repeated = sorted(set(samples.dataset[samples.dataset.duplicated()]))
if _repeated:
    raise ValueError(
        f"{config['samples']}: column 'dataset' repeats the ids {_repeated}; ids must be unique"
    )
samples = samples.set_index("dataset", drop=False)


wildcard_constraints:
    dataset="|".join(samples.index),
    synthetic="synthetic1|synthetic2",


def volume_file(spec):
    """File (or Zarr folder) of a volume location, without its HDF5 or Zarr key."""
    stem, sep, _ = spec.rpartition(":")
    return (
        stem
        if sep and stem.lower().endswith((".h5", ".hdf5", ".hdf", ".zarr"))
        else spec
    )


def get_volume(column):
    """Input function: the file behind a dataset's volume column."""

    def inner(wildcards):
        return volume_file(samples.loc[wildcards.dataset, column])

    return inner


def sheet_value(column):
    """Params function: a dataset's raw sample-sheet cell."""

    def inner(wildcards):
        return samples.loc[wildcards.dataset, column]

    return inner


def datasets_with(column):
    """Datasets whose sheet row fills the given column."""
    return [d for d in samples.index if samples.loc[d, column]]


def dataset_seed(base, dataset):
    """A stable per-dataset seed (independent of Python's hash randomisation)."""
    return zlib.crc32(f"{base}/{dataset}".encode())


def get_final_output():
    """Every target of a full study on the configured sample sheet."""
    paired = datasets_with("hr")
    return [
        *expand("results/{dataset}/prepare/registration_qc.png", dataset=paired),
        *expand("results/{dataset}/prepare/hr_denoised.ome.zarr", dataset=paired),
        *expand(
            "results/{dataset}/prepare/lr_{synthetic}.ome.zarr",
            dataset=paired,
            synthetic=["synthetic1", "synthetic2"],
        ),
    ]
