"""A plan as a capacity planner reads it: one self-contained HTML page (the figure inlined, no outside references).

The page opens with the answer: the assembly to deploy and its serving target, its measured speed, size, memory and
quality against the teacher, and why the planner picked it (`planner.plan.choose`: the validated point with the best
metric among those whose predicted cost meets the budget). Then the budget in words, the figure, and the tables in
human units, with only the columns a person reads; a value the plan does not hold is shown as "–".
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math

import pandas as pd
from matplotlib.figure import Figure

from modformer.modular.assembly import Assembly
from modformer.plots import TeacherReference, is_teacher_assembly, metric_label, teacher_reference

MISSING = "–"  # an en dash: what a cell shows when the plan holds no value
ENGINE_NAMES = {"torch": "PyTorch", "ctranslate2": "CTranslate2"}
STYLE = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1d1d1f;
 max-width:1200px;margin:0 auto;padding:1.2em 1.5em 3em}
h1{font-size:1.75em;margin:.1em 0 .2em}
h2{font-size:1.25em;margin:1.6em 0 .4em;border-bottom:1px solid #ddd;padding-bottom:.2em}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em}
.kicker{text-transform:uppercase;letter-spacing:.06em;font-size:.78em;color:#555;margin:0}
#answer{background:#f3f7ff;border:1px solid #c8d8f8;border-radius:10px;padding:1em 1.4em}
#answer .assembly{margin:.2em 0 .8em;overflow-wrap:anywhere}
dl.figures{display:grid;grid-template-columns:repeat(auto-fit,minmax(240px,1fr));gap:.7em;margin:0 0 .9em}
dl.figures div{background:#fff;border:1px solid #dbe4f6;border-radius:8px;padding:.55em .8em}
dt{font-size:.78em;text-transform:uppercase;letter-spacing:.05em;color:#555}
dd{margin:0}
dd strong{font-size:1.35em}
.why{margin:.3em 0}
.muted{color:#666;font-size:.9em}
img{max-width:100%;height:auto;border:1px solid #eee}
.scroll{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums;margin:.3em 0}
th,td{padding:4px 8px;border-bottom:1px solid #e4e4e4;text-align:left;vertical-align:top}
th{background:#f5f5f5;font-weight:600;vertical-align:bottom}
th.num,td.num{text-align:right}
td{white-space:nowrap}
td.wrap{white-space:normal}
td.assembly{white-space:normal;min-width:12em;max-width:24em;overflow-wrap:anywhere}
tr.chosen td{background:#fff4c8;font-weight:600}
details{margin:1em 0}
summary{cursor:pointer;font-weight:600}
ul.facts{padding-left:1.2em}
"""


def figure_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=130)
    return buffer.getvalue()


def report_html(*, png: bytes, frontier: pd.DataFrame, rules: pd.DataFrame, chosen: dict, summary: dict) -> str:
    """One HTML page with no outside references (the PNG is inlined): the answer first, then the budget, the figure
    and the tables."""
    metric = summary.get("metric", "bleu")
    validated = frontier[frontier["validated"].astype(bool)]
    teacher = teacher_reference(frontier, metric)
    if teacher is not None and summary.get("teacher_measured_latency_ms") is not None:  # timed with the points
        teacher = dataclasses.replace(teacher, latency_ms=float(summary["teacher_measured_latency_ms"]))
    scored = (summary.get("teacher") or {}).get(metric)
    if teacher is not None and teacher.score is None and scored is not None:  # scored on the same pairs
        teacher = dataclasses.replace(teacher, score=float(scored))
    row = chosen_row(frontier, chosen)
    has_budget = bool(budget_limits(summary.get("budget")))
    picture = base64.b64encode(png).decode("ascii")
    title = f"Plan: deploy {_shape(chosen['assembly'])} in {target_name(_target(chosen))}"
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
        answer_section(chosen, row, validated, teacher, summary),
        "<section id='budget'><h2>Budget</h2>",
        f"<p>{_e(budget_words(summary.get('budget'), summary.get('workload')))}</p>",
        f"<p class='muted'>{_e(workload_words(summary.get('workload')))} "
        f"{_e(refresh_words(summary.get('profile_refresh'), summary.get('workload')))}</p></section>",
        "<section id='figure'><h2>Quality against latency</h2>",
        f"<img alt='Pareto figure: the search on the left, the validated points on the right' "
        f"src='data:image/png;base64,{picture}'>",
        "<p class='muted'>Left: every assembly the search scored, by its proxy (held-out teacher-forced loss) and "
        "predicted latency. Right: the validated points, by their measured quality and latency; the star is the "
        "choice, the teacher a dotted line (a cross where the plan validated it), the dashed line the latency "
        "budget.</p></section>",
        "<section id='tables'><h2>Validated points</h2>",
        f"<p class='muted'>{_e(validated_caption(teacher, metric))}</p>",
        _table(validated_table(validated, chosen, metric, has_budget), highlight=_is_chosen(validated, chosen)),
        rules_details(rules, metric),
        candidates_details(frontier[~frontier["validated"].astype(bool)]),
        "</section>",
        method_section(summary),
        "</body></html>",
    ]
    return "\n".join(parts)


# --- the answer ----------------------------------------------------------------------------------------------------


def answer_section(
    chosen: dict, row: pd.Series | None, validated: pd.DataFrame, teacher: TeacherReference | None, summary: dict
) -> str:
    metric = summary.get("metric", "bleu")
    label = metric_label(metric)
    target = _target(chosen)
    teacher_name = f"the teacher ({teacher.shape})" if teacher else "the teacher"
    figures = [
        ("Speed", speed_words(chosen, row, teacher)),
        (label, quality_words(chosen, teacher, metric, summary)),
        ("Size", size_words(chosen, row, teacher)),
        ("Memory", (_value(_get(chosen, "memory_mb"), _sig, " MB"), memory_words(summary))),
    ]
    cards = "".join(
        f"<div><dt>{_e(name)}</dt><dd><strong>{_e(big)}</strong><br>{_e(small)}</dd></div>"
        for name, (big, small) in figures
    )
    is_teacher = is_teacher_assembly(chosen["assembly"])
    return (
        "<section id='answer'><p class='kicker'>modformer plan: what to deploy</p>"
        f"<h1>Deploy {_e('the teacher ' if is_teacher else '')}{_e(_shape(chosen['assembly']))} "
        f"in {_e(target_name(target))}</h1>"
        f"<p class='assembly'>Assembly <code>{_e(chosen['assembly'])}</code> served as <code>{_e(target)}</code>; "
        f"<code>modformer export --plan</code> on this folder writes it. Speed-ups and sizes are against "
        f"{_e(teacher_name)} served in <code>torch:fp32</code>.</p>"
        f"<dl class='figures'>{cards}</dl>"
        f"<p class='why'><b>Why this one:</b> {_e(why_chosen(validated, chosen, metric, summary))}</p></section>"
    )


def speed_words(chosen: dict, row: pd.Series | None, teacher: TeacherReference | None) -> tuple[str, str]:
    measured = _get(chosen, "measured_latency_ms")
    speedup = _get(row, "measured_speed_ratio") if row is not None else None
    if speedup is None and teacher is not None and teacher.latency_ms and measured:
        speedup = teacher.latency_ms / measured
    big = _value(measured, _sig, " ms per call")
    small = f"measured (predicted {_value(_get(chosen, 'predicted_latency_ms'), _sig, ' ms')})"
    if speedup is None:
        return big, small + "; the teacher was not timed in this plan"
    teacher_ms = _value(teacher.latency_ms if teacher else None, _sig, " ms")
    small += f": {_times(speedup)} faster than the teacher ({teacher_ms})"
    return big, small


def quality_words(chosen: dict, teacher: TeacherReference | None, metric: str, summary: dict) -> tuple[str, str]:
    score = _get(chosen, metric)
    settings = summary.get("settings", {})
    where = (
        f"on {settings.get('validate_samples', 'the')} held-out pairs of the {settings.get('split', 'held-out')} split"
    )
    if is_teacher_assembly(chosen["assembly"]):
        return _value(score, _score), f"the teacher itself, {where}"
    if teacher is None or teacher.score is None or score is None:
        return _value(score, _score), f"{where}; the teacher's own score was not measured by this plan"
    delta = score - teacher.score
    side = "above" if delta > 0 else "below"
    against = f"{abs(delta):.2f} {side} the teacher's {teacher.score:.2f}" if delta else "equal to the teacher's"
    return _value(score, _score), f"{against}, {where}"


def size_words(chosen: dict, row: pd.Series | None, teacher: TeacherReference | None) -> tuple[str, str]:
    params = _get(row, "params") if row is not None else None
    smaller = _get(chosen, "size_ratio")
    big = _value(params / 1e6 if params is not None else None, _sig, " M parameters")
    if smaller is None:
        return big, "its size against the teacher is not in this plan"
    of_teacher = f" ({_value(teacher.params / 1e6, _sig, ' M')})" if teacher and teacher.params else ""
    return big, f"{_times(smaller)} smaller than the teacher{of_teacher}"


def why_chosen(validated: pd.DataFrame, chosen: dict, metric: str, summary: dict) -> str:
    """The planner's rule (`planner.plan.choose`) applied to this plan, in words: how many points it chose among, and
    what the next best and the fastest of them offer."""
    label = metric_label(metric)
    has_budget = bool(budget_limits(summary.get("budget")))
    ok = validated[validated["within_budget"].astype(bool)] if "within_budget" in validated else validated
    rule = f"the validated point with the highest {label}" + (" within the budget" if has_budget else "")
    text = [
        ("the planner ships " if has_budget else "with no budget, the planner ships ")
        + f"{rule}; a tie goes to the lower predicted latency. {len(validated)} points were validated (generated "
        "on held-out pairs and timed end to end)" + (f", {len(ok)} of them within the budget." if has_budget else ".")
    ]
    score = _get(chosen, metric)
    others = ok[~_is_chosen(ok, chosen)]
    if score is not None:
        ties = int((others[metric] == score).sum())
        text.append(
            f"{ties + 1} tie at {label} {score:.2f}; this one has the lowest predicted latency of them."
            if ties
            else f"This one scores highest, at {label} {score:.2f}."
        )
    ranked = others.sort_values([metric, "predicted_latency_ms"], ascending=[False, True])
    if len(ranked):
        text.append(f"Next best: {_point(ranked.iloc[0], metric)}.")
        fastest = ok.sort_values("measured_latency_ms").iloc[0]
        if not _is_chosen(ok.loc[[fastest.name]], chosen).iloc[0]:
            text.append(f"Fastest {'within the budget' if has_budget else 'validated'}: {_point(fastest, metric)}.")
    return " ".join(text)


def _point(row: pd.Series, metric: str) -> str:
    """A validated point in a sentence: "2-2 in ctranslate2:int8, BLEU 30.56 at 3.32 ms (60.8x faster)"."""
    speed = _get(row, "measured_speed_ratio")
    faster = f" ({_times(speed)} faster than the teacher)" if speed is not None else ""
    return (
        f"{_shape(row['assembly'])} in {_target(row)}, {metric_label(metric)} {_value(_get(row, metric), _score)} "
        f"at {_value(_get(row, 'measured_latency_ms'), _sig, ' ms')}{faster}"
    )


# --- the budget ----------------------------------------------------------------------------------------------------


def budget_limits(budget: dict | None) -> dict[str, float]:
    """The budget's limits that limit anything (None and infinity do not)."""
    return {k: float(v) for k, v in (budget or {}).items() if v is not None and not math.isinf(float(v))}


def budget_words(budget: dict | None, workload: dict | None) -> str:
    """The budget as a sentence with units, e.g. "latency at most 120 ms per call at batch 1; ..."."""
    limits = budget_limits(budget)
    if not limits:
        return "No budget: every assembly was allowed, so the choice is the most accurate validated point."
    batch = f" per call at batch {workload['batch']}" if workload else " per call"
    words = {
        "latency_ms": lambda x: f"latency at most {x:.4g} ms{batch}",
        "memory_mb": lambda x: f"peak memory at most {x:g} MB",
        "params_m": lambda x: f"at most {x:g} million parameters",
        # a lower limit; the plan holds it as the latency limit it implies too (`Budget.resolved`)
        "speedup": lambda x: f"at least {x:g}x faster than the teacher in torch:fp32",
    }
    parts = [words[k](limits[k]) for k in words if k in limits]
    parts += [f"{k} at most {v:g}" for k, v in limits.items() if k not in words]
    return (
        "Budget: " + "; ".join(parts) + ". Each assembly is held to it by the profile's prediction of its cost in "
        "its serving target (measured latency can differ a little; the tables show both)."
    )


def workload_words(workload: dict | None) -> str:
    if not workload:
        return "Latencies are one call of the profile's workload."
    return (
        f"Every latency on this page is one call at batch {workload['batch']}: {workload['src_len']} source tokens "
        f"in, exactly {workload['gen_len']} new tokens out, greedy."
    )


def refresh_words(refresh: dict | None, workload: dict | None) -> str:
    """Whether the profile's predictions were scaled by a refresh (`modformer profile refresh`), and by how much."""
    if not refresh:
        return "Predictions are the profile's, as measured (not refreshed: `modformer profile refresh`)."
    from modformer.profiling.profile import refresh_factor

    batch = (workload or {}).get("batch", 1)
    scaled = [f"{target} x {refresh_factor(refresh, target, batch):.3f}" for target in refresh["factors"]]
    return f"Predictions are scaled by the profile's refresh of {refresh['date']}: " + ", ".join(scaled) + "."


# --- the tables ----------------------------------------------------------------------------------------------------


def memory_words(summary: dict) -> str:
    """What the memory figure is: a peak predicted from measured peaks, or (a profile made without memory) an
    estimate from parameter and cache bytes."""
    if summary.get("memory_source") == "arithmetic":
        return "estimated from parameter and cache bytes (the profile measured no peaks)"
    return "predicted peak, from the profile"


def validated_caption(teacher: TeacherReference | None, metric: str) -> str:
    timed = f" ({_sig(teacher.latency_ms)} ms)" if teacher is not None and teacher.latency_ms is not None else ""
    return (
        f"Fastest first. {metric_label(metric)} on the held-out pairs; latency measured; speed-up over the teacher "
        f"served in torch:fp32{timed}; smaller: the teacher's parameters over the assembly's; memory: the profile's "
        "predicted peak. On frontier: no other validated point is better on every objective."
    )


def validated_table(validated: pd.DataFrame, chosen: dict, metric: str, has_budget: bool) -> pd.DataFrame:
    """The validated points in human units, fastest first (the chosen row is marked by `report_html`)."""
    rows = validated.sort_values("measured_latency_ms", kind="stable")
    table = pd.DataFrame(index=rows.index)
    table["shape"] = rows["assembly"].map(_shape)
    table["served as"] = _targets(rows)
    table[metric_label(metric)] = rows[metric].map(lambda x: _value(x, _score))
    table["latency (ms)"] = _column(rows, "measured_latency_ms", _sig)
    table["speed-up"] = _column(rows, "measured_speed_ratio", _times)
    table["params (M)"] = _column(rows, "params", lambda x: _sig(x / 1e6))
    table["smaller"] = _column(rows, "size_ratio", _times)
    table["memory (MB)"] = _column(rows, "memory_mb", _sig)
    if has_budget:
        table["within budget"] = _column(rows, "within_budget", _yes)
    table["on frontier"] = _column(rows, "on_validated_frontier", _yes)
    table["note"] = [_note(r, chosen) for _, r in rows.iterrows()]
    table["assembly"] = rows["assembly"]
    return table


def rules_details(rules: pd.DataFrame, metric: str) -> str:
    if rules.empty:
        return ""
    table = pd.DataFrame(index=rules.index)
    table["rule"] = rules["strategy"]
    table["shape"] = rules["assembly"].map(_shape)
    table["smaller"] = _column(rules, "size_ratio", _times)
    table["latency (ms, predicted)"] = _column(rules, "latency_ms", _sig)
    table["speed-up (predicted)"] = _column(rules, "speed_ratio", _times)
    table["memory (MB, predicted)"] = _column(rules, "memory_mb", _sig)
    table[metric_label(metric)] = _column(rules, metric, _score)
    table["latency (ms, measured)"] = _column(rules, "measured_latency_ms", _sig)
    table["validated"] = rules[metric].notna().map(_yes) if metric in rules else _yes(False)
    table["assembly"] = rules["assembly"]
    validated = int(rules[metric].notna().sum()) if metric in rules else 0
    return (
        f"<details><summary>Size-first and speed-first sequences ({len(rules)} assemblies, {validated} validated)"
        "</summary><p class='muted'>The two fixed rules, step by step, for comparison: the best of each within the "
        "budget was validated; the rest carry the profile's predictions only.</p>"
        f"{_table(table)}</details>"
    )


def candidates_details(unvalidated: pd.DataFrame) -> str:
    if unvalidated.empty:
        return ""
    rows = unvalidated.sort_values("predicted_latency_ms", kind="stable")
    table = pd.DataFrame(index=rows.index)
    table["shape"] = rows["assembly"].map(_shape)
    table["served as"] = _targets(rows)
    table["latency (ms, predicted)"] = _column(rows, "predicted_latency_ms", _sig)
    table["speed-up (predicted)"] = _column(rows, "speed_ratio", _times)
    table["smaller"] = _column(rows, "size_ratio", _times)
    table["memory (MB, predicted)"] = _column(rows, "memory_mb", _sig)
    table["held-out loss (proxy)"] = _column(rows, "proxy_loss", lambda x: f"{x:.3f}")
    table["assembly"] = rows["assembly"]
    return (
        f"<details><summary>Other points of the proxy frontier, not validated ({len(rows)})</summary>"
        "<p class='muted'>No other scored assembly beats these on every objective by the proxy and the profile's "
        "predictions; the held-out loss is the proxy (lower is better).</p>"
        f"{_table(table)}</details>"
    )


def method_section(summary: dict) -> str:
    search = summary.get("search", {})
    settings = summary.get("settings", {})
    metric = metric_label(summary.get("metric", "bleu"))
    facts = [
        f"Search: {search.get('method', MISSING)}, {_count(search.get('scored'))} assemblies scored with the proxy of "
        f"{_count(search.get('space_size'))} in the space, in {_value(search.get('seconds'), _sig, ' s')}.",
        f"Validation: {_count(summary.get('validated'))} points generated and timed in "
        f"{_value(summary.get('validation_seconds'), _sig, ' s')}, on {_count(settings.get('validate_samples'))} pairs "
        f"of the {settings.get('split', MISSING)} split.",
        f"Rank correlation (Spearman) between the proxy and the validated {metric}: "
        f"{_value(summary.get('proxy_vs_validated_spearman'), lambda x: f'{x:.2f}')}.",
        f"Objectives: {', '.join(summary.get('objectives', [])) or MISSING}; made {summary.get('created', MISSING)}.",
    ]
    items = "".join(f"<li>{_e(f)}</li>" for f in facts)
    return f"<section id='method'><h2>How this plan was made</h2><ul class='facts'>{items}</ul></section>"


# --- cells ---------------------------------------------------------------------------------------------------------

NUMERIC_HEADERS = ("ms", "MB", "(M)", "speed-up", "smaller", "loss", "BLEU", "chrF", "ROUGE")


def _table(table: pd.DataFrame, highlight: pd.Series | None = None) -> str:
    """A table of text cells (already formatted), escaped, inside a container that scrolls sideways when the page is
    narrower than the table."""
    numeric = [any(h in str(c) for h in NUMERIC_HEADERS) for c in table.columns]
    head = "".join(f"<th{' class=num' if n else ''}>{_e(c)}</th>" for c, n in zip(table.columns, numeric, strict=True))
    body = []
    for index, cells in table.iterrows():
        marked = highlight is not None and bool(highlight.get(index, False))
        tds = []
        for column, value, n in zip(table.columns, cells, numeric, strict=True):
            if column == "assembly":
                tds.append(f"<td class='assembly'><code>{_e(value)}</code></td>")
            elif column == "note":  # "chosen, size-first/speed-first" may wrap; numbers and names do not
                tds.append(f"<td class='wrap'>{_e(value)}</td>")
            else:
                tds.append(f"<td{' class=num' if n else ''}>{_e(value)}</td>")
        body.append(f"<tr{' class=chosen' if marked else ''}>{''.join(tds)}</tr>")
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def chosen_row(frontier: pd.DataFrame, chosen: dict) -> pd.Series | None:
    """The frontier's row of the chosen point (None where the table does not hold it)."""
    rows = frontier[_is_chosen(frontier, chosen)]
    return rows.iloc[0] if len(rows) else None


def _is_chosen(rows: pd.DataFrame, chosen: dict) -> pd.Series:
    same = rows["assembly"] == chosen["assembly"]
    if "target" in rows:
        same &= rows["target"] == _target(chosen)
    return same


def _note(row: pd.Series, chosen: dict) -> str:
    notes = []
    if row["assembly"] == chosen["assembly"] and _target(row) == _target(chosen):
        notes.append("chosen")
    if is_teacher_assembly(row["assembly"]):
        notes.append("teacher")
    rule = row.get("rule")
    if isinstance(rule, str) and rule:
        notes.append(rule)
    return ", ".join(notes) or MISSING


def target_name(target: str) -> str:
    """A serving target in words: "CTranslate2 int8", "PyTorch fp32"."""
    engine, _, compute = target.partition(":")
    return f"{ENGINE_NAMES.get(engine, engine)} {compute}".strip()


def _target(record) -> str:
    """A point's serving target; plans made before targets existed served in torch fp32."""
    value = record.get("target") if hasattr(record, "get") else None
    return value if isinstance(value, str) and value else "torch:fp32"


def _targets(rows: pd.DataFrame) -> pd.Series:
    return rows["target"] if "target" in rows else pd.Series("torch:fp32", index=rows.index)


def _shape(assembly: str) -> str:
    return Assembly.parse(assembly).shape


def _get(record, key: str) -> float | None:
    """A number from a dict or a row; None when absent or missing (NaN)."""
    if record is None:
        return None
    value = record.get(key) if hasattr(record, "get") else None
    if value is None or isinstance(value, str):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _column(rows: pd.DataFrame, key: str, fmt) -> pd.Series:
    if key not in rows:
        return pd.Series(MISSING, index=rows.index)
    return rows[key].map(lambda x: _value(x, fmt))


def _value(x, fmt, unit: str = "") -> str:
    """`x` formatted with `fmt` and `unit`, or "–" when missing."""
    if x is None or (pd.api.types.is_scalar(x) and pd.isna(x)):
        return MISSING
    return f"{fmt(x)}{unit}"


def _sig(x: float, digits: int = 3) -> str:
    """`digits` significant digits without an exponent: 190 ms, 9.02 ms, 0.158 ms; thousands separated."""
    x = float(x)
    if x == 0 or math.isinf(x):
        return f"{x:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:,.{decimals}f}"


def _times(x: float) -> str:
    return f"{_sig(x)}x"


def _score(x: float) -> str:
    return f"{float(x):.2f}"


def _yes(x) -> str:
    return "yes" if bool(x) else "no"


def _count(x) -> str:
    return f"{x:,}" if isinstance(x, int) else MISSING


def _e(text) -> str:
    return html.escape(str(text), quote=True)
