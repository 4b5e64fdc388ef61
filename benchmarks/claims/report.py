"""The claims, the results record, the table and the plot, computed from the rows and stage wall times alone (so
that `--from-results` rebuilds them from a results file): compute, then render."""

from __future__ import annotations

import itertools
import json

import numpy as np
from harness import Results
from matplotlib.figure import Figure

from claims.config import (
    ABLATIONS,
    COMPARED,
    DROP_TARGET_PCT,
    METHODS,
    PLAN_SIZE_RATIO,
    PLAN_STAGE,
    PLAN_VALIDATE_PAIRS,
    TASKS,
    TRAIN_ONCE_RATIO,
    VARIANTS,
)

NAME = "seed_claims"  # results/seed_claims.json, .md, .png


def mean_bleu(
    rows: list[dict], method: str, shape: str, named_only: bool = False, steps: int | None = None
) -> tuple[float, int] | None:
    """(mean BLEU, how many) of a method's Multi30k rows at a shape (and at `steps`, if given); None if none."""
    picked = [
        r["bleu"]
        for r in rows
        if r["method"] == method
        and r["shape"] == shape
        and r["task"] == "multi30k"
        and (not named_only or r.get("named"))
        and (steps is None or r["steps"] == steps)
    ]
    return (float(np.mean(picked)), len(picked)) if picked else None


def drop(bleu: float, teacher_bleu: float) -> dict:
    """BLEU against the teacher's: the relative drop and whether it is within DROP_TARGET_PCT."""
    pct = 100 * (1 - bleu / teacher_bleu)
    return {
        "bleu": bleu,
        "teacher_bleu": teacher_bleu,
        "relative_drop_pct": pct,
        "target_pct": DROP_TARGET_PCT,
        "met": pct <= DROP_TARGET_PCT,
    }


def shape_claims(rows: list[dict], method: str, steps: int | None) -> dict:
    """At each compared shape: the modular run's named assembly (mean over seeds) against every student trained for
    `steps`, and against the random orders."""
    out: dict = {}
    for shape in COMPARED:
        mod = mean_bleu(rows, method, shape, named_only=True)
        entry: dict = {
            "modular_bleu": mod[0] if mod else None,
            "modular_seeds": mod[1] if mod else 0,
            "students_steps": steps,
        }
        for student in METHODS:
            b = mean_bleu(rows, student, shape, steps=steps)
            entry[f"{student}_bleu"], entry[f"{student}_seeds"] = (b[0], b[1]) if b else (None, 0)
        done = [entry[f"{m}_bleu"] for m in METHODS if entry[f"{m}_bleu"] is not None]
        entry["modular_at_least_every_student"] = (
            mod is not None and len(done) == len(METHODS) and all(mod[0] >= b for b in done)
        )
        rnd = mean_bleu(rows, f"{method}-random", shape)
        entry["random_order_mean_bleu"] = rnd[0] if rnd else None
        entry["random_orders"] = rnd[1] if rnd else 0
        out[shape] = entry
    return out


def method_claims(rows: list[dict], method: str, walls: dict) -> dict:
    """The acceptance lines that concern one modular run (`method`, its random orders `method`-random), against the
    students trained for the same steps."""
    m30 = [r for r in rows if r["task"] == "multi30k"]
    teacher = next((r for r in m30 if r["method"] == "teacher"), None)
    first = next((r for r in m30 if r["method"] == method and r["seed"] == 0), None)
    steps = first["steps"] if first else None
    out = shape_claims(rows, method, steps)
    if teacher:
        size_first = [r for r in m30 if r["method"] == method and r["rule"] == "size-first" and r["seed"] == 0]
        at2 = min(size_first, key=lambda r: abs(r["size_ratio"] - 2.0), default=None)
        if at2:
            seeds = [  # each seed's row of that assembly (a plan that chose it is the plan's claim, below)
                r["bleu"]
                for r in m30
                if r["method"] == method and r["assembly"] == at2["assembly"] and r["rule"] != "planned"
            ]
            out["at_2x_size"] = {
                "assembly": at2["assembly"],
                "size_ratio": at2["size_ratio"],
                "seeds": len(seeds),
                **drop(float(np.mean(seeds)), teacher["bleu"]),
            }
    plans = [r for r in m30 if r["method"] == method and r["rule"] == "planned"]
    if teacher and plans:
        out["at_2x_size_planned"] = {
            "assemblies": [r["assembly"] for r in plans],
            "size_ratios": [r["size_ratio"] for r in plans],
            "seeds": len(plans),
            **drop(float(np.mean([r["bleu"] for r in plans])), teacher["bleu"]),
            "how": f"`modformer plan --budget params_m<=` teacher / {PLAN_SIZE_RATIO:g}, chosen on val "
            f"({PLAN_VALIDATE_PAIRS} pairs), scored on test",
        }
    beats = {
        s: (out[s]["modular_bleu"] > out[s]["random_order_mean_bleu"])
        for s in COMPARED
        if out[s]["modular_bleu"] is not None and out[s]["random_order_mean_bleu"] is not None
    }
    per_seed = {}  # seed -> shape -> the rule's assembly beats that seed's random orders (their mean)
    for seed in sorted({r["seed"] for r in m30 if r["method"] == method}):
        mine = [r for r in rows if r["seed"] == seed]
        for s in COMPARED:
            rule, rnd = mean_bleu(mine, method, s, named_only=True), mean_bleu(mine, f"{method}-random", s)
            if rule and rnd:
                per_seed.setdefault(str(seed), {})[s] = rule[0] > rnd[0]
    out["deterministic_beats_random"] = {
        "per_shape": beats,
        "per_seed": per_seed,
        "met": bool(beats) and all(beats.values()) and all(all(v.values()) for v in per_seed.values()),
    }
    out["train_once"] = train_once(m30, first, steps, walls)
    return out


def train_once(m30: list[dict], first: dict | None, steps: int | None, walls: dict) -> dict:
    """Training wall time as each run records it (pseudo students: plus the shared labels' generation, counted
    once): the modular run against the students of its steps."""
    students = [r for r in m30 if r["rule"] == "student" and r["seed"] == 0 and r["steps"] == steps]
    labels = walls.get("multi30k-pseudo-labels", 0.0)
    replaced = sum(r["wall_s"] for r in students) - labels * max(sum(r["method"] == "pseudo" for r in students) - 1, 0)
    kd = next((r for r in students if r["method"] == "kd" and r["shape"] == "6-6"), None)
    # Like for like only: both measured by this run (a carried row's wall time is another machine's).
    alike = first is not None and kd is not None and not first.get("carried") and not kd.get("carried")
    ratio = first["wall_s"] / kd["wall_s"] if alike else None
    return {
        "modular_wall_s": first["wall_s"] if first else None,
        "kd_6_6_wall_s": kd["wall_s"] if kd else None,
        "ratio_to_kd_6_6": ratio,
        "ratio_target": TRAIN_ONCE_RATIO,
        "ratio_met": ratio <= TRAIN_ONCE_RATIO if ratio is not None else None,
        "students_wall_s": replaced,
        "students_runs": len(students),
        "students_steps": steps,
        "pseudo_labels_s": labels,
        "students": f"{len(METHODS)} methods x {len(COMPARED)} shapes (pseudo-labels once)",
        "note": "the modular run serves every shape; each student serves one",
    }


def claims(rows: list[dict], walls: dict) -> dict:
    """The issue's acceptance lines, each with the figures behind it: for the default modular run, then for each
    variant of its recipe."""
    out = method_claims(rows, "modular", walls)
    out["ablations"] = {"of": "modular-v0 (the seed recipe)"}
    for name in ABLATIONS:
        for shape in COMPARED:
            a = mean_bleu(rows, name, shape)
            out["ablations"].setdefault(name, {})[shape] = a[0] if a else None
    m30 = [r for r in rows if r["task"] == "multi30k"]
    for name, variant in VARIANTS.items():
        first = next((r for r in m30 if r["method"] == name and r["seed"] == 0), None)
        if first is not None:
            out.setdefault("variants", {})[name] = {
                "options": " ".join(variant.options),
                "steps": first["steps"],
                "wall_s": first["wall_s"],
                **method_claims(rows, name, walls),
            }
    return out


def machine_summary(machine: dict) -> str:
    """One line of the machine record, for the table's header."""
    system = str(machine.get("platform", "")).split("-")[0]
    return (
        f"{machine.get('cpu_model')}, {machine.get('logical_cores')} cores, torch {machine.get('torch')}, "
        f"{machine.get('torch_threads')} threads, {system}"
    )


def result_record(rows: list[dict], walls: dict, settings: dict, provenance: dict, missing: list[str]) -> dict:
    """The results file: provenance (command, date, machine) and settings of the run that measured the rows, what it
    left out, the stage wall times, the claims and the rows."""
    return {
        **provenance,
        "machine_summary": machine_summary(provenance["machine"]),
        "settings": settings,
        "complete": not missing,
        "missing": missing,
        "walls": walls,
        "claims": claims(rows, walls),
        "rows": rows,
    }


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [
        f"# Seed claims: results\n\nCommand: `{result['command']}`  \nMachine: {result['machine_summary']}  \n"
        f"Complete: {result['complete']}"
        + (f" (missing: {', '.join(result['missing'])})" if result["missing"] else "")
        + "\n"
    ]
    if "carried" in result:
        c = result["carried"]
        renamed = ", ".join(f"`{old}` as `{new}`" for old, new in c["renamed"].items())
        plans = sum(stage.startswith(PLAN_STAGE) for stage in c["stages"])
        lines.append(
            f"Rows marked † are carried from `{c['from']}` ({c['date']}): {len(c['stages']) - plans} training runs"
            + (f" and {plans} plans" if plans else "")
            + " of an earlier run of this benchmark whose folders this one lacks, not trained again"
            + (f"; renamed: {renamed}" if renamed else "")
            + ". Their wall times are that run's machine's.\n"
        )
    for task in TASKS:
        picked = [r for r in rows if r["task"] == task]
        if not picked:
            continue
        metric = "ROUGE-L" if task == "squad_qg" else "chrF"
        lines += [
            f"\n## {task}\n",
            f"| method | shape | assembly | size x | speed x | BLEU | {metric} | steps | train s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(picked, key=lambda r: (r["method"] != "teacher", r["method"], r["size_ratio"])):
            other = r["rougeL"] if task == "squad_qg" else r["chrf"]
            speed = f"{r['speed_ratio']:.2f}" if r.get("speed_ratio") else "-"
            wall = f"{r['wall_s']:.0f}" if r.get("wall_s") else "-"
            method = (
                r["method"]
                + (" planned" if r["rule"] == "planned" else "")
                + (f" (seed {r['seed']})" if r["seed"] else "")
                + (" †" if r.get("carried") else "")
            )
            lines.append(
                f"| {method} | {r['shape']} | `{r['assembly']}` | {r['size_ratio']:.2f} | {speed} | "
                f"{r['bleu']:.2f} | {other:.2f} | {r['steps'] or '-'} | {wall} |"
            )
    lines += [
        "\n## Claims\n",
        "```json",
        json.dumps(result["claims"], indent=2),
        "```",
        "\n## Stage wall times (s)\n",
        "```json",
        json.dumps(result["walls"], indent=2, sort_keys=True),  # as the results file has them
        "```",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict]) -> Figure | None:
    """BLEU against size ratio and against measured speed ratio: the modular runs, their random orders, the
    students (hollow: trained for other steps than the default run), the ablations, variants and the planner's picks.
    None if there are no Multi30k rows."""
    m30 = [r for r in rows if r["task"] == "multi30k"]
    if not m30:
        return None
    base = next((r["steps"] for r in m30 if r["method"] == "modular"), None)

    def budget(r: dict) -> int | None:
        """A student's steps where they differ from the modular run's (plotted hollow, labelled); else None."""
        return r["steps"] if r["rule"] == "student" and r["steps"] != base else None

    fig = Figure(figsize=(13, 6))
    axes = fig.subplots(1, 2)
    for ax, x in zip(axes, ("size_ratio", "speed_ratio"), strict=True):
        for rule, color in (("size-first", "C0"), ("speed-first", "C9")):
            mod = sorted(
                (r for r in m30 if r["method"] == "modular" and r["seed"] == 0 and r["rule"] == rule and r.get(x)),
                key=lambda r: r[x],
            )
            ax.plot([r[x] for r in mod], [r["bleu"] for r in mod], "o-", color=color, label=f"modular, {rule}")
            for r in mod:
                if r["named"]:
                    ax.annotate(r["shape"], (r[x], r["bleu"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        styles = {
            "modular-random": ("x", "C7"),
            "sft": ("s", "C1"),
            "kd": ("^", "C2"),
            "pseudo": ("v", "C3"),
            "no-curriculum": ("D", "C4"),
            "no-attn": ("P", "C5"),
            "teacher": ("*", "k"),
            **dict(
                zip(
                    VARIANTS,
                    itertools.cycle((("h", "C6"), ("H", "C8"), ("p", "goldenrod"), ("d", "teal"), ("8", "slategray"))),
                )
            ),
        }
        for method, (marker, color) in styles.items():
            pts = [r for r in m30 if r["method"] == method and r.get(x)]
            for steps in sorted({budget(r) for r in pts}, key=lambda b: b or 0):
                at = [r for r in pts if budget(r) == steps]
                ax.scatter(
                    [r[x] for r in at],
                    [r["bleu"] for r in at],
                    marker=marker,
                    s=60,
                    zorder=3,
                    label=method + (f", {steps} steps" if steps else ""),
                    **({"facecolors": "none", "edgecolors": color} if steps else {"color": color}),
                )
        planned = [r for r in m30 if r["rule"] == "planned" and r.get(x)]
        if planned:  # ringed: the planner's pick within half the teacher's parameters, of each run
            ax.scatter(
                [r[x] for r in planned],
                [r["bleu"] for r in planned],
                s=160,
                facecolors="none",
                edgecolors="k",
                label="planner's pick, <= half the parameters",
                zorder=4,
            )
        ax.set_xlabel(
            {
                "size_ratio": "size ratio (teacher params / model params)",
                "speed_ratio": "measured speed ratio (teacher ms / model ms, batch 1)",
            }[x]
        )
        ax.set_ylabel("BLEU, Multi30k test_2016_flickr")
        ax.grid(alpha=0.3)
    # below both panels: inside either, it hides points
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=8)
    fig.suptitle("One modular run vs. students trained per shape (Multi30k En-De)")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def write(results: Results, result: dict) -> None:
    """seed_claims.json, .md and .png."""
    results.write(result)
    results.write_text(".md", markdown(result))
    figure = plot(result["rows"])
    if figure is not None:
        results.save_figure(figure, dpi=120)
