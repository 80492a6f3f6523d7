"""Choice of the torch device for training and inference."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return the torch device named by a configuration value.

    Parameters
    ----------
    device : str, torch.device or None
        ``None`` or ``"auto"`` (CUDA where available, else the CPU), or a torch device
        string such as ``"cpu"``, ``"cuda"`` or ``"cuda:1"``.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        If ``device`` is not a device name.
    RuntimeError
        If a CUDA device is asked for where CUDA is not available.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(
            f"device {device!r} is not a torch device: use 'auto', 'cpu' or 'cuda'"
        ) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"CUDA requested (device: {device}) but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}): set the device to "
            "'auto' or 'cpu', or run on a machine with a GPU and a CUDA build of torch"
        )
    return resolved
