"""Running a plan: load what it needs, search, validate, choose. Workers rebuild their scorer from the same settings.

`PlanSettings` is everything a plan depends on; it is stored in the study (`study.user_attrs["settings"]`), so a
worker on another machine needs only the storage URL and the study name (`modformer plan-worker`), and a plan
continued on a storage made with other settings is refused.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from modformer.checkpoints import load_tokenizer
from modformer.data import DataSpec, Seq2SeqData, TokenizedData, data_report, load_split
from modformer.errors import ConfigError, DataError, ModformerError
from modformer.modular.assembly import Assembly
from modformer.modular.model import ModularModel
from modformer.planner import plan as planning
from modformer.planner.proxy import ProxyScorer
from modformer.planner.search import Search, SearchConfig, SearchResult, open_storage, open_study, work
from modformer.planner.space import Budget, SearchSpace, space_stacks
from modformer.planner.targets import engine_rows, plan_targets, validate_engine_points
from modformer.profiling.profile import LatencyProfile, Workload, default_workload
from modformer.profiling.validate import check_profile_model

Progress = Callable[[str, int, int, str], None]  # (phase, done, total, info)


@dataclass
class PlanSettings:
    modules: str
    data: dict  # DataSpec fields
    split: str = "val"
    proxy_samples: int = 32
    proxy_batch_size: int = 16
    validate: int = 8  # proxy-frontier points re-scored with real generation
    validate_samples: int = 200
    metric: str = "bleu"
    max_new_tokens: int = 64
    max_source_len: int = 128  # tokens of a source, for the proxy and the validation; longer ones are cut
    max_target_len: int = 128
    budget: str = ""
    workload: dict = field(default_factory=dict)  # batch, src_len, gen_len; empty: the profile's default
    search: dict = field(default_factory=dict)  # SearchConfig fields
    targets: list[str] | None = None  # serving targets to plan over; None: every target the profile measured
    teacher: str | None = None  # where the modules' teacher is now, if it moved since training (None: as recorded)

    def __post_init__(self) -> None:
        positive = ("proxy_samples", "proxy_batch_size", "validate", "validate_samples", "max_new_tokens")
        for name in (*positive, "max_source_len", "max_target_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}", settings=name)
        if self.metric not in planning.METRICS:
            raise ConfigError(f"unknown metric {self.metric!r}; choose from {', '.join(planning.METRICS)}")

    def study_record(self) -> dict:
        """What must match for a stored study to be continued (validation settings may change between runs)."""
        keep = ("modules", "data", "split", "proxy_samples", "proxy_batch_size", "budget", "workload", "search")
        keep += ("max_source_len", "max_target_len")  # the proxy's token ids
        record = {k: v for k, v in asdict(self).items() if k in keep}
        record["modules"] = str(Path(self.modules).resolve())
        return record


@dataclass
class Loaded:
    modular: ModularModel
    tokenizer: object
    pairs: Seq2SeqData  # the split
    scorer: ProxyScorer
    proxy_data: TokenizedData  # the proxy's pairs, tokenized (what was cut is in its record)


def load_for_scoring(settings: PlanSettings) -> Loaded:
    modular = ModularModel.from_pretrained(settings.modules, settings.teacher)
    tokenizer = load_tokenizer(modular.config.teacher)
    pairs = load_split(DataSpec(**settings.data), settings.split)
    if len(pairs) == 0:
        raise DataError(f"split {settings.split!r} holds no pairs")
    lengths = (settings.max_source_len, settings.max_target_len)
    data = pairs.take(settings.proxy_samples).tokenize(tokenizer, *lengths)
    return Loaded(modular, tokenizer, pairs, ProxyScorer(modular, proxy_batches(data, settings)), data)


def proxy_batches(data: TokenizedData, settings: PlanSettings) -> list[dict]:
    """The proxy's fixed batches: its pairs' token ids (the first `proxy_samples` of the split) sorted by target
    length so batches pad little (the LM head and the loss, most of a score's cost, then run on few padding
    positions)."""
    order = sorted(range(len(data)), key=lambda k: (len(data.target_ids[k]), len(data.source_ids[k])))
    size = settings.proxy_batch_size
    return [data.batch(order[start : start + size]) for start in range(0, len(order), size)]


def pair_scorer(scorer: ProxyScorer, stacks: dict[str, list]):
    """Score (i, j) index pairs of the search space (stack lists as from `space_stacks`)."""
    encoder, decoder = stacks["encoder"], stacks["decoder"]

    def score(pairs, progress):
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            progress(done)

        return scorer.score([Assembly(encoder=encoder[a], decoder=decoder[b]) for a, b in pairs], on_scored=tick)

    return score


def run_plan(
    settings: PlanSettings,
    profile: LatencyProfile,
    *,
    storage: str,
    study_name: str,
    workers: int = 1,
    remote_workers: int = 0,
    on_progress: Progress | None = None,
) -> planning.PlanResult:
    """Search, validate and choose (see `planner.plan` and `planner.search`).

    `workers` scoring processes run here (this one is worker 0); `remote_workers` more are expected to join
    through the storage with `modformer plan-worker` (numbers `workers` … `workers + remote_workers - 1`).
    """
    _check_worker_counts(storage, workers, remote_workers)
    config = SearchConfig(**settings.search)
    budget = Budget.parse(settings.budget)
    torch_target, engine_targets = plan_targets(profile, settings.targets)
    loaded = load_for_scoring(settings)
    check_profile_model(profile, loaded.modular)
    workload = Workload(**settings.workload) if settings.workload else default_workload(profile)
    space = SearchSpace.build(loaded.modular, profile, workload)
    budget = budget.resolved(float(space.latency_ms(*space.teacher)))
    # With engine targets the search may not drop what is too slow in torch: it may be fast enough in an engine.
    search_budget = budget.for_search() if engine_targets else budget
    planning.check_feasible(space, search_budget)
    study = open_study(open_storage(storage), study_name, config, settings.study_record())
    with _local_workers(storage, study_name, workers) as processes:
        search = Search(
            space,
            search_budget,
            config,
            study,
            pair_scorer(loaded.scorer, space_stacks(loaded.modular.config)),
            workers=workers + remote_workers,
            on_progress=_phase(on_progress, "search"),
            check_workers=lambda: _check_workers(processes),
        )
        result, rules = _search_with_rules(search, loaded.modular)
    result.proxy = loaded.scorer.stats.to_json()
    rules["target"] = result.scored["target"] = torch_target
    if search_budget != budget:  # each torch row against the whole budget, as each engine row is
        i, j = result.scored["i"].to_numpy(), result.scored["j"].to_numpy()
        result.scored["violation"] = space.violation(budget, i, j)
    served = engine_rows(result.scored, space, profile, workload, budget, engine_targets)
    result.scored = pd.concat([result.scored, served], ignore_index=True)
    planning.check_rows_feasible(result.scored, budget)
    picks = _validation_picks(result, config.objectives, rules, settings.validate)
    pairs = loaded.pairs.take(settings.validate_samples)
    pairs_ids = pairs.tokenize(loaded.tokenizer, settings.max_source_len, settings.max_target_len)
    validation = planning.validate_assemblies(
        loaded.modular,
        loaded.tokenizer,
        [a for a, t in picks if t == torch_target],
        pairs,
        profile,
        workload,
        max_new_tokens=settings.max_new_tokens,
        target=torch_target,
        data=pairs_ids,
        on_progress=_phase(on_progress, "validate"),
    )
    started = time.perf_counter()
    engine_points = validate_engine_points(
        loaded.modular,
        [(a, t) for a, t in picks if t != torch_target],
        pairs,
        workload,
        threads=profile.meta.get("settings", {}).get("threads") or torch.get_num_threads(),
        max_new_tokens=settings.max_new_tokens,
        statistic=profile.statistic,
        max_source_len=settings.max_source_len,
        on_progress=_phase(on_progress, "validate in engines"),
    )
    validation.add(engine_points, time.perf_counter() - started)
    frontier = planning.frontier_table(result, config.objectives, validation, settings.metric, rules)
    in_torch = validation.rows[validation.rows["target"] == torch_target]
    rules = rules.merge(in_torch[["assembly", settings.metric, "measured_latency_ms"]], on="assembly", how="left")
    summary = planning.summary_record(
        search=result,
        budget=budget,
        objectives=config.objectives,
        metric=settings.metric,
        validation=validation,
        frontier=frontier,
        workload=workload,
        settings=asdict(settings),
        memory_source=space.memory_source,
    )
    summary["model"] = profile.meta.get("model")  # what the plan is for: `export --plan` checks modules against it
    if profile.meta.get("refresh"):  # the predictions were scaled by the machine's speed at the refresh
        summary["profile_refresh"] = {k: profile.meta["refresh"][k] for k in ("date", "factors")}
    proxy_pairs = loaded.pairs.take(settings.proxy_samples)
    summary["data_report"] = data_report({"proxy": (proxy_pairs, loaded.proxy_data), "validation": (pairs, pairs_ids)})
    chosen = planning.choose(frontier, settings.metric)
    return planning.PlanResult(frontier=frontier, rules=rules, chosen=chosen, summary=summary, scored=result.scored)


def _check_worker_counts(storage: str, workers: int, remote_workers: int) -> None:
    """Refuse worker counts that cannot work: none here, fewer than none elsewhere, or remote workers that could
    not reach a local file."""
    if workers < 1 or remote_workers < 0:
        raise ConfigError(
            f"workers must be at least 1 and remote_workers at least 0, got {workers}, {remote_workers}",
            settings=("workers", "remote_workers"),
        )
    if remote_workers and "://" not in storage:
        raise ConfigError(
            "remote_workers needs a database storage URL that the other machines can reach",
            settings=("remote_workers", "storage"),
        )


def _phase(on_progress: Progress | None, name: str) -> Callable[[int, int, str], None] | None:
    """`on_progress` for one phase of the plan: (done, total, info) reported as (name, done, total, info)."""
    if on_progress is None:
        return None
    return lambda done, total, info: on_progress(name, done, total, info)


@contextlib.contextmanager
def _local_workers(storage: str, study_name: str, workers: int) -> Iterator[list[mp.Process]]:
    """Workers 1 … `workers - 1` as local processes for the `with` block; stopped (joined, else ended) after it."""
    processes = _start_workers(storage, study_name, workers)
    try:
        yield processes
    finally:
        for p in processes:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()


def _search_with_rules(search: Search, modular: ModularModel) -> tuple[SearchResult, pd.DataFrame]:
    """Run the search, then score the rule points too; the study's status (`done` or `failed`) tells the workers to
    stop. Returns the result (with every scored assembly) and the rule points with their proxy losses."""
    try:
        result = search.run()
        rules = planning.rule_points(modular, search.space)
        search.include(list(zip(rules["i"], rules["j"], strict=True)), "rules")
        search.study.set_user_attr("status", "done")
    except BaseException:
        search.study.set_user_attr("status", "failed")  # the workers stop
        raise
    result.scored = search.table()
    return result, rules.merge(result.scored[["assembly", "proxy_loss"]], on="assembly", how="left")


def _validation_picks(
    result: SearchResult, objectives: Sequence[str], rules: pd.DataFrame, k: int
) -> list[tuple[str, str]]:
    """What validation re-scores with real generation, as (assembly, target): `k` points spread over the proxy
    frontier (with several targets, `k` from each target's own frontier: the torch points are those a torch-only plan
    validates, and a CTranslate2 point costs seconds), plus the best in-budget point of each rule (in torch)."""
    front = result.frontier(objectives)
    targets = list(dict.fromkeys(front["target"])) if "target" in front else []
    if len(targets) > 1:  # each target's frontier is validated as a plan over that target alone would be
        picks = pd.concat([planning.pick_spread(front[front["target"] == t], k) for t in targets])
    else:
        picks = planning.pick_spread(front, k)
    scored = result.scored.set_index(["assembly", "target"])
    violation = scored.loc[list(zip(rules["assembly"], rules["target"], strict=True)), "violation"].to_numpy()
    best_rules = rules[violation <= 0].groupby("strategy", sort=False).head(1)
    keys = [
        *zip(picks["assembly"], picks["target"], strict=True),
        *zip(best_rules["assembly"], best_rules["target"], strict=True),
    ]
    return list(dict.fromkeys(keys))


# --------------------------------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------------------------------


def _start_workers(storage: str, study_name: str, workers: int) -> list[mp.Process]:
    """Workers 1 … N-1 as local processes (this process is worker 0), each with an equal share of the cores."""
    if workers <= 1:
        return []
    threads = max(1, (os.cpu_count() or 1) // workers)
    torch.set_num_threads(threads)
    context = mp.get_context("spawn")
    processes = []
    for index in range(1, workers):
        p = context.Process(target=worker_main, args=(storage, study_name, index, threads), daemon=True)
        p.start()
        processes.append(p)
    return processes


def _check_workers(processes: list[mp.Process]) -> None:
    """Called while waiting for workers: a worker that is gone will never answer."""
    for k, p in enumerate(processes, start=1):
        if not p.is_alive():
            raise ModformerError(f"worker {k} stopped (exit code {p.exitcode}) before its share was scored")


def worker_main(
    storage: str,
    study_name: str,
    index: int,
    threads: int | None = None,
    wait_s: float = 600,
    teacher: str | Path | None = None,
) -> int:
    """Score the share of worker `index` of the study's plan until it is done (also `modformer plan-worker`).
    `teacher`: where the modules' teacher is on this machine, if not where the plan's settings say."""
    import optuna

    if threads:
        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = open_storage(storage)
    deadline = time.monotonic() + wait_s
    while True:  # a worker may start before the plan has created its study
        try:
            study = optuna.load_study(study_name=study_name, storage=store)
            break
        except KeyError:
            if time.monotonic() > deadline:
                raise ConfigError(f"no study {study_name!r} in {storage} after {wait_s:.0f} s") from None
            time.sleep(0.5)
    record = study.user_attrs.get("settings")
    if record is None:
        raise ConfigError(f"study {study_name!r} is not a modformer plan")
    settings = PlanSettings(**record)
    if teacher is not None:
        settings.teacher = str(Path(teacher).resolve())
    loaded = load_for_scoring(settings)
    return work(study, index, pair_scorer(loaded.scorer, space_stacks(loaded.modular.config)))
