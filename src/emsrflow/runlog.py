"""Logging for the workflow's rule scripts."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

__all__ = ["rule_logger"]


def rule_logger(log_path: str | Path, name: str) -> logging.Logger:
    """Log a rule script to its log file and to the console, uncaught errors included.

    Parameters
    ----------
    log_path : str or Path
        The rule's ``log:`` file.
    name : str
        Logger name (the rule).

    Returns
    -------
    logging.Logger
    """
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
    logger = logging.getLogger(f"emsrflow.{name}")
    logger.setLevel(logging.INFO)
    for handler in (logging.FileHandler(log_path, mode="w"), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(formatter)
        logger.addHandler(handler)

    def log_uncaught(kind, error, traceback):
        logger.error("failed: %s", error, exc_info=(kind, error, traceback))

    sys.excepthook = log_uncaught
    return logger
