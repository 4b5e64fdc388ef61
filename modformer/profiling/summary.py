"""A profile condensed for people: per-block costs and fixed costs as small tables (computed here, printed by the CLI)."""

from __future__ import annotations

import pandas as pd

from modformer.profiling.cost_model import sorted_unique, workload_costs
from modformer.profiling.profile import LatencyProfile, Workload


def block_summary(profile: LatencyProfile, stack: str) -> pd.DataFrame:
    """One row per block of `stack`: position, parameter bytes and its cost at each (batch, source length).

    Encoder: ms per encoder pass. Decoder: ms per generation step at the middle measured cache length, and the
    first step's extra.
    """
    t = profile.table
    kind = "enc_forward" if stack == "encoder" else "dec_step"
    rows = t[(t["kind"] == kind) & (t["stack"] == stack)]
    if stack == "decoder" and not rows.empty:
        lens = sorted_unique(rows["cache_len"])
        mid = lens[len(lens) // 2]
        rows = rows[rows["cache_len"] == mid]
        label = f"step L={mid}"
    else:
        label = "pass"
    frames = [_pivot(rows, label)]
    if stack == "decoder":
        frames.append(_pivot(t[t["kind"] == "dec_first_extra"], "first extra"))
    info = rows.drop_duplicates("block").set_index("block")[["position", "param_bytes"]]
    return pd.concat([info, *frames], axis=1)


def _pivot(rows: pd.DataFrame, label: str) -> pd.DataFrame:
    wide = rows.pivot_table(index="block", columns=["batch", "src_len"], values="latency_ms", sort=False)
    wide.columns = [f"{label} B={b} S={s} (ms)" for b, s in wide.columns]
    return wide


def fixed_summary(profile: LatencyProfile) -> pd.DataFrame:
    """Fixed costs per grid point: the zero-layer generate (ms), where measured the calibration calls (ms) and the
    factors they give each stack, and the two peak-memory runs."""
    t = profile.table
    fixed = t[t["kind"] == "fixed_generate"][["batch", "src_len", "gen_len", "latency_ms"]]
    fixed = fixed.rename(columns={"latency_ms": "fixed_generate_ms"})
    calibration = t[t["kind"] == "calibration_generate"]
    if not calibration.empty:
        wide = calibration.pivot_table(index=["batch", "src_len", "gen_len"], columns="block", values="latency_ms")
        wide.columns = [f"{c}_ms" for c in wide.columns]
        fixed = fixed.merge(wide.reset_index(), on=["batch", "src_len", "gen_len"], how="left")
        costs = [
            workload_costs(profile, Workload(int(r.batch), int(r.src_len), int(r.gen_len))) for r in fixed.itertuples()
        ]
        for stack in ("encoder", "decoder"):
            fixed[f"{stack}_factor"] = [c.scales[stack] for c in costs]
            fixed[f"{stack}_offset_ms"] = [c.offsets[stack] for c in costs]
            fixed[f"{stack}_curvature"] = [c.curvatures[stack] for c in costs]
    memory = t[t["kind"] == "peak_memory"]
    if not memory.empty:
        wide = memory.pivot_table(index=["batch", "src_len", "gen_len"], columns="block", values="mem_bytes")
        wide.columns = [f"peak_{c}_bytes" for c in wide.columns]
        fixed = fixed.merge(wide.reset_index(), on=["batch", "src_len", "gen_len"], how="left")
    return fixed.sort_values(["batch", "src_len", "gen_len"]).reset_index(drop=True)
