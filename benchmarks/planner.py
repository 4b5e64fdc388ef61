"""How good and how fast the planner is, against the whole space scored once.

    python benchmarks/planner.py [--modules runs/seed-claims/modular] [--work runs/bench-planner] [--overwrite]
    python benchmarks/planner.py --from-results benchmarks/results/planner.json --results DIR

The modular checkpoint is the 12+12 Multi30k teacher's (../shared/models/multi30k-t5-12x12, granularities 2,3,4,6;
made with:
`modformer train --teacher ../shared/models/multi30k-t5-12x12 --data ../shared/data/multi30k_en_de --src-ext en
--tgt-ext de --granularities 2,3,4,6 --steps 2000 --out runs/seed-claims/modular`). Stages, each cached under
--work so that a rerun resumes:

1. profile: `modformer profile` on the default grid.
2. plans: the default `modformer plan` (no budget), timed end to end (`plan_seconds`); then the same command again
   with the same seed into a second folder (`reproducible`: same scored set and same frontier).
3. ground truth: the proxy (first 32 `val` pairs, as the plan's default) of all 85,264 assemblies, saved every few
   encoder stacks (a rerun continues from the last save).
4. hypervolume: the default plan's proxy frontier against the ground truth's, on (proxy loss, predicted latency,
   predicted memory), both normalised by the whole space's ranges, reference point 1.1. The same search is then
   replayed with the ground truth as its scorer (no model: seconds) at several trial counts, which gives the
   hypervolume reached against the share of the space scored, and checks that the replay of the default scores
   exactly the assemblies the real plan scored.
5. budgets: for latency budgets at the teacher's predicted latency / 1.2, 1.5, 2, 2.5 and 3, the top 3 proxy points
   of the plan's frontier within each budget and the best in-budget size-first and speed-first points are validated
   (BLEU of greedy outputs on the first 200 `val` pairs, as the plan does); the planner's answer at a budget is the
   best validated point within it (rule points included: the plan validates them too), and it is *strictly better*
   where a searched assembly beats both rules.

Writes benchmarks/results/planner.json (figures, targets of issue 4, stage wall times, command, machine),
benchmarks/results/planner.png and planner_pareto.png (the default plan's own figure). The verdicts (`met`,
`scored_fraction`, `strictly_better_budgets`, each budget's `at_least_as_good` / `strictly_better`) are computed
from the measured figures by `verdicts()`; `--from-results` recomputes them from a results file's figures (the plots
need the whole space, so it writes the JSON only).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from harness import (
    DATASETS,
    RUNS,
    JsonCache,
    Results,
    add_results_options,
    data_args,
    provenance,
    read_results,
    run,
)
from matplotlib.figure import Figure
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from modformer.io import atomic_path
from modformer.modular.model import CONFIG_NAME
from modformer.planner.artifact import PARETO_PNG, Plan
from modformer.planner.frontier import hypervolume, normaliser, pareto_mask
from modformer.planner.plan import rule_points, validate_assemblies
from modformer.planner.run import PlanSettings, load_for_scoring, pair_scorer
from modformer.planner.search import Search, SearchConfig, default_trials, open_study
from modformer.planner.space import Budget, SearchSpace, space_stacks
from modformer.profiling.profile import LatencyProfile, default_workload, profile_paths

NAME = "planner"  # results/planner.json, planner.png, planner_pareto.png
OBJECTIVES = ("quality", "latency", "memory")
TARGETS = {"hypervolume_fraction": (">=", 0.98), "scored_fraction": ("<=", 0.20), "plan_seconds": ("<=", 300.0)}
BUDGET_DIVISORS = (1.2, 1.5, 2.0, 2.5, 3.0)  # the fastest assembly is 3.06x the teacher
PLANS = ("plan-default", "plan-repeat")  # the default plan, and the same command again (reproducibility)
WALLS_NAME = "walls.json"
GROUND_TRUTH_NAME = "ground_truth.npy"  # proxy loss of every assembly, (encoders, decoders)
VALIDATED_NAME = "budget_validation.csv"  # BLEU of every assembly validated for a budget
DERIVED = ("scored_fraction", "strictly_better_budgets", "targets", "met")  # computed by verdicts()
DERIVED_PER_BUDGET = ("at_least_as_good", "strictly_better")


def ground_truth(space: SearchSpace, settings: PlanSettings, path: Path) -> np.ndarray:
    """Proxy loss of every assembly, (encoders, decoders); resumes from the last save."""
    grid = np.load(path) if path.exists() else np.full((len(space.encoder), len(space.decoder)), np.nan)
    loaded = load_for_scoring(settings)
    score = pair_scorer(loaded.scorer, space_stacks(loaded.modular.config))
    todo = [i for i in range(len(space.encoder)) if np.isnan(grid[i]).any()]
    with Progress(TextColumn("[bold]ground truth"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task("", total=space.size, completed=space.size - len(todo) * len(space.decoder))
        for n, i in enumerate(todo, start=1):
            grid[i] = score([(i, j) for j in range(len(space.decoder))], lambda _d: None)
            loaded.scorer.forget_encoders()
            bar.advance(task, len(space.decoder))
            if n % 10 == 0 or n == len(todo):
                with atomic_path(path) as tmp, open(tmp, "wb") as f:
                    np.save(f, grid)
    return grid


def simulate(space: SearchSpace, truth: np.ndarray, trials: int | None, seed: int = 0) -> pd.DataFrame:
    """The default search with the ground truth as its scorer (in-memory study): what the plan scores, without the
    model. Values equal the proxy's, so with `trials=None` this must reproduce the real default plan's scored set."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = SearchConfig(method="nsga2", trials=trials, seed=seed)
    study = open_study(optuna.storages.InMemoryStorage(), "sim", config, {})

    def lookup(pairs, _progress):
        return [float(truth[a, b]) for a, b in pairs]

    search = Search(space, Budget(), config, study, lookup)
    search.run()
    return search.table()


def verdicts(record: dict) -> dict:
    """The record with its verdicts: each budget's against the rules, the targets and whether each is met."""
    budgets = []
    for row in record["budgets"]:
        rules_best = max(v for v in (row["size_first_bleu"], row["speed_first_bleu"]) if v is not None)
        budgets.append(
            {
                **row,
                "at_least_as_good": row["planner_bleu"] >= rules_best,
                "strictly_better": row["planner_bleu"] > rules_best,
            }
        )
    figures = {
        "hypervolume_fraction": record["hypervolume_fraction"],
        "scored_fraction": record["scored"] / record["space_size"],
        "plan_seconds": record["plan_seconds"],
    }
    met = {k: (figures[k] >= v if op == ">=" else figures[k] <= v) for k, (op, v) in TARGETS.items()}
    strictly_better = [r["latency_budget_ms"] for r in budgets if r["strictly_better"]]
    met["at_least_as_good_at_every_budget"] = all(r["at_least_as_good"] for r in budgets)
    met["strictly_better_somewhere"] = bool(strictly_better)
    met["reproducible"] = bool(record["reproducible"])
    return {
        **record,
        "scored_fraction": figures["scored_fraction"],
        "strictly_better_budgets": strictly_better,
        "targets": {k: f"{op} {v}" for k, (op, v) in TARGETS.items()},
        "met": met,
        "budgets": budgets,
    }


def measured_part(result: dict) -> dict:
    """A results file without its verdicts: what the benchmark measured (and its provenance)."""
    record = {k: v for k, v in result.items() if k not in DERIVED}
    record["budgets"] = [{k: v for k, v in r.items() if k not in DERIVED_PER_BUDGET} for r in result["budgets"]]
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", type=Path, default=RUNS / "seed-claims" / "modular")
    parser.add_argument("--work", type=Path, default=RUNS / "bench-planner")
    parser.add_argument("--overwrite", action="store_true")
    add_results_options(parser, NAME)
    args = parser.parse_args()
    results = Results(args.results, NAME)
    if args.from_results:
        record = verdicts(measured_part(read_results(args.from_results)))  # its provenance is the measurement's
        results.write(record)
    else:
        record = verdicts(measure(args, results))
        results.write(record)
        shutil.copyfile(args.work / PLANS[0] / PARETO_PNG, results.path("_pareto.png"))
    print(json.dumps({k: record[k] for k in ["hypervolume_fraction", *DERIVED[:2], "plan_seconds", "met"]}, indent=2))


def measure(args, results: Results) -> dict:
    """Every stage (cached under --work); the measured record, without verdicts. Draws planner.png."""
    if args.overwrite:
        shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True, exist_ok=True)
    if not (args.modules / CONFIG_NAME).is_file():
        sys.exit(f"{args.modules}: no modular checkpoint; see this script's docstring for the command that makes it")
    walls = JsonCache(args.work / WALLS_NAME)

    # 1. profile
    profile_path = profile_paths(args.work)[1]
    if not profile_path.exists():
        command = ["profile", "--modules", args.modules, "--out", profile_path]
        walls.data["profile_s"] = run(command, profile_path.with_suffix(".log"))
        walls.save()
    profile = LatencyProfile.load(profile_path)

    # 2. plans (default settings, twice)
    plans = {}
    for name in PLANS:
        out = args.work / name
        if not Plan.is_complete(out):
            Plan.default_storage(out).unlink(missing_ok=True)
            command = [
                "plan",
                "--modules",
                args.modules,
                "--profile",
                profile_path,
                *data_args("multi30k", split_option="--split"),
                "--out",
                out,
                "--overwrite",
            ]
            walls.data[f"{name}_s"] = run(command, args.work / f"{name}.log")
            walls.save()
        plans[name] = Plan.load(out)
    default = plans[PLANS[0]]

    # 3. ground truth
    settings = PlanSettings(modules=str(args.modules), data=asdict(DATASETS["multi30k"].spec()))
    loaded = load_for_scoring(settings)
    space = SearchSpace.build(loaded.modular, profile, default_workload(profile))
    del loaded
    truth_path = args.work / GROUND_TRUTH_NAME
    if not truth_path.exists() or np.isnan(np.load(truth_path)).any():
        started = time.perf_counter()
        truth = ground_truth(space, settings, truth_path)
        walls.data["ground_truth_s"] = walls.data.get("ground_truth_s", 0) + time.perf_counter() - started
        walls.save()
    truth = np.load(truth_path)

    # 4. hypervolume against the ground truth
    i, j = space.all_pairs()
    all_values = np.column_stack([truth[i, j], space.latency_ms(i, j), space.memory_mb(i, j)])
    low, span = normaliser(all_values)
    truth_front = all_values[pareto_mask(all_values)]
    scored = default.scored
    plan_values = scored[["proxy_loss", "latency_ms", "memory_mb"]].to_numpy(dtype=float)
    hv_truth = hypervolume(truth_front, low, span)
    hv_plan = hypervolume(plan_values[pareto_mask(plan_values)], low, span)
    check = scored.merge(pd.DataFrame({"i": i, "j": j, "truth": truth[i, j]}), on=["i", "j"])
    proxy_matches = float(np.abs(check["proxy_loss"] - check["truth"]).max())

    # 4b. the same search with the ground truth as scorer, at several trial counts (seconds, no model needed)
    curve = []
    for trials in sorted({500, 1000, default_trials(space.size), 2500}):
        sim = simulate(space, truth, trials)
        values = sim[["proxy_loss", "latency_ms", "memory_mb"]].to_numpy(dtype=float)
        curve.append(
            {
                "trials": trials,
                "scored": len(sim),
                "scored_fraction": len(sim) / space.size,
                "hypervolume_fraction": hypervolume(values[pareto_mask(values)], low, span) / hv_truth,
            }
        )
        if trials == default_trials(space.size):
            # The plan also scores the size-first / speed-first points (for its plot); the search's own are the rest.
            rule_set = set(rule_points(load_for_scoring(settings).modular, space)["assembly"])
            extra = set(scored["assembly"]) - set(sim["assembly"])
            simulated_matches_plan = set(sim["assembly"]) <= set(scored["assembly"]) and extra <= rule_set

    # 5. budgets: validate top-3 per budget and the rule points
    loaded = load_for_scoring(settings)
    per_budget = validate_budgets(args.work, space, truth, default, loaded, settings, profile, walls)

    # Reproducibility: the same command and seed again.
    repeat = plans[PLANS[1]]
    reproducible = (
        default.scored["assembly"].tolist() == repeat.scored["assembly"].tolist()
        and np.allclose(default.scored["proxy_loss"], repeat.scored["proxy_loss"], atol=2e-6)
        and default.frontier.loc[default.frontier["on_proxy_frontier"], "assembly"].tolist()
        == repeat.frontier.loc[repeat.frontier["on_proxy_frontier"], "assembly"].tolist()
    )
    search = default.summary["search"]
    results.save_figure(draw(all_values, truth_front, plan_values), dpi=120)
    return {
        "hypervolume_fraction": hv_plan / hv_truth,
        "plan_seconds": walls.data[f"{PLANS[0]}_s"],
        "reproducible": bool(reproducible),
        "space_size": space.size,
        "scored": search["scored"],
        "method": search["method"],
        "search_seconds": search["seconds"],
        "plan_repeat_seconds": walls.data.get(f"{PLANS[1]}_s"),
        "proxy": search["proxy"],
        "proxy_vs_validated_spearman": default.summary["proxy_vs_validated_spearman"],
        "ground_truth_frontier_size": int(len(truth_front)),
        "plan_frontier_size": int(pareto_mask(plan_values).sum()),
        "proxy_max_abs_difference_plan_vs_ground_truth": proxy_matches,
        "hypervolume_by_trials": curve,
        "simulated_default_equals_plan": bool(simulated_matches_plan),
        "budgets": per_budget,
        "chosen_unconstrained": default.chosen,
        "walls_s": {k: round(v, 1) for k, v in walls.data.items()},
        "teacher": str(loaded.modular.config.teacher),
        "modules": str(args.modules),
        **provenance(),
    }


def validate_budgets(work: Path, space, truth, default: Plan, loaded, settings, profile, walls: JsonCache) -> list:
    """At each latency budget: the plan's top 3 proxy points within it and the best in-budget rule points,
    validated (cached); the best of them, and the rules' best."""
    i, j = space.all_pairs()
    teacher_ms = float(space.latency_ms(*space.teacher))
    budgets = [teacher_ms / d for d in BUDGET_DIVISORS]
    rules = rule_points(loaded.modular, space).merge(
        pd.DataFrame({"i": i, "j": j, "proxy_loss": truth[i, j]}), on=["i", "j"]
    )
    front = default.frontier
    front = front[front["on_proxy_frontier"]]
    picks: dict[float, list[str]] = {}
    for b in budgets:
        within = front[front["predicted_latency_ms"] <= b].nsmallest(3, "proxy_loss")["assembly"].tolist()
        best_rules = rules[rules["latency_ms"] <= b].groupby("strategy", sort=False).head(1)["assembly"].tolist()
        picks[b] = within + best_rules
    validated_path = work / VALIDATED_NAME
    wanted = list(dict.fromkeys(a for b in budgets for a in picks[b]))
    done = pd.read_csv(validated_path) if validated_path.exists() else pd.DataFrame(columns=["assembly"])
    missing = [a for a in wanted if a not in set(done["assembly"])]
    if missing:
        started = time.perf_counter()
        pairs = loaded.pairs.take(settings.validate_samples)
        result = validate_assemblies(loaded.modular, loaded.tokenizer, missing, pairs, profile, space.workload)
        done = pd.concat([done, result.rows], ignore_index=True) if len(done) else result.rows
        with atomic_path(validated_path) as tmp:
            done.to_csv(tmp, index=False)
        walls.data["budget_validation_s"] = walls.data.get("budget_validation_s", 0) + time.perf_counter() - started
        walls.save()
    bleu = done.set_index("assembly")["bleu"].to_dict()
    rule_names = rules.groupby("assembly")["strategy"].agg("/".join).to_dict()
    per_budget = []
    for b, d in zip(budgets, BUDGET_DIVISORS, strict=True):
        in_budget = {a: bleu[a] for a in picks[b]}
        rule_best = {
            s: max((bleu[a] for a in picks[b] if s in rule_names.get(a, "")), default=None)
            for s in ("size-first", "speed-first")
        }
        best = max(in_budget, key=lambda a: in_budget[a])
        per_budget.append(
            {
                "latency_budget_ms": round(b, 3),
                "teacher_latency_over": d,
                "planner_choice": best,
                "planner_bleu": in_budget[best],
                "planner_choice_is_rule_point": best in rule_names,
                "size_first_bleu": rule_best["size-first"],
                "speed_first_bleu": rule_best["speed-first"],
                "candidates": {a: round(in_budget[a], 3) for a in picks[b]},
            }
        )
    return per_budget


def draw(all_values, truth_front, plan_values) -> Figure:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    ax.scatter(all_values[:, 1], all_values[:, 0], s=1, color="0.85", label=f"whole space ({len(all_values):,})")
    ax.scatter(
        plan_values[:, 1],
        plan_values[:, 0],
        s=2,
        color="C0",
        alpha=0.4,
        label=f"scored by the plan ({len(plan_values):,})",
    )
    ax.scatter(
        truth_front[:, 1],
        truth_front[:, 0],
        s=10,
        facecolors="none",
        edgecolors="k",
        label=f"ground-truth frontier ({len(truth_front)})",
    )
    mine = plan_values[pareto_mask(plan_values)]
    ax.scatter(mine[:, 1], mine[:, 0], s=6, color="C3", label=f"plan frontier ({len(mine)})")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("proxy loss (nats)")
    ax.set_title("Planner against the whole space (12+12 teacher)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
