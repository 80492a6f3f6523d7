import json
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
for _column in ("anisotropic", "isotropic", "anisotropic_voxel_nm", "labels"):
    if _column not in samples:
        samples[_column] = ""

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
# Isotropic reconstruction: datasets with an anisotropic stack or an isotropic volume, the
# ones with a reference, and the methods compared (cubic interpolation and the network).
ISOTROPIC = [
    d
    for d in samples.index
    if samples.loc[d, "anisotropic"] or samples.loc[d, "isotropic"]
]
ISO_REFERENCED = [d for d in ISOTROPIC if samples.loc[d, "isotropic"]]
ISO_NETWORK = config["isotropic"]["arch"]["type"]
ISO_METHODS = ["cubic", ISO_NETWORK]
# Metrics of the tables: whether higher is better, and the decimals the paper shows.
IMAGE_METRICS = {
    "psnr": (True, 1),
    "ssim": (True, 3),
    "frc": (True, 3),
    "frc_resolution_nm": (False, 1),
}
# Paired datasets with ground-truth labels (sheet column `labels`, the phantom's): their
# SR outputs are also segmented and scored by VOI and ARAND (lower is better).
LABELLED = [d for d in PAIRED if samples.loc[d, "labels"]]
SEGMENTATION_METRICS = {
    "voi_split": (False, 3),
    "voi_merge": (False, 3),
    "arand": (False, 3),
}
METRICS = {**IMAGE_METRICS, **(SEGMENTATION_METRICS if LABELLED else {})}


def level_name(value):
    """Path-safe name of a number (noise σ, hyper-parameter): 4 → "4", 2.5 → "2p5"."""
    return f"{value:.6f}".rstrip("0").rstrip(".").replace(".", "p")


def level_value(name):
    """The number of a :func:`level_name`."""
    return float(name.replace("p", "."))


# Ablation studies (EMSR paper Sec. III.G), each switched on by its `ablations:` entry:
# study → variants, each a method evaluated on the held-out datasets of the ablation
# folds, possibly with noise added to its LR input (`lr_noise`, a level name), drawn as
# `series` over `level`. Variants that need training are models of the usual
# {arch}_{strategy}_{loss} scheme, trained, inferred and evaluated by the usual rules:
# extra networks (hyper-parameter and λ variants of the base network: ABLATION_ARCHS, with
# their ABLATION_SETTINGS) and extra strategies (noisyref{σ}: the denoised HR with noise).
ABLATIONS = config["ablations"]
ABLATION_ARCHS, ABLATION_SETTINGS, ABLATION_STUDIES = {}, {}, {}


def _variant(label, series, level, method, lr_noise=""):
    return dict(
        label=label, series=series, level=level, method=method, lr_noise=lr_noise
    )


def _base_model(arch, strategy=None):
    """Model id of a variant of the ablations' base network, strategy and loss."""
    base = ABLATIONS["base"]
    return f"{arch}_{strategy or base['strategy']}_{base['loss']}"


def _base_variant(name, spec=None, settings=None):
    """Network name of the base network with some sizes or train settings changed: the
    base network itself if nothing changes, else a new one (ABLATION_ARCHS)."""
    arch = ABLATIONS["base"]["arch"]
    spec = {**ARCHS[arch], **(spec or {})}
    current = {"lambdas": [1.0, 1.0, 1.0], **config["train"]["settings"]}
    settings = {k: v for k, v in (settings or {}).items() if current.get(k) != v}
    if spec == ARCHS[arch] and not settings:
        return arch
    ABLATION_ARCHS[arch + name], ABLATION_SETTINGS[arch + name] = spec, settings
    return arch + name


if ABLATIONS["noise"]["sigma"]:
    _unknown = sorted(set(ABLATIONS["noise"]["methods"]) - set(METHODS))
    if _unknown:
        raise ValueError(
            f"ablations: noise: methods {_unknown} are not methods of the study {METHODS}"
        )
    ABLATION_STUDIES["noise"] = [
        _variant(f"{m} σ={s:g}", m, f"{s:g}", m, level_name(s) if s else "")
        for m in ABLATIONS["noise"]["methods"] or METHODS
        for s in [0, *sorted(ABLATIONS["noise"]["sigma"])]
    ]
_trains = (
    ABLATIONS["noisy_references"]["sigma"]
    or ABLATIONS["lambdas"]
    or ABLATIONS["hyperparameters"]
)
if _trains and ABLATIONS["base"]["arch"] not in TRAINED:
    raise ValueError(
        f"ablations: base: arch {ABLATIONS['base']['arch']!r} is not a trained network "
        f"of train: archs {TRAINED}"
    )
if ABLATIONS["noisy_references"]["sigma"]:
    ABLATION_STUDIES["noisy_references"] = []
    for _sigma in [0, *sorted(ABLATIONS["noisy_references"]["sigma"])]:
        _strategy = f"noisyref{level_name(_sigma)}" if _sigma else "denoised"
        if _sigma:
            STRATEGY_PAIRS[_strategy] = ("lr", f"hr_denoised_noise{level_name(_sigma)}")
        _arch = ABLATIONS["base"]["arch"]
        ABLATION_STUDIES["noisy_references"].append(
            _variant(
                f"σ={_sigma:g}",
                f"{_arch} [{ABLATIONS['base']['loss']}]",
                f"{_sigma:g}",
                _base_model(_arch, _strategy),
            )
        )
if ABLATIONS["lambdas"]:
    ABLATION_STUDIES["lambdas"] = []
    for _lambdas in ABLATIONS["lambdas"]:
        _level = ", ".join(f"{v:g}" for v in _lambdas)
        _arch = _base_variant(
            "lambda" + "x".join(map(level_name, _lambdas)),
            settings={"lambdas": list(_lambdas)},
        )
        ABLATION_STUDIES["lambdas"].append(
            _variant(f"λ=({_level})", "λ1, λ2, λ3", _level, _base_model(_arch))
        )
if ABLATIONS["hyperparameters"]:
    ABLATION_STUDIES["hyperparameters"] = []
    for _key, _values in ABLATIONS["hyperparameters"].items():
        for _value in _values:
            _arch = _base_variant(
                _key.replace("_", "") + level_name(_value), spec={_key: _value}
            )
            ABLATION_STUDIES["hyperparameters"].append(
                _variant(f"{_key}={_value:g}", _key, f"{_value:g}", _base_model(_arch))
            )
_clash = sorted(set(ABLATION_ARCHS) & set(ARCHS))
if _clash:
    raise ValueError(
        f"ablations: the variant networks {_clash} have the names of networks of train: "
        "archs; rename those"
    )
ARCHS = {**ARCHS, **ABLATION_ARCHS}  # after TRAINED and BASELINES: variants are extra
ABLATION_METHODS = list(
    dict.fromkeys(
        v["method"]
        for variants in ABLATION_STUDIES.values()
        for v in variants
        if v["method"] not in METHODS
    )
)
_unknown = sorted(set(ABLATIONS["folds"]) - set(FOLDS))
if ABLATION_STUDIES and _unknown:
    raise ValueError(
        f"ablations: folds {_unknown} are not animals with HR data in {config['samples']} "
        f"({FOLDS}); list some of those, or none for every fold"
    )
# Held-out datasets the ablations are evaluated on (the paper holds out BRAIN3).
ABLATION_DATASETS = [
    d for d in PAIRED if samples.loc[d, "animal"] in (ABLATIONS["folds"] or FOLDS)
]

# Production processing (config `process:`, config/process.yaml): new acquisitions of a
# sheet and the model packages applied to them, with no training. Products of an
# acquisition: `sr` (super-resolved by its package) and `isotropic` (reconstructed by its
# isotropic package from the `sr` product where there is one, else from the volume).
PROCESS = config.get("process")
PROCESS_COLUMNS = ["acquisition", "volume", "package", "isotropic_package", "voxel_nm"]
acquisitions = pd.DataFrame(columns=PROCESS_COLUMNS, dtype=str)
if PROCESS:
    acquisitions = pd.read_csv(
        PROCESS["sheet"], sep="\t", dtype=str, keep_default_na=False, comment="#"
    )
    validate(acquisitions, schema="../schemas/acquisitions.schema.yaml")
    _repeated = sorted(
        set(acquisitions.acquisition[acquisitions.acquisition.duplicated()])
    )
    if _repeated:
        raise ValueError(
            f"{PROCESS['sheet']}: column 'acquisition' repeats the ids {_repeated}"
        )
    for _column in PROCESS_COLUMNS:
        if _column not in acquisitions:
            acquisitions[_column] = ""
    acquisitions = acquisitions.set_index("acquisition", drop=False)
    for _column in ("package", "isotropic_package"):
        acquisitions.loc[acquisitions[_column] == "", _column] = PROCESS[_column]
    _idle = list(
        acquisitions.index[
            (acquisitions.package == "") & (acquisitions.isotropic_package == "")
        ]
    )
    if _idle:
        raise ValueError(
            f"{PROCESS['sheet']}: acquisitions {_idle} have no package and process: "
            "package / isotropic_package give none; name a model package for them"
        )
PRODUCTS = {
    a: [p for p, c in (("sr", "package"), ("isotropic", "isotropic_package")) if row[c]]
    for a, row in acquisitions.iterrows()
}


wildcard_constraints:
    dataset="|".join(samples.index),
    synthetic="synthetic1|synthetic2",
    fold="|".join(FOLDS),
    arch="|".join([*TRAINED, *ABLATION_ARCHS]) or "^$",
    baseline="|".join(BASELINES) or "^$",
    strategy="|".join(STRATEGY_PAIRS),
    loss="l1|l2",
    method="|".join([*METHODS, *ABLATION_METHODS]),
    metric="|".join(METRICS),
    iso_method="|".join(ISO_METHODS),
    study="|".join(ABLATION_STUDIES) or "^$",
    sigma="[0-9]+(p[0-9]+)?",
    acquisition="|".join(acquisitions.index) or "^$",
    product="sr|isotropic",
    slab="[0-9]+",


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


def export_dataset(fold):
    """The first dataset of a fold's held-out animal: its LR (and HR) give the test
    crop and the cover of the fold's model packages."""
    return next(d for d in PAIRED if samples.loc[d, "animal"] == fold)


def get_labels(wildcards):
    """Input function: a dataset's ground-truth labels (sheet column `labels`), if any."""
    return volume_file(samples.loc[wildcards.dataset, "labels"]) or []


def labelled_training(fold):
    """Labelled paired datasets of every animal but the held-out one."""
    return [d for d in LABELLED if samples.loc[d, "animal"] != fold]


def get_segmenter(name):
    """Input function: a file of the segmentation network (rule segmenter) of a labelled
    dataset's fold; none without labels, a `segmentation:` config, or labelled training
    data (the prediction is then segmented by the membrane watershed)."""

    def inner(wildcards):
        fold = samples.loc[wildcards.dataset, "animal"]
        if not config.get("segmentation") or wildcards.dataset not in LABELLED:
            return []
        if not labelled_training(fold):
            return []
        return f"results/models/segmentation/{fold}/{name}"

    return inner


def get_method_model(wildcards):
    """Input function: the fold model of a dataset's method; none for a baseline."""
    if wildcards.method in BASELINES:
        return []
    fold = samples.loc[wildcards.dataset, "animal"]
    return f"results/models/{fold}/{wildcards.method}/model.pt"


def method_spec(wildcards):
    """Params function: the network spec of a method (its arch, or the baseline)."""
    method = wildcards.method
    return ARCHS[method if method in BASELINES else method.split("_")[0]]


def ablation_slices(variant, dataset):
    """The slice table of an ablation variant on a dataset."""
    folder = (
        f"evaluate_lrnoise{variant['lr_noise']}" if variant["lr_noise"] else "evaluate"
    )
    return f"results/{dataset}/{folder}/{variant['method']}.tsv"


ABLATION_TITLES = {
    "noise": "Robustness to noise (Fig. 13): Gaussian noise σ added to the LR at test time",
    "noisy_references": (
        "Noisy references (Fig. 14): trained on the denoised HR with Gaussian noise σ added"
    ),
    "lambdas": "Weights λ1, λ2, λ3 of the loss (16) (Table VI)",
    "hyperparameters": "Network hyper-parameters (Table V)",
}
ABLATION_AXES = {
    "noise": "σ of the noise added to the LR (0–255 scale)",
    "noisy_references": "σ of the noise added to the HR reference (0–255 scale)",
    "lambdas": "λ1, λ2, λ3",
    "hyperparameters": "hyper-parameter value",
}


def ablation_title(wildcards):
    """Params function: the caption of a study, with its base model and test folds."""
    base = config["ablations"]["base"]
    model = f"{base['arch']} [{base['loss']}, {base['strategy']} strategy]"
    about = "" if wildcards.study == "noise" else f" of {model}"
    folds = ", ".join(config["ablations"]["folds"] or FOLDS)
    return f"{ABLATION_TITLES[wildcards.study]}{about}; held-out animals {folds}"


def ablation_variants(wildcards):
    """Params function: a study's variants, each with its slice tables."""
    return [
        {**v, "files": [ablation_slices(v, d) for d in ABLATION_DATASETS]}
        for v in ABLATION_STUDIES[wildcards.study]
    ]


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


def iso_method_metadata(wildcards):
    """Params function: the sheet fields of a dataset's isotropic reconstruction method."""
    row = samples.loc[wildcards.dataset]
    trained = wildcards.iso_method != "cubic"
    return {
        "dataset": wildcards.dataset,
        "animal": row["animal"],
        "hemisphere": row["hemisphere"],
        "fold": "",
        "method": wildcards.iso_method,
        "arch": wildcards.iso_method,
        "strategy": "self-supervised" if trained else "",
        "loss": "l1+pdl" if trained else "",
    }


def get_final_output(wildcards):
    """Input function of the default target: every output of a full study, or with a
    `process:` config every processed volume and its QC."""
    if PROCESS:
        return [
            *(
                f"results/process/{a}/qc/{p}.json"
                for a, products in PRODUCTS.items()
                for p in products
            ),
            "results/process/qc.html",
        ]
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
        *expand(
            "results/figures/{dataset}/{figure}.png",
            dataset=PAIRED,
            figure=["frc_curves", "comparison", "orthogonal_sections"],
        ),
        *expand("results/figures/boxplot_{metric}.png", metric=METRICS),
        *expand(
            "results/{dataset}/isotropic/{iso_method}.ome.zarr",
            dataset=ISOTROPIC,
            iso_method=ISO_METHODS,
        ),
        *expand(
            "results/figures/{dataset}/isotropic_{figure}.png",
            dataset=ISOTROPIC,
            figure=["sections", "training"],
        ),
        *expand(
            "results/tables/isotropic_{metric}.html",
            metric=IMAGE_METRICS if ISO_REFERENCED else [],
        ),
        *(["results/tables/table4.html"] if PAIRED else []),
        *expand("results/tables/ablation_{study}.html", study=ABLATION_STUDIES),
        *expand("results/figures/ablation_{study}.png", study=ABLATION_STUDIES),
        *expand("results/figures/training_{fold}.png", fold=FOLDS if TRAINED else []),
        *expand(
            "results/packages/{fold}/{arch}_{strategy}_{loss}.zip",
            fold=FOLDS if config["export"]["enabled"] else [],
            arch=TRAINED,
            strategy=train["strategies"],
            loss=train["losses"],
        ),
        *expand(
            "results/packages/isotropic/{dataset}.zip",
            dataset=ISOTROPIC if config["export"]["enabled"] else [],
        ),
        *largefactor_outputs(),
        "results/provenance/provenance.yaml",
    ]


def process_package(wildcards):
    """The model package of an acquisition's product."""
    column = "package" if wildcards.product == "sr" else "isotropic_package"
    return acquisitions.loc[wildcards.acquisition, column]


def process_source(wildcards):
    """Params function: the volume a product is made from (the `sr` product's volume
    for an isotropic product of a super-resolved acquisition)."""
    if wildcards.product == "isotropic" and "sr" in PRODUCTS[wildcards.acquisition]:
        return f"results/process/{wildcards.acquisition}/sr.ome.zarr"
    return acquisitions.loc[wildcards.acquisition, "volume"]


def process_source_input(wildcards):
    """Input function: the file behind :func:`process_source`, or the summary of the
    step that publishes it."""
    if wildcards.product == "isotropic" and "sr" in PRODUCTS[wildcards.acquisition]:
        return f"results/process/{wildcards.acquisition}/sr.json"
    return volume_file(acquisitions.loc[wildcards.acquisition, "volume"])


def process_voxel(wildcards):
    """Params function: the sheet's voxel size (z, y, x) of an acquired volume, or None."""
    cell = acquisitions.loc[wildcards.acquisition, "voxel_nm"]
    if not cell or process_source(wildcards).startswith("results/process/"):
        return None
    return [float(v) for v in cell.split(",")]


def process_slabs(wildcards):
    """Input function: the slab markers of a product, from its plan (a checkpoint)."""
    plan = checkpoints.process_plan.get(**wildcards).output.plan
    with open(plan) as handle:
        count = len(json.load(handle)["slabs"])
    return expand(
        "results/process/{acquisition}/slabs/{product}/{slab}.json",
        acquisition=wildcards.acquisition,
        product=wildcards.product,
        slab=range(count),
    )


# ---------------------------------------------------------------------------------------
# Large-factor super-resolution (GPEMSR)
#
# Config `largefactor:` (optional: a config without it, or with `factors: []`, runs none
# of it). Per factor f (8, 16) and leave-one-animal-out fold: LR made from the prepared HR
# (rules gp_degrade, gp_labels), the three GPEMSR stages (gp_codebook per fold,
# gp_indexer and gp_reconstruction per fold and factor; variants of Stage III: `full`,
# `single` = single section, and the Table 5 ablations of `largefactor: ablation:`),
# trained baselines (gp_train_baseline) and bicubic, inference of the held-out datasets
# (gp_infer), evaluation, and the GPEMSR paper's Tables 1 and 5 (gp_table1, gp_table5).
LARGEFACTOR = config.get("largefactor") or {}
GP_FACTORS = [int(f) for f in LARGEFACTOR.get("factors") or []]
GP_ABLATION = dict(LARGEFACTOR.get("ablation") or {})
# Stage III variants: name → keyword overrides of emsrflow.archs.gpemsr.GPEMSR.
GP_VARIANTS = {"full": {}, "single": {"single_section": True}, **GP_ABLATION}
GP_ARCHS = dict((LARGEFACTOR.get("baselines") or {}).get("archs") or {})
# Local copies of the paper's pretrained networks (null: replaced, see config.yaml), and
# the GPEMSR keywords that use them.
GP_PRETRAINED = dict(LARGEFACTOR.get("pretrained") or {})
GP_PRETRAINED_NETWORK = {
    **(
        {"features": "vgg19", "vgg19_weights": GP_PRETRAINED["vgg19"]}
        if GP_PRETRAINED.get("vgg19")
        else {}
    ),
    **(
        {"flow": "spynet", "spynet_weights": GP_PRETRAINED["spynet"]}
        if GP_PRETRAINED.get("spynet")
        else {}
    ),
}
# Perceptual metrics whose two local files are configured (the others: "not available").
GP_PERCEPTUAL = {
    name: spec
    for name, spec in GP_PRETRAINED.items()
    if name in ("lpips", "dists") and spec.get("backbone") and spec.get("calibration")
}
# Methods, in the tables' order: bicubic, trained baselines, GPEMSR single-section, full.
GP_TABLE1 = ["bicubic", *GP_ARCHS, "gpemsr_single", "gpemsr_full"]
GP_TABLE5 = ["gpemsr_full", *(f"gpemsr_{name}" for name in GP_ABLATION)]
GP_METHODS = list(dict.fromkeys([*GP_TABLE1, *GP_TABLE5]))
# Metrics of Tables 1 and 5: VOI (split + merge) beside its two parts, ARAND where the
# datasets have labels, LPIPS and DISTS where their local weights are configured.
GP_METRICS = {
    m: {**METRICS, "voi": (False, 3)}[m]
    for m in ("psnr", "ssim", "frc", "voi_split", "voi_merge", "voi", "arand")
    if m in METRICS or (m == "voi" and "voi_split" in METRICS)
} | {m: (False, 4) for m in GP_PERCEPTUAL}
GP_LABELS = {
    "bicubic": "Bicubic",
    **{
        name: name if name == spec["type"] else f"{name} ({spec['type']})"
        for name, spec in GP_ARCHS.items()
    },
    "gpemsr_single": "GPEMSR (single section)",
    "gpemsr_full": "GPEMSR",
    **{
        f"gpemsr_{name}": "GPEMSR, "
        + ", ".join(f"{key}={value}" for key, value in changes.items())
        for name, changes in GP_ABLATION.items()
    },
}
if GP_FACTORS:
    _clash = sorted({"full", "single"} & set(GP_ABLATION))
    if _clash:
        raise ValueError(
            f"largefactor: ablation: the variant names {_clash} are reserved (the full "
            "and single-section GPEMSR); rename them"
        )
    if "bicubic" in GP_ARCHS or any(
        s.get("type") == "bicubic" for s in GP_ARCHS.values()
    ):
        raise ValueError(
            "largefactor: baselines: archs lists bicubic; it is always compared, list "
            "only trained networks there"
        )
    if len(FOLDS) < 2:
        raise ValueError(
            f"{config['samples']}: large-factor training leaves one animal out and needs "
            f"HR data of at least two animals, found {FOLDS}"
        )


def gp_stage(stage, key):
    """Params function: a stage's `network` or `settings` of config `largefactor:`,
    the factor added to the settings of Stages II and III."""

    def inner(wildcards):
        value = dict(LARGEFACTOR[stage][key] or {})
        if key == "settings" and stage != "codebook":
            value["scale"] = int(wildcards.factor)
        if key == "network" and stage == "reconstruction":
            value.update(GP_PRETRAINED_NETWORK)
            value.update(GP_VARIANTS[wildcards.gp_variant])
        return value

    return inner


def gp_training_hr(wildcards):
    """Input function: the prepared HR volumes of a fold's training datasets (Stage I)."""
    return [
        f"results/{d}/prepare/hr.ome.zarr" for d in training_datasets(wildcards.fold)
    ]


def gp_training_pairs(side):
    """Input function: the LR (side "lr") or HR ("hr") volumes at a factor of a fold's
    training datasets."""

    def inner(wildcards):
        return [
            f"results/{d}/largefactor/x{wildcards.factor}/{side}.ome.zarr"
            for d in training_datasets(wildcards.fold)
        ]

    return inner


def gp_prior(wildcards):
    """Input function: the Stage II model of a Stage III variant (none without MPF)."""
    if not GP_VARIANTS[wildcards.gp_variant].get("mpf", True):
        return []
    return f"results/models/largefactor/{wildcards.fold}/x{wildcards.factor}/indexer/model.pt"


def gp_method_model(wildcards):
    """Input function: the fold model of a dataset's large-factor method (none: bicubic)."""
    fold = samples.loc[wildcards.dataset, "animal"]
    folder = f"results/models/largefactor/{fold}/x{wildcards.factor}"
    if wildcards.gp_method == "bicubic":
        return []
    if wildcards.gp_method in GP_ARCHS:
        return f"{folder}/{wildcards.gp_method}_real_l1/model.pt"
    return f"{folder}/{wildcards.gp_method}/model.pt"


def gp_method_spec(wildcards):
    """Params function: the network spec of a baseline (bicubic or trained); none for
    GPEMSR (its checkpoint holds it)."""
    if wildcards.gp_method == "bicubic":
        return {"type": "bicubic"}
    return GP_ARCHS.get(wildcards.gp_method, {"type": "gpemsr"})


def gp_labels(wildcards):
    """Input function: a dataset's labels on the cropped HR grid of a factor, if any."""
    if not samples.loc[wildcards.dataset, "labels"]:
        return []
    return (
        f"results/{wildcards.dataset}/largefactor/x{wildcards.factor}/labels.ome.zarr"
    )


def gp_method_metadata(wildcards):
    """Params function: the sheet and model fields of a dataset's large-factor method."""
    row = samples.loc[wildcards.dataset]
    method = wildcards.gp_method
    trained = method in GP_ARCHS
    return {
        "dataset": wildcards.dataset,
        "animal": row["animal"],
        "hemisphere": row["hemisphere"],
        "fold": row["animal"],
        "method": method,
        "arch": GP_ARCHS[method]["type"] if trained else method.split("_")[0],
        "strategy": "real" if trained else "",
        "loss": "l1" if trained else "",
        "factor": int(wildcards.factor),
    }


def largefactor_outputs():
    """Targets of the large-factor study: Tables 1 and 5 and every super-resolved volume
    (none when config `largefactor:` is absent or lists no factors)."""
    if not GP_FACTORS:
        return []
    return [
        "results/tables/largefactor_table1.html",
        *(["results/tables/largefactor_table5.html"] if GP_ABLATION else []),
        *expand(
            "results/{dataset}/largefactor/x{factor}/sr/{gp_method}.ome.zarr",
            dataset=PAIRED,
            factor=GP_FACTORS,
            gp_method=GP_METHODS,
        ),
    ]
