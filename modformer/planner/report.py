"""A self-contained HTML report of a plan: the summary, the chosen assembly, the figure (embedded) and the tables."""

from __future__ import annotations

import base64
import html
import io
import json

import pandas as pd
from matplotlib.figure import Figure


def figure_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=130)
    return buffer.getvalue()


def report_html(*, png: bytes, frontier: pd.DataFrame, rules: pd.DataFrame, chosen: dict, summary: dict) -> str:
    """One HTML page with no outside references (the PNG is inlined)."""
    picture = base64.b64encode(png).decode("ascii")
    search = summary["search"]
    validated = frontier[frontier["validated"]]
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;"
        "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>modformer plan</title>",
        f"<style>{style}</style></head><body>",
        "<h1>modformer plan</h1>",
        f"<p>Budget: <code>{html.escape(json.dumps(summary['budget']))}</code>; objectives: "
        f"{html.escape(', '.join(summary['objectives']))}; method <b>{html.escape(search['method'])}</b>: "
        f"{search['scored']:,} of {search['space_size']:,} assemblies scored with the proxy "
        f"({100 * search['scored_fraction']:.1f} %) in {search['seconds']:.1f} s; {summary['validated']} validated in "
        f"{summary['validation_seconds']:.1f} s. Proxy vs validated {html.escape(summary['metric'])} Spearman: "
        f"{_fmt(summary['proxy_vs_validated_spearman'])}.</p>",
        f"<h2>Chosen</h2><p><code>{html.escape(chosen['assembly'])}</code> served in "
        f"<b>{html.escape(str(chosen.get('target', 'torch:fp32')))}</b> &mdash; "
        f"{html.escape(summary['metric'])} {_fmt(chosen[summary['metric']])}, measured "
        f"{_fmt(chosen['measured_latency_ms'])} ms (predicted {_fmt(chosen['predicted_latency_ms'])} ms), "
        f"{_fmt(chosen['memory_mb'])} MB, {_fmt(chosen['size_ratio'])}x smaller, "
        f"{_fmt(chosen['speed_ratio'])}x faster (predicted).</p>",
        f"<img alt='Pareto frontier' style='max-width:100%' src='data:image/png;base64,{picture}'>",
        "<h2>Validated assemblies</h2>",
        validated.to_html(index=False, float_format=lambda x: f"{x:.4g}", escape=True),
        "<h2>Size-first and speed-first points</h2>",
        rules.to_html(index=False, float_format=lambda x: f"{x:.4g}", escape=True),
        "<h2>Proxy frontier</h2>",
        frontier.to_html(index=False, float_format=lambda x: f"{x:.4g}", escape=True),
        "</body></html>",
    ]
    return "\n".join(parts)


def _fmt(x) -> str:
    if x is None:
        return "n/a"
    return f"{x:.4g}" if isinstance(x, float) else html.escape(str(x))
