"""What a profile was measured on: a fingerprint to store, and a comparison that names what differs."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from modformer.errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Keys whose difference makes a profile's numbers not apply; the rest (e.g. the OS) are kept for the record.
COMPARED = (
    "device",
    "cpu_model",
    "gpu_name",
    "physical_cores",
    "logical_cores",
    "torch_threads",
    "dtype",
    "torch",
    "transformers",
)


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def core_counts() -> tuple[int | None, int | None]:
    """(physical, logical) cores; physical from psutil where installed, else /proc/cpuinfo, else unknown."""
    logical = os.cpu_count()
    try:
        import psutil

        return psutil.cpu_count(logical=False), psutil.cpu_count(logical=True) or logical
    except ImportError:
        pass
    try:
        pairs, physical_id = set(), "0"
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "physical id":
                physical_id = value.strip()
            elif key.strip() == "core id":
                pairs.add((physical_id, value.strip()))
        return (len(pairs) or None), logical
    except OSError:
        return None, logical


def fingerprint(device: str, dtype: str, threads: int | None = None) -> dict:
    """The machine and software a measurement depends on. `threads` defaults to torch's current setting."""
    import transformers

    physical, logical = core_counts()
    return {
        "device": device,
        "cpu_model": cpu_model(),
        "gpu_name": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "physical_cores": physical,
        "logical_cores": logical,
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "dtype": dtype,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def compare(recorded: dict, current: dict) -> list[str]:
    """What differs between two fingerprints, as 'key: recorded -> current' lines (empty when they match)."""
    return [
        f"{key}: {recorded.get(key)!r} -> {current.get(key)!r}"
        for key in COMPARED
        if recorded.get(key) != current.get(key)
    ]
