"""One device setting and one precision setting for every build and query.

Every tensor placement in fipgraph goes through :func:`resolve_device`, so a user switches a whole
build or query between CPU, CUDA and MPS with one word (``device = "auto"`` picks CUDA, then MPS,
then CPU). Precision is autocast over fp32 master weights: the stored node is always the module's
own fp32 (or native) weights.
"""

from __future__ import annotations

import contextlib
import re

import torch

from fipgraph.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def is_device_name(name: str) -> bool:
    """Whether ``name`` is spelt like a device setting (whether this machine has it is resolve_device's job)."""
    return bool(_DEVICE_PATTERN.match(str(name).strip().lower()))


def available_devices() -> list[str]:
    """The device strings this machine can use right now, e.g. ``["cpu", "cuda:0", "cuda:1"]``."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        found.append("mps")
    return found


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Turn a device setting into a ``torch.device`` that exists on this machine.

    ``None`` and ``"auto"`` pick CUDA, then MPS, then CPU. A device that this machine lacks fails at
    once (before any step runs) with the devices that are available.
    """
    if isinstance(name, torch.device):
        name = str(name)
    name = "auto" if name is None else str(name).strip().lower()
    if not is_device_name(name):
        raise ConfigError(f"unknown device {name!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' "
                          f"(available here: {', '.join(available_devices())})")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} was asked for but this machine has no CUDA device "
                              f"(available here: {', '.join(available_devices())}); use device='cpu' or 'auto'")
        index = int(name.split(":")[1]) if ":" in name else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s) (available here: {', '.join(available_devices())})")
        return torch.device("cuda", index)
    if name == "mps" and not _mps_available():
        raise ConfigError(f"device 'mps' was asked for but MPS is not available here "
                          f"(available here: {', '.join(available_devices())}); use device='cpu' or 'auto'")
    return torch.device(name)


def check_precision(precision: str, device: torch.device) -> str:
    """Validate a precision setting for a device; returns it normalised."""
    value = str(precision).strip().lower()
    if value not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if value == "fp16" and device.type == "cpu":
        raise ConfigError("precision 'fp16' needs a CUDA or MPS device (CPU autocast supports bf16); "
                          "use precision='bf16' or 'fp32' on the CPU")
    return value


def autocast(device: torch.device, precision: str):
    """A context for forward and backward passes at ``precision``; fp32 is a no-op context."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])


def move_batch(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch on ``device``; pinned host tensors copy asynchronously (non_blocking) to CUDA."""
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=v.is_pinned()) if torch.is_tensor(v) else v for k, v in batch.items()}


class HostWeights(dict):
    """Host copies of a module's state dict that still say how to rebuild the module (its spec)."""

    fipgraph_spec: dict | None = None


def host_state_dict(module: torch.nn.Module) -> "HostWeights | torch.nn.Module":
    """What the store receives: the module itself on the CPU, else host (CPU) copies of exactly its weights."""
    tensors = module.state_dict()
    if all(t.device.type == "cpu" for t in tensors.values()):
        return module  # the store reads the spec from the module and copies the tensors itself
    from fipgraph.storage.inputs import model_spec_of

    host = HostWeights({k: v.detach().to("cpu") for k, v in tensors.items()})
    host.fipgraph_spec = model_spec_of(module)
    return host


def host_buffer_like(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """An empty host tensor shaped like ``tensor``, pinned (page-locked) when ``device`` is CUDA, so a
    non-blocking copy from the device into it really runs asynchronously and can be reused for every save."""
    return torch.empty(tuple(tensor.shape), dtype=tensor.dtype, pin_memory=device.type == "cuda")


def record_event(device: torch.device) -> "torch.cuda.Event | None":
    """An event behind the work queued so far on ``device``'s current stream (None where work is synchronous)."""
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()  # no timing: the cheapest kind, and query()/synchronize() are all we need
    event.record(torch.cuda.current_stream(device))
    return event


def grad_scaler(device: torch.device, precision: str) -> "torch.amp.GradScaler | None":
    """fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
