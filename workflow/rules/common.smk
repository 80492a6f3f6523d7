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

# Training pairs per strategy: (LR, HR) volumes under results/{dataset}/prepare/.
STRATEGY_PAIRS = {
    "real": ("lr", "hr"),
    "denoised": ("lr", "hr_denoised"),
    "synthetic1": ("lr_synthetic1", "hr"),
    "synthetic2": ("lr_synthetic2", "hr"),
}
ARCHS = config["train"]["archs"]
TRAINED = [name for name, spec in ARCHS.items() if spec["type"] != "bicubic"]
BASELINES = [name for name, spec in ARCHS.items() if spec["type"] == "bicubic"]
PAIRED = [d for d in samples.index if samples.loc[d, "hr"]]
# Leave-one-animal-out folds: a fold is named by the animal it holds out.
FOLDS = sorted(set(samples.loc[PAIRED, "animal"]))
# Methods evaluated on every paired dataset: trained models and baselines.
METHODS = [
    *(
        f"{arch}_{strategy}_{loss}"
        for arch in TRAINED
        for strategy in config["train"]["strategies"]
        for loss in config["train"]["losses"]
    ),
    *BASELINES,
]
# Metrics of the tables: whether higher is better, and the decimals the paper shows.
METRICS = {
    "psnr": (True, 1),
    "ssim": (True, 3),
    "frc": (True, 3),
    "frc_resolution_nm": (False, 1),
}


wildcard_constraints:
    dataset="|".join(samples.index),
    synthetic="synthetic1|synthetic2",
    fold="|".join(FOLDS),
    arch="|".join(TRAINED) or "^$",
    baseline="|".join(BASELINES) or "^$",
    strategy="|".join(STRATEGY_PAIRS),
    loss="l1|l2",
    method="|".join(METHODS),
    metric="|".join(METRICS),


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


def dataset_seed(base, dataset):
    """A stable per-dataset seed (independent of Python's hash randomisation)."""
    return zlib.crc32(f"{base}/{dataset}".encode())


def training_datasets(fold):
    """Paired datasets of every animal but the held-out one."""
    return [d for d in PAIRED if samples.loc[d, "animal"] != fold]


def get_training_volumes(side):
    """Input function: the LR (side 0) or HR (side 1) volumes of a fold and strategy."""

    def inner(wildcards):
        name = STRATEGY_PAIRS[wildcards.strategy][side]
        return [
            f"results/{d}/prepare/{name}.ome.zarr"
            for d in training_datasets(wildcards.fold)
        ]

    return inner


def get_fold_model(wildcards):
    """Input function: the model trained without the dataset's animal."""
    fold = samples.loc[wildcards.dataset, "animal"]
    model = f"{wildcards.arch}_{wildcards.strategy}_{wildcards.loss}"
    return f"results/models/{fold}/{model}/model.pt"


def method_metadata(wildcards):
    """Params function: the sheet and model fields of a dataset's evaluated method."""
    row = samples.loc[wildcards.dataset]
    arch, strategy, loss = (
        (wildcards.method, "", "")
        if wildcards.method in BASELINES
        else wildcards.method.split("_")
    )
    return {
        "dataset": wildcards.dataset,
        "animal": row["animal"],
        "hemisphere": row["hemisphere"],
        "fold": row["animal"],
        "method": wildcards.method,
        "arch": arch,
        "strategy": strategy,
        "loss": loss,
    }


def get_final_output(wildcards):
    """Input function of the default target: every output of a full study."""
    train = config["train"]
    if TRAINED and len(FOLDS) < 2:
        raise ValueError(
            f"{config['samples']}: leave-one-animal-out training needs HR data of at least "
            f"two animals, found {FOLDS}; list only bicubic under train: archs to prepare "
            "and upsample a single animal"
        )
    return [
        *expand("results/{dataset}/prepare/registration_qc.png", dataset=PAIRED),
        *expand("results/tables/table2_{metric}.html", metric=METRICS),
        *expand(
            "results/tables/table3_{arch}_{loss}_{metric}.html",
            arch=TRAINED,
            loss=train["losses"],
            metric=METRICS,
        ),
        *expand(
            "results/{dataset}/sr/{arch}_{strategy}_{loss}.ome.zarr",
            dataset=PAIRED,
            arch=TRAINED,
            strategy=train["strategies"],
            loss=train["losses"],
        ),
        *expand(
            "results/{dataset}/sr/{baseline}.ome.zarr",
            dataset=PAIRED,
            baseline=BASELINES,
        ),
        *expand(
            "results/{dataset}/enhanced/{arch}_{strategy}_{loss}.ome.zarr",
            dataset=PAIRED if config["infer"]["enhance"] else [],
            arch=TRAINED,
            strategy=train["strategies"],
            loss=train["losses"],
        ),
    ]
