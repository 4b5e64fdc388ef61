"""The end-to-end demo: the product's whole job on bundled data, each stage cached so that a rerun resumes.

    teacher -> modules -> profile (this machine) -> plan (a budget, every serving target here) -> export the chosen
    point -> score it and the teacher on the test split -> one screen of answer

The default run starts from the teacher bundled with modformer (`resources/teacher-multi30k-6x6`, made by
`modformer teacher` on the whole Multi30k training set; its README records the command and scores) and the whole
Multi30k set bundled beside it; `--fast` trains a tiny teacher on the small sample instead, a smoke run of every
stage. Every stage writes its output whole into the working folder and is skipped when that output is there, so an
interrupted demo continues where it stopped; `DEMO_RECORD` marks a folder as a demo's own (only such a folder is
cleared by `--overwrite`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch

from modformer.checkpoints import load_seq2seq, load_tokenizer
from modformer.data import DataSpec, default_data_spec, full_data_spec, load_split
from modformer.errors import ConfigError
from modformer.evaluation import score_model
from modformer.io import atomic_dir, atomic_path, read_json, recover_dir, write_json
from modformer.modular.evaluate import evaluate
from modformer.modular.model import CONFIG_NAME, ModularConfig, ModularModel
from modformer.modular.strategies import STRATEGIES, strategy_sequence
from modformer.modular.trainer import ReplacingTrainer, TrainConfig
from modformer.planner.artifact import PARETO_PNG, REPORT_HTML, Plan, plan_storage
from modformer.planner.choice import export_chosen
from modformer.planner.run import PlanSettings, run_plan
from modformer.planner.search import SearchConfig, config_record
from modformer.profiling.measure import ProfileConfig
from modformer.profiling.profile import LatencyProfile, default_workload
from modformer.profiling.run import run_profile
from modformer.schemas import FORMAT_VERSION, DemoRecord, validate
from modformer.serving.targets import profile_targets
from modformer.teacher import STATE_NAME as TEACHER_STATE
from modformer.teacher import TeacherConfig, train_teacher
from modformer.teacher import completed_steps as teacher_completed_steps

Report = Callable[[str, int, int, str], None]  # (stage, done, total, info)

BUNDLED_TEACHER = Path(__file__).resolve().parent / "resources" / "teacher-multi30k-6x6"
DEMO_RECORD = "demo.json"  # the demo's settings and stage times; its presence marks the folder as a demo's
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
FIGURE_PNG = "quality_vs_size.png"
STAGES = ("teacher", "modules", "profile", "plan", "export", "evaluate", "strategies")


@dataclass
class DemoConfig:
    teacher: str = "bundled"  # "bundled": the shipped checkpoint; otherwise a preset trained here (tiny, small, base)
    teacher_steps: int = 300  # only when the teacher is trained here
    data: str = "full"  # "full": the whole bundled Multi30k; "sample": the small bundled slice
    test_split: str = "test_2016_flickr"
    module_steps: int = 600  # the modules train with `modformer train`'s default recipe (TrainConfig)
    batch_size: int = 32
    threads: int = 1  # torch and engine threads for every stage (1: steady next to other jobs on a small machine)
    budget: str = "speedup>=2"  # the plan's budget (see `planner.space.Budget`)
    profile: dict = field(
        default_factory=lambda: {"batch_sizes": (1,), "src_lens": (32,), "gen_lens": (32,), "repeats": 10}
    )
    validate: int = 8  # plan: proxy-frontier points validated with generation and timing
    validate_samples: int = 200  # plan: held-out (val) pairs generated per validated point
    eval_pairs: int | None = None  # test pairs the export and the teacher are scored on (None: all)
    strategy_pairs: int = 200  # test pairs each size-first / speed-first assembly is scored on (the figure)
    max_new_tokens: int = 64

    @classmethod
    def fast(cls) -> DemoConfig:
        """A smoke run of every stage in under 3 minutes: a tiny teacher trained here on the sample, few steps, a
        small profile and plan; the scores are not meaningful."""
        return cls(
            teacher="tiny",
            teacher_steps=300,
            data="sample",
            test_split="test",
            module_steps=120,
            profile={"batch_sizes": (1,), "src_lens": (16,), "gen_lens": (16,), "repeats": 3, "memory": False},
            validate=4,
            validate_samples=32,
            eval_pairs=100,
            strategy_pairs=50,
            max_new_tokens=32,
        )

    def data_spec(self) -> DataSpec:
        if self.data not in ("full", "sample"):
            raise ConfigError(f"demo data must be full or sample, got {self.data!r}")
        return full_data_spec() if self.data == "full" else default_data_spec()


@dataclass
class DemoResult:
    table: pd.DataFrame  # one row per (strategy, assembly): the quality-vs-size figure's points
    config: dict
    deployment: dict  # what to deploy and its measured figures against the teacher (see `_deployment`)
    paths: dict[str, str]  # report, figure, plan, export, ... (what the demo wrote)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write the table (JSON and CSV) and the quality-vs-size figure into `out_dir`; returns their paths."""
        from modformer.plots import plot_quality_vs_size

        out_dir = Path(out_dir)
        paths = {"json": out_dir / RESULTS_JSON, "csv": out_dir / RESULTS_CSV, "figure": out_dir / FIGURE_PNG}
        record = {
            "config": self.config,
            "deployment": self.deployment,
            "paths": self.paths,
            "rows": self.table.to_dict(orient="records"),
        }
        write_json(paths["json"], record)
        with atomic_path(paths["csv"]) as tmp:
            self.table.to_csv(tmp, index=False)
        with atomic_path(paths["figure"]) as tmp:
            plot_quality_vs_size(self.table).savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        return paths


def prepare_folder(out_dir: str | Path, config: DemoConfig, *, overwrite: bool) -> None:
    """Make `out_dir` the demo's working folder: an existing demo folder is resumed (or, with `overwrite`, cleared);
    a folder that holds anything else is refused, so that the demo never deletes what it did not write."""
    out_dir = Path(out_dir)
    record = out_dir / DEMO_RECORD
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} is a file, not a folder: give the demo a folder (--out)")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not record.is_file():
        raise ConfigError(
            f"{out_dir} holds files that are not a demo's ({DEMO_RECORD} is missing): give the demo another --out"
        )
    if record.is_file():
        recorded = {} if overwrite else _read_record(record).get("config", {})  # afresh: whatever it holds
        if overwrite:
            shutil.rmtree(out_dir)
        elif recorded and recorded != _jsonable(asdict(config)):
            raise ConfigError(
                f"{out_dir} holds a demo run with other settings (e.g. with or without --fast): "
                "pass --overwrite to start it afresh, or give another --out"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    if not record.is_file():
        write_json(record, {"format_version": FORMAT_VERSION, "config": _jsonable(asdict(config)), "stage_seconds": {}})


def run_demo(config: DemoConfig, out_dir: str | Path, report: Report | None = None) -> DemoResult:
    """Every stage in turn (see the module docstring), each skipped when its output is already in `out_dir`.

    Call `prepare_folder` first."""
    out_dir = Path(out_dir)
    report = report or (lambda *_: None)
    torch.set_num_threads(config.threads)
    spec = config.data_spec()
    record_path = out_dir / DEMO_RECORD
    record = _read_record(record_path)
    seconds = record.setdefault("stage_seconds", {})

    def timed(stage: str, run: Callable[[], object]) -> None:
        started = time.perf_counter()
        run()
        seconds[stage] = round(seconds.get(stage, 0.0) + time.perf_counter() - started, 1)
        write_json(record_path, record)

    paths = {name: out_dir / name for name in ("teacher", "modules", "profile", "plan", "deploy")}
    profile_json = paths["profile"] / "profile.json"
    recover_dir(paths["teacher"])  # a write a kill interrupted: finish it before looking
    teacher_done = (paths["teacher"] / "config.json").is_file() and (
        config.teacher == "bundled" or teacher_completed_steps(paths["teacher"]) >= config.teacher_steps
    )
    if not teacher_done:
        timed("teacher", lambda: _teacher_stage(config, spec, paths["teacher"], report))
    recover_dir(paths["modules"])
    if not _finished(paths["modules"], config.module_steps):
        timed("modules", lambda: _modules_stage(config, spec, paths["teacher"], paths["modules"], report))
    modular = ModularModel.from_pretrained(paths["modules"])
    if not profile_json.is_file():
        timed("profile", lambda: _profile_stage(config, modular, profile_json, report))
    if not Plan.is_complete(paths["plan"]):
        timed("plan", lambda: _plan_stage(config, spec, paths["modules"], profile_json, paths["plan"], report))
    if not (paths["deploy"] / "modformer.json").is_file():
        timed("export", lambda: export_chosen(paths["deploy"], plan=paths["plan"], modules=paths["modules"]))
    scores_path = out_dir / "scores.json"
    scores = read_json(scores_path, "demo scores") if scores_path.is_file() else {}
    if {"deploy", "teacher"} - set(scores):
        timed("evaluate", lambda: _evaluate_stage(config, spec, paths, scores, scores_path, report))
    strategies_path = out_dir / "strategies.json"
    if not strategies_path.is_file():
        timed("strategies", lambda: _strategies_stage(config, spec, modular, strategies_path, report))
    table = pd.DataFrame(read_json(strategies_path, "strategy scores")["rows"])
    plan = Plan.load(paths["plan"])
    written = {
        "report": str(paths["plan"] / REPORT_HTML),
        "pareto": str(paths["plan"] / PARETO_PNG),
        "figure": str(out_dir / FIGURE_PNG),
        "export": str(paths["deploy"]),
        "plan": str(paths["plan"]),
    }
    deployment = _deployment(plan, scores, paths, config)
    return DemoResult(
        table=table,
        config={**_jsonable(asdict(config)), "stage_seconds": seconds},
        deployment=deployment,
        paths=written,
    )


# --------------------------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------------------------
def _teacher_stage(config: DemoConfig, spec: DataSpec, out: Path, report: Report) -> None:
    if config.teacher == "bundled":
        report("teacher", 0, 1, "copying the bundled teacher")
        copy_bundled_teacher(out)
        report("teacher", 1, 1, "bundled")
        return
    train, val = load_split(spec, "train"), load_split(spec, "val")
    tcfg = TeacherConfig(preset=config.teacher, steps=config.teacher_steps, batch_size=config.batch_size)
    train_teacher(
        train,
        val,
        tcfg,
        out,
        on_step=lambda s, loss: report("teacher", s, tcfg.steps, f"loss {loss:.3f}"),
        overwrite=True,
        resume=(out / TEACHER_STATE).is_file(),
    )


def copy_bundled_teacher(out: Path, source: Path = BUNDLED_TEACHER) -> Path:
    """The bundled teacher (stored in float16 to keep the package small) as a float32 checkpoint in `out`."""
    if not (source / "config.json").is_file():
        raise ConfigError(f"the bundled teacher is missing from {source}: reinstall modformer")
    model = load_seq2seq(source)
    model = model.float()
    model.config.dtype = "float32"
    tokenizer = load_tokenizer(source)
    with atomic_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def _modules_stage(config: DemoConfig, spec: DataSpec, teacher: Path, out: Path, report: Report) -> None:
    tokenizer = load_tokenizer(teacher)
    train, val = load_split(spec, "train"), load_split(spec, "val")
    mcfg = TrainConfig(
        steps=config.module_steps,
        batch_size=config.batch_size,
        eval_every=0,
        save_every=100,
        warmup_steps=min(100, config.module_steps // 5),
    )
    trainer = ReplacingTrainer.start_or_resume(
        load_seq2seq(teacher, eager=True),
        teacher,
        out,
        mcfg,
        train.tokenize(tokenizer),
        val.take(256).tokenize(tokenizer),
        resume=(out / CONFIG_NAME).is_file(),
    )
    trainer.fit(out, on_step=lambda r: report("modules", r.step, mcfg.steps, f"loss {r.loss:.3f}"))


def _profile_stage(config: DemoConfig, modular: ModularModel, out: Path, report: Report) -> None:
    settings = ProfileConfig(threads=config.threads, **config.profile)
    profile = run_profile(modular, settings, profile_targets(None, "fp32", "cpu"), on_progress=report)
    out.parent.mkdir(parents=True, exist_ok=True)
    profile.save(out)


def _plan_stage(config: DemoConfig, spec: DataSpec, modules: Path, profile_json: Path, out: Path, report) -> None:
    profile = LatencyProfile.load(profile_json)
    settings = PlanSettings(
        modules=str(modules),
        data=asdict(spec),
        split="val",
        validate=config.validate,
        validate_samples=config.validate_samples,
        max_new_tokens=config.max_new_tokens,
        budget=config.budget,
        workload=asdict(default_workload(profile)),
        search=config_record(SearchConfig()),
    )
    storage = plan_storage(out, None, None, fresh=True)
    result = run_plan(settings, profile, storage=storage, study_name=out.name, on_progress=report)
    Plan.from_result(result).save(out, overwrite=True)


def _evaluate_stage(config: DemoConfig, spec, paths: dict[str, Path], scores: dict, scores_path: Path, report) -> None:
    for name in ("teacher", "deploy"):
        if name in scores:
            continue
        evaluation = evaluate(
            spec,
            model=paths[name],
            split=config.test_split,
            limit=config.eval_pairs,
            max_new_tokens=config.max_new_tokens,
            on_progress=lambda done, total, name=name: report(f"score {name}", done, total, config.test_split),
        )
        scores[name] = {**evaluation.scores.to_json(), "pairs": evaluation.scores.n, "split": config.test_split}
        write_json(scores_path, scores)


def _strategies_stage(config: DemoConfig, spec, modular: ModularModel, out: Path, report: Report) -> None:
    """Every assembly of both fixed strategies scored on `strategy_pairs` test pairs: the quality-vs-size figure."""
    tokenizer = load_tokenizer(modular.config.teacher)
    test = load_split(spec, config.test_split, limit=config.strategy_pairs)
    cost = modular.cost_model()
    rows = [(name, a) for name in STRATEGIES for a in strategy_sequence(name, cost)]
    distinct = {a.format(): a for _, a in rows}
    scored = {}
    for done, (key, a) in enumerate(distinct.items(), start=1):
        scored[key] = score_model(modular.assemble(a), tokenizer, test, max_new_tokens=config.max_new_tokens)
        report("size/speed strategies", done, len(distinct), key)
    records = [
        {
            "strategy": name,
            "assembly": a.format(),
            "shape": a.shape,
            "parameters": cost.params(a),
            "size_ratio": cost.size_ratio(a),
            "est_speed_ratio": cost.speed_ratio(a),
            "bleu": scored[a.format()].bleu,
            "chrf": scored[a.format()].chrf,
            "rougeL": scored[a.format()].rougeL,
            "loss": scored[a.format()].loss,
        }
        for name, a in rows
    ]
    write_json(out, {"pairs": len(test), "split": config.test_split, "rows": records})


# --------------------------------------------------------------------------------------------------------------------
# The answer
# --------------------------------------------------------------------------------------------------------------------
def _deployment(plan: Plan, scores: dict, paths: dict[str, Path], config: DemoConfig) -> dict:
    """The chosen point against the teacher: measured speed (the plan's validation), size on disk, memory, quality
    on the test split."""
    chosen = plan.chosen
    frontier = plan.frontier
    row = frontier[(frontier["assembly"] == chosen["assembly"]) & (frontier["target"] == chosen["target"])].iloc[0]
    workload = plan.summary.get("workload", {})
    return {
        "assembly": chosen["assembly"],
        "shape": _shape(chosen["assembly"]),
        "target": chosen["target"],
        "budget": config.budget,
        "measured_latency_ms": float(row["measured_latency_ms"]),
        "teacher_latency_ms": plan.summary.get("teacher_measured_latency_ms"),
        "measured_speedup": float(row["measured_speed_ratio"]),
        "workload": workload,
        "threads": config.threads,
        "memory_mb": None if pd.isna(row.get("memory_mb")) else float(row["memory_mb"]),
        "size_mb": _model_bytes(paths["deploy"]) / 1e6,
        "teacher_size_mb": _model_bytes(paths["teacher"]) / 1e6,
        "metric": plan.metric,
        "quality": scores["deploy"]["bleu"],
        "teacher_quality": scores["teacher"]["bleu"],
        "test_split": scores["deploy"]["split"],
        "test_pairs": scores["deploy"]["pairs"],
    }


def _shape(assembly: str) -> str:
    from modformer.modular.assembly import Assembly

    return Assembly.parse(assembly).shape


def _model_bytes(folder: Path) -> int:
    """Bytes of the model's weights on disk (safetensors or the engine's model.bin)."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))


def _finished(modules_dir: Path, steps: int) -> bool:
    path = modules_dir / CONFIG_NAME
    if not path.is_file():
        return False
    training = ModularConfig.from_json(read_json(path, "modular config"), str(modules_dir)).training  # checked
    return (training.get("completed_steps") or 0) >= steps


def _read_record(path: Path) -> dict:
    """`demo.json`, checked against its schema (`schemas.DemoRecord`)."""
    record = read_json(path, "demo record")
    validate(DemoRecord, record, path)
    return record


def _jsonable(value):
    """`value` as it reads back from JSON (tuples become lists), so recorded and current settings compare equal."""
    return json.loads(json.dumps(value))
