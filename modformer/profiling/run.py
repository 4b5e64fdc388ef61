"""What `modformer profile` does, as one call: measure the blocks, optionally validate, measure the engine targets."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from modformer.modular.model import ModularModel
from modformer.profiling.engines import profile_engine_targets
from modformer.profiling.measure import ProfileConfig, profile_modules
from modformer.profiling.profile import LatencyProfile
from modformer.profiling.validate import validate as validate_profile
from modformer.serving.targets import Target

PhaseProgress = Callable[[str, int, int, str], None]  # (phase, done, total, info)


def run_profile(
    modular: ModularModel,
    config: ProfileConfig,
    engine_targets: Sequence[Target] = (),
    *,
    validate: int = 0,
    seed: int = 0,
    on_progress: PhaseProgress | None = None,
) -> LatencyProfile:
    """The torch profile of every block (phase `profile`), `validate` held-out assemblies measured end to end
    (phase `validate`, 0: none) and the engine targets' depth grid (phase `engines`), in one `LatencyProfile`."""

    def phase(name: str):
        return (lambda done, total, info: on_progress(name, done, total, info)) if on_progress else None

    result = profile_modules(modular, config, on_progress=phase("profile"))
    if validate:
        validate_profile(result, modular, validate, seed=seed, on_progress=phase("validate"))
    if engine_targets:
        result.engines = profile_engine_targets(modular, config, engine_targets, on_progress=phase("engines"))
    return result
