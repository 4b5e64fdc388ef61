"""Measuring every block of a modular checkpoint in place, through the real Hugging Face model.

Each measurement runs the teacher's own encoder or decoder stack with another layer list swapped in
(`FamilyAdapter.swapped_layers`), so no family-specific code calls a layer: a block's cost is the time of the stack
with the block minus the time of the same stack without it (differential timing). Every block of a stack is one
layer of the same class and size, so blocks cost alike except where they stand: a block at ``start`` 0 always stands
first (T5's first block computes the relative position bias) and is timed alone against an empty stack; any other
block is timed above the teacher's first layer, against that layer alone. An empty stack still runs its embeddings
and final norm, for T5 and BART alike.

All cases at one grid point run round-robin (`Timer.interleaved`): drifts of a shared machine hit all alike, and a
block's weights are no hotter in the caches than inside a whole model. Everything runs under `torch.no_grad()`, as
`generate` does, with the model's own attention implementation (SDPA unless the checkpoint says otherwise).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from transformers import DynamicCache, EncoderDecoderCache

from modformer.errors import ConfigError
from modformer.evaluation import lazy_cache
from modformer.modular.model import ModularModel, module_key
from modformer.profiling.hardware import fingerprint, torch_dtype
from modformer.profiling.memory import peak_memory
from modformer.profiling.profile import CALIBRATION, COLUMNS, LatencyProfile, kept_layers, new_meta
from modformer.profiling.timer import Case, Timer, Timing, check_device, check_statistic

Progress = Callable[[int, int, str], None]  # (done, total, what is being measured)


@dataclass
class ProfileConfig:
    """What to measure and how (the grid, repeats, device). Defaults are the issue's default grid."""

    device: str = "cpu"  # cpu or cuda
    dtype: str = "fp32"  # fp32, bf16 or fp16: weights and activations
    threads: int | None = None  # torch intra-op threads; None keeps torch's current setting (recorded either way)
    batch_sizes: tuple[int, ...] = (1, 8)  # batch rows per call
    src_lens: tuple[int, ...] = (32, 64)  # source tokens per row
    gen_lens: tuple[int, ...] = (32,)  # new tokens per call; the fixed cost is also measured at 1 new token
    cache_points: int = 3  # self-attention cache lengths per decoder grid, evenly spread over 0 .. max gen_len - 1
    warmup: int = 3  # untimed rounds before the timed ones
    repeats: int = 20  # timed rounds of the block measurements (each round runs every case once)
    generate_repeats: int = 30  # timed rounds of the fixed-cost and calibration generate calls
    passes: int = 2  # walks over the whole grid, each with its share of the rounds: slow drifts hit all points alike
    statistic: str = "min"  # min or median of the rounds (see `timer.STATISTICS`); validation uses the same
    memory: bool = True  # measure peak memory (one fresh process per model and grid point)
    seed: int = 0  # random token ids and hidden states

    def __post_init__(self) -> None:
        check_device(self.device)
        check_statistic(self.statistic)
        torch_dtype(self.dtype)
        for name in ("batch_sizes", "src_lens", "gen_lens"):
            values = tuple(getattr(self, name))
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ConfigError(f"{name} must be whole numbers >= 1, got {list(values)}")
            setattr(self, name, tuple(sorted(set(values))))
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.cache_points < 1:
            raise ConfigError(f"cache_points must be >= 1, got {self.cache_points}")
        if self.warmup < 0 or self.repeats < 1 or self.generate_repeats < 1 or self.passes < 1:
            raise ConfigError("warmup must be >= 0 and repeats, generate_repeats and passes >= 1")

    def cache_lens(self) -> list[int]:
        """Self-attention cache lengths to measure: steps of a G-token call see lengths 0 .. G-1."""
        top = max(self.gen_lens) - 1
        if self.cache_points == 1 or top == 0:
            return [0] if top == 0 else [top // 2]
        return sorted({round(i * top / (self.cache_points - 1)) for i in range(self.cache_points)})

    def fixed_gen_lens(self) -> list[int]:
        return sorted({1, *self.gen_lens})


@dataclass(frozen=True)
class BlockId:
    """A block of a stack: teacher layer `start` when `size` is 1, else the module for that span."""

    stack: str
    start: int
    size: int

    @property
    def key(self) -> str:
        return module_key(self.stack, self.start, self.size)

    @property
    def first(self) -> bool:
        return self.start == 0


def all_blocks(modular: ModularModel) -> list[BlockId]:
    """Every teacher layer and every module, encoder first, bottom-up."""
    out = []
    for stack in ("encoder", "decoder"):
        out.extend(BlockId(stack, i, 1) for i in range(modular.depth(stack)))
        out.extend(BlockId(s, i, k) for s, i, k in modular.config.spans() if s == stack)
    return out


def param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


# --------------------------------------------------------------------------------------------------------------------
# The measuring bench: one model, fixed inputs, the layouts to compare
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Point:
    """Inputs for one (batch, source length) grid point."""

    ids: torch.Tensor  # (B, S) source token ids
    mask: torch.Tensor  # (B, S) all ones
    hidden: torch.Tensor  # (B, S, C) stand-in encoder output for the decoder
    token: torch.Tensor  # (B, 1) the decoder's next input id
    prefill: torch.Tensor  # (B, L_max) decoder ids to fill the self-attention cache


@dataclass
class Bench:
    modular: ModularModel
    config: ProfileConfig
    timer: Timer = field(init=False)

    def __post_init__(self) -> None:
        self.timer = Timer(self.config.device)
        self.teacher = self.modular.teacher
        self.adapter = self.modular.adapter
        self.dtype = torch_dtype(self.config.dtype)
        self.vocab = int(self.teacher.config.vocab_size)
        self.d_model = int(self.teacher.get_input_embeddings().weight.shape[1])

    def point(self, batch: int, src_len: int) -> _Point:
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + batch * 1_009 + src_len)
        dev = self.config.device
        max_l = max(self.config.cache_lens()) + 1
        ids = torch.randint(4, self.vocab, (batch, src_len), generator=g)
        return _Point(
            ids=ids.to(dev),
            mask=torch.ones_like(ids).to(dev),
            hidden=torch.randn(batch, src_len, self.d_model, generator=g).to(dev, self.dtype),
            token=torch.randint(4, self.vocab, (batch, 1), generator=g).to(dev),
            prefill=torch.randint(4, self.vocab, (batch, max_l), generator=g).to(dev),
        )

    def block(self, b: BlockId) -> nn.Module:
        return self.modular.block(b.stack, b.start, b.size)

    def layouts(self, stack: str, blocks: Sequence[BlockId]) -> tuple[list[list[nn.Module]], list[int]]:
        """Layer lists to time: two baselines ([] and [teacher layer 0]) then one per block; and each block's
        baseline index."""
        anchor = self.modular.block(stack, 0, 1)
        layouts: list[list[nn.Module]] = [[], [anchor]]
        baseline = []
        for b in blocks:
            layouts.append([self.block(b)] if b.first else [anchor, self.block(b)])
            baseline.append(0 if b.first else 1)
        return layouts, baseline

    def swapped(self, stack: str, layout: list[nn.Module]) -> Callable[[], contextlib.AbstractContextManager]:
        return functools.partial(self.adapter.swapped_layers, self.teacher, {stack: layout})

    def stack(self, stack: str) -> nn.Module:
        return self.adapter.stack(self.teacher, stack)

    # --- the calls that are timed ---------------------------------------------------------------------------------
    def encoder_case(self, layout: list[nn.Module], p: _Point) -> Case:
        encoder = self.stack("encoder")
        return Case(fn=lambda: encoder(input_ids=p.ids, attention_mask=p.mask), context=self.swapped("encoder", layout))

    def decode(self, p: _Point, ids: torch.Tensor, cache: EncoderDecoderCache):
        """One decoder call as `generate` makes it (captured from transformers 5's generate for T5 and BART)."""
        return self.stack("decoder")(
            input_ids=ids,
            attention_mask=None,
            encoder_hidden_states=p.hidden,
            encoder_attention_mask=p.mask,
            cache=cache,
            use_cache=True,
        )

    def step_case(self, layout: list[nn.Module], p: _Point, cache_len: int) -> Case:
        """One step with the self-attention cache holding `cache_len` tokens and cross-attention keys/values
        computed; the cache is put back to that state before every call (untimed)."""
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        swapped = self.swapped("decoder", layout)
        if layout:
            with swapped():
                self.decode(p, p.prefill[:, : max(cache_len, 1)], cache)
        saved = [
            (layer.keys[..., :cache_len, :], layer.values[..., :cache_len, :])
            for layer in cache.self_attention_cache.layers
        ]

        def reset() -> None:
            for layer, (k, v) in zip(cache.self_attention_cache.layers, saved, strict=True):
                layer.keys, layer.values = k, v

        return Case(fn=lambda: self.decode(p, p.token, cache), setup=reset, context=swapped)

    def first_step_case(self, layout: list[nn.Module], p: _Point) -> Case:
        """The first step of a call: an empty cache, so each block projects the encoder output to keys/values."""
        holder: dict[str, EncoderDecoderCache] = {}

        def fresh() -> None:
            holder["cache"] = EncoderDecoderCache(DynamicCache(), DynamicCache())

        return Case(
            fn=lambda: self.decode(p, p.token, holder["cache"]), setup=fresh, context=self.swapped("decoder", layout)
        )

    def generate_case(self, p: _Point, gen_len: int, keep: dict[str, int | str | None] | None = None) -> Case:
        """A real `generate` of exactly `gen_len` new tokens by the teacher keeping `keep[stack]` of its layers in each
        stack (see `kept_layers`): with none kept (the default), the fixed costs; otherwise a calibration call (see
        `CALIBRATION`)."""
        keep = keep if keep is not None else {"encoder": 0, "decoder": 0}
        layouts = {}
        for s, n in keep.items():
            layers = list(self.adapter.layers(self.teacher, s))
            layouts[s] = layers[: kept_layers(n, len(layers))]
        context = functools.partial(self.adapter.swapped_layers, self.teacher, layouts)
        return Case(fn=lambda: generate_fixed(self.teacher, p.ids, p.mask, gen_len), context=context)


def generate_fixed(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, gen_len: int) -> torch.Tensor:
    """The call every measurement and validation times: greedy, exactly `gen_len` new tokens, a growing cache."""
    return model.generate(
        input_ids=ids,
        attention_mask=mask,
        min_new_tokens=gen_len,
        max_new_tokens=gen_len,
        do_sample=False,
        num_beams=1,
        **lazy_cache(model),
    )


# --------------------------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------------------------


def _row(**values) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(values)
    return row


def _block_rows(kind: str, blocks, timings, baseline, statics, statistic: str, **where) -> list[dict]:
    """Differences of each block's timing against its baseline's (both summarised by `statistic`)."""
    base = [t.value(statistic) for t in timings[:2]]
    rows = []
    for b, t, j in zip(blocks, timings[2:], baseline, strict=True):
        ref = base[j]
        rows.append(
            _row(
                kind=kind,
                stack=b.stack,
                block=b.key,
                start=b.start,
                size=b.size,
                position="first" if b.first else "above",
                latency_ms=t.value(statistic) - ref,
                p10_ms=t.p10_ms - ref,
                p90_ms=t.p90_ms - ref,
                base_ms=ref,
                repeats=t.repeats,
                **statics[b.key],
                **where,
            )
        )
    return rows


def _largest_activation(module: nn.Module, run: Callable[[], object], tokens: int) -> int:
    """Bytes per token of the largest tensor any submodule of `module` outputs during `run`."""
    largest = [0]

    def hook(_m, _i, output):
        for t in output if isinstance(output, tuple) else (output,):
            if isinstance(t, torch.Tensor):
                largest[0] = max(largest[0], t.numel() * t.element_size())

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return largest[0] // max(tokens, 1)


def _statics(bench: Bench, blocks: Sequence[BlockId]) -> dict[str, dict]:
    """Per-block facts that need no timing: parameter bytes, cache bytes per token, the largest activation."""
    p = bench.point(1, max(bench.config.src_lens))
    out = {}
    for b in blocks:
        module = bench.block(b)
        layout = [module] if b.first else [bench.modular.block(b.stack, 0, 1), module]
        facts = {"param_bytes": param_bytes(module), "kv_self_bytes_per_token": 0, "kv_cross_bytes_per_token": 0}
        with bench.swapped(b.stack, layout)():
            if b.stack == "encoder":
                run = bench.encoder_case(layout, p).fn
                tokens = p.ids.numel()
            else:
                cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
                run = functools.partial(bench.decode, p, p.prefill, cache)
                tokens = p.prefill.numel()
            facts["act_bytes_per_token"] = _largest_activation(module, run, tokens)
        if b.stack == "decoder":
            j = len(layout) - 1
            self_layer, cross_layer = cache.self_attention_cache.layers[j], cache.cross_attention_cache.layers[j]
            facts["kv_self_bytes_per_token"] = (self_layer.keys.nbytes + self_layer.values.nbytes) // tokens
            facts["kv_cross_bytes_per_token"] = (cross_layer.keys.nbytes + cross_layer.values.nbytes) // p.ids.numel()
        out[b.key] = facts
    return out


# --------------------------------------------------------------------------------------------------------------------
# The whole profile
# --------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Fix torch's intra-op thread count for a block of work and restore it after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def plan_steps(config: ProfileConfig) -> list[tuple]:
    """The grid's measurement steps: (kind, batch, src_len, [cache_len or gen_len]). Timing steps run once per
    pass; memory steps once."""
    steps = []
    for batch in config.batch_sizes:
        for src in config.src_lens:
            steps.append(("enc", batch, src))
            steps.append(("first", batch, src))
            steps.extend(("step", batch, src, L) for L in config.cache_lens())
            steps.append(("fixed", batch, src))
            if config.memory:
                steps.extend(("memory", batch, src, g) for g in config.gen_lens)
    return steps


def progress_total(config: ProfileConfig) -> int:
    """Progress units of `profile_modules`: each timing step once per pass, each memory step once."""
    steps = plan_steps(config)
    memory = sum(1 for s in steps if s[0] == "memory")
    return (len(steps) - memory) * config.passes + memory


def profile_modules(
    modular: ModularModel, config: ProfileConfig | None = None, *, on_progress: Progress | None = None
) -> LatencyProfile:
    """Measure every teacher layer and module of `modular` on the grid of `config`.

    The grid is walked `config.passes` times, each pass taking its share of the timed rounds; the samples of all
    passes are pooled. Moves `modular` to the config's device and dtype. Returns the profile (not yet saved).
    """
    config = config or ProfileConfig()
    started = time.perf_counter()
    modular.to(device=config.device, dtype=torch_dtype(config.dtype))
    modular.eval()
    bench = Bench(modular, config)
    blocks = all_blocks(modular)
    by_stack = {s: [b for b in blocks if b.stack == s] for s in ("encoder", "decoder")}
    steps = plan_steps(config)
    timing = [s for s in steps if s[0] != "memory"]
    total, done = progress_total(config), 0

    def report(info: str) -> None:
        nonlocal done
        if on_progress:
            on_progress(done, total, info)
        done += 1

    rows: list[dict] = []
    samples: dict[tuple, list[list[float]]] = {}
    with torch_threads(config.threads) as threads, torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        statics = _statics(bench, blocks)
        for pass_ in range(config.passes):
            for step in timing:
                report(f"{_describe(step)} (pass {pass_ + 1}/{config.passes})")
                got = _sample_step(bench, step, by_stack)
                samples[step] = [old + new for old, new in zip(samples[step], got, strict=True)] if pass_ else got
        if config.memory:
            model_dirs = _memory_models(modular, Path(tmp))
            for step in steps:
                if step[0] == "memory":
                    report(_describe(step))
                    rows.extend(_memory_rows(bench, step, model_dirs, threads))
        if on_progress:
            on_progress(total, total, "done")
    for step in timing:
        rows.extend(_timing_rows(bench, step, samples[step], by_stack, statics))
    grid = {
        "batch_sizes": list(config.batch_sizes),
        "src_lens": list(config.src_lens),
        "gen_lens": list(config.gen_lens),
        "cache_lens": config.cache_lens(),
        "fixed_gen_lens": config.fixed_gen_lens(),
    }
    meta = new_meta(
        fingerprint=fingerprint(config.device, config.dtype, threads),
        grid=grid,
        model=model_record(modular),
        settings={**asdict(config), "threads": threads},
    )
    profile = LatencyProfile(
        pd.DataFrame(rows, columns=list(COLUMNS)).sort_values(
            ["kind", "batch", "src_len"], kind="stable", ignore_index=True
        ),
        meta,
    )
    profile.meta["profile_seconds"] = round(time.perf_counter() - started, 2)
    return profile


def model_record(modular: ModularModel) -> dict:
    """What the profile was measured on: the modular checkpoint's identity (not its training history)."""
    c = modular.config
    return {
        "teacher": c.teacher,
        "model_type": c.model_type,
        "encoder_layers": c.encoder_layers,
        "decoder_layers": c.decoder_layers,
        "granularities": list(c.granularities),
        "teacher_config_fingerprint": c.teacher_config_fingerprint,
        "teacher_weights_fingerprint": c.teacher_weights_fingerprint,
        "attn_implementation": modular.teacher.config._attn_implementation,
    }


def _describe(step: tuple) -> str:
    kind, batch, src, *rest = step
    extra = {"step": f" cache {rest[0]}" if rest else "", "memory": f" gen {rest[0]}" if rest else ""}.get(kind, "")
    names = {
        "enc": "encoder blocks",
        "first": "decoder first step",
        "step": "decoder step",
        "fixed": "fixed costs",
        "memory": "peak memory",
    }
    return f"{names[kind]} B={batch} S={src}{extra}"


def _rounds(total: int, passes: int) -> int:
    return max(1, -(-total // passes))


def _sample_step(bench: Bench, step: tuple, by_stack) -> list[list[float]]:
    """One pass of one timing step: raw milliseconds per case (layouts in `Bench.layouts` order)."""
    kind, batch, src, *rest = step
    cfg, timer = bench.config, bench.timer
    p = bench.point(batch, src)
    rounds = _rounds(cfg.repeats, cfg.passes)
    if kind == "fixed":  # per generation length: the zero-layer model, then the calibration calls
        keeps = [None, *CALIBRATION.values()]
        cases = [bench.generate_case(p, g, keep) for g in cfg.fixed_gen_lens() for keep in keeps]
        return timer.interleaved_samples(
            cases, warmup=min(cfg.warmup, 2), repeats=_rounds(cfg.generate_repeats, cfg.passes)
        )
    stack = "encoder" if kind == "enc" else "decoder"
    layouts, _ = bench.layouts(stack, by_stack[stack])
    if kind == "enc":
        cases = [bench.encoder_case(lay, p) for lay in layouts]
    elif kind == "step":
        cases = [bench.step_case(lay, p, rest[0]) for lay in layouts]
    else:  # the first step, and a later step at cache length 0 beside it
        cases = [bench.first_step_case(lay, p) for lay in layouts] + [bench.step_case(lay, p, 0) for lay in layouts]
    return timer.interleaved_samples(cases, warmup=cfg.warmup, repeats=rounds)


def _timing_rows(bench: Bench, step: tuple, samples: list[list[float]], by_stack, statics) -> list[dict]:
    kind, batch, src, *rest = step
    where = {"batch": batch, "src_len": src}
    stat = bench.config.statistic
    timings = [Timing.from_samples(s) for s in samples]
    if kind == "fixed":
        names = [("fixed_generate", "fixed")] + [("calibration_generate", name) for name in CALIBRATION]
        labels = [(g, *name) for g in bench.config.fixed_gen_lens() for name in names]
        return [
            _row(
                kind=k,
                stack="model",
                block=block,
                gen_len=g,
                latency_ms=t.value(stat),
                p10_ms=t.p10_ms,
                p90_ms=t.p90_ms,
                base_ms=0.0,
                repeats=t.repeats,
                **where,
            )
            for (g, k, block), t in zip(labels, timings, strict=True)
        ]
    stack = "encoder" if kind == "enc" else "decoder"
    blocks = by_stack[stack]
    _, baseline = bench.layouts(stack, blocks)
    if kind == "enc":
        return _block_rows("enc_forward", blocks, timings, baseline, statics, stat, **where)
    if kind == "step":
        return _block_rows("dec_step", blocks, timings, baseline, statics, stat, cache_len=rest[0], **where)
    n = len(timings) // 2  # first step minus a later step at cache length 0, measured side by side
    first = _block_rows("dec_first_extra", blocks, timings[:n], baseline, statics, stat, **where)
    later = _block_rows("dec_step", blocks, timings[n:], baseline, statics, stat, **where)
    for f, lt in zip(first, later, strict=True):
        for col in ("latency_ms", "p10_ms", "p90_ms"):
            f[col] -= lt["latency_ms"]
    return first


def _memory_rows(bench: Bench, step: tuple, model_dirs: dict[str, Path], threads: int) -> list[dict]:
    _, batch, src, gen = step
    cfg = bench.config
    out = []
    for name, directory in model_dirs.items():
        peak = peak_memory(
            directory,
            batch=batch,
            src_len=src,
            gen_len=gen,
            device=cfg.device,
            dtype=cfg.dtype,
            threads=threads,
            seed=cfg.seed,
        )
        out.append(
            _row(kind="peak_memory", stack="model", block=name, batch=batch, src_len=src, gen_len=gen, mem_bytes=peak)
        )
    return out


def stripped_model(modular: ModularModel) -> nn.Module:
    """The teacher with no layers in either stack: embeddings, final norms and LM head only."""
    adapter, teacher = modular.adapter, modular.teacher
    config = adapter.with_depths(teacher.config, 0, 0)
    prefixes = tuple(f"{adapter.stack_paths[s]}.{adapter.layers_attr}." for s in ("encoder", "decoder"))
    state = {k: v for k, v in teacher.state_dict().items() if not k.startswith(prefixes)}
    model = teacher.__class__(config)
    model.load_state_dict(state, strict=True)
    model.generation_config = copy.deepcopy(teacher.generation_config)
    return model.to(teacher.dtype).eval()


def _memory_models(modular: ModularModel, tmp: Path) -> dict[str, Path]:
    """Save the zero-layer model and the teacher for the peak-memory runs (fp32 files; the runs cast)."""
    dirs = {"zero_layers": tmp / "zero_layers", "teacher": tmp / "teacher"}
    stripped_model(modular).save_pretrained(dirs["zero_layers"])
    modular.teacher.save_pretrained(dirs["teacher"])
    return dirs
