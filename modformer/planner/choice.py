"""Choosing assemblies outside a plan: by name, by a strategy and a ratio, or a plan's chosen one; and exporting it.

A measured profile, where given, predicts the speed-first ratios; without one the strategies' documented estimate
is used. This sits above `modular` (strategies, export) and `profiling` (predictions), as the planner does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from modformer.errors import CheckpointError, ConfigError
from modformer.io import write_json
from modformer.modular.assembly import Assembly
from modformer.modular.export import export_assembly
from modformer.modular.model import ModularModel
from modformer.modular.strategies import STRATEGIES, assembly_for_ratio, strategy_sequence
from modformer.planner.artifact import Plan
from modformer.profiling.cost_model import speed_ratio_predictor
from modformer.profiling.profile import LatencyProfile, default_workload
from modformer.profiling.validate import check_profile_model
from modformer.serving.targets import Target

SpeedRatio = Callable[[Assembly], float]


def profile_speed_ratio(model: ModularModel, profile: LatencyProfile | None) -> SpeedRatio | None:
    """Predicted speed-up over the teacher from a measured profile (its default workload), or None without one."""
    if profile is None:
        return None
    check_profile_model(profile, model)  # as `plan` does: another model's timings would predict nonsense
    teacher = Assembly.teacher(model.config.encoder_layers, model.config.decoder_layers)
    return speed_ratio_predictor(profile, teacher, default_workload(profile))


def choose_assembly(
    model: ModularModel,
    *,
    assembly: str | None = None,
    strategy: str | None = None,
    ratio: float | None = None,
    speed: SpeedRatio | None = None,
) -> Assembly:
    """The assembly named by `assembly`, or the first of `strategy`'s sequence reaching `ratio`."""
    if (assembly is None) == (strategy is None):
        raise ConfigError("give either assembly or strategy with ratio", settings=("assembly", "strategy", "ratio"))
    if assembly is not None:
        if ratio is not None:
            raise ConfigError(
                "give either assembly or strategy with ratio, not assembly with ratio",
                settings=("assembly", "strategy", "ratio"),
            )
        return model.validate(Assembly.parse(assembly))
    if ratio is None:
        raise ConfigError("strategy needs ratio (e.g. ratio 2)", settings=("strategy", "ratio"))
    return assembly_for_ratio(strategy, model.cost_model(), ratio, speed_ratio=speed)


def assembly_table(
    model: ModularModel,
    *,
    assembly: str | None = None,
    strategy: str | None = None,
    ratio: float | None = None,
    profile: LatencyProfile | None = None,
) -> pd.DataFrame:
    """One row per assembly with its size and speed ratios: the one chosen (`assembly`, or `strategy` + `ratio`),
    else every assembly of `strategy`'s sequence (of both strategies without one)."""
    cost = model.cost_model()
    speed = profile_speed_ratio(model, profile)
    if assembly is not None or ratio is not None:
        rows = [("chosen", choose_assembly(model, assembly=assembly, strategy=strategy, ratio=ratio, speed=speed))]
    else:
        names = [strategy] if strategy else list(STRATEGIES)
        rows = [(name, a) for name in names for a in strategy_sequence(name, cost)]
    records = []
    for name, a in rows:
        a = model.validate(a)
        records.append(
            {
                "strategy": name,
                "shape": a.shape,
                "assembly": a.format(),
                "parameters": cost.params(a),
                "size_ratio": cost.size_ratio(a),
                "speed_ratio": (speed or cost.speed_ratio)(a),
                "speed_ratio_source": "profile" if speed else "estimate",
            }
        )
    return pd.DataFrame.from_records(records)


def save_assembly_table(path: str | Path, rows: pd.DataFrame, *, modules: str | Path) -> None:
    """The table of `assembly_table` as JSON: `{"modules": ..., "assemblies": [one record per row]}`."""
    write_json(path, {"modules": str(modules), "assemblies": rows.to_dict(orient="records")})


def check_plan_model(plan: Plan, model: ModularModel) -> None:
    """Refuse modules of another model than the one a plan was made for (as its profile recorded it; plans written
    before modformer recorded it are not checked)."""
    recorded = plan.summary.get("model")
    if not isinstance(recorded, dict):
        return
    c = model.config
    for key in ("teacher_config_fingerprint", "teacher_weights_fingerprint", "encoder_layers", "decoder_layers"):
        if key in recorded and recorded[key] != getattr(c, key):
            raise CheckpointError(
                f"the plan was made for another model ({key} {recorded[key]!r}, these modules: {getattr(c, key)!r})"
            )


def export_chosen(
    out: str | Path,
    *,
    modules: str | Path | None = None,
    assembly: str | None = None,
    strategy: str | None = None,
    ratio: float | None = None,
    profile: LatencyProfile | None = None,
    profile_source: str | None = None,
    plan: str | Path | None = None,
    target: Target | None = None,
    overwrite: bool = False,
    teacher: str | Path | None = None,
) -> tuple[Assembly, dict]:
    """Export the assembly a plan chose (`plan`; `modules` overrides the plan's own), or the one the other options
    name, as a plain Hugging Face checkpoint in `out`. Returns the assembly and the export record.

    `profile_source` (where `profile` was read from) is recorded beside the predicted speed ratio. `target` is the
    serving target to write (default: the plan's chosen target, else `torch:fp32`). `teacher`: where the modules'
    teacher is now, if it moved since they were trained."""
    if plan is not None:
        if assembly is not None or strategy is not None or ratio is not None:
            raise ConfigError(
                "give either plan or assembly / strategy, not both", settings=("plan", "assembly", "strategy")
            )
        chosen_plan = Plan.load(plan)
        model = ModularModel.from_pretrained(modules or chosen_plan.modules, teacher)
        check_plan_model(chosen_plan, model)
        chosen = model.validate(Assembly.parse(chosen_plan.chosen["assembly"]))
        extra = {"plan": str(plan), "plan_chosen": chosen_plan.chosen}
        if target is None and chosen_plan.chosen.get("target"):
            target = Target.parse(chosen_plan.chosen["target"])
    else:
        if modules is None:
            raise ConfigError("export needs modules (or plan)", settings=("modules", "plan"))
        model = ModularModel.from_pretrained(modules, teacher)
        speed = profile_speed_ratio(model, profile)
        chosen = choose_assembly(model, assembly=assembly, strategy=strategy, ratio=ratio, speed=speed)
        extra = {"predicted_speed_ratio": speed(chosen), "profile": profile_source} if speed else None
    return chosen, export_assembly(model, chosen, out, overwrite=overwrite, extra=extra, target=target)
