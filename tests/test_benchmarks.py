"""Every benchmark's report path reproduces its committed results from the committed results file alone.

Each script under benchmarks/ splits what it measures (hours of training and timing, cached under runs/) from what
it derives (verdicts, claims, tables, plots). `--from-results JSON` measures nothing: it reads a results file, keeps
its measured part and its provenance, derives the rest again and writes the results into `--results DIR`. Here that
runs on the committed files, once as they are and once with the derived fields deleted first (so that they must be
computed, not copied), and every file written must equal the committed one byte for byte. Seconds, no model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# benchmark -> (files it writes from a results file, top-level fields it derives)
BENCHMARKS = {
    "seed_claims": (("seed_claims.json", "seed_claims.md", "seed_claims.png"), ("claims", "machine_summary")),
    "planner": (("planner.json",), ("scored_fraction", "strictly_better_budgets", "targets", "met")),
    "profiler": (("profiler.json", "profiler.png"), ("targets", "top_level_targets_met")),
    "resume": (("resume.json",), ("relative_difference", "kill_points", "resumed_exact_fraction", "target")),
    "train_step": (
        ("train_step.json",),
        ("modular_step_s", "finetune_step_s", "ratio", "ratio_of_pairs_median", "ratio_of_pairs_max", "target"),
    ),
    "loss_weights": (("loss_weights.json",), ()),  # pure measurement: nothing is derived
    "demo_teacher": (("demo_teacher.json",), ()),
    "module_exposure": (("module_exposure.json", "module_exposure.md"), ("summary",)),
    "decoder_gap": (("decoder_gap.json", "decoder_gap.md", "decoder_gap.png"), ("summary",)),
    "stack_order": (("stack_order.json", "stack_order.md"), ("summary",)),
    "faults": (
        ("faults.json",),
        (
            "postgres_plan_worker_killed",
            "torchrun_rank_killed_relative_difference",
            "torchrun_rank_killed_loss_relative_difference",
            "target",
            "met",
        ),
    ),
    "targets": (
        ("targets.json",),
        (
            "serving_speedups",
            "per_target",
            "joint_vs_torch_only",
            "speedup_at_1bleu",
            "targets_met",
            "int8_bleu_delta",
            "export_parity",
        ),
    ),
}


def rebuild(name: str, source: Path, out: Path) -> None:
    script = ROOT / "benchmarks" / f"{name}.py"
    command = [sys.executable, str(script), "--from-results", str(source), "--results", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("stripped", [False, True], ids=["as-committed", "derived-deleted"])
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_report_reproduces_committed_results(name: str, stripped: bool, tmp_path: Path) -> None:
    files, derived = BENCHMARKS[name]
    source = RESULTS / f"{name}.json"
    if stripped:
        record = json.loads(source.read_text(encoding="utf-8"))
        assert all(key in record for key in derived)
        source = tmp_path / "input.json"
        source.write_text(json.dumps({k: v for k, v in record.items() if k not in derived}), encoding="utf-8")
    rebuild(name, source, tmp_path / "out")
    for file in files:
        written, committed = tmp_path / "out" / file, RESULTS / file
        assert written.read_bytes() == committed.read_bytes(), f"{file} differs from the committed one"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(files)


def test_benchmark_scripts_need_no_path_workarounds() -> None:
    """The scripts import modformer as the installed package and the harness as a sibling: no sys.path edits, no
    lint escapes."""
    for path in (ROOT / "benchmarks").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for escape in ("sys.path", "noqa", "fmt: skip"):
            assert escape not in text, f"{path.relative_to(ROOT)}: {escape}"


# --------------------------------------------------------------------------------------------------------------------
# module_exposure: the replay of the trainer's hybrid draws, and the counting, on a tiny shape
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def module_exposure(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the script imports the harness as a sibling
    import module_exposure

    return module_exposure


def test_module_exposure_replays_the_draws_a_real_trainer_made(module_exposure) -> None:
    """benchmarks/train_step.py recorded the hybrids `ReplacingTrainer.step` drew on the 12+12 teacher (seed 0,
    23 steps of which the first 3 are warm-up): the replay draws the same ones without a model."""
    from modformer.modular.trainer import TrainConfig

    recorded = json.loads((RESULTS / "train_step.json").read_text(encoding="utf-8"))
    steps = len(recorded["hybrids"]) + 3
    from modformer.modular.assembly import default_granularities

    assert recorded["granularities"] == default_granularities(12)  # recorded with today's default modules
    replayed = module_exposure.replay(TrainConfig(steps=steps), (12, 12), recorded["granularities"])
    assert [" | ".join(h.format() for h in step) for step in replayed[3:]] == recorded["hybrids"]


def test_module_exposure_counts_add_up_on_a_tiny_shape(tmp_path: Path) -> None:
    """4+4 layers, granularity 2, 20 steps: every hybrid covers every layer once, so over a run the layers covered
    (k x appearances of each module, plus teacher-layer appearances) are steps x hybrids x 8; a module's updates
    are at most its appearances and at least a third of them with 3 hybrids; each quarter holds 5 steps."""
    script = ROOT / "benchmarks" / "module_exposure.py"
    args = ["--shape", "4+4", "--granularities", "2", "--steps", "20", "--seeds", "0,1", "--results", str(tmp_path)]
    done = subprocess.run([sys.executable, str(script), *args], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "module_exposure.json").read_text(encoding="utf-8"))
    assert (tmp_path / "module_exposure.md").is_file()
    runs = record["runs"]
    assert {(r["recipe"], r["seed"]) for r in runs} == {
        (n, s) for n in ("default", "h3-no-attn", "no-curriculum") for s in (0, 1)
    }
    for run in runs:
        h = record["settings"]["recipes"][run["recipe"]]["hybrids_per_step"]
        covered = sum(int(key.split(":")[1].split("@")[0]) * sum(m["appearances"]) for key, m in run["modules"].items())
        covered += sum(sum(v) for v in run["teacher_layers"].values())
        assert covered == 20 * h * 8
        assert set(run["modules"]) == {"enc:2@0", "enc:2@2", "dec:2@0", "dec:2@2"}
        for m in run["modules"].values():
            for updates, appearances in zip(m["updates"], m["appearances"], strict=True):
                assert updates <= 5 and updates <= appearances <= h * updates
            assert sum(m["neighbours"].values()) == sum(m["appearances"])
        for whole in run["assemblies"].values():
            assert all(w <= d <= 5 for w, d in zip(whole["whole"], whole["dec_whole"], strict=True))
    for exp in record["expected"]:  # in expectation the same identities hold, within rounding
        h = record["settings"]["recipes"][exp["recipe"]]["hybrids_per_step"]
        for m in exp["modules"].values():
            assert sum(m["updates"]) <= sum(m["appearances"]) + 1e-6 <= h * sum(m["updates"]) + 1e-2


def test_module_exposure_probabilities_match_the_sampler(module_exposure) -> None:
    """The enumerated walk gives each stack the probability `sample_stack` draws it with."""
    import random
    from collections import Counter

    from modformer.modular.curriculum import Curriculum, sample_stack

    schedule, gs = Curriculum(), [2, 3, 4, 6]
    rate, weights = schedule.replace_rate(0.3), schedule.granularity_weights(gs, 0.3)
    exact = module_exposure.stack_distribution(12, gs, rate, weights)
    assert sum(exact.values()) == pytest.approx(1.0)
    rng, draws = random.Random(0), 20000
    seen = Counter(sample_stack(12, gs, rate, weights, rng) for _ in range(draws))
    assert set(seen) <= set(exact)
    for blocks, p in exact.items():
        assert seen[blocks] / draws == pytest.approx(p, abs=0.01)


# --------------------------------------------------------------------------------------------------------------------
# seed_claims --carry: an earlier results file stands in for runs whose folders are gone
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def claims(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from claims import carry, train, work

    return carry, train, work


def _row(method: str, steps: int = 2000, seed: int = 0, rule: str = "size-first", shape: str = "6-6") -> dict:
    return {"task": "multi30k", "method": method, "steps": steps, "seed": seed, "rule": rule, "shape": shape}


def test_carry_skips_recorded_runs_and_fills_in_only_what_was_not_measured(claims, tmp_path: Path) -> None:
    carry_mod, train_mod, work_mod = claims
    earlier = {
        "date": "2026-12-01",
        "walls": {"multi30k-modular": 1000.0, "multi30k-kd": 800.0, "multi30k-plan-modular": 400.0},
        "rows": [
            {**_row("modular"), "bleu": 33.0},
            {**_row("modular-random", rule="random"), "bleu": 31.0},
            {**_row("kd", rule="student"), "bleu": 34.0},
            {**_row("kd", rule="student", shape="12-3"), "bleu": 32.0},
        ],
    }
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(earlier), encoding="utf-8")
    carry = carry_mod.Carry.load(path, {"modular": "modular-v0"})
    assert carry.walls.keys() == {"multi30k-modular-v0", "multi30k-kd", "multi30k-plan-modular-v0"}
    assert [r["method"] for r in carry.rows] == ["modular-v0", "modular-v0-random", "kd", "kd"]
    assert carry_mod.renamed_stage("multi30k-modular-h3-s1", {"modular": "v0"}) == "multi30k-modular-h3-s1"
    assert carry_mod.renamed_stage("multi30k-modular-s1", {"modular": "v0"}) == "multi30k-v0-s1"

    from claims.config import Settings

    settings = Settings(work=tmp_path / "work")
    work = work_mod.Work(settings, carry)
    # A recorded run that has not started here is not trained: Carried, and not listed as missing.
    with pytest.raises(work_mod.Carried):
        train_mod.train(work, "multi30k-kd", ["baseline"], tmp_path / "work" / "kd", 2000)
    try:
        train_mod.train(work, "multi30k-kd", ["baseline"], tmp_path / "work" / "kd", 2000)
    except work_mod.NotDone as err:
        work.not_done(err)
    assert work.missing == [] and carry.record()["stages"] == ["multi30k-kd"]
    # A file whose walls lack a run's stage still has its rows: the run's folder is known from them.
    assert "students/kd-12-3-s0" in carry.runs and "modular-v0" in carry.runs
    with pytest.raises(work_mod.Carried):
        train_mod.train(work, "multi30k-kd-old-name", ["baseline"], tmp_path / "work" / "students" / "kd-12-3-s0", 2000)
    # A run the file does not know is trained as usual (here the command fails: it was run, not carried).
    with pytest.raises(SystemExit, match="no-such-command"):
        train_mod.train(work, "multi30k-modular", ["no-such-command"], tmp_path / "work" / "modular", 2000)
    # A student's stage names no shape: KD 6-6 (stage multi30k-kd, in the walls) does not carry a KD 3-3 student.
    with pytest.raises(SystemExit, match="no-such-command"):
        train_mod.train(work, "multi30k-kd", ["no-such-command"], tmp_path / "work" / "students" / "kd-3-3-s0", 2000)

    # Measured groups replace the file's; the rest is added, marked carried; measured walls win.
    measured = [{**_row("modular"), "bleu": 35.0}, {**_row("kd", rule="student"), "bleu": 34.5}]
    rows, walls = carry.merge(measured, {"multi30k-modular": 1300.0})
    assert [(r["method"], r["shape"], r["bleu"], r.get("carried")) for r in rows] == [
        ("modular", "6-6", 35.0, None),
        ("kd", "6-6", 34.5, None),
        ("modular-v0", "6-6", 33.0, "2026-12-01"),
        ("modular-v0-random", "6-6", 31.0, "2026-12-01"),
        ("kd", "12-3", 32.0, "2026-12-01"),
    ]
    assert walls["multi30k-modular"] == 1300.0 and walls["multi30k-modular-v0"] == 1000.0


def test_seed_claims_refuses_a_malformed_carry_rename() -> None:
    script = ROOT / "benchmarks" / "seed_claims.py"
    for args in (["--carry-as", "modular=v0"], ["--carry", "x.json", "--carry-as", "modular"]):
        done = subprocess.run([sys.executable, str(script), *args], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 2 and "--carry" in done.stderr.splitlines()[-1], done.stderr


def test_decoder_gap_carries_only_runs_that_have_not_started_here(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import decoder_gap

    recipe = "h3s-no-attn"
    earlier = {
        "date": "2026-12-01",
        "runs": [{"recipe": recipe, "seed": s, "steps": 2000, "scores": {}, "history": []} for s in (0, 1)],
        "students": [{"student": "kd-6-6", "seed": 0, "steps": 2000, "scores": {}}],
    }
    work = tmp_path / "work"
    out = decoder_gap.run_folder(work, recipe, 1)
    assert decoder_gap.carried_record(earlier, "runs", recipe, 1, 2000, out)["carried"] == "2026-12-01"
    earlier["runs"][0]["carried"] = "2026-11-20"  # carried into that file from an older one: keeps its own date
    first = decoder_gap.run_folder(work, recipe, 0)
    assert decoder_gap.carried_record(earlier, "runs", recipe, 0, 2000, first)["carried"] == "2026-11-20"
    assert decoder_gap.carried_record(earlier, "runs", recipe, 2, 2000, out) is None  # a seed the file lacks
    assert decoder_gap.carried_record(earlier, "runs", recipe, 1, 4000, out) is None  # another budget
    student = decoder_gap.student_folder(work, "kd-6-6", 0)
    assert decoder_gap.carried_record(earlier, "students", "kd-6-6", 0, 2000, student)["student"] == "kd-6-6"
    # A run begun here (a trainer checkpoint) is resumed and measured, not carried.
    out.mkdir(parents=True)
    (out / decoder_gap.STATE_NAME).write_bytes(b"")
    assert decoder_gap.carried_record(earlier, "runs", recipe, 1, 2000, out) is None
    assert decoder_gap.carried_record({}, "runs", recipe, 0, 2000, decoder_gap.run_folder(work, recipe, 0)) is None


def test_seed_claims_scores_each_run_at_its_own_modules_shapes(monkeypatch) -> None:
    """A run with other granularities than the default (an older recipe, `--granularities 2,3,4,6`) is scored at
    the assemblies its own modules make: 4-4 is 3,3,3,3 there and 4,4,2,2 with the default 2,4,6; every random
    order is valid for the run's modules and differs from the rule's."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from claims.stages import picks

    from modformer.modular.assembly import valid_stacks
    from modformer.modular.model import ModularModel
    from tests.conftest import tiny_t5

    teacher = tiny_t5(layers=12)
    seen = {}
    for gs in ([2, 4, 6], [2, 3, 4, 6]):
        modular = ModularModel.from_teacher(teacher, "x", gs)
        picked, random_pick = picks(modular)
        named = {str(a) for _, a in picked}
        seen[tuple(gs)] = named
        stacks = set(valid_stacks(12, gs))
        for _, a in [*picked, *random_pick]:
            assert tuple(a.encoder) in stacks and tuple(a.decoder) in stacks
        assert not named & {str(a) for _, a in random_pick}
        assert any(rule == "size-first" and str(a).startswith("enc=2,2,2,2,2,2") for rule, a in picked)  # ~2x
    assert "enc=3,3,3,3 dec=3,3,3,3" in seen[(2, 3, 4, 6)]
    assert "enc=4,4,2,2 dec=4,4,2,2" in seen[(2, 4, 6)] and not any("3" in a for a in seen[(2, 4, 6)])


def test_plans_skip_runs_whose_modules_are_not_here(claims, tmp_path: Path) -> None:
    """A run --carry stands in for has no modules here to plan with: Carried (not missing, not a failed `modformer
    plan`); a run not trained at all is NotDone, with its name."""
    carry_mod, _, work_mod = claims
    from claims.config import Settings
    from claims.plans import planned

    earlier = {"date": "2026-12-01", "walls": {}, "rows": [{**_row("modular-v2"), "bleu": 35.0}]}
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(earlier), encoding="utf-8")
    work = work_mod.Work(Settings(work=tmp_path / "work"), carry_mod.Carry.load(path, {}))
    profile = tmp_path / "profile.json"
    with pytest.raises(work_mod.Carried):
        planned(work, "modular-v2", work.folder / "modular-v2", profile, 10_000_000)
    assert work.carry.record()["stages"] == []  # the file has no plan of it: nothing is carried in its name
    with pytest.raises(work_mod.NotDone, match="modular-v1 has no trained modules here") as err:
        planned(work, "modular-v1", work.folder / "modular-v1", profile, 10_000_000)
    assert not isinstance(err.value, work_mod.Carried)
    assert not (work.folder / "plans").exists()


def test_the_2x_claim_counts_each_seed_once_when_a_plan_chose_the_same_assembly(claims) -> None:
    from claims.report import method_claims

    assembly = "enc=2,2,2,2,2,2 dec=4,4,2,2"
    rows = [
        {**_row("teacher", rule="teacher", shape="12-12"), "assembly": "teacher", "bleu": 36.0, "size_ratio": 1.0},
        *(
            {
                **_row("modular", seed=seed, rule=rule, shape="6-4"),
                "assembly": assembly,
                "bleu": bleu,
                "size_ratio": 2.0,
                "wall_s": 100.0,
            }
            for seed, rule, bleu in ((0, "size-first", 34.0), (1, "size-first", 35.0), (0, "planned", 34.0))
        ),
        {
            **_row("modular", seed=1, rule="planned", shape="4-5"),
            "assembly": "enc=4,4,2,2 dec=4,2,2,2,2",
            "bleu": 35.5,
            "size_ratio": 2.09,
        },
    ]
    out = method_claims(rows, "modular", {})
    assert out["at_2x_size"]["seeds"] == 2 and out["at_2x_size"]["bleu"] == 34.5
    assert out["at_2x_size_planned"]["seeds"] == 2 and out["at_2x_size_planned"]["bleu"] == 34.75


def test_second_seeds_also_look_at_carried_students(claims, monkeypatch, tmp_path: Path) -> None:
    """A student carried from the earlier file (seed 0 only) within 0.5 BLEU of a run measured here gets seed 1."""
    carry_mod, _, work_mod = claims
    from claims import students
    from claims.config import Settings

    sft = {**_row("sft", rule="student"), "bleu": 34.9}
    earlier = {"date": "2026-12-01", "walls": {"multi30k-sft": 600.0}, "rows": [sft]}
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(earlier), encoding="utf-8")
    work = work_mod.Work(Settings(work=tmp_path / "work"), carry_mod.Carry.load(path, {}))
    trained = []
    seed1 = {**_row("sft", rule="student", seed=1), "bleu": 35.0}
    monkeypatch.setattr(students, "student", lambda w, t, *key: trained.append(key) or seed1)
    measured = [{**_row("modular"), "named": True, "bleu": 35.3}]  # 0.4 over the carried SFT student
    assert students.second_seeds(work, None, measured) == [seed1]
    assert trained == [("sft", "6-6", 2000, 1)]
    trained.clear()
    far = [{**_row("modular"), "named": True, "bleu": 36.0}]
    assert students.second_seeds(work, None, far) == [] and trained == []

    # One student not done (--report-only) does not lose the rows of the others.
    def student(w, t, method, shape, steps, seed):
        if steps == 4000:
            raise work_mod.NotDone(f"{method} {shape} {steps} at 0/{steps} steps")
        return seed1

    monkeypatch.setattr(students, "student", student)
    work.carry.rows.append({**_row("sft", steps=4000, rule="student"), "bleu": 34.9})
    both = [*measured, {**_row("modular-2x-steps", steps=4000), "named": True, "bleu": 35.3}]
    assert students.second_seeds(work, None, both) == [seed1]
    assert work.missing == ["sft 6-6 4000 at 0/4000 steps"]


def test_json_caches_of_one_file_keep_each_others_entries(monkeypatch, tmp_path: Path) -> None:
    """Two benchmark processes sharing a work folder each hold a JsonCache of the same file (two decoder_gap lanes,
    one per core): a save keeps what the other saved since it read the file, and its own entries win a shared key."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from harness import JsonCache

    path = tmp_path / "work" / "scores.json"
    first, second = JsonCache(path), JsonCache(path)  # both read before either wrote
    first.data["a|2000|enc=2,2 dec=2,2"] = {"val": 30.0}
    first.save()
    second.data["b|2000|enc=2,2 dec=2,2"] = {"val": 31.0}
    second.data["a|2000|enc=2,2 dec=2,2"] = {"val": 32.0}
    second.save()
    assert JsonCache(path).data == {"a|2000|enc=2,2 dec=2,2": {"val": 32.0}, "b|2000|enc=2,2 dec=2,2": {"val": 31.0}}
    first.data["c"] = 1
    first.save()  # first's older value of "a" wins its own save: the last writer of a key decides, as before
    assert set(JsonCache(path).data) == {"a|2000|enc=2,2 dec=2,2", "b|2000|enc=2,2 dec=2,2", "c"}


def test_score_caches_measure_again_when_a_folder_holds_other_weights(monkeypatch, tmp_path: Path) -> None:
    """A score is tied to the weights it was measured on: a run folder replaced by another run's copy (as when a new
    default takes the default's folder name) or trained again gives None, so the stale score is measured again; a
    copy of the same weights elsewhere has the same id; a score from before the ids is taken as the present weights."""
    import shutil

    import torch
    from safetensors.torch import save_file

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from harness import ScoreCache, weights_id

    def run(folder: Path, value: float) -> Path:
        folder.mkdir(parents=True)
        save_file({"w": torch.full((4,), value)}, str(folder / "modules.safetensors"))
        return folder

    modular, other = run(tmp_path / "modular", 1.0), run(tmp_path / "other", 2.0)
    shutil.copytree(modular, tmp_path / "copy")
    assert weights_id(tmp_path / "copy") == weights_id(modular) != weights_id(other)

    cache = ScoreCache(tmp_path / "scores.json")
    cache.put("modular|dec=4,4,4", modular, {"bleu": 32.0})
    assert ScoreCache(tmp_path / "scores.json").get("modular|dec=4,4,4", modular) == {"bleu": 32.0}
    shutil.rmtree(modular)
    shutil.copytree(other, modular)  # the folder now holds another run
    assert ScoreCache(tmp_path / "scores.json").get("modular|dec=4,4,4", modular) is None

    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({"other|dec=4,4,4": {"bleu": 30.0}}), encoding="utf-8")
    assert ScoreCache(legacy).get("other|dec=4,4,4", other) == {"bleu": 30.0}  # adopted for the present weights
    run(tmp_path / "third", 3.0)
    shutil.rmtree(other)
    shutil.copytree(tmp_path / "third", other)
    assert ScoreCache(legacy).get("other|dec=4,4,4", other) is None
