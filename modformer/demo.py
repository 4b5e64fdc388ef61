"""The end-to-end demo: teacher → modules → both strategies → scores, on the bundled Multi30k sample.

Each stage caches its output in the working folder, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from modformer.checkpoints import load_seq2seq, load_tokenizer
from modformer.data import default_data_spec, load_split
from modformer.evaluation import score_model
from modformer.io import atomic_path, read_json, write_json
from modformer.modular.model import CONFIG_NAME, ModularModel
from modformer.modular.strategies import STRATEGIES, strategy_sequence
from modformer.modular.trainer import ReplacingTrainer, TrainConfig
from modformer.teacher import STATE_NAME as TEACHER_STATE
from modformer.teacher import TeacherConfig, train_teacher
from modformer.teacher import completed_steps as teacher_completed_steps

Report = Callable[[str, int, int, str], None]  # (stage, done, total, info)


@dataclass
class DemoConfig:
    teacher_preset: str = "small"  # 6+6 layers, d_model 128
    teacher_steps: int = 1200
    module_steps: int = 600
    batch_size: int = 32
    eval_pairs: int = 300  # of the bundled test split
    max_new_tokens: int = 48

    @classmethod
    def fast(cls) -> DemoConfig:
        """A smoke run in under 3 minutes: a 4+4 teacher and a few hundred steps; the scores are not meaningful."""
        return cls(teacher_preset="tiny", teacher_steps=300, module_steps=120, batch_size=32, eval_pairs=100)


RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
FIGURE_PNG = "quality_vs_size.png"


@dataclass
class DemoResult:
    table: pd.DataFrame  # one row per (strategy, assembly)
    config: dict

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write the table (JSON and CSV) and the quality-vs-size figure into `out_dir`; returns their paths."""
        from modformer.plots import plot_quality_vs_size

        out_dir = Path(out_dir)
        paths = {"json": out_dir / RESULTS_JSON, "csv": out_dir / RESULTS_CSV, "figure": out_dir / FIGURE_PNG}
        write_json(paths["json"], {"config": self.config, "rows": self.table.to_dict(orient="records")})
        with atomic_path(paths["csv"]) as tmp:
            self.table.to_csv(tmp, index=False)
        with atomic_path(paths["figure"]) as tmp:
            plot_quality_vs_size(self.table).savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        return paths


def run_demo(config: DemoConfig, out_dir: str | Path, report: Report | None = None) -> DemoResult:
    out_dir = Path(out_dir)
    report = report or (lambda *_: None)
    spec = default_data_spec()
    train, val = load_split(spec, "train"), load_split(spec, "val")
    test = load_split(spec, "test", limit=config.eval_pairs)
    timings = {}

    teacher_dir = out_dir / "teacher"
    done = teacher_completed_steps(teacher_dir)
    if done < config.teacher_steps:  # not started, or stopped at a checkpoint: continue it
        started = time.perf_counter()
        tcfg = TeacherConfig(preset=config.teacher_preset, steps=config.teacher_steps, batch_size=config.batch_size)
        train_teacher(
            train,
            val,
            tcfg,
            teacher_dir,
            on_step=lambda s, loss: report("teacher", s, tcfg.steps, f"loss {loss:.3f}"),
            overwrite=True,
            resume=(teacher_dir / TEACHER_STATE).is_file(),
        )
        timings["teacher_s"] = time.perf_counter() - started

    modules_dir = out_dir / "modules"
    tokenizer = load_tokenizer(teacher_dir)
    if not _finished(modules_dir, config.module_steps):
        started = time.perf_counter()
        mcfg = TrainConfig(
            steps=config.module_steps,
            batch_size=config.batch_size,
            eval_every=0,
            save_every=100,
            warmup_steps=min(100, config.module_steps // 5),
        )
        trainer = ReplacingTrainer.start_or_resume(
            load_seq2seq(teacher_dir, eager=True),
            teacher_dir,
            modules_dir,
            mcfg,
            train.tokenize(tokenizer),
            val.take(256).tokenize(tokenizer),
            resume=(modules_dir / CONFIG_NAME).is_file(),
        )
        trainer.fit(
            modules_dir,
            on_step=lambda r: report("modules", r.step, mcfg.steps, f"loss {r.loss:.3f}"),
        )
        timings["modules_s"] = time.perf_counter() - started

    model = ModularModel.from_pretrained(modules_dir)
    table = _score_strategies(model, tokenizer, test, config, out_dir / "scores.json", report)
    return DemoResult(table=table, config={**asdict(config), **timings, "test": test.origin})


def _finished(modules_dir: Path, steps: int) -> bool:
    path = modules_dir / CONFIG_NAME
    if not path.is_file():
        return False
    training = read_json(path, "modular config").get("training", {})
    return training.get("completed_steps", 0) >= steps


def _score_strategies(model, tokenizer, test, config: DemoConfig, cache_path: Path, report: Report) -> pd.DataFrame:
    """Score every assembly of both strategies once (cached per assembly in `cache_path`)."""
    cost = model.cost_model()
    rows = [(name, a) for name in STRATEGIES for a in strategy_sequence(name, cost)]
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    distinct = {a.format(): a for _, a in rows}
    for done, (key, a) in enumerate(distinct.items(), start=1):
        if key not in cache:
            scores = score_model(model.assemble(a), tokenizer, test, max_new_tokens=config.max_new_tokens)
            cache[key] = scores.to_json()
            write_json(cache_path, cache)
        report("score", done, len(distinct), key)
    records = []
    for name, a in rows:
        s = cache[a.format()]
        records.append(
            {
                "strategy": name,
                "assembly": a.format(),
                "shape": a.shape,
                "parameters": cost.params(a),
                "size_ratio": cost.size_ratio(a),
                "est_speed_ratio": cost.speed_ratio(a),
                "bleu": s["bleu"],
                "chrf": s["chrf"],
                "rougeL": s["rougeL"],
                "loss": s["loss"],
            }
        )
    return pd.DataFrame.from_records(records)
