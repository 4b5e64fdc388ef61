"""The plan folder: the one place that knows which files make a plan, how they are written and read.

A plan folder (written whole or not at all) holds

| file | content |
|---|---|
| `frontier.json` | the summary (settings, budget, search, validation figures), `chosen`, the frontier and rule tables |
| `frontier.csv` | the frontier table, for spreadsheets |
| `scored.csv` | every assembly the search scored with the proxy |
| `chosen.json` | the assembly to ship, with its figures (what `export --plan` reads) |
| `pareto.png` | the figure (drawn from the tables when the plan is saved) |
| `report.html` | one self-contained page: what to deploy and why, the budget in words, the figure, readable tables |

`Plan.save(folder)` writes them; `Plan.load(folder)` reads them back into the same tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from modformer.errors import AssemblyError, CheckpointError
from modformer.io import atomic_dir, read_json, write_json
from modformer.modular.assembly import Assembly
from modformer.planner.plan import PlanResult
from modformer.schemas import FORMAT_VERSION, ChosenRecord, PlanRecord, invalid, validate

FRONTIER_JSON = "frontier.json"
FRONTIER_CSV = "frontier.csv"
SCORED_CSV = "scored.csv"
CHOSEN_JSON = "chosen.json"
PARETO_PNG = "pareto.png"
REPORT_HTML = "report.html"
PLAN_FILES = (FRONTIER_JSON, FRONTIER_CSV, SCORED_CSV, CHOSEN_JSON, PARETO_PNG, REPORT_HTML)
TEXT_COLUMNS = {"source", "rule"}  # frontier columns of text, where "" (no rule) is a value, not a missing one
STUDY_SUFFIX = ".optuna.log"  # the default optuna journal, beside the plan folder (it outlives a stopped plan)


@dataclass
class Plan:
    """A plan's tables and records (see the module docstring for the files they are saved to)."""

    summary: dict
    chosen: dict
    frontier: pd.DataFrame
    rules: pd.DataFrame
    scored: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)

    @classmethod
    def from_result(cls, result: PlanResult) -> Plan:
        return cls(
            summary=result.summary,
            chosen=result.chosen,
            frontier=result.frontier,
            rules=result.rules,
            scored=result.scored,
        )

    @property
    def metric(self) -> str:
        return self.summary.get("metric", "bleu")

    @property
    def modules(self) -> str:
        """The modular checkpoint folder the plan was made from, as recorded ('' when not recorded)."""
        return self.summary.get("settings", {}).get("modules", "")

    @property
    def budget_latency_ms(self) -> float | None:
        return (self.summary.get("budget") or {}).get("latency_ms")

    def figure_png(self) -> bytes:
        from modformer.planner.report import figure_png
        from modformer.plots import plot_pareto

        figure = plot_pareto(
            self.scored,
            self.frontier,
            self.rules,
            metric=self.metric,
            budget_latency_ms=self.budget_latency_ms,
            chosen=self.chosen.get("assembly"),
            chosen_target=self.chosen.get("target"),
        )
        return figure_png(figure)

    def report_html(self, png: bytes) -> str:
        from modformer.planner.report import report_html

        return report_html(png=png, frontier=self.frontier, rules=self.rules, chosen=self.chosen, summary=self.summary)

    def save(self, folder: str | Path, *, overwrite: bool = False) -> Path:
        """Write the plan folder whole (an existing one is replaced only with `overwrite`, after the new one is done)."""
        folder = Path(folder)
        png = self.figure_png()
        html = self.report_html(png)
        with atomic_dir(folder, overwrite=overwrite) as tmp:
            self.frontier.to_csv(tmp / FRONTIER_CSV, index=False)
            record = {
                "summary": self.summary,
                "chosen": self.chosen,
                "frontier": _records(self.frontier),
                "rules": _records(self.rules),
                "rules_columns": list(self.rules.columns),  # JSON objects are written with sorted keys
            }
            write_json(tmp / FRONTIER_JSON, {**record, "format_version": FORMAT_VERSION})
            self.scored.to_csv(tmp / SCORED_CSV, index=False)
            (tmp / PARETO_PNG).write_bytes(png)
            (tmp / REPORT_HTML).write_text(html, encoding="utf-8")
            write_json(tmp / CHOSEN_JSON, {**self.chosen, "format_version": FORMAT_VERSION})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Plan:
        """Read a plan folder; a missing folder or file, or a chosen record with no assembly, is a CheckpointError."""
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: plan folder not found")
        record = read_json(folder / FRONTIER_JSON, f"plan's {FRONTIER_JSON}")
        chosen = read_json(folder / CHOSEN_JSON, f"plan's {CHOSEN_JSON}")
        if "assembly" not in chosen:
            raise CheckpointError(f"{folder / CHOSEN_JSON} names no assembly")
        validate(PlanRecord, record, folder / FRONTIER_JSON)
        validate(ChosenRecord, chosen, folder / CHOSEN_JSON)
        for path, obj in ((folder / FRONTIER_JSON, record["chosen"]), (folder / CHOSEN_JSON, chosen)):
            _check_chosen(obj, path, "chosen." if path.name == FRONTIER_JSON else "")
        summary = record["summary"]
        chosen = {k: v for k, v in chosen.items() if k != "format_version"}  # the file's, not the choice's
        frontier = _read_csv(folder / FRONTIER_CSV)
        for column in TEXT_COLUMNS & set(frontier.columns):  # an empty text cell reads back as missing
            frontier[column] = frontier[column].fillna("")
        return cls(
            summary=summary,
            chosen=chosen,
            frontier=frontier,
            rules=pd.DataFrame.from_records(record.get("rules") or [], columns=record.get("rules_columns")),
            scored=_read_csv(folder / SCORED_CSV),
        )

    @staticmethod
    def is_complete(folder: str | Path) -> bool:
        """Whether `folder` holds every file of a plan (it is written whole, so this means a finished plan)."""
        return all((Path(folder) / name).is_file() for name in PLAN_FILES)

    @staticmethod
    def default_storage(folder: str | Path) -> Path:
        """The optuna journal a plan written to `folder` keeps its study in, unless another storage is given."""
        folder = Path(folder)
        return folder.with_name(folder.name + STUDY_SUFFIX)


def plan_storage(folder: str | Path, storage: str | None, study_name: str | None, *, fresh: bool) -> str:
    """The optuna storage a plan keeps its study in: `storage` (a database URL or a journal file), else the journal
    beside the plan folder. `fresh` (a plan started again from scratch) deletes a journal file holding the default
    study, so that no earlier trial is reused; a named study or a database is left to its owner."""
    storage = storage or str(Plan.default_storage(folder))
    if fresh and "://" not in storage and study_name is None:
        Path(storage).unlink(missing_ok=True)
    return storage


def _check_chosen(chosen: dict, path: Path, prefix: str) -> None:
    """The chosen assembly is one (its syntax), and its JSON form, where recorded, is the same assembly."""
    try:
        assembly = Assembly.parse(chosen["assembly"])
    except AssemblyError as err:
        raise invalid(path, f"{prefix}assembly", str(err).splitlines()[0]) from None
    recorded = chosen.get("assembly_json")
    if recorded is not None and recorded != assembly.to_json():
        raise invalid(path, f"{prefix}assembly_json", f"is not the assembly {chosen['assembly']!r}")


def _records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records"))


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise CheckpointError(f"{path}: plan file not found")
    try:
        # Empty cells are missing values; a text cell "NA" (or "nan") stays text.
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:  # a table with no rows and no columns
        return pd.DataFrame()
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: plan file cannot be read ({str(err).splitlines()[0]})") from None
