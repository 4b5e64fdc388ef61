"""Searching the space for the proxy frontier: exhaustively where it is small, with optuna's NSGA-II where not.

Both methods run through one optuna study, which is the search state: every scored assembly is a COMPLETE trial
(params `encoder`, `decoder`: indices into `SearchSpace`; values: proxy loss, predicted latency, predicted memory;
user attrs `proxy_loss`, `violation`, `scored`, `stage`). A stopped plan started again on the same storage and study
name picks up what was scored and continues.

* **exhaustive** (when the assemblies within the budget number at most `exhaustive_limit`): every one is scored.
* **nsga2**: (1) the *marginals*: every encoder stack with the teacher's decoder and every decoder stack with the
  teacher's encoder; (2) their additive surrogate, loss(e, d) ≈ loss(e, T) + loss(T, d) − loss(T, T), ranks the whole
  space at no cost: its best `class_seeds` assemblies of every (encoder blocks, decoder blocks) class (cost follows
  the block counts closely, so the frontier is made of each class's best few) and then its own Pareto set are
  scored as the first generations; (3) NSGA-II
  (seeded; the budget as a constraint, so feasible assemblies always rank first) breeds the rest until `trials`
  assemblies have been scored. Assemblies past the budget are told their surrogate values and not scored: the
  constraint already ranks them last.

Several workers: the process that runs the search asks every generation itself (so the sampler sees one sequence of
events, whatever the worker count: the same seed gives the same frontier with 1 or N workers) and spreads the
scoring. Assemblies are grouped by encoder stack (so shared bottoms stay shared) and each group is given to a worker
through the storage (trial user attr `worker`); a worker writes each loss back as a study user attr (`WORKER_LOSS`),
and the search tells the trial once every value is in. Local workers are processes started here; on other machines,
`modformer plan-worker` joins the same study through a database URL. Both sides wait for each other by polling the
storage with a growing wait (`Backoff`).

A worker can die (killed, its machine gone) with assemblies given to it and not answered. Every worker beats a
heartbeat into the study (`WORKER_HEARTBEAT`, from a thread, every `HEARTBEAT_S`); the search takes a worker whose
heartbeat has not changed for `WORKER_GRACE_S` (on its own clock) as dead, scores that worker's unanswered assemblies
itself and gives it nothing more until it beats again (restarted with the same `--index`). The losses do not depend
on who scored them, so the frontier is the one a run without the fault finds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import optuna
import pandas as pd

from modformer.errors import ConfigError, ModformerError
from modformer.planner.frontier import pareto_mask
from modformer.planner.space import Budget, SearchSpace

log = logging.getLogger(__name__)

METHODS = ("auto", "exhaustive", "nsga2")
OBJECTIVES = ("quality", "latency", "memory")
Progress = Callable[[int, int, str], None]  # (done, total, what)


@dataclass
class SearchConfig:
    method: str = "auto"
    trials: int | None = None  # assemblies to score on the nsga2 path; default: see `default_trials`
    population: int = 64
    exhaustive_limit: int = 2000  # score every feasible assembly when there are at most this many
    seed: int = 0
    objectives: tuple[str, ...] = OBJECTIVES
    mutation_prob: float = 0.1
    class_seeds: int = 8  # nsga2: the surrogate's best per (encoder blocks, decoder blocks) class, scored first

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown search method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.trials is not None and self.trials < 1:
            raise ConfigError(f"trials must be at least 1, got {self.trials}", settings="trials")
        if self.population < 2:
            raise ConfigError(f"the population must be at least 2, got {self.population}")
        objectives = tuple(self.objectives)
        unknown = [o for o in objectives if o not in OBJECTIVES]
        if unknown or "quality" not in objectives or len(set(objectives)) != len(objectives) or len(objectives) < 2:
            raise ConfigError(
                "objectives must list quality and at least one of latency, memory (no repeats), "
                f"got {','.join(objectives)}",
                settings="objectives",
            )
        self.objectives = objectives


def default_trials(space_size: int) -> int:
    """Assemblies the nsga2 path scores by default: 2 % of the space, at least 500 and at most 2500.

    On the 12+12 benchmark (85,264 assemblies) that is 1,705: the marginals (583), the class seeds (about 950) and
    a few NSGA-II generations; `benchmarks/results/planner.json` has the hypervolume reached at other counts."""
    return int(min(max(500, 0.02 * space_size), 2500, space_size))


@dataclass
class SearchResult:
    method: str
    scored: pd.DataFrame  # one row per scored assembly (see `SearchSpace` for the cost columns)
    space_size: int
    feasible_size: int
    trials: int  # trials in the study (scored + told without scoring)
    seconds: float
    proxy: dict = field(default_factory=dict)
    study_name: str = ""

    @property
    def scored_count(self) -> int:
        """Distinct assemblies the proxy scored (engine targets' rows repeat assemblies scored once)."""
        if self.scored.empty or "assembly" not in self.scored.columns:
            return len(self.scored)
        return int(self.scored["assembly"].nunique())

    def frontier(self, objectives: Sequence[str], *, feasible_only: bool = True) -> pd.DataFrame:
        """Scored assemblies no other scored assembly beats on every objective (within the budget by default)."""
        rows = self.scored[self.scored["violation"] <= 0] if feasible_only else self.scored
        if "target" in rows and rows["target"].nunique() > 1:
            # One frontier per serving target: the same assembly has the same proxy in every target, so a faster
            # engine's row would hide the others, though only validation can tell what its precision costs.
            parts = [g[pareto_mask(objective_values(g, objectives))] for _, g in rows.groupby("target", sort=False)]
            return pd.concat(parts).sort_values("latency_ms").reset_index(drop=True)
        values = objective_values(rows, objectives)
        return rows[pareto_mask(values)].sort_values("latency_ms").reset_index(drop=True)

    def summary(self) -> dict:
        return {
            "method": self.method,
            "space_size": self.space_size,
            "feasible_size": self.feasible_size,
            "scored": self.scored_count,
            "scored_fraction": self.scored_count / max(self.space_size, 1),
            "trials": self.trials,
            "seconds": round(self.seconds, 2),
            "proxy": self.proxy,
            "study_name": self.study_name,
        }


def objective_values(rows: pd.DataFrame, objectives: Sequence[str]) -> np.ndarray:
    columns = {"quality": "proxy_loss", "latency": "latency_ms", "memory": "memory_mb"}
    return rows[[columns[o] for o in objectives]].to_numpy(dtype=float)


# --------------------------------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------------------------------


def open_storage(url: str):
    """An optuna storage: a database URL (anything with `://`, e.g. sqlite:///plan.db, postgresql://…) or a path,
    which becomes an embedded journal file (nothing to start; several local processes may share it)."""
    if "://" in url:
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as err:  # optuna raises several kinds for a bad URL or an unreachable server
            raise ConfigError(f"storage {url}: {str(err).splitlines()[0]}", settings="storage") from None
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(url)))


def open_study(storage, name: str, config: SearchConfig, settings: dict) -> optuna.Study:
    """Create the study or load it to continue; refuse one made with other settings."""
    sampler = optuna.samplers.NSGAIISampler(
        population_size=config.population,
        seed=config.seed,
        mutation_prob=config.mutation_prob,
    )
    directions = ["minimize"] * 3
    study = optuna.create_study(
        storage=storage, study_name=name, directions=directions, sampler=sampler, load_if_exists=True
    )
    recorded = study.user_attrs.get("settings")
    if recorded is None:
        study.set_user_attr("settings", settings)
        study.set_user_attr("status", "running")
    elif recorded != settings:
        differs = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
        raise ConfigError(
            f"study {name!r} in this storage was made with other settings ({', '.join(differs)} differ); "
            "use another study_name or storage, or overwrite",
            settings=("study_name", "overwrite"),
        )
    return study


# --------------------------------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------------------------------

Scorer = Callable[[list[tuple[int, int]]], list[float]]  # (i, j) pairs -> proxy losses


class Search:
    """One plan's search over `space` (see the module docstring)."""

    def __init__(
        self,
        space: SearchSpace,
        budget: Budget,
        config: SearchConfig,
        study: optuna.Study,
        score: Scorer,
        *,
        workers: int = 1,
        on_progress: Progress | None = None,
        check_workers: Callable[[], None] = lambda: None,
        worker_grace_s: float | None = None,
    ):
        self.space, self.budget, self.config, self.study = space, budget, config, study
        self._score_local = score
        self.workers = workers
        self.on_progress = on_progress
        self.distributions = {
            "encoder": optuna.distributions.CategoricalDistribution(list(range(len(space.encoder)))),
            "decoder": optuna.distributions.CategoricalDistribution(list(range(len(space.decoder)))),
        }
        self.values: dict[tuple[int, int], float] = {}  # proxy losses scored so far (also from an earlier run)
        self.surrogate: np.ndarray | None = None
        self.stage = ""
        self._started = time.perf_counter()
        self._worker_check = check_workers  # raises when a worker is gone (called while waiting for them)
        self._watch = WorkerWatch(WORKER_GRACE_S if worker_grace_s is None else worker_grace_s)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if t.user_attrs.get("scored"):
                self.values[(t.params["encoder"], t.params["decoder"])] = float(t.user_attrs["proxy_loss"])

    # --- entry point ----------------------------------------------------------------------------------------------
    def run(self) -> SearchResult:
        i, j = self.space.all_pairs()
        feasible = self.space.violation(self.budget, i, j) <= 0
        n_feasible = int(feasible.sum())
        method = self.config.method
        if method == "auto":
            method = "exhaustive" if n_feasible <= self.config.exhaustive_limit else "nsga2"
        if method == "exhaustive":
            pairs = list(zip(i[feasible].tolist(), j[feasible].tolist(), strict=True))
            self._score_pairs(pairs, "exhaustive", total=len(pairs))
        else:
            self._nsga2()
        return SearchResult(
            method=method,
            scored=self.table(),
            space_size=self.space.size,
            feasible_size=n_feasible,
            trials=len(self.study.trials),
            seconds=time.perf_counter() - self._started,
            study_name=self.study.study_name,
        )

    def include(self, pairs: list[tuple[int, int]], stage: str) -> None:
        """Score these assemblies too (through the study, so they are stored and counted), e.g. the rule points."""
        self._score_pairs([(int(a), int(b)) for a, b in pairs], stage, total=len(self.values) + len(pairs))

    def table(self) -> pd.DataFrame:
        """Every scored assembly with its costs, sorted by predicted latency."""
        if not self.values:
            return pd.DataFrame(
                columns=[
                    "i",
                    "j",
                    "assembly",
                    "proxy_loss",
                    "latency_ms",
                    "memory_mb",
                    "params",
                    "size_ratio",
                    "speed_ratio",
                    "violation",
                ]
            )
        keys = sorted(self.values)
        i = np.array([k[0] for k in keys])
        j = np.array([k[1] for k in keys])
        s = self.space
        table = pd.DataFrame(
            {
                "i": i,
                "j": j,
                "assembly": [str(s.assembly(a, b)) for a, b in keys],
                "proxy_loss": [self.values[k] for k in keys],
                "latency_ms": s.latency_ms(i, j),
                "memory_mb": s.memory_mb(i, j),
                "params": s.params(i, j),
                "size_ratio": s.size_ratio(i, j),
                "speed_ratio": s.speed_ratio(i, j),
                "violation": s.violation(self.budget, i, j),
            }
        )
        return table.sort_values(["latency_ms", "proxy_loss"]).reset_index(drop=True)

    # --- nsga2 ----------------------------------------------------------------------------------------------------
    def _nsga2(self) -> None:
        s = self.space
        target = self.config.trials or default_trials(s.size)
        ti, tj = s.teacher
        marginals = [(a, tj) for a in range(len(s.encoder))] + [(ti, b) for b in range(len(s.decoder)) if b != tj]
        self._score_pairs(marginals, "marginals", total=target)
        enc = np.array([self.values[(a, tj)] for a in range(len(s.encoder))])
        dec = np.array([self.values[(ti, b)] for b in range(len(s.decoder))])
        i, j = s.all_pairs()
        self.surrogate = (enc[i] + dec[j] - self.values[(ti, tj)]).reshape(len(s.encoder), len(s.decoder))
        ok = s.violation(self.budget, i, j) <= 0
        # Latency and memory follow the block counts closely, so the frontier holds the best few assemblies of
        # each (encoder blocks, decoder blocks) class: score the surrogate's best few of every class within budget.
        if self.config.class_seeds:
            n_enc = np.array([len(e) for e in s.encoder])[i]
            n_dec = np.array([len(d) for d in s.decoder])[j]
            ranked = pd.DataFrame(
                {"k": np.flatnonzero(ok), "ne": n_enc[ok], "nd": n_dec[ok], "sur": self.surrogate[i[ok], j[ok]]}
            ).sort_values(["sur", "k"], kind="stable")
            best = ranked.groupby(["ne", "nd"], sort=False).head(self.config.class_seeds)
            room = max(target - len(self.values), 0)  # best surrogate first, within the trials asked for
            self._score_pairs([(int(i[k]), int(j[k])) for k in best["k"][:room]], "class seeds", total=target)
        # Then the surrogate's own frontier (within the budget), best surrogate quality first.
        objectives = self._objective_columns(self.surrogate[i, j], s.latency_ms(i, j), s.memory_mb(i, j))
        seeds = np.flatnonzero(ok)[pareto_mask(objectives[ok])]
        seeds = seeds[np.argsort(self.surrogate[i[seeds], j[seeds]], kind="stable")]
        room = max(target - len(self.values), 0)
        seed_pairs = [(int(i[k]), int(j[k])) for k in seeds[: room // 2]]
        self._score_pairs(seed_pairs, "surrogate frontier", total=target)
        attempts = 0
        while len(self.values) < target and attempts < 50 * target:
            before = len(self.values)
            trials = [self.study.ask(self.distributions) for _ in range(self.config.population)]
            attempts += len(trials)
            self._tell_generation(trials, "nsga2", total=target)
            if len(self.values) == before and attempts > 10 * target:
                break  # the sampler only proposes what is already scored: the search has converged

    def _objective_columns(self, quality, latency, memory) -> np.ndarray:
        named = {"quality": quality, "latency": latency, "memory": memory}
        return np.column_stack([named[o] for o in self.config.objectives])

    # --- scoring through the study --------------------------------------------------------------------------------
    def _score_pairs(self, pairs: list[tuple[int, int]], stage: str, *, total: int) -> None:
        """Enqueue and score fixed pairs (those not scored yet), one population-sized generation at a time."""
        todo = [p for p in dict.fromkeys(pairs) if p not in self.values]
        step = max(self.config.population, 256)
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            for a, b in chunk:
                self.study.enqueue_trial({"encoder": a, "decoder": b}, skip_if_exists=False)
            trials = [self.study.ask(self.distributions) for _ in chunk]
            self._tell_generation(trials, stage, total=total)

    def _tell_generation(self, trials: list[optuna.Trial], stage: str, *, total: int) -> None:
        s = self.space
        pairs = [(int(t.params["encoder"]), int(t.params["decoder"])) for t in trials]
        violation = [float(s.violation(self.budget, a, b)) for a, b in pairs]
        new = sorted(
            {p for p, v in zip(pairs, violation, strict=True) if p not in self.values and (v <= 0 or stage != "nsga2")}
        )
        if new:
            losses = self._score(new, trials, pairs, stage, total)
            self.values.update(zip(new, losses, strict=True))
        for t, p, v in zip(trials, pairs, violation, strict=True):
            scored = p in self.values
            loss = self.values[p] if scored else float(self.surrogate[p]) if self.surrogate is not None else np.nan
            t.set_user_attr("violation", v)
            t.set_constraint("budget", v)  # NSGA-II ranks feasible trials (<= 0) first
            t.set_user_attr("scored", scored)
            t.set_user_attr("stage", stage)
            if scored:
                t.set_user_attr("proxy_loss", loss)
            self.study.tell(t, [loss, float(s.latency_ms(*p)), float(s.memory_mb(*p))])

    def _score(self, new, trials, pairs, stage, total) -> list[float]:
        def progress(done: int) -> None:
            if self.on_progress:
                self.on_progress(min(len(self.values) + done, total), total, stage)

        if self.workers <= 1:
            return self._score_local(new, progress)
        return self._score_with_workers(new, trials, pairs, progress)

    def _score_with_workers(self, new, trials, pairs, progress) -> list[float]:
        """Give each encoder group to a live worker through the storage; score group 0's share here; wait for the
        rest, scoring here what a worker that died was given."""
        self._watch.update(self.study.user_attrs)
        live = [0, *(k for k in range(1, self.workers) if not self._watch.dead(k))]
        groups = sorted({a for a, _ in new})
        owner = {a: live[k % len(live)] for k, a in enumerate(groups)}
        first_trial = {}
        for t, p in zip(trials, pairs, strict=True):
            first_trial.setdefault(p, t)
        for p in new:
            first_trial[p].set_user_attr("worker", owner[p[0]])
        mine = [p for p in new if owner[p[0]] == 0]
        results = dict(zip(mine, self._score_local(mine, progress), strict=True)) if mine else {}
        waiting = {first_trial[p].number: p for p in new if owner[p[0]] != 0}
        wait = Backoff()
        while waiting:
            self._worker_check()
            attrs = self.study.user_attrs
            answers = _answers(attrs, waiting)
            for number, loss in answers.items():
                results[waiting.pop(number)] = loss
            self._watch.update(attrs)
            orphans = {n: p for n, p in waiting.items() if self._watch.dead(owner[p[0]])}
            if orphans:
                self._take_over(orphans, owner, first_trial, results, progress)
                for number in orphans:
                    del waiting[number]
            progress(len(results))
            if answers or orphans:
                wait.reset()
            elif waiting:
                wait.sleep()
        return [results[p] for p in new]

    def _take_over(self, orphans: dict[int, tuple[int, int]], owner, first_trial, results, progress) -> None:
        """Score here the assemblies (trial number -> pair) given to workers that died; a worker restarted later
        finds them no longer its own."""
        dead = sorted({owner[p[0]] for p in orphans.values()})
        log.warning(
            "worker %s: no heartbeat for %.0f s; scoring its %d unanswered assemblies here",
            ", ".join(map(str, dead)),
            self._watch.grace_s,
            len(orphans),
        )
        pairs = list(orphans.values())
        for p in pairs:
            first_trial[p].set_user_attr("worker", 0)
        results.update(zip(pairs, self._score_local(pairs, progress), strict=True))


# --------------------------------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------------------------------


# A worker's answer is a study user attr, one per trial it scored: optuna's public API can set user attrs only on the
# study or on a `Trial` the process asked for itself (a worker did not: it finds its trials with `get_trials`, whose
# `FrozenTrial`s are read-only; writing to them needs the storage's internal trial id).
WORKER_LOSS = "worker_loss:{number}"


def worker_losses(study: optuna.Study, numbers: Iterable[int]) -> dict[int, float]:
    """The proxy losses workers have written so far for the trials numbered `numbers`."""
    return _answers(study.user_attrs, numbers)


def _answers(attrs: dict, numbers: Iterable[int]) -> dict[int, float]:
    keys = {number: WORKER_LOSS.format(number=number) for number in numbers}
    return {number: float(attrs[key]) for number, key in keys.items() if key in attrs}


# A worker's heartbeat: a study user attr per worker, the worker's wall clock at its last beat (read only for change,
# never against another machine's clock).
WORKER_HEARTBEAT = "worker_heartbeat:{index}"
HEARTBEAT_S = 2.0  # a worker beats this often
WORKER_GRACE_S = 30.0  # a worker whose heartbeat has not changed for this long is taken as dead


class WorkerWatch:
    """Which workers are alive, judged by their heartbeats as this process sees them: a worker whose heartbeat has
    not changed for `grace_s` seconds of this process's clock is dead; one that beats again is alive again. A
    worker never seen beating is not judged (it may not have started yet)."""

    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self._seen: dict[int, tuple[object, float]] = {}  # index -> (heartbeat, when this process saw it change)

    def update(self, attrs: dict) -> None:
        now = time.monotonic()
        prefix = WORKER_HEARTBEAT.format(index="")
        for key, beat in attrs.items():
            if key.startswith(prefix):
                index = int(key[len(prefix) :])
                if index not in self._seen or self._seen[index][0] != beat:
                    self._seen[index] = (beat, now)

    def dead(self, index: int) -> bool:
        seen = self._seen.get(index)
        return seen is not None and time.monotonic() - seen[1] > self.grace_s


class Heartbeat:
    """A worker's heartbeat for a `with` block: a daemon thread writes `WORKER_HEARTBEAT` every `every_s` seconds,
    also while the worker scores (torch releases the GIL)."""

    def __init__(self, study: optuna.Study, index: int, every_s: float = HEARTBEAT_S):
        self.study, self.key, self.every_s = study, WORKER_HEARTBEAT.format(index=index), every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {index}", daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.study.set_user_attr(self.key, time.time())
            except Exception as err:  # a storage hiccup: the next beat may get through; a missed one costs nothing
                log.debug("heartbeat not written: %s", err)
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class Backoff:
    """Waits between reads of a study that another process is writing: `first` seconds, growing by `factor` up to
    `most` while nothing changes; `reset` once something has.

    Optuna's storages offer no way to block until a study changes (no notification, no blocking read), so waiting on
    another process means polling; the growing wait keeps an idle worker from loading a shared database."""

    def __init__(self, first: float = 0.05, most: float = 1.0, factor: float = 2.0):
        self.first, self.most, self.factor = first, most, factor
        self.seconds = first

    def sleep(self) -> None:
        time.sleep(self.seconds)
        self.seconds = min(self.seconds * self.factor, self.most)

    def reset(self) -> None:
        self.seconds = self.first


def work(study: optuna.Study, index: int, score: Scorer, *, idle_timeout_s: float = 3600) -> int:
    """Score the trials given to worker `index` until the study says it is done; returns how many were scored."""
    with Heartbeat(study, index):
        return _work(study, index, score, idle_timeout_s)


def _work(study: optuna.Study, index: int, score: Scorer, idle_timeout_s: float) -> int:
    done, idle_since, wait = 0, time.monotonic(), Backoff()
    while study.user_attrs.get("status") not in ("done", "failed"):
        mine = _my_trials(study, index)
        if not mine:
            if time.monotonic() - idle_since > idle_timeout_s:
                raise ModformerError(f"worker {index}: no work for {idle_timeout_s:.0f} s; is the plan still running?")
            wait.sleep()
            continue
        pairs = [(int(t.params["encoder"]), int(t.params["decoder"])) for t in mine]
        for t, loss in zip(mine, score(pairs, lambda _n: None), strict=True):
            study.set_user_attr(WORKER_LOSS.format(number=t.number), loss)
        done += len(mine)
        idle_since = time.monotonic()
        wait.reset()
    return done


def _my_trials(study: optuna.Study, index: int) -> list[optuna.trial.FrozenTrial]:
    """The running trials given to worker `index` that it has not answered yet."""
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    given = [t for t in running if t.user_attrs.get("worker") == index]
    answered = worker_losses(study, [t.number for t in given])
    return [t for t in given if t.number not in answered]


def config_record(config: SearchConfig) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
