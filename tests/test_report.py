"""The plan's report.html as a person reads it: the answer first, the budget in words, human units, no internal
columns, "–" for what the plan does not hold. Pages are read with the standard library's HTML parser."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from modformer.checkpoints import load_seq2seq
from modformer.modular.model import ModularModel
from modformer.planner.artifact import PARETO_PNG, REPORT_HTML, Plan
from modformer.planner.report import MISSING, budget_words, report_html
from modformer.planner.run import PlanSettings, run_plan
from modformer.planner.space import SearchSpace
from modformer.profiling.measure import ProfileConfig, profile_modules
from modformer.profiling.profile import default_workload
from tests.conftest import save_teacher, tiny_t5

INTERNAL = {"i", "j", "violation", "within_budget", "on_proxy_frontier", "on_validated_frontier", "proxy_loss"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """What a browser would show of a report: the text of each section, the headline, the tables (headers, cells,
    row classes), and every src/href attribute."""

    def __init__(self, text: str):
        super().__init__()
        self.sections: list[str] = []  # ids, in page order
        self.section_text: dict[str, str] = {}
        self.h1 = ""
        self.tables: list[dict] = []
        self.references: list[str] = []
        self.text: list[str] = []
        self._open: list[str] = []
        self._skip = 0
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.references += [v for k, v in attrs.items() if k in ("src", "href") and v]
        if tag in ("style", "script"):
            self._skip += 1
        if tag == "section":
            self.sections.append(attrs.get("id", ""))
            self.section_text[attrs.get("id", "")] = ""
        if tag == "table":
            self.tables.append({"headers": [], "rows": [], "row_classes": [], "section": (self.sections or [""])[-1]})
        if tag == "tr" and self.tables:
            self.tables[-1]["row_classes"].append(attrs.get("class", ""))
            self.tables[-1]["rows"].append([])
        if tag in ("th", "td"):
            self._cell = []
        self._open.append(tag)

    def handle_endtag(self, tag):
        if tag in ("style", "script"):
            self._skip -= 1
        if tag in ("th", "td") and self._cell is not None:
            cell = "".join(self._cell).strip()
            table = self.tables[-1]
            if tag == "th":
                table["headers"].append(cell)
            else:
                table["rows"][-1].append(cell)
            self._cell = None
        if self._open:
            self._open.pop()

    def handle_data(self, data):
        if self._skip:
            return
        self.text.append(data)
        if self.sections:
            self.section_text[self.sections[-1]] += data
        if "h1" in self._open:
            self.h1 += data
        if self._cell is not None:
            self._cell.append(data)

    def table(self, first_header: str, section: str = "tables") -> pd.DataFrame:
        """The first table of `section` whose headers include `first_header`, as a frame of its cells' text (the
        class of each body row in `frame.attrs["row_classes"]`)."""
        for t in self.tables:
            if t["section"] == section and first_header in t["headers"]:
                body = [n for n, row in enumerate(t["rows"]) if row]  # the header row has no td
                frame = pd.DataFrame([t["rows"][n] for n in body], columns=t["headers"])
                frame.attrs["row_classes"] = [t["row_classes"][n] for n in body]
                return frame
        raise AssertionError(f"no table with {first_header!r} in {section}")


def read_report(path_or_text: str | Path) -> Page:
    text = path_or_text.read_text(encoding="utf-8") if isinstance(path_or_text, Path) else path_or_text
    return Page(text)


def _words(page: Page) -> str:
    return " ".join(" ".join(page.text).split())


# --- a real plan: a 4+4 tiny T5 with modules of 2 (25 assemblies), a latency budget the teacher does not meet -----
@pytest.fixture(scope="module")
def real_plan(tmp_path_factory, tokenizer, data_dir) -> Path:
    root = tmp_path_factory.mktemp("report")
    teacher_dir = save_teacher(tiny_t5(layers=4), tokenizer, root / "teacher")
    modular = ModularModel.from_teacher(load_seq2seq(teacher_dir), teacher_dir, [2])
    torch.manual_seed(3)
    with torch.no_grad():
        for p in modular.blocks.parameters():
            p.add_(0.05 * torch.randn_like(p))
    modular.save_pretrained(root / "mods")
    grid = {"batch_sizes": (1,), "src_lens": (8,), "gen_lens": (4,)}
    profile = profile_modules(
        modular, ProfileConfig(**grid, warmup=1, repeats=2, generate_repeats=1, memory=False, threads=1)
    )
    space = SearchSpace.build(modular, profile, default_workload(profile))
    latency = space.latency_ms(*space.all_pairs())
    budget_ms = round(float(latency.min() + space.latency_ms(*space.teacher)) / 2, 2)  # the teacher is outside
    data = {"path": str(data_dir), "src_ext": "en", "tgt_ext": "de", "src_column": "source", "tgt_column": "target"}
    settings = PlanSettings(
        modules=str(root / "mods"),
        data={**data, "prefix": ""},
        budget=f"latency_ms<={budget_ms}",
        proxy_samples=8,
        proxy_batch_size=8,
        validate=4,
        validate_samples=8,
        max_new_tokens=4,
    )
    result = run_plan(settings, profile, storage=str(root / "plan.optuna.log"), study_name="report")
    return Plan.from_result(result).save(root / "plan")


def test_the_report_opens_with_the_answer(real_plan):
    plan = Plan.load(real_plan)
    page = read_report(real_plan / REPORT_HTML)
    assert page.sections == ["answer", "budget", "figure", "tables", "method"]
    chosen = plan.chosen
    shape = "{}-{}".format(len(chosen["assembly_json"]["encoder"]), len(chosen["assembly_json"]["decoder"]))
    assert page.h1 == f"Deploy {shape} in PyTorch fp32"
    answer = " ".join(page.section_text["answer"].split())
    assert chosen["assembly"] in answer and "served as torch:fp32" in answer
    shown = float(re.search(r"([\d.,]+) ms per call", answer).group(1).replace(",", ""))
    assert shown == pytest.approx(chosen["measured_latency_ms"], rel=0.01)  # three significant digits
    assert "faster than the teacher" in answer and "smaller than the teacher" in answer and "MB" in answer
    assert f"BLEU {chosen['bleu']:.2f}" in answer and "Why this one:" in answer
    assert "the validated point with the highest BLEU within the budget" in answer
    validated = plan.frontier[plan.frontier["validated"]]
    ok = int(validated["within_budget"].sum())
    assert f"{len(validated)} points were validated" in answer and f"{ok} of them within the budget" in answer
    # one self-contained page: the figure inlined, nothing fetched from elsewhere
    assert len(page.references) == 1 and page.references[0].startswith("data:image/png;base64,")
    png = base64.b64decode(page.references[0].removeprefix("data:image/png;base64,"))
    assert png[:8] == PNG_MAGIC and png == (real_plan / PARETO_PNG).read_bytes()


def test_the_report_has_no_nan_and_no_internal_columns(real_plan):
    page = read_report(real_plan / REPORT_HTML)
    assert not re.search(r"\bnan\b", _words(page), flags=re.IGNORECASE)
    headers = {h for t in page.tables for h in t["headers"]}
    assert headers and not headers & INTERNAL and not [h for h in headers if "_" in h]
    assert not [cell for t in page.tables for row in t["rows"] for cell in row if not cell]  # no empty cell
    # the validated table: one row per validated point, the chosen one marked, units in the headers
    plan = Plan.load(real_plan)
    table = page.table("served as")
    validated = plan.frontier[plan.frontier["validated"]]
    assert sorted(table["assembly"]) == sorted(validated["assembly"])
    assert {"BLEU", "latency (ms)", "speed-up", "params (M)", "smaller", "memory (MB)", "within budget"} <= set(
        table.columns
    )
    marked = [a for a, c in zip(table["assembly"], table.attrs["row_classes"], strict=True) if c == "chosen"]
    assert marked == [plan.chosen["assembly"]]
    latency = table["latency (ms)"].astype(float)
    assert (np.diff(latency) >= 0).all()  # fastest first
    assert table["speed-up"].str.fullmatch(r"[\d.,]+x").all() and table["smaller"].str.fullmatch(r"[\d.,]+x").all()


def test_the_budget_is_in_words(real_plan):
    plan = Plan.load(real_plan)
    page = read_report(real_plan / REPORT_HTML)
    limit = plan.summary["budget"]["latency_ms"]
    budget = " ".join(page.section_text["budget"].split())
    assert f"Budget: latency at most {limit:g} ms per call at batch 1." in budget
    assert "{" not in budget and "null" not in budget
    assert "one call at batch 1: 8 source tokens in, exactly 4 new tokens out" in budget

    workload = {"batch": 8, "src_len": 32, "gen_len": 32}
    assert budget_words({"latency_ms": 120.0, "memory_mb": None, "params_m": None}, workload).startswith(
        "Budget: latency at most 120 ms per call at batch 8."
    )
    both = budget_words({"latency_ms": None, "memory_mb": 40.0, "params_m": 3.25}, workload)
    assert both.startswith("Budget: peak memory at most 40 MB; at most 3.25 million parameters.")
    speedup = budget_words({"latency_ms": 60.5, "speedup": 2.0}, workload)  # a speed-up becomes a latency limit
    assert speedup.startswith(
        "Budget: latency at most 60.5 ms per call at batch 8; at least 2x faster than the teacher in torch:fp32."
    )
    for nothing in ({"latency_ms": None, "memory_mb": None, "params_m": None}, {"latency_ms": float("inf")}, None):
        assert budget_words(nothing, workload).startswith("No budget: every assembly was allowed")


def test_missing_values_show_as_a_dash(real_plan):
    plan = Plan.load(real_plan)
    page = read_report(real_plan / REPORT_HTML)
    rules = page.table("rule")
    assert len(rules) == len(plan.rules)
    unvalidated = rules[rules["validated"] == "no"]
    assert len(unvalidated) and (unvalidated["BLEU"] == MISSING).all()
    assert (unvalidated["latency (ms, measured)"] == MISSING).all()
    validated = rules[rules["validated"] == "yes"]
    assert (validated["BLEU"] != MISSING).all() and (validated["latency (ms, measured)"] != MISSING).all()


# --- hand-made plans: what a tiny random model cannot show (a validated teacher, ties, missing columns) -----------
def _plan_tables(teacher_validated: bool, tie: bool = False) -> tuple[pd.DataFrame, dict, dict]:
    teacher = "enc=1,1,1,1,1,1 dec=1,1,1,1,1,1"
    rows = [  # assembly, target, measured ms, BLEU, params, predicted ms
        ("enc=3,3 dec=3,3", "ctranslate2:int8", 2.0, 30.0, 1.0e6, 2.1),
        ("enc=2,2,2 dec=2,2,2", "ctranslate2:int8", 4.0, 33.5, 1.5e6, 4.2),
        ("enc=2,2,2 dec=3,3", "torch:fp32", 9.0, 33.5 if tie else 31.0, 1.25e6, 9.5),
        ("enc=1,1,1,1,1,1 dec=2,2,2", "torch:fp32", 14.0, 35.0, 2.0e6, 15.0),
        (teacher, "torch:fp32", 20.0, 36.0, 3.0e6, 21.0),
    ]
    frontier = pd.DataFrame(
        rows, columns=["assembly", "target", "measured_latency_ms", "bleu", "params", "predicted_latency_ms"]
    )
    frontier = frontier.assign(
        measured_speed_ratio=20.0 / frontier["measured_latency_ms"],
        speed_ratio=21.0 / frontier["predicted_latency_ms"],
        size_ratio=3.0e6 / frontier["params"],
        memory_mb=frontier["params"] * 4 / 1e6 + 1,
        proxy_loss=5.0 - frontier["bleu"] / 10,
        source="search",
        rule="",
        validated=True,
        within_budget=frontier["predicted_latency_ms"] <= 16.0,
        on_proxy_frontier=True,
        on_validated_frontier=True,
    )
    if not teacher_validated:
        frontier.loc[frontier["assembly"] == teacher, ["bleu", "measured_latency_ms"]] = np.nan
        frontier.loc[frontier["assembly"] == teacher, ["validated", "on_validated_frontier"]] = False
        frontier.loc[0, "params"] = np.nan  # a value a plan may lack
    ok = frontier[frontier["validated"] & frontier["within_budget"]]
    best = ok.sort_values(["bleu", "predicted_latency_ms"], ascending=[False, True]).iloc[0]
    chosen = {k: best[k].item() if hasattr(best[k], "item") else best[k] for k in best.index}
    summary = {
        "metric": "bleu",
        "budget": {"latency_ms": 16.0, "memory_mb": None, "params_m": None},
        "workload": {"batch": 1, "src_len": 32, "gen_len": 32},
        "objectives": ["quality", "latency", "memory"],
        "search": {"method": "exhaustive", "scored": 25, "space_size": 25, "seconds": 1.0},
        "validated": int(frontier["validated"].sum()),
        "validation_seconds": 2.0,
        "proxy_vs_validated_spearman": None,
        "settings": {"validate_samples": 200, "split": "val"},
        "created": "2026-12-05T00:00:00+00:00",
    }
    return frontier, chosen, summary


def _page(frontier, chosen, summary, rules=None) -> Page:
    rules = pd.DataFrame(columns=["strategy", "assembly"]) if rules is None else rules
    return read_report(report_html(png=PNG_MAGIC, frontier=frontier, rules=rules, chosen=chosen, summary=summary))


def test_quality_is_set_against_the_teacher_where_the_plan_validated_it():
    frontier, chosen, summary = _plan_tables(teacher_validated=True)
    assert chosen["assembly"] == "enc=1,1,1,1,1,1 dec=2,2,2"  # the most accurate within 16 ms
    page = _page(frontier, chosen, summary)
    answer = " ".join(page.section_text["answer"].split())
    assert page.h1 == "Deploy 6-3 in PyTorch fp32"
    assert "35.00" in answer and "1.00 below the teacher's 36.00" in answer
    assert "14.0 ms per call" in answer and "1.43x faster than the teacher (20.0 ms)" in answer
    assert "2.00 M parameters" in answer and "1.50x smaller than the teacher (3.00 M)" in answer
    assert "Fastest within the budget: 2-2 in ctranslate2:int8, BLEU 30.00 at 2.00 ms (10.0x faster" in answer
    table = page.table("served as")
    assert table.loc[table["assembly"] == "enc=1,1,1,1,1,1 dec=1,1,1,1,1,1", "note"].item() == "teacher"
    assert table.loc[table["assembly"] == chosen["assembly"], "note"].item() == "chosen"

    frontier, chosen, summary = _plan_tables(teacher_validated=False)
    page = _page(frontier, chosen, summary)
    answer = " ".join(page.section_text["answer"].split())
    assert "the teacher's own score was not measured by this plan" in answer
    assert "1.43x faster than the teacher (20.0 ms)" in answer  # its latency still comes from the speed-ups
    # a plan that scored the teacher on the same pairs (summary["teacher"]) reads the point against that score
    scored = _page(frontier, chosen, {**summary, "teacher": {"bleu": 36.5, "target": "torch:fp32"}})
    assert "1.50 below the teacher's 36.50" in " ".join(scored.section_text["answer"].split())
    candidates = page.table("held-out loss (proxy)")  # the teacher, not validated
    assert candidates["assembly"].tolist() == ["enc=1,1,1,1,1,1 dec=1,1,1,1,1,1"]
    assert candidates["latency (ms, predicted)"].item() == "21.0"
    table = page.table("served as")
    assert table.loc[table["assembly"] == "enc=3,3 dec=3,3", "params (M)"].item() == MISSING
    assert not re.search(r"\bnan\b", _words(page), flags=re.IGNORECASE)


def test_a_tie_is_explained_and_no_budget_is_said():
    frontier, chosen, summary = _plan_tables(teacher_validated=False, tie=True)
    frontier["within_budget"] = frontier["predicted_latency_ms"] <= 10.0
    summary["budget"]["latency_ms"] = 10.0
    ok = frontier[frontier["validated"] & frontier["within_budget"]]
    assert (ok["bleu"] == 33.5).sum() == 2
    chosen = {"assembly": "enc=2,2,2 dec=2,2,2", "target": "ctranslate2:int8", "bleu": 33.5}
    chosen |= {"measured_latency_ms": 4.0, "predicted_latency_ms": 4.2, "size_ratio": 2.0, "memory_mb": 7.0}
    page = _page(frontier, chosen, summary)
    answer = " ".join(page.section_text["answer"].split())
    assert page.h1 == "Deploy 3-3 in CTranslate2 int8"
    assert "2 tie at BLEU 33.50; this one has the lowest predicted latency of them." in answer
    assert "Next best: 3-2 in torch:fp32, BLEU 33.50 at 9.00 ms" in answer

    summary["budget"] = {"latency_ms": None, "memory_mb": None, "params_m": None}
    page = _page(frontier, chosen, summary)
    assert "Budget No budget: every assembly was allowed" in " ".join(page.section_text["budget"].split())
    assert "with no budget, the planner ships" in page.section_text["answer"]
    assert "within budget" not in page.table("served as").columns


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (Debian: apt-get install -y chromium)")
def test_the_screenshot_script_renders_the_report(real_plan, tmp_path):
    out = tmp_path / "report.png"
    script = Path(__file__).resolve().parents[1] / "scripts" / "screenshot-report.sh"
    done = subprocess.run([str(script), str(real_plan), str(out), "800,1200"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == PNG_MAGIC and done.stdout.strip() == str(out)
    missing = subprocess.run([str(script), str(tmp_path), str(out)], capture_output=True, text=True)
    assert missing.returncode == 1 and "report.html not found" in missing.stderr


def test_the_report_says_whether_and_by_how_much_a_refresh_scaled_the_predictions():
    from modformer.planner.report import refresh_words

    assert "not refreshed" in refresh_words(None, {"batch": 1})
    refresh = {"date": "2026-12-05T11:00:00+00:00", "factors": {"torch:fp32": {"1": 0.9, "8": 1.1}}}
    words = refresh_words(refresh, {"batch": 8})
    assert "refresh of 2026-12-05T11:00:00+00:00" in words and "torch:fp32 x 1.100" in words
    assert "torch:fp32 x 0.900" in refresh_words(refresh, {"batch": 2})  # the nearest refreshed batch size
