"""Devices: what ``--device cpu|cuda|mps|auto`` means, checked once, with a clear error.

handgrad computes with PyTorch tensors, so a model runs wherever its tensors are: every layer
creates what it needs (masks, buffers, gradients) with ``*_like`` or on the device of its input,
and ``Module.to(device)`` moves parameters and buffers in place (optimizers keep references).
The rule for fast accelerators is *no hidden host-device synchronisation* in the training
step: no ``.item()``, ``.tolist()``, ``bool(tensor)`` or printing of a tensor inside forward,
backward or an optimizer step; only a callback that needs a Python number (progress bar, NaN
guard) may call ``.item()``, and ideally once per many steps. The tests enforce this by running
every built-in case on the ``meta`` device, where any such call fails.
"""

from __future__ import annotations

import torch

from handgrad.errors import HandgradError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """The device types usable here, best first (``auto`` picks the first)."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if mps_available():
        found.append("mps")
    return [*found, "cpu"]


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or ``None``) -> ``cuda`` if present, else ``mps``, else ``cpu``; any other
    name (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, a ``torch.device``) is checked.

    Raises:
        HandgradError: the device does not exist here; the message lists those that do.
    """
    if name is None or (isinstance(name, str) and name.strip().lower() == "auto"):
        return torch.device(available_devices()[0])
    try:
        device = torch.device(name.strip().lower() if isinstance(name, str) else name)
    except (RuntimeError, TypeError) as exc:
        raise HandgradError(
            f"--device {name!r}: not a device name; choose from {', '.join(DEVICE_CHOICES)} "
            "(or cuda:N)"
        ) from exc
    here = ", ".join(available_devices())
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise HandgradError(
                f"--device {name}: no CUDA GPU is visible to PyTorch here (torch "
                f"{torch.__version__}); use one of: {here}, or install a CUDA build of torch"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise HandgradError(
                f"--device {name}: there are {count} CUDA device(s), numbered 0 to {count - 1}"
            )
    elif device.type == "mps":
        if not mps_available():
            raise HandgradError(f"--device {name}: Apple MPS is not available; use one of: {here}")
    elif device.type != "cpu":
        raise HandgradError(
            f"--device {name}: handgrad supports {', '.join(DEVICE_CHOICES)}; use one of: {here}"
        )
    return device


def describe(device: torch.device) -> str:
    """A short human description (``cuda:0 (NVIDIA H100)``) for logs and benchmark notes."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (for timing only; never inside the training step)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
