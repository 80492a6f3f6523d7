"""emsrflow: electron-microscopy super-resolution studies as a Snakemake workflow.

The package holds every piece of logic the workflow runs, one module per stage:
``io`` → ``phantom`` (demo data) → ``register`` → ``resize`` → ``denoise`` →
``degrade`` → later stages (train, infer, isotropic, evaluate, report).
"""

__version__ = "0.1.0"
