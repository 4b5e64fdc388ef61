"""Serving targets: depth x engine x precision, predicted, planned and validated on the 12+12 Multi30k teacher.

    python benchmarks/targets.py [--modules DIR] [--work runs/bench-targets] [--threads 1,2] [--held-out 20]

Stages, each cached under --work (a rerun skips what is done):
1. modules: `modformer train` with the best recipe `benchmarks/seed_claims.py` found (three hybrids per step, no
   attention distillation, 4,000 steps, batch 32, granularities 2,3,4,6), or --modules to reuse such a run.
2. parity: the size-first 6-6 assembly exported to torch:fp32, ctranslate2:float32 and ctranslate2:int8; greedy
   outputs for the first --parity-n test_2016_flickr sources (64 new tokens at most): the share of sources whose
   CTranslate2 float32 output equals transformers' token for token (`export_parity`), and BLEU per target.
2b. serving_table: the teacher and that 6-6 assembly in every target side by side, one thread, batch 1 (32-token
   source, 32 new tokens; the least of 10 rounds): latency, speed-up over the teacher in torch fp32, BLEU.
3. profiles: `modformer profile --modules M --threads T --out ...` with the CLI's defaults otherwise (every target
   this machine supports), once per thread count; each thread count's held-out rows (4) are measured right after
   its profile, so that the machine has as little time as possible to drift between the two.
4. held_out: --held-out random valid assemblies (`choose_assemblies`, never the teacher), each measured at batch 1
   and 8 (source 32, 32 new tokens, the profile's statistic of 10 rounds in torch and 40 in an engine, as the
   profile's defaults; all assemblies round-robin) in every target, beside its prediction: torch by the block
   profile, engines by the depth fit. Engines are timed as the profile times them, in a fresh process that never
   loads torch (`modformer.profiling.engine_process`). The teacher is timed in the same round-robin as a reference
   row: its measured latency over its prediction is the machine's `drift` since the profile, reported per cell with
   the MAPE of the predictions scaled by it beside the plain MAPE (the acceptance figure). Right before a thread
   count's rows, `modformer profile refresh` re-times the teacher in every target (`profile-tN-refreshed.json`, the
   profile itself kept): `latency_mape_refreshed` is the MAPE of that refreshed profile's predictions, what a user
   gets by refreshing a profile before planning. The engine exports' peak memory (a fresh process loads the export
   and runs one call) is compared with the fit's prediction at the first thread count. Predictions are recomputed from the cached profiles on every run (only measurements are cached).
5. plans: `modformer plan` with the 1-thread profile, default settings, once over torch:fp32 only and once over every
   target (timed: `plan_seconds`); the teacher's BLEU on the same validation pairs, generated under torch fp32.
   `joint_vs_torch_only` states each latency budget as a speed-up over the teacher (every plan times its points
   beside the teacher), at each speed-up a torch-only validated point reaches.

Writes benchmarks/results/targets.json with the command, machine and date.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from harness import (
    DATASETS,
    RUNS,
    TEACHER,
    JsonCache,
    Results,
    add_results_options,
    data_args,
    provenance,
    read_results,
    recorded_provenance,
    run,
)

from modformer.checkpoints import load_tokenizer
from modformer.data import load_split
from modformer.evaluation import generate, lazy_cache, text_scores
from modformer.modular.assembly import Assembly
from modformer.modular.export import export_assembly
from modformer.modular.model import CONFIG_NAME, ModularModel
from modformer.modular.strategies import assembly_for_shape
from modformer.planner.artifact import Plan
from modformer.profiling.cost_model import predict
from modformer.profiling.engines import EngineCosts, engine_peak_memory, time_engine_models
from modformer.profiling.profile import LatencyProfile, Workload
from modformer.profiling.timer import Timer, Timing
from modformer.profiling.validate import choose_assemblies, sample_models, time_models
from modformer.serving.ctranslate2_engine import CTranslate2Generator
from modformer.serving.targets import Target

NAME = "targets"
RECIPE = ["--granularities", "2,3,4,6", "--steps", 4000, "--batch-size", 32, "--hybrids-per-step", 3, "--w-attn", 0]
PARITY_SHAPE = "6-6"
TARGETS = ("torch:fp32", "ctranslate2:float32", "ctranslate2:int8")
BATCHES = (1, 8)
REPEATS = 10  # timed rounds per held-out torch measurement (the least or the median, as the profile)
ENGINE_REPEATS = 40  # per engine measurement: as many rounds as the profile times engines with by default
PASSES = 2  # the profile's default: torch rounds in 2 passes, engine rounds in 4
TARGET_MAPE, TARGET_SPEARMAN, TARGET_MEMORY_MAPE, TARGET_PARITY, TARGET_SPEEDUP = 5.0, 0.97, 10.0, 0.95, 25.0
DERIVED = (
    "serving_speedups",
    "per_target",
    "joint_vs_torch_only",
    "speedup_at_1bleu",
    "targets_met",
    "int8_bleu_delta",
    "export_parity",
)


# --------------------------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------------------------
def modules_stage(args) -> Path:
    if args.modules:
        return Path(args.modules)
    out = args.work / "modules"
    done = (
        json.loads((out / CONFIG_NAME).read_text())["training"]["completed_steps"]
        if (out / CONFIG_NAME).is_file()
        else 0
    )
    if done < 4000:
        again = ["--resume"] if done else []
        run(
            ["train", "--teacher", TEACHER, *data_args("multi30k"), *RECIPE, "--out", out, *again],
            args.work / "train.log",
            threads=1,
        )
    return out


def hf_ids(model, tokenizer, sources: list[str], max_new_tokens: int) -> list[list[int]]:
    """transformers' greedy outputs, without the start token, stopped at the end token, pads dropped."""
    eos, pad = model.generation_config.eos_token_id, model.generation_config.pad_token_id
    rows = []
    for start in range(0, len(sources), 32):
        enc = tokenizer(sources[start : start + 32], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, **lazy_cache(model)
            )
        for row in out[:, 1:].tolist():
            row = row[: row.index(eos)] if eos in row else row
            rows.append([t for t in row if t != pad])
    return rows


def parity_stage(args, modules: Path, cache: JsonCache) -> dict:
    if "parity" in cache.data:
        return cache.data["parity"]
    modular = ModularModel.from_pretrained(modules)
    c = modular.config
    assembly = assembly_for_shape(PARITY_SHAPE, c.encoder_layers, c.decoder_layers, c.granularities)
    tokenizer = load_tokenizer(c.teacher)
    pairs = load_split(DATASETS["multi30k"].spec(), DATASETS["multi30k"].test, limit=args.parity_n)
    sources, references = list(pairs.sources), list(pairs.targets)
    torch_ids = hf_ids(modular.assemble(assembly), tokenizer, sources, 64)
    record = {"assembly": str(assembly), "n": len(sources), "bleu": {}}
    record["bleu"]["torch:fp32"] = text_scores(tokenizer.batch_decode(torch_ids, skip_special_tokens=True), references)[
        "bleu"
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in TARGETS[1:]:
            target = Target.parse(name)
            export_assembly(modular, assembly, Path(tmp) / name, target=target)
            generator = CTranslate2Generator(Path(tmp) / name, target, threads=args.threads[0])
            ids = generator.generate_ids(generator.source_tokens(sources), max_new_tokens=64)
            texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
            record["bleu"][name] = text_scores(texts, references)["bleu"]
            if name == "ctranslate2:float32":
                record["float32_same_tokens"] = sum(a == b for a, b in zip(ids, torch_ids, strict=True))
    cache.data["parity"] = record
    cache.save()
    return record


def serving_table_stage(args, modules: Path, cache: JsonCache) -> list[dict]:
    """The teacher and the 6-6 assembly in every target, side by side: BLEU on the parity sources, and latency at
    batch 1 (32-token source, 32 new tokens, one thread, the least of REPEATS rounds)."""
    if "serving_table" in cache.data:
        return cache.data["serving_table"]
    torch.set_num_threads(1)
    modular = ModularModel.from_pretrained(modules)
    c = modular.config
    tokenizer = load_tokenizer(c.teacher)
    pairs = load_split(DATASETS["multi30k"].spec(), DATASETS["multi30k"].test, limit=args.parity_n)
    sources, references = list(pairs.sources), list(pairs.targets)
    shapes = {
        "12-12 (teacher)": Assembly.teacher(c.encoder_layers, c.decoder_layers),
        PARITY_SHAPE: assembly_for_shape(PARITY_SHAPE, c.encoder_layers, c.decoder_layers, c.granularities),
    }
    w = Workload(batch=1, src_len=32, gen_len=32)
    models = {name: modular.assemble(a) for name, a in shapes.items()}
    timings = time_models(list(models.values()), w, Timer("cpu"), int(modular.teacher.config.vocab_size), 0, 2, REPEATS)
    rows = []
    for (name, model), timing in zip(models.items(), timings, strict=True):
        texts = tokenizer.batch_decode(hf_ids(model, tokenizer, sources, 64), skip_special_tokens=True)
        rows.append(
            {
                "model": name,
                "target": "torch:fp32",
                "ms": timing.value("min"),
                "bleu": text_scores(texts, references)["bleu"],
            }
        )
    with tempfile.TemporaryDirectory() as tmp:
        for name, a in shapes.items():
            for target_name in TARGETS[1:]:
                target = Target.parse(target_name)
                folder = Path(tmp) / f"{target.compute_type}-{a.shape}"
                export_assembly(modular, a, folder, target=target)
                ms = float(
                    np.min(time_engine_models([folder], target, [w], threads=1, warmup=3, repeats=REPEATS)[0][0])
                )
                texts = CTranslate2Generator(folder, target, threads=1).generate(sources, max_new_tokens=64)
                rows.append(
                    {"model": name, "target": target_name, "ms": ms, "bleu": text_scores(texts, references)["bleu"]}
                )
    cache.data["serving_table"] = rows
    cache.save()
    return rows


def profile_stage(args, modules: Path, threads: int) -> Path:
    path = args.work / f"profile-t{threads}.json"
    if not path.is_file():
        run(
            ["profile", "--modules", modules, "--threads", threads, "--out", path],
            args.work / "profile.log",
            threads=threads,
        )
    return path


def held_out_stage(args, modules: Path, profiles: dict[int, Path], cache: JsonCache, *, memory_too: bool) -> list[dict]:
    """The held-out rows measured beside `profiles` (thread count -> profile); engine peak memory too if
    `memory_too`."""
    rows = cache.data.setdefault("held_out", [])
    done = {(r["threads"], r["batch"], r["target"]) for r in rows}
    modular = ModularModel.from_pretrained(modules)
    c = modular.config
    assemblies = choose_assemblies(c.encoder_layers, c.decoder_layers, c.granularities, args.held_out, seed=1)
    # the teacher is timed in the same round-robin: the machine's speed in this window against the profile's
    # (`drift`; a shared VM's speed moves by 10 % or more over minutes), kept as a row of its own
    teacher = Assembly.teacher(c.encoder_layers, c.decoder_layers)
    timed = [*assemblies, teacher]
    for threads, path in profiles.items():
        profile = LatencyProfile.load(path)
        engines = EngineCosts.of(profile)
        torch.set_num_threads(threads)
        workloads = [Workload(batch=batch, src_len=32, gen_len=32) for batch in BATCHES]
        measured_here = [(threads, w.batch, name) for w in workloads for name in TARGETS]
        if not all(key in done for key in measured_here):  # a refresh right before the rows it is judged on
            run(
                ["profile", "refresh", path, "--modules", modules, "--out", refreshed(path), "--overwrite"],
                args.work / "profile.log",
                threads=threads,
            )
        for w in workloads:
            if (threads, w.batch, "torch:fp32") in done:
                continue
            models = [modular.assemble(a) for a in timed]
            vocab = int(modular.teacher.config.vocab_size)
            samples = [[] for _ in models]
            for _ in range(PASSES):  # as the profile: the rounds spread over passes, a burst hits a share of them
                rounds = sample_models(models, w, Timer("cpu"), vocab, 0, 2, REPEATS // PASSES)
                samples = [kept + new for kept, new in zip(samples, rounds, strict=True)]
            for a, kept in zip(timed, samples, strict=True):
                measured = Timing.from_samples(kept).value(profile.statistic)
                rows.append(_row(threads, w.batch, "torch:fp32", a, predict(profile, a, w).latency_ms, measured))
            cache.save()
        for name in TARGETS[1:]:
            if threads not in args.engine_threads:  # a thread count the engines are not measured at
                continue
            if all((threads, w.batch, name) in done for w in workloads):
                continue
            target = Target.parse(name)
            with tempfile.TemporaryDirectory() as tmp:
                folders = [Path(tmp) / str(n) for n in range(len(timed))]
                for a, folder in zip(timed, folders, strict=True):
                    export_assembly(modular, a, folder, target=target)
                # every assembly round-robin in a process of its own, both batch sizes in passes, as the profile
                # measures its depths
                timings = time_engine_models(
                    folders, target, workloads, threads=threads, warmup=3, repeats=ENGINE_REPEATS, passes=2 * PASSES
                )
                for w, per_model in zip(workloads, timings, strict=True):
                    for a, folder, kept in zip(timed, folders, per_model, strict=True):
                        measured = Timing.from_samples(kept).value(profile.statistic)
                        latency, memory = engines.predict(name, len(a.encoder), len(a.decoder), w)
                        row = _row(threads, w.batch, name, a, float(latency), measured)
                        if memory_too and a != teacher:  # memory does not depend on the thread count: once
                            peak = engine_peak_memory(folder, target, w, threads=threads)
                            row |= {"predicted_mb": float(memory), "measured_mb": peak / 2**20}
                        rows.append(row)
            cache.save()
    return rows


def refreshed(profile: Path) -> Path:
    """Where `modformer profile refresh` writes a thread count's refreshed profile (the profile itself is kept)."""
    return profile.with_name(profile.stem + "-refreshed.json")


def refresh_predictions(rows: list[dict], profiles: dict[int, Path]) -> None:
    """Predictions are derived from the cached profiles: recompute them, so that a change of the predictor is judged
    on the same measurements (only the measurements are expensive). `refreshed_ms`: the prediction of the profile
    refreshed right before the rows were measured, where there is one."""
    for name, paths in (("predicted_ms", profiles), ("refreshed_ms", {t: refreshed(p) for t, p in profiles.items()})):
        loaded = {threads: LatencyProfile.load(path) for threads, path in paths.items() if path.is_file()}
        engines = {threads: EngineCosts.of(profile) for threads, profile in loaded.items()}  # fits cached per profile
        for row in rows:
            profile = loaded.get(row["threads"])
            if profile is None:
                continue
            w = Workload(batch=row["batch"], src_len=32, gen_len=32)
            a = Assembly.parse(row["assembly"])
            if row["target"] == "torch:fp32":
                row[name] = float(predict(profile, a, w).latency_ms)
                continue
            latency, memory = engines[row["threads"]].predict(row["target"], len(a.encoder), len(a.decoder), w)
            row[name] = float(latency)
            if "predicted_mb" in row and name == "predicted_ms":
                row["predicted_mb"] = float(memory)


def _row(threads, batch, target, assembly, predicted, measured) -> dict:
    return {
        "threads": threads,
        "batch": batch,
        "target": target,
        "assembly": str(assembly),
        "predicted_ms": float(predicted),
        "measured_ms": float(measured),
    }


def plans_stage(args, modules: Path, profile: Path, cache: JsonCache) -> dict:
    record = cache.data.setdefault("plans", {})
    for name, extra in (("torch_only", ["--targets", "torch:fp32"]), ("joint", [])):
        out = args.work / f"plan-{name}"
        if not Plan.is_complete(out):
            seconds = run(
                [
                    "plan",
                    "--modules",
                    modules,
                    "--profile",
                    profile,
                    *data_args("multi30k", split_option="--split"),
                    "--out",
                    out,
                    "--overwrite",
                    *extra,
                ],
                args.work / "plan.log",
                threads=1,
            )
            record[name] = {"plan_seconds": seconds}
        plan = Plan.load(out)
        validated = plan.frontier[plan.frontier["validated"]]
        columns = ["assembly", "target", "bleu", "measured_latency_ms", "measured_speed_ratio", "on_validated_frontier"]
        record.setdefault(name, {})["validated"] = json.loads(validated[columns].to_json(orient="records"))
        record[name]["chosen"] = {k: plan.chosen.get(k) for k in ("assembly", "target", "bleu", "measured_latency_ms")}
    if "teacher_bleu" not in record:
        modular = ModularModel.from_pretrained(modules)
        tokenizer = load_tokenizer(modular.config.teacher)
        pairs = load_split(DATASETS["multi30k"].spec(), DATASETS["multi30k"].val).take(200)
        batches = pairs.tokenize(tokenizer).batches(64, shuffle=False)
        record["teacher_bleu"] = text_scores(generate(modular.teacher, tokenizer, batches), list(pairs.targets))["bleu"]
    cache.save()
    return record


def measure(args) -> dict:
    args.work.mkdir(parents=True, exist_ok=True)
    cache = JsonCache(args.work / "cache.json")
    modules = modules_stage(args)
    parity = parity_stage(args, modules, cache)
    serving_table = serving_table_stage(args, modules, cache)
    profiles = {}
    for threads in args.threads:  # each thread count's rows right after its profile: less time for the machine to drift
        profiles[threads] = profile_stage(args, modules, threads)
        held_out_stage(args, modules, {threads: profiles[threads]}, cache, memory_too=threads == min(args.threads))
    held_out = cache.data["held_out"]
    refresh_predictions(held_out, profiles)
    plans = plans_stage(args, modules, profiles[min(profiles)], cache)
    return {
        **provenance(threads=min(args.threads)),
        "parity": parity,
        "serving_table": serving_table,
        "held_out": held_out,
        "plans": plans,
    }


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------
def mape(rows: pd.DataFrame, predicted: str, measured: str) -> float:
    return float((100 * (rows[predicted] - rows[measured]).abs() / rows[measured]).mean())


def is_teacher(text: str) -> bool:
    a = Assembly.parse(text)
    return max(a.encoder + a.decoder) == 1


def per_target(held_out: pd.DataFrame) -> dict:
    """Per target, thread count and batch: latency MAPE and Spearman over the held-out assemblies (the teacher's
    reference row left out), and where the teacher was timed in the same window, `drift` (its measured latency over
    its prediction: how much faster or slower the machine ran than while profiling) and the MAPE of the predictions
    scaled by it (`latency_mape_drift_corrected`: the predictor's error with the machine's speed change taken out);
    where the rows have a refreshed profile's predictions, their MAPE (`latency_mape_refreshed`) and `met_refreshed`."""
    out = {}
    teacher = held_out["assembly"].map(is_teacher)  # the reference rows (no held-out assembly is the teacher)
    for target, group in held_out.groupby("target", sort=False):
        cells = {}
        for (threads, batch), both in group.groupby(["threads", "batch"]):
            rows = both[~teacher[both.index]]
            cells[f"threads{threads}_batch{batch}"] = {
                "n": len(rows),
                "latency_mape": round(mape(rows, "predicted_ms", "measured_ms"), 2),
                "latency_spearman": round(float(rows["predicted_ms"].rank().corr(rows["measured_ms"].rank())), 3),
            }
            if "refreshed_ms" in rows and rows["refreshed_ms"].notna().all():
                cells[f"threads{threads}_batch{batch}"]["latency_mape_refreshed"] = round(
                    mape(rows, "refreshed_ms", "measured_ms"), 2
                )
            reference = both[teacher[both.index]]
            if len(reference):
                drift = float(reference["measured_ms"].iloc[0] / reference["predicted_ms"].iloc[0])
                scaled = rows.assign(predicted_ms=rows["predicted_ms"] * drift)
                cells[f"threads{threads}_batch{batch}"] |= {
                    "drift": round(drift, 4),
                    "latency_mape_drift_corrected": round(mape(scaled, "predicted_ms", "measured_ms"), 2),
                }
        entry = {"cells": cells}
        if "predicted_mb" in group and group["predicted_mb"].notna().any():
            entry["memory_mape"] = round(mape(group.dropna(subset=["predicted_mb"]), "predicted_mb", "measured_mb"), 2)
            entry["memory"] = (
                "peak resident memory of a fresh process loading the export and running one call, against the depth fit"
            )
        else:
            entry["memory"] = "not measured here (benchmarks/profiler.py measures torch peak memory)"
        entry["met"] = met(cells, "latency_mape", entry)
        if all("latency_mape_refreshed" in c for c in cells.values()):  # the same, from the refreshed profiles
            entry["met_refreshed"] = met(cells, "latency_mape_refreshed", entry)
        out[target] = entry
    return out


def met(cells: dict, mape_key: str, entry: dict) -> bool:
    """Whether every cell's `mape_key` and Spearman, and the target's memory MAPE, are within the acceptance."""
    return (
        all(c[mape_key] <= TARGET_MAPE and c["latency_spearman"] >= TARGET_SPEARMAN for c in cells.values())
        and entry.get("memory_mape", 0.0) <= TARGET_MEMORY_MAPE
    )


def best_at_least(points: list[dict], speedup: float) -> float | None:
    """The best validated BLEU among points at least `speedup` times faster than the teacher (timed beside it)."""
    inside = [p["bleu"] for p in points if p["measured_speed_ratio"] >= speedup - 1e-9]
    return max(inside) if inside else None


def report(measured: dict) -> dict:
    parity, plans = measured["parity"], measured["plans"]
    held_out = pd.DataFrame(measured["held_out"])
    torch_only, joint = plans["torch_only"]["validated"], plans["joint"]["validated"]
    # A latency budget as a speed-up over the teacher: each plan times its points beside the teacher, so the two
    # plans' budgets compare even when the machine ran faster or slower during one of them.
    budgets = sorted({p["measured_speed_ratio"] for p in torch_only})
    comparison = [
        {"speedup": b, "torch_only_bleu": best_at_least(torch_only, b), "joint_bleu": best_at_least(joint, b)}
        for b in budgets
    ]
    holds = all(c["joint_bleu"] is not None and c["joint_bleu"] >= c["torch_only_bleu"] for c in comparison)
    close = [p for p in joint if p["bleu"] >= plans["teacher_bleu"] - 1.0]
    fastest = max(close, key=lambda p: p["measured_speed_ratio"]) if close else None
    teacher_ms = next(
        r["ms"] for r in measured["serving_table"] if r["target"] == "torch:fp32" and "teacher" in r["model"]
    )
    served = [{**r, "speedup": round(teacher_ms / r["ms"], 2)} for r in measured["serving_table"]]
    result = {
        **{k: v for k, v in measured.items()},
        "serving_speedups": served,
        "export_parity": round(parity["float32_same_tokens"] / parity["n"], 4),
        "int8_bleu_delta": round(parity["bleu"]["ctranslate2:int8"] - parity["bleu"]["ctranslate2:float32"], 2),
        "per_target": per_target(held_out),
        "joint_vs_torch_only": {"holds": holds, "budgets": comparison},
        "speedup_at_1bleu": None
        if fastest is None
        else {
            "speedup": round(fastest["measured_speed_ratio"], 2),
            **{k: fastest[k] for k in ("assembly", "target", "bleu")},
        },
    }
    result["targets_met"] = {
        "export_parity": result["export_parity"] >= TARGET_PARITY,
        "per_target": all(t["met"] for t in result["per_target"].values()),
        "joint_vs_torch_only": holds,
        "speedup_at_1bleu": fastest is not None and fastest["measured_speed_ratio"] >= TARGET_SPEEDUP,
        "plan_under_5_min": plans["joint"].get("plan_seconds", float("inf")) < 300,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", help="a modular run of the best recipe to reuse (default: train one in --work)")
    parser.add_argument("--work", type=Path, default=RUNS / "bench-targets")
    parser.add_argument("--threads", default="1,2", help="thread counts to profile and measure at")
    parser.add_argument(
        "--engine-threads",
        help="thread counts at which the engines' held-out rows are measured (default: every --threads); the "
        "profiles still time engines at every --threads",
    )
    parser.add_argument("--held-out", type=int, default=20)
    parser.add_argument("--parity-n", type=int, default=200)
    add_results_options(parser, NAME)
    args = parser.parse_args()
    args.threads = [int(t) for t in args.threads.split(",")]
    args.engine_threads = [int(t) for t in args.engine_threads.split(",")] if args.engine_threads else args.threads
    if args.from_results:
        recorded = read_results(args.from_results)
        measured = {**recorded_provenance(recorded), **{k: v for k, v in recorded.items() if k not in DERIVED}}
    else:
        measured = measure(args)
    result = report(measured)
    Results(args.results, NAME).write(result)
    print(
        json.dumps(
            {k: result[k] for k in ("export_parity", "int8_bleu_delta", "speedup_at_1bleu", "targets_met")}, indent=2
        )
    )


if __name__ == "__main__":
    main()
