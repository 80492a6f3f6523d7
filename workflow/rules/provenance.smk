rule provenance:
    """What made the results: config, seeds, package versions, git commit and images."""
    input:
        samples=config["samples"],
    output:
        "results/provenance/provenance.yaml",
    log:
        "results/logs/provenance.log",
    benchmark:
        "results/benchmarks/provenance.tsv"
    conda:
        "../../envs/emsrflow.yaml"
    container:
        config["containers"]["cpu"]
    resources:
        mem_mb=500,
    params:
        # The whole resolved config: a change of any key (--config or --configfile
        # included) changes the params and so reruns the rule.
        config=config,
        # Per-dataset seeds, drawn from the configured ones as the phantom and degrade
        # rules draw them.
        seeds={
            "phantom": {
                d: dataset_seed(config["phantom"]["seed"], d) for d in samples.index
            },
            "degrade": {d: dataset_seed(config["degrade"]["seed"], d) for d in PAIRED},
        },
    script:
        "../../scripts/provenance.py"
