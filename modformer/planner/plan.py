"""A plan, end to end: search the proxy frontier, validate it with real generation and timing, pick the assembly
to ship. Everything here returns tables and dicts; drawing is in `report`, writing files in the CLI.

Validation re-scores, on the held-out split: `validate` points of the proxy frontier within the budget (spread
evenly over predicted latency, the best proxy point always among them), plus the best in-budget point of each fixed
rule (size-first, speed-first) for comparison. Each is assembled, generates greedily for the first
`validate_samples` pairs (BLEU, chrF and ROUGE with sacrebleu / rouge-score), and is timed end to end with the
profile's call (`generate_fixed`, the profile's workload), all models round-robin so drift hits them alike. The
teacher is timed in the same rounds, so `measured_speed_ratio` (teacher / assembly) holds even when the machine
runs slower or faster than when it was profiled. The validated frontier is the non-dominated set of those points on (validated metric, measured latency, predicted
memory), restricted to the objectives asked for. `chosen` is the validated point with the best metric among those
whose predicted latency and memory meet the budget.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from modformer.data import TokenizedData
from modformer.errors import ConfigError, InfeasibleBudgetError
from modformer.evaluation import generate, text_scores
from modformer.modular.assembly import Assembly
from modformer.modular.model import ModularModel
from modformer.modular.strategies import STRATEGIES, strategy_sequence
from modformer.planner.frontier import pareto_mask
from modformer.planner.search import SearchResult
from modformer.planner.space import Budget, SearchSpace
from modformer.profiling.measure import torch_threads
from modformer.profiling.profile import LatencyProfile
from modformer.profiling.timer import Timer
from modformer.profiling.validate import time_models

METRICS = ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match")
# The frontier table's first columns (then the metric, then the rest); `chosen.json` records them too, but for the
# measured speed ratio.
LEADING_COLUMNS = (
    "assembly",
    "target",
    "source",
    "rule",
    "size_ratio",
    "speed_ratio",
    "measured_speed_ratio",
    "predicted_latency_ms",
    "measured_latency_ms",
    "memory_mb",
    "proxy_loss",
)
Progress = Callable[[int, int, str], None]


def check_feasible(space: SearchSpace, budget: Budget, nearest: int = 3) -> int:
    """The number of assemblies within `budget`; InfeasibleBudgetError naming the nearest ones when there is none."""
    i, j = space.all_pairs()
    violation = space.violation(budget, i, j)
    feasible = int((violation <= 0).sum())
    if feasible:
        return feasible
    order = np.lexsort((space.latency_ms(i, j), violation))[:nearest]
    named = "; ".join(
        f"{space.assembly(i[k], j[k])} ({space.latency_ms(i[k], j[k]):.1f} ms, {space.memory_mb(i[k], j[k]):.1f} MB, "
        f"{space.params(i[k], j[k]) / 1e6:.2f}M parameters)"
        for k in order
    )
    raise InfeasibleBudgetError(f"no assembly meets the budget {budget}; nearest: {named}")


def check_rows_feasible(rows: pd.DataFrame, budget: Budget, nearest: int = 3) -> int:
    """The number of scored (assembly, target) rows within `budget` (their `violation`); InfeasibleBudgetError naming
    the nearest ones, with their target, when there is none."""
    feasible = int((rows["violation"] <= 0).sum())
    if feasible:
        return feasible
    near = rows.sort_values(["violation", "latency_ms"]).head(nearest)
    named = "; ".join(
        f"{r.assembly} in {r.target} ({r.latency_ms:.1f} ms, {r.memory_mb:.1f} MB, {r.params / 1e6:.2f}M parameters)"
        for r in near.itertuples()
    )
    raise InfeasibleBudgetError(f"no assembly meets the budget {budget} in any serving target; nearest: {named}")


def rule_points(modular: ModularModel, space: SearchSpace) -> pd.DataFrame:
    """The size-first and speed-first assemblies with their space indices and costs (teacher excluded)."""
    rows = []
    cost = modular.cost_model()
    for name in STRATEGIES:
        for a in strategy_sequence(name, cost)[1:]:
            i, j = space.index(a)
            rows.append({"strategy": name, "assembly": str(a), "i": i, "j": j})
    table = pd.DataFrame(rows)
    i, j = table["i"].to_numpy(), table["j"].to_numpy()
    return table.assign(
        latency_ms=space.latency_ms(i, j),
        memory_mb=space.memory_mb(i, j),
        size_ratio=space.size_ratio(i, j),
        speed_ratio=space.speed_ratio(i, j),
    )


def pick_spread(frontier: pd.DataFrame, k: int) -> pd.DataFrame:
    """`k` frontier rows spread evenly over predicted latency; the best proxy row always included."""
    if len(frontier) <= k:
        return frontier
    by_latency = frontier.sort_values("latency_ms").reset_index(drop=True)
    picks = set(np.round(np.linspace(0, len(by_latency) - 1, k)).astype(int).tolist())
    best = int(by_latency["proxy_loss"].idxmin())
    if best not in picks:
        picks.discard(min(picks, key=lambda p: abs(p - best)))
        picks.add(best)
    return by_latency.loc[sorted(picks)].reset_index(drop=True)


@dataclass
class Validation:
    rows: pd.DataFrame  # assembly, target, metric columns, measured_latency_ms, measured_speed_ratio
    seconds: float
    teacher_ms: float = float("nan")  # the teacher under torch, timed in the same rounds as the torch points
    teacher_scores: dict = field(default_factory=dict)  # the teacher's metrics under torch, on the same pairs

    def add(self, rows: list[dict], seconds: float) -> None:
        """Points validated elsewhere (in another engine): their speed-up is over the teacher timed here."""
        if not rows:
            return
        extra = pd.DataFrame(rows)
        extra["measured_speed_ratio"] = self.teacher_ms / extra["measured_latency_ms"]
        self.rows = pd.concat([self.rows, extra], ignore_index=True)
        self.seconds += seconds


@torch.no_grad()
def validate_assemblies(
    modular: ModularModel,
    tokenizer,
    assemblies: list[str],
    pairs,
    profile: LatencyProfile,
    workload,
    *,
    batch_size: int = 64,
    max_new_tokens: int = 64,
    warmup: int = 1,
    repeats: int = 5,
    target: str = "torch:fp32",
    data: TokenizedData | None = None,
    on_progress: Progress | None = None,
) -> Validation:
    """Generation quality on `pairs` and measured end-to-end latency of each assembly (see the module docstring).
    `data`: the pairs' token ids, where the caller has them (else tokenized here, at the default lengths)."""
    start = time.perf_counter()
    batches = (data or pairs.tokenize(tokenizer)).batches(batch_size, shuffle=False)
    models = {}
    rows = []
    total = len(assemblies) + 1
    for n, text in enumerate(assemblies):
        if on_progress:
            on_progress(n, total, f"generating with {text}")
        model = models[text] = modular.assemble(Assembly.parse(text))
        hypotheses = generate(model, tokenizer, batches, max_new_tokens=max_new_tokens)
        rows.append({"assembly": text, **text_scores(hypotheses, pairs.reference_lists())})
    # The teacher is scored on the same pairs (what every point's quality is read against) and timed in the same
    # rounds (the measured speed-up over it is immune to the machine's drift).
    c = modular.config
    teacher_text = str(Assembly.teacher(c.encoder_layers, c.decoder_layers))
    teacher = models.get(teacher_text) or modular.assemble(Assembly.teacher(c.encoder_layers, c.decoder_layers))
    scored = {row["assembly"]: row for row in rows}
    if teacher_text in scored:
        teacher_scores = {m: scored[teacher_text][m] for m in METRICS}
    else:
        if on_progress:
            on_progress(len(assemblies), total, "generating with the teacher")
        teacher_scores = text_scores(
            generate(teacher, tokenizer, batches, max_new_tokens=max_new_tokens), pairs.reference_lists()
        )
    if on_progress:
        on_progress(len(assemblies), total, "timing end to end")
    settings = profile.meta.get("settings", {})
    vocab = int(modular.teacher.config.vocab_size)
    with torch_threads(settings.get("threads")):  # time as the profile was measured
        timings = time_models(
            [*models.values(), teacher], workload, Timer(settings.get("device", "cpu")), vocab, 0, warmup, repeats
        )
        measured = [t.value(profile.statistic) for t in timings]
    for row, ms in zip(rows, measured, strict=False):
        row["measured_latency_ms"] = ms
        row["measured_speed_ratio"] = measured[-1] / ms
    if on_progress:
        on_progress(total, total, "validated")
    columns = ["assembly", *METRICS, "measured_latency_ms", "measured_speed_ratio"]
    table = pd.DataFrame(rows, columns=columns).assign(target=target)
    teacher_scores = {m: float(teacher_scores[m]) for m in METRICS}
    return Validation(table, time.perf_counter() - start, teacher_ms=measured[-1], teacher_scores=teacher_scores)


@dataclass
class PlanResult:
    """Everything a plan produced: the tables that `planner.artifact.Plan` saves as the plan folder."""

    frontier: pd.DataFrame  # validated points and the rest of the proxy frontier (see `frontier_table`)
    rules: pd.DataFrame  # size-first / speed-first points with proxy (and, where validated, real) scores
    chosen: dict
    summary: dict
    scored: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)  # every scored assembly


def frontier_table(
    search: SearchResult, objectives, validation: Validation, metric: str, rules: pd.DataFrame
) -> pd.DataFrame:
    """The proxy frontier (within the budget) joined with validation, with both frontier flags."""
    key = ["assembly", "target"]
    proxy_front = search.frontier(objectives)
    table = proxy_front.assign(source="search", on_proxy_frontier=True)
    on_front = set(map(tuple, table[key].to_numpy()))
    extra = [k for k in dict.fromkeys(map(tuple, validation.rows[key].to_numpy())) if k not in on_front]
    if extra:
        add = search.scored.set_index(key).loc[extra].reset_index()
        table = pd.concat([table, add.assign(source="rule", on_proxy_frontier=False)], ignore_index=True)
    # Which fixed rule (if any) gives each assembly, e.g. "size-first/speed-first".
    names = rules.groupby("assembly", sort=False)["strategy"].agg("/".join)
    table["rule"] = names.reindex(table["assembly"]).fillna("").to_numpy()
    if "target" in rules and len(rules):  # the rules name assemblies served in the torch target only
        table.loc[table["target"] != rules["target"].iloc[0], "rule"] = ""
    table = table.merge(validation.rows, on=key, how="left")
    table["validated"] = table[metric].notna()
    table["within_budget"] = table["violation"] <= 0
    values = {"quality": -table[metric], "latency": table["measured_latency_ms"], "memory": table["memory_mb"]}
    v = table[table["validated"]]
    front = pareto_mask(np.column_stack([values[o][v.index] for o in objectives])) if len(v) else []
    table["on_validated_frontier"] = False
    table.loc[v.index[np.asarray(front, dtype=bool)], "on_validated_frontier"] = True
    table = table.rename(columns={"latency_ms": "predicted_latency_ms"})
    first = [*LEADING_COLUMNS, metric]
    rest = [c for c in table.columns if c not in first and c not in ("i", "j")]
    return table[first + rest].sort_values("predicted_latency_ms").reset_index(drop=True)


def choose(frontier: pd.DataFrame, metric: str) -> dict:
    """The validated, in-budget assembly with the best metric (ties: lower predicted latency)."""
    ok = frontier[frontier["validated"] & frontier["within_budget"]]
    if ok.empty:
        raise ConfigError("no validated assembly lies within the budget (increase validate)", settings="validate")
    best = ok.sort_values([metric, "predicted_latency_ms"], ascending=[False, True]).iloc[0]
    keys = [*(c for c in LEADING_COLUMNS if c != "measured_speed_ratio"), metric]
    chosen = {k: (best[k].item() if hasattr(best[k], "item") else best[k]) for k in keys}
    chosen["assembly_json"] = Assembly.parse(chosen["assembly"]).to_json()
    return chosen


def spearman(a: pd.Series, b: pd.Series) -> float | None:
    """Spearman rank correlation (pandas ranks, Pearson of ranks); None with fewer than 3 points."""
    both = pd.DataFrame({"a": a, "b": b}).dropna()
    if len(both) < 3:
        return None
    rho = float(both["a"].rank().corr(both["b"].rank()))
    return None if np.isnan(rho) else rho  # a constant column has no rank order


def summary_record(
    *,
    search: SearchResult,
    budget: Budget,
    objectives,
    metric: str,
    validation: Validation,
    frontier: pd.DataFrame,
    workload,
    settings: dict,
    memory_source: str = "measured",
) -> dict:
    v = frontier[frontier["validated"]]
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "budget": budget.to_json(),
        "objectives": list(objectives),
        "metric": metric,
        "workload": {"batch": workload.batch, "src_len": workload.src_len, "gen_len": workload.gen_len},
        "search": search.summary(),
        "validated": int(len(v)),
        "validation_seconds": round(validation.seconds, 2),
        "memory_source": memory_source,
        "threads": torch.get_num_threads(),  # of the proxy search and validation (timing uses the profile's)  # measured peaks, or "arithmetic": parameter and cache bytes (no peaks profiled)
        "teacher_measured_latency_ms": None if np.isnan(validation.teacher_ms) else float(validation.teacher_ms),
        # the teacher under torch on the same held-out pairs: what each point's quality is read against
        "teacher": {**validation.teacher_scores, "target": "torch:fp32"} if validation.teacher_scores else None,
        # The proxy is a loss (lower is better), the metric a score: a good proxy correlates negatively.
        "proxy_vs_validated_spearman": spearman(-v["proxy_loss"], v[metric]),
        "settings": settings,
    }
