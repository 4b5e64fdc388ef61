"""Serving targets: what a model is served *in* (an engine) and *at* (a compute type), on a device.

What people deploy is a depth in an engine at a precision: the same assembly served by CTranslate2 in int8 can be an
order of magnitude faster than under `transformers.generate` in fp32. A `Target` names one such choice:

| target | engine | weights / compute |
|---|---|---|
| `torch:fp32` | `transformers` `generate` | float32 |
| `torch:bf16` | `transformers` `generate` | bfloat16 (where the CPU has bf16 instructions, or a CUDA GPU) |
| `ctranslate2:float32` | CTranslate2 `Translator` | float32 |
| `ctranslate2:int8` | CTranslate2 `Translator` | int8 weights, int8 matrix products |
| `ctranslate2:int8_float32` | CTranslate2 `Translator` | int8 weights, float32 elsewhere |
| `ctranslate2:float16`, `ctranslate2:int8_float16` | CTranslate2 on CUDA | half precision |

`supported_targets(device)` says which of them this machine can run, from what the engines report, not a guess.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from modformer.errors import ConfigError

ENGINES = ("torch", "ctranslate2")
TORCH_TYPES = ("fp32", "bf16", "fp16")
CT2_TYPES = ("float32", "int8", "int8_float32", "float16", "int8_float16", "bfloat16", "int8_bfloat16")
EXTRA = {"ctranslate2": "pip install 'modformer[ctranslate2]' (or pip install ctranslate2)"}


@dataclass(frozen=True)
class Target:
    """An engine and a compute type, e.g. `ctranslate2:int8`; `device` is `cpu` or `cuda`."""

    engine: str
    compute_type: str
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown engine {self.engine!r} in target {self}; engines: {', '.join(ENGINES)}")
        types = TORCH_TYPES if self.engine == "torch" else CT2_TYPES
        if self.compute_type not in types:
            raise ConfigError(
                f"{self.engine} has no compute type {self.compute_type!r}; choose from {', '.join(types)}"
            )
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"device must be cpu or cuda, got {self.device!r}", settings="device")

    @classmethod
    def parse(cls, text: str, device: str = "cpu") -> Target:
        """`engine:compute_type` (e.g. `torch:fp32`, `ctranslate2:int8`); an engine alone takes its full precision."""
        text = text.strip()
        engine, _, compute = text.partition(":")
        if not compute:
            compute = {"torch": "fp32", "ctranslate2": "float32"}.get(engine, "")
        if not engine or not compute:
            raise ConfigError(f"a target is engine:compute_type, e.g. torch:fp32 or ctranslate2:int8; got {text!r}")
        return cls(engine.strip(), compute.strip(), device)

    def __str__(self) -> str:
        return f"{self.engine}:{self.compute_type}"

    @property
    def is_torch(self) -> bool:
        return self.engine == "torch"


def parse_targets(text: str, device: str = "cpu") -> tuple[Target, ...]:
    """A comma-separated list of targets, each once, in the order given."""
    targets = tuple(dict.fromkeys(Target.parse(part, device) for part in text.split(",") if part.strip()))
    if not targets:
        raise ConfigError(f"targets: give at least one, e.g. torch:fp32,ctranslate2:int8; got {text!r}")
    return targets


def require_engine(engine: str):
    """Import an optional engine, or a one-line error naming the extra that installs it."""
    if engine == "ctranslate2":
        try:
            import ctranslate2
        except ImportError:
            raise ConfigError(f"the ctranslate2 engine is not installed: {EXTRA['ctranslate2']}") from None
        return ctranslate2
    raise ConfigError(f"unknown engine {engine!r}")


def cpu_has_bf16() -> bool:
    """Whether the CPU has bfloat16 instructions (x86 AVX512-BF16 or AMX-BF16, Arm BF16), read from /proc/cpuinfo."""
    cpuinfo = Path("/proc/cpuinfo")
    if platform.system() != "Linux" or not cpuinfo.is_file():
        return False
    flags = set()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.startswith(("flags", "Features")):
            flags |= set(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def supported_targets(device: str = "cpu") -> dict[str, str]:
    """Every target with its status on this machine: "ok", or why not (not installed, no kernels for it)."""
    import torch

    status: dict[str, str] = {}
    if device == "cuda" and not torch.cuda.is_available():
        return {f"torch:{t}": "no CUDA GPU" for t in TORCH_TYPES}
    status["torch:fp32"] = "ok"
    if device == "cuda":
        status["torch:bf16"] = "ok" if torch.cuda.is_bf16_supported() else "the GPU has no bf16"
        status["torch:fp16"] = "ok"
    else:
        status["torch:bf16"] = "ok" if cpu_has_bf16() else "the CPU has no bf16 instructions"
        status["torch:fp16"] = "no fast fp16 on CPU"
    try:
        ct2 = require_engine("ctranslate2")
    except ConfigError:
        for compute in CT2_TYPES:
            status[f"ctranslate2:{compute}"] = "ctranslate2 is not installed"
        return status
    have = set(ct2.get_supported_compute_types(device)) if ct2.get_cuda_device_count() or device == "cpu" else set()
    for compute in CT2_TYPES:
        status[f"ctranslate2:{compute}"] = "ok" if compute in have else f"ctranslate2 has no {compute} kernels here"
    return status


def default_targets(device: str = "cpu") -> tuple[Target, ...]:
    """The targets worth profiling by default: every supported one except the half-precision-on-CPU stand-ins."""
    usable = [Target.parse(name, device) for name, why in supported_targets(device).items() if why == "ok"]
    return tuple(t for t in usable if t.compute_type != "int8_float32")  # same int8 kernels as int8 on CPU


def profile_targets(text: str | None, dtype: str = "fp32", device: str = "cpu") -> tuple[Target, ...]:
    """The engine targets a profile measures beside torch at `dtype`: those `text` lists (None: every supported
    engine target; "none": no engine), refusing unsupported ones and torch at another dtype (one torch dtype per
    profile)."""
    if text is not None and text.strip().lower() == "none":
        return ()
    if text is None:
        return tuple(t for t in default_targets(device) if not t.is_torch)
    status = supported_targets(device)
    chosen = []
    for target in parse_targets(text, device):
        if target.is_torch:
            if target.compute_type != dtype:
                raise ConfigError(
                    f"a profile measures torch at one dtype ({dtype}); profile {target} separately with dtype "
                    f"{target.compute_type}",
                    settings="dtype",
                )
            continue
        if status.get(str(target)) != "ok":
            raise ConfigError(f"{target} cannot run here: {status.get(str(target), 'unknown target')}")
        chosen.append(target)
    return tuple(chosen)
