"""Test-session settings.

``make test`` runs the suite in two pytest-xdist workers, one test file each at a time
(``--dist loadfile``): the Snakemake and SLURM runs spend much of their time waiting on
job start-up and status polls, and the other worker uses that time. Each worker then
computes with one thread (its Snakemake jobs too, unless a rule sets its own threads),
so that two workers on two cores do not oversubscribe them.
"""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

# The longest files first, so that neither worker ends with one of them alone
# (``make test`` passes --no-loadscope-reorder to keep this order).
LONGEST = ("test_workflow.py", "test_slurm.py", "test_largefactor_workflow.py")


def pytest_collection_modifyitems(items):
    """Put the files of :data:`LONGEST` first, in that order (a stable sort)."""
    items.sort(key=lambda item: LONGEST.index(item.path.name) if item.path.name in LONGEST else 3)
