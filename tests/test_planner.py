"""The planner: proxy scoring, search space and costs, search methods, frontier, budgets, outputs and the CLI."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from modformer.checkpoints import load_seq2seq
from modformer.errors import ConfigError, InfeasibleBudgetError
from modformer.evaluation import teacher_forced_loss
from modformer.modular.assembly import Assembly, valid_stacks
from modformer.modular.model import ModularModel
from modformer.planner.frontier import hypervolume, normaliser
from modformer.planner.plan import check_feasible
from modformer.planner.proxy import ProxyScorer
from modformer.planner.run import PlanSettings, load_for_scoring, pair_scorer, run_plan
from modformer.planner.search import Search, SearchConfig, SearchResult, objective_values, open_storage, open_study
from modformer.planner.space import Budget, SearchSpace, space_stacks
from modformer.profiling.measure import ProfileConfig, profile_modules
from modformer.profiling.profile import LatencyProfile, default_workload, predict
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
    profile = profile_modules(modular, ProfileConfig(**grid, warmup=1, repeats=2, generate_repeats=1, memory=False,
                                                     threads=1))  # fmt: skip
    profile.save(root / "profile.json")
    return root


@pytest.fixture(scope="module")
def small(plan_root, data_dir):
    modular = ModularModel.from_pretrained(plan_root / "mods")
    profile = LatencyProfile.load(plan_root / "profile.json")
    space = SearchSpace.build(modular, profile, default_workload(profile))
    settings = PlanSettings(modules=str(plan_root / "mods"), data=data_args(data_dir), proxy_samples=16,
                            proxy_batch_size=16)  # fmt: skip
    loaded = load_for_scoring(settings)
    return modular, profile, space, loaded


def data_args(data_dir) -> dict:
    return {"path": str(data_dir), "src_ext": "en", "tgt_ext": "de", "src_column": "source", "tgt_column": "target",
            "prefix": ""}  # fmt: skip


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
    for text, phrase in [("latency<=3", "unknown budget key"), ("latency_ms=3", "KEY<=NUMBER"),
                         ("latency_ms<=x", "not a number"), ("latency_ms<=-1", ">= 0"),
                         ("latency_ms<=1,latency_ms<=2", "given twice")]:  # fmt: skip
        with pytest.raises(ConfigError, match=phrase):
            Budget.parse(text)
    with pytest.raises(InfeasibleBudgetError, match=r"no assembly meets the budget latency_ms<=0; nearest: enc="):
        check_feasible(space, Budget.parse("latency_ms<=0"))
    assert check_feasible(space, Budget(latency_ms=exact)) == int(within.sum())


def test_exhaustive_and_nsga2_agree_on_a_small_space(small, tmp_path):
    exhaustive = run_search(small, tmp_path, name="ex", method="exhaustive")
    assert exhaustive.method == "exhaustive" and exhaustive.scored_count == 169
    nsga = run_search(small, tmp_path, name="ga", method="nsga2", trials=120, population=16, seed=3)
    assert nsga.method == "nsga2" and nsga.scored_count <= 120
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


def test_two_workers_on_one_file_storage_give_the_same_frontier(small, tmp_path, plan_root, data_dir):
    modular, profile, space, _ = small
    results = {}
    for workers in (1, 2):
        settings = PlanSettings(modules=str(plan_root / "mods"), data=data_args(data_dir), proxy_samples=16,
                                proxy_batch_size=16, validate=2, validate_samples=8, max_new_tokens=4,
                                search={"method": "nsga2", "trials": 60, "population": 8, "seed": 1})  # fmt: skip
        results[workers] = run_plan(settings, profile, storage=str(tmp_path / f"w{workers}.log"), study_name="p",
                                    workers=workers)  # fmt: skip
    one, two = results[1], results[2]
    assert one.scored["assembly"].tolist() == two.scored["assembly"].tolist()
    assert np.allclose(one.scored["proxy_loss"], two.scored["proxy_loss"], atol=2e-6)
    front = lambda r: r.frontier[r.frontier["on_proxy_frontier"]]["assembly"].tolist()  # noqa: E731
    assert front(one) == front(two)
