"""The planner: proxy scoring, search space and costs, search methods, frontier, budgets, outputs and the CLI."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from modformer.checkpoints import load_seq2seq
from modformer.cli import app
from modformer.errors import ConfigError, InfeasibleBudgetError, with_flags
from modformer.evaluation import teacher_forced_loss
from modformer.modular.assembly import Assembly, valid_stacks
from modformer.modular.model import ModularModel
from modformer.planner.artifact import PARETO_PNG, PLAN_FILES, REPORT_HTML, Plan
from modformer.planner.frontier import hypervolume, normaliser
from modformer.planner.plan import check_feasible
from modformer.planner.proxy import ProxyScorer
from modformer.planner.run import PlanSettings, load_for_scoring, pair_scorer, run_plan
from modformer.planner.search import (
    Backoff,
    Search,
    SearchConfig,
    SearchResult,
    objective_values,
    open_storage,
    open_study,
    work,
    worker_losses,
)
from modformer.planner.space import Budget, SearchSpace, space_stacks
from modformer.profiling.cost_model import predict
from modformer.profiling.measure import ProfileConfig, profile_modules
from modformer.profiling.profile import LatencyProfile, default_workload
from tests.conftest import save_teacher, tiny_bart, tiny_t5


def _perturbed_modular(family: str, layers: int = 4, granularities=(2,)) -> ModularModel:
    teacher = tiny_t5(layers=layers) if family == "t5" else tiny_bart(layers=layers)
    modular = ModularModel.from_teacher(teacher, "unused", list(granularities))
    torch.manual_seed(1)
    with torch.no_grad():  # modules unlike their init, so a wrong block would show
        for p in modular.blocks.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return modular


@pytest.fixture(scope="module")
def proxy_batches(sample_pairs, tokenizer):
    _, val = sample_pairs
    return val.take(24).tokenize(tokenizer).batches(10, shuffle=False)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_proxy_equals_the_assembled_models_loss(family, proxy_batches):
    modular = _perturbed_modular(family)
    stacks = valid_stacks(4, [1, 2])
    pairs = [Assembly(encoder=e, decoder=d) for e in stacks for d in stacks]
    random.Random(0).shuffle(pairs)
    scorer = ProxyScorer(modular, proxy_batches)
    scores = scorer.score(pairs)
    for a, got in zip(pairs, scores, strict=True):
        want = teacher_forced_loss(modular.assemble(a), proxy_batches)
        assert got == pytest.approx(want, abs=2e-6), a
    # Shared bottoms: fewer block runs than scoring each assembly alone.
    stats = scorer.stats.to_json()
    assert stats["scored"] == len(pairs) and stats["block_runs"] < stats["block_runs_unshared"]


# --- a small space: a 6+6 tiny T5 with modules of 2 and 3 (13 stacks a side, 169 assemblies) ------------------------
@pytest.fixture(scope="module")
def plan_root(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("plan")
    teacher_dir = save_teacher(tiny_t5(layers=6), tokenizer, root / "teacher")
    modular = ModularModel.from_teacher(load_seq2seq(teacher_dir), teacher_dir, [2, 3])
    torch.manual_seed(2)
    with torch.no_grad():
        for p in modular.blocks.parameters():
            p.add_(0.05 * torch.randn_like(p))
    modular.save_pretrained(root / "mods")
    grid = {"batch_sizes": (1, 2), "src_lens": (6, 10), "gen_lens": (4,)}
    profile = profile_modules(
        modular, ProfileConfig(**grid, warmup=1, repeats=2, generate_repeats=1, memory=False, threads=1)
    )
    profile.save(root / "profile.json")
    return root


@pytest.fixture(scope="module")
def small(plan_root, data_dir):
    modular = ModularModel.from_pretrained(plan_root / "mods")
    profile = LatencyProfile.load(plan_root / "profile.json")
    space = SearchSpace.build(modular, profile, default_workload(profile))
    settings = PlanSettings(
        modules=str(plan_root / "mods"), data=data_args(data_dir), proxy_samples=16, proxy_batch_size=16
    )
    loaded = load_for_scoring(settings)
    return modular, profile, space, loaded


def data_args(data_dir) -> dict:
    return {
        "path": str(data_dir),
        "src_ext": "en",
        "tgt_ext": "de",
        "src_column": "source",
        "tgt_column": "target",
        "prefix": "",
    }


def run_search(small, tmp_path, budget="", name="s", workers=1, **config) -> SearchResult:
    modular, _, space, loaded = small
    cfg = SearchConfig(**config)
    storage = str(tmp_path / f"{name}.log")
    study = open_study(open_storage(storage), name, cfg, {"test": name})
    score = pair_scorer(loaded.scorer, space_stacks(modular.config))
    return Search(space, Budget.parse(budget), cfg, study, score, workers=workers).run()


def test_space_costs_are_the_profiles_predictions(small):
    modular, profile, space, _ = small
    assert space.size == 13 * 13 and space.memory_source == "arithmetic"
    rng = random.Random(0)
    for _ in range(10):
        i, j = rng.randrange(13), rng.randrange(13)
        p = predict(profile, space.assembly(i, j), space.workload)
        assert space.latency_ms(i, j) == pytest.approx(p.latency_ms, rel=1e-9)
        a = space.assembly(i, j)
        assert space.params(i, j) == modular.cost_model().params(a)
    assert space.size_ratio(*space.teacher) == pytest.approx(1.0)
    assert space.assembly(*space.teacher) == Assembly.teacher(6, 6)


def test_budget_parsing_and_edges(small):
    _, _, space, _ = small
    i, j = space.all_pairs()
    lat = space.latency_ms(i, j)
    assert Budget.parse("").latency_ms is None and str(Budget.parse(" ")) == "none"
    b = Budget.parse("latency_ms<=40, memory_mb<=inf")
    assert (b.latency_ms, b.memory_mb) == (40.0, float("inf"))
    assert (space.violation(Budget.parse("latency_ms<=inf"), i, j) == 0).all()  # infinite: everything
    assert (space.violation(Budget.parse("latency_ms<=0"), i, j) > 0).all()  # zero: nothing
    exact = float(np.sort(lat)[5])  # exactly met counts as within
    within = space.violation(Budget(latency_ms=exact), i, j) <= 0
    assert within.sum() == (lat <= exact).sum() and within[np.argmin(np.abs(lat - exact))]
    for text, phrase in [
        ("latency<=3", "unknown budget key"),
        ("latency_ms=3", "KEY<=NUMBER"),
        ("latency_ms<=x", "not a number"),
        ("latency_ms<=-1", ">= 0"),
        ("latency_ms<=1,latency_ms<=2", "given twice"),
        ("speedup<=2", "write it speedup>=2"),
        ("latency_ms>=2", "write it latency_ms<=2"),
        ("speedup>=0", "finite number > 0"),
        ("speedup>=inf", "finite number > 0"),
    ]:
        with pytest.raises(ConfigError, match=phrase):
            Budget.parse(text)
    with pytest.raises(InfeasibleBudgetError, match=r"no assembly meets the budget latency_ms<=0; nearest: enc="):
        check_feasible(space, Budget.parse("latency_ms<=0"))
    assert check_feasible(space, Budget(latency_ms=exact)) == int(within.sum())


def test_a_speedup_budget_is_a_latency_limit_relative_to_the_teacher(small):
    _, _, space, _ = small
    teacher = float(space.latency_ms(*space.teacher))
    b = Budget.parse("speedup>=1.5")
    assert b.speedup == 1.5 and b.latency_ms is None and str(b) == "speedup>=1.5"
    resolved = b.resolved(teacher)
    assert resolved.latency_ms == pytest.approx(teacher / 1.5) and resolved.speedup == 1.5
    assert str(resolved) == f"latency_ms<={teacher / 1.5:g},speedup>=1.5"
    i, j = space.all_pairs()
    within = space.violation(resolved, i, j) <= 0
    assert within.any() and (space.speed_ratio(i, j)[within] >= 1.5 - 1e-9).all()
    assert space.violation(resolved, *space.teacher) > 0  # the teacher itself is 1x: outside
    # the tighter of a latency limit and a speed-up
    assert Budget.parse(f"latency_ms<={teacher / 3},speedup>=1.5").resolved(teacher).latency_ms == teacher / 3
    assert Budget.parse("latency_ms<=5").resolved(teacher) == Budget(latency_ms=5)


def test_a_parameter_budget_limits_the_size(small):
    _, _, space, _ = small
    i, j = space.all_pairs()
    params = space.params(i, j)
    assert params.max() == space.params(*space.teacher)  # the teacher is the largest
    half = float(space.params(*space.teacher)) / 2 / 1e6
    within = space.violation(Budget.parse(f"params_m<={half}"), i, j) <= 0
    assert within.any() and not within.all()
    assert (within == (params / 1e6 <= half)).all()
    assert (space.size_ratio(i, j)[within] >= 2.0 - 1e-9).all()
    # combined with a latency limit, an assembly must meet both
    lat = float(np.median(space.latency_ms(i, j)))
    both = space.violation(Budget.parse(f"params_m<={half},latency_ms<={lat}"), i, j) <= 0
    assert (both == (within & (space.latency_ms(i, j) <= lat))).all()
    with pytest.raises(InfeasibleBudgetError, match=r"params_m<=0; nearest: enc=.*M parameters"):
        check_feasible(space, Budget.parse("params_m<=0"))


def test_exhaustive_and_nsga2_agree_on_a_small_space(small, tmp_path):
    exhaustive = run_search(small, tmp_path, name="ex", method="exhaustive")
    assert exhaustive.method == "exhaustive" and exhaustive.scored_count == 169
    nsga = run_search(small, tmp_path, name="ga", method="nsga2", trials=120, population=16, seed=3)
    assert nsga.method == "nsga2" and nsga.scored_count <= 120 + 16  # the last generation may overshoot
    objectives = ("quality", "latency", "memory")
    full = exhaustive.frontier(objectives)
    found = nsga.frontier(objectives)
    # Same proxy values for the same assemblies, whichever path scored them.
    both = found.merge(exhaustive.scored, on="assembly", suffixes=("", "_ex"))
    assert len(both) == len(found) and np.allclose(both["proxy_loss"], both["proxy_loss_ex"])
    low, span = normaliser(objective_values(exhaustive.scored, objectives))
    ratio = hypervolume(objective_values(found, objectives), low, span) / hypervolume(
        objective_values(full, objectives), low, span
    )
    assert ratio >= 0.98
    # auto picks exhaustive on a space this small
    assert run_search(small, tmp_path, name="auto").method == "exhaustive"


def test_budget_filters_the_search(small, tmp_path):
    _, _, space, _ = small
    i, j = space.all_pairs()
    limit = float(np.median(space.latency_ms(i, j)))
    result = run_search(small, tmp_path, budget=f"latency_ms<={limit}", name="b", method="exhaustive")
    assert (result.scored["latency_ms"] <= limit).all()
    assert result.scored_count == int((space.latency_ms(i, j) <= limit).sum()) == result.feasible_size


def test_seeded_search_is_reproducible_and_resumes(small, tmp_path):
    kwargs = {"method": "nsga2", "trials": 70, "population": 8, "seed": 5}
    a = run_search(small, tmp_path, name="r1", **kwargs)
    b = run_search(small, tmp_path, name="r2", **kwargs)
    assert a.scored["assembly"].tolist() == b.scored["assembly"].tolist()
    # Running the same study again finds everything scored: nothing new is scored.
    modular, _, space, loaded = small
    before = loaded.scorer.stats.scored
    again = run_search(small, tmp_path, name="r1", **kwargs)
    assert loaded.scorer.stats.scored == before and again.scored_count >= a.scored_count


def test_a_study_made_with_other_settings_is_refused(tmp_path):
    storage = open_storage(str(tmp_path / "s.log"))
    open_study(storage, "x", SearchConfig(), {"proxy_samples": 16})
    with pytest.raises(ConfigError, match=r"other settings \(proxy_samples differ\)"):
        open_study(storage, "x", SearchConfig(), {"proxy_samples": 32})


def test_a_worker_answers_its_trials_through_the_study(tmp_path):
    """`work` in a thread against one file storage: it scores only the trials given to it, answers through the
    study's public API, and stops when the study says done."""
    import threading

    import optuna

    study = open_study(open_storage(str(tmp_path / "w.log")), "w", SearchConfig(), {"test": "w"})
    distributions = {"encoder": optuna.distributions.CategoricalDistribution([0, 1, 2])}
    distributions["decoder"] = distributions["encoder"]
    trials = []
    for a, b in ((0, 1), (2, 2), (1, 0)):
        study.enqueue_trial({"encoder": a, "decoder": b})
        trials.append(study.ask(distributions))
    trials[0].set_user_attr("worker", 1)
    trials[1].set_user_attr("worker", 2)  # another worker's
    trials[2].set_user_attr("worker", 1)
    scored: list = []

    def score(pairs, progress):
        scored.extend(pairs)
        return [10.0 * a + b for a, b in pairs]

    done: list[int] = []
    worker = threading.Thread(target=lambda: done.append(work(study, 1, score)))
    worker.start()
    numbers = [t.number for t in trials]
    wait = Backoff(most=0.2)
    for _ in range(200):
        answers = worker_losses(study, numbers)
        if len(answers) == 2:
            break
        wait.sleep()
    assert answers == {trials[0].number: 1.0, trials[2].number: 10.0}
    study.set_user_attr("status", "done")
    worker.join(timeout=30)
    assert not worker.is_alive() and done == [2] and sorted(scored) == [(0, 1), (1, 0)]


def test_backoff_grows_to_its_ceiling_and_resets():
    wait = Backoff(first=0.001, most=0.004, factor=2.0)
    seen = []
    for _ in range(4):
        seen.append(wait.seconds)
        wait.sleep()
    assert seen == [0.001, 0.002, 0.004, 0.004]
    wait.reset()
    assert wait.seconds == 0.001


@pytest.mark.parametrize(
    ("make", "setting", "text"),
    [
        (lambda: SearchConfig(trials=0), "trials", "trials must be at least 1, got 0"),
        (lambda: SearchConfig(objectives=("latency",)), "objectives", "objectives must list quality"),
        (lambda: open_storage("nosuchdb://x"), "storage", "storage nosuchdb://x: "),
    ],
)
def test_library_errors_name_the_setting_not_the_flag(make, setting, text):
    with pytest.raises(ConfigError) as err:
        make()
    assert str(err.value).startswith(text) and "--" not in str(err.value)
    assert err.value.settings == (setting,)
    assert with_flags(err.value).startswith("--" + text)


def test_plan_settings_and_worker_counts_name_their_settings(plan_root, data_dir, tmp_path):
    with pytest.raises(ConfigError) as err:
        PlanSettings(modules=str(plan_root / "mods"), data=data_args(data_dir), proxy_batch_size=0)
    assert str(err.value) == "proxy_batch_size must be at least 1, got 0"
    assert with_flags(err.value) == "--proxy-batch-size must be at least 1, got 0"
    settings = PlanSettings(modules=str(plan_root / "mods"), data=data_args(data_dir))
    with pytest.raises(ConfigError) as err:
        run_plan(settings, None, storage=str(tmp_path / "s.log"), study_name="s", remote_workers=1)
    assert err.value.settings == ("remote_workers", "storage")
    assert with_flags(err.value) == "--remote-workers needs a database --storage URL that the other machines can reach"


def test_two_workers_on_one_file_storage_give_the_same_frontier(small, tmp_path, plan_root, data_dir):
    modular, profile, space, _ = small
    results = {}
    for workers in (1, 2):
        settings = PlanSettings(
            modules=str(plan_root / "mods"),
            data=data_args(data_dir),
            proxy_samples=16,
            proxy_batch_size=16,
            validate=2,
            validate_samples=8,
            max_new_tokens=4,
            search={"method": "nsga2", "trials": 60, "population": 8, "seed": 1},
        )
        results[workers] = run_plan(
            settings, profile, storage=str(tmp_path / f"w{workers}.log"), study_name="p", workers=workers
        )
    one, two = results[1], results[2]
    assert one.scored["assembly"].tolist() == two.scored["assembly"].tolist()
    assert np.allclose(one.scored["proxy_loss"], two.scored["proxy_loss"], atol=2e-6)

    def front(r):
        return r.frontier[r.frontier["on_proxy_frontier"]]["assembly"].tolist()

    assert front(one) == front(two)


# --- the CLI ------------------------------------------------------------------------------------------------------
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def plan_args(plan_root, data_dir, out, *extra) -> list:
    return [
        "plan",
        "--modules",
        plan_root / "mods",
        "--profile",
        plan_root / "profile.json",
        "--data",
        data_dir,
        "--src-ext",
        "en",
        "--tgt-ext",
        "de",
        "--out",
        out,
        "--proxy-samples",
        16,
        "--validate",
        3,
        "--validate-samples",
        8,
        "--max-new-tokens",
        4,
        *extra,
    ]


@pytest.fixture(scope="module")
def plan_dir(plan_root, data_dir):
    out = plan_root / "plan"
    result = cli(*plan_args(plan_root, data_dir, out))
    assert result.exit_code == 0, result.stderr + result.stdout
    assert "method exhaustive: scored 169 of 169" in result.stdout and "chosen:" in result.stdout
    return out


def test_plan_writes_every_output(plan_dir):
    for name in PLAN_FILES:
        assert (plan_dir / name).stat().st_size > 0, name
    plan = Plan.load(plan_dir)
    frontier = plan.frontier
    need = {
        "assembly",
        "size_ratio",
        "speed_ratio",
        "predicted_latency_ms",
        "measured_latency_ms",
        "memory_mb",
        "proxy_loss",
        "bleu",
        "on_proxy_frontier",
        "on_validated_frontier",
        "within_budget",
    }
    assert need <= set(frontier.columns)
    validated = frontier[frontier["validated"]]
    assert len(validated) >= 3 and (validated["measured_latency_ms"] > 0).all()
    chosen = plan.chosen
    assert chosen["assembly"] in set(validated["assembly"]) and Assembly.from_json(chosen["assembly_json"])
    report = (plan_dir / REPORT_HTML).read_text()
    assert "data:image/png;base64," in report and "http" not in report.replace("http-equiv", "")
    for name in validated["assembly"]:  # the report names every validated point
        assert name in report
    png = plan_dir / PARETO_PNG
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = plan.summary
    assert summary["search"]["scored"] == 169 and summary["search"]["method"] == "exhaustive"
    # the teacher, scored on the same held-out pairs and timed in the same rounds: what every point is read against
    assert summary["teacher"]["target"] == "torch:fp32" and 0 <= summary["teacher"]["bleu"] <= 100
    assert summary["teacher_measured_latency_ms"] > 0 and summary["memory_source"] in ("measured", "arithmetic")


def test_plan_names_the_points_on_the_figure(plan_dir):
    from modformer.planner.frontier import frontier_2d
    from modformer.plots import is_teacher_assembly, plot_pareto, short_labels

    plan = Plan.load(plan_dir)
    frontier = plan.frontier
    fig = plot_pareto(
        plan.scored, frontier, plan.rules, metric="bleu", budget_latency_ms=20.0, chosen=plan.chosen["assembly"]
    )
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    validated = frontier[frontier["validated"]]
    labels = dict(zip(validated["assembly"], short_labels(validated["assembly"]), strict=True))
    labels |= {a: "teacher" for a in labels if is_teacher_assembly(a)}
    labels[plan.chosen["assembly"]] = f"chosen: {labels[plan.chosen['assembly']]}"
    assert labels[plan.chosen["assembly"]] in texts  # the chosen point is always named, as such
    on_line = frontier_2d(validated, "bleu", "measured_latency_ms")["assembly"]
    assert any(labels[a] in texts for a in on_line)
    assert not any("enc=" in t for t in texts)


def test_export_plan_exports_the_chosen_assembly(plan_dir, tmp_path):
    out = tmp_path / "exported"
    result = cli("export", "--plan", plan_dir, "--out", out)
    assert result.exit_code == 0, result.stderr
    chosen = Plan.load(plan_dir).chosen
    info = json.loads((out / "modformer.json").read_text())
    assert info["assembly_spec"] == Assembly.parse(chosen["assembly"]).format()
    assert info["plan_chosen"]["assembly"] == chosen["assembly"]
    model = Plan.load(plan_dir).summary["model"]  # what the plan was made for: export --plan checks modules against it
    assert model["teacher_config_fingerprint"] == info["teacher_config_fingerprint"]


def test_infeasible_budget_exits_2_naming_the_nearest(plan_root, data_dir, tmp_path):
    out = tmp_path / "never"
    result = cli(*plan_args(plan_root, data_dir, out, "--budget", "latency_ms<=0.001"))
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert (
        "\n" not in line and "no assembly meets the budget latency_ms<=0.001; nearest: enc=" in line and " ms, " in line
    )
    assert not out.exists()


def test_a_plan_within_half_the_parameters_chooses_a_2x_smaller_assembly(small, plan_root, data_dir, tmp_path):
    _, _, space, _ = small
    half = float(space.params(*space.teacher)) / 2 / 1e6
    out = tmp_path / "half"
    result = cli(*plan_args(plan_root, data_dir, out, "--budget", f"params_m<={half}"))
    assert result.exit_code == 0, result.stderr + result.stdout
    plan = Plan.load(out)
    assert plan.chosen["size_ratio"] >= 2.0
    frontier = plan.frontier
    assert (frontier.loc[frontier["within_budget"], "size_ratio"] >= 2.0).all()
    summary = plan.summary
    assert summary["budget"]["params_m"] == pytest.approx(half)


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        (("--budget", "speed<=3"), "unknown budget key 'speed'"),
        (("--objectives", "latency,memory"), "--objectives must list quality"),
        (("--method", "annealing"), "unknown search method 'annealing'"),
        (("--metric", "meteor"), "unknown metric 'meteor'"),
        (("--workers", 0), "--workers must be at least 1"),
        (("--remote-workers", 1), "needs a database --storage URL"),
        (("--split", "nosuch"), "nosuch"),
        (("--trials", 0), "--trials must be at least 1"),
    ],
)
def test_plan_bad_input_is_one_line(plan_root, data_dir, tmp_path, extra, phrase):
    out = tmp_path / "p"
    result = cli(*plan_args(plan_root, data_dir, out, *extra))
    assert result.exit_code == 1, result.stdout
    assert phrase in result.stderr and result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert not out.exists()


def test_a_remote_worker_joins_through_a_database_url(plan_root, data_dir, tmp_path):
    """`plan --remote-workers 1 --storage sqlite:///…` and `plan-worker` in two processes, as on two machines;
    the frontier is the one a single process finds with the same seed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    search = ("--method", "nsga2", "--trials", 60, "--population", 8, "--seed", 1)
    url = f"sqlite:///{tmp_path / 'plan.db'}"
    cmd = [sys.executable, "-m", "modformer.cli"]
    plan = subprocess.Popen(
        [
            str(a)
            for a in [
                *cmd,
                *plan_args(
                    plan_root,
                    data_dir,
                    tmp_path / "two",
                    *search,
                    "--storage",
                    url,
                    "--study-name",
                    "shared",
                    "--remote-workers",
                    1,
                ),
            ]
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    worker = subprocess.run(
        [*cmd, "plan-worker", "--storage", url, "--study-name", "shared", "--index", "1", "--wait", "120"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out, err = plan.communicate(timeout=600)
    assert plan.returncode == 0, err[-2000:]
    assert worker.returncode == 0, worker.stderr[-2000:]
    scored_by_worker = int(worker.stdout.split("scored")[1].split()[0].replace(",", ""))
    assert scored_by_worker > 0
    alone = cli(*plan_args(plan_root, data_dir, tmp_path / "one", *search))
    assert alone.exit_code == 0, alone.stderr
    front = [Plan.load(tmp_path / name).frontier for name in ("one", "two")]
    assert [f.loc[f["on_proxy_frontier"], "assembly"].tolist() for f in front][0] == front[1].loc[
        front[1]["on_proxy_frontier"], "assembly"
    ].tolist()
