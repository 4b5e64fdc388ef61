"""Peak memory of loading a saved model and running one `generate`, measured in a fresh process.

What the figure is, exactly:

- **CPU**: the child's peak resident set while it loads the model with `from_pretrained` and runs one `generate`,
  minus its resident set just before loading. The child first imports torch and transformers, builds the inputs
  and runs a throw-away one-layer model of the same family through `generate` (lazy imports, kernel selection and
  one-time buffers), then resets the kernel's peak counter (`/proc/self/clear_refs`, VmHWM; where that is not
  possible the lifetime peak `ru_maxrss` is used, and the warm-up can then only inflate the figure). So the figure
  counts the weights as `from_pretrained` materialises them (and what loading touches on the way), the key/value
  cache, activations and allocator slack; it leaves out the Python, torch and transformers runtime, which every
  model pays alike.
- **CUDA**: ``torch.cuda.max_memory_allocated()`` during loading onto the GPU and the same `generate`, minus what was
  allocated before: weights, cache and activations as the caching allocator counts them (not the CUDA context).

A fresh process keeps allocations of earlier models (held in the allocator's free lists) out of the figure. Run as
``python -m modformer.profiling.memory MODEL_DIR --batch B --src-len S --gen-len G ...``; it prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from modformer.errors import ModformerError
from modformer.io import die_with_parent

_MARKER = "modformer-peak-memory "


def status_bytes(field: str) -> int | None:
    """A `VmRSS`/`VmHWM` figure of this process from /proc/self/status (Linux), in bytes."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    rss = status_bytes("VmRSS")
    if rss is None:
        import psutil

        rss = int(psutil.Process().memory_info().rss)
    return rss


def reset_peak() -> bool:
    """Set the peak resident set (VmHWM) back to the current one (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def trim_heap() -> None:
    """Hand the allocator's free memory back to the system (glibc `malloc_trim`), so that the baseline holds no slack
    that later allocations would reuse unseen; a no-op where there is no glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_bytes() -> int:
    """The peak resident set since the last reset (VmHWM), or the lifetime peak (ru_maxrss) where there is none."""
    hwm = status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB on Linux


def peak_memory(
    model_dir: str | Path,
    *,
    batch: int,
    src_len: int,
    gen_len: int,
    device: str = "cpu",
    dtype: str = "fp32",
    threads: int = 1,
    seed: int = 0,
    timeout_s: float = 600,
) -> int:
    """Peak memory in bytes of loading `model_dir` and generating `gen_len` tokens for `batch` x `src_len` inputs."""
    cmd = [
        sys.executable,
        "-m",
        "modformer.profiling.memory",
        str(model_dir),
        "--batch",
        str(batch),
        "--src-len",
        str(src_len),
        "--gen-len",
        str(gen_len),
        "--device",
        device,
        "--dtype",
        dtype,
        "--threads",
        str(threads),
        "--seed",
        str(seed),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_package_root(), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False, preexec_fn=die_with_parent
        )
    except subprocess.TimeoutExpired:
        raise ModformerError(f"peak-memory run of {model_dir} took over {timeout_s:.0f} s") from None
    for line in done.stdout.splitlines():
        if line.startswith(_MARKER):
            return int(json.loads(line[len(_MARKER) :])["peak_bytes"])
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    raise ModformerError(f"peak-memory run of {model_dir} failed (exit {done.returncode}): {last}")


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def _child(args: argparse.Namespace) -> dict:
    import gc

    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    from modformer.evaluation import lazy_cache
    from modformer.modular.families import adapter_for
    from modformer.profiling.hardware import torch_dtype

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    dtype = torch_dtype(args.dtype)
    config = AutoConfig.from_pretrained(args.model_dir)
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(4, int(config.vocab_size), (args.batch, args.src_len), generator=generator)
    ids = ids.to(args.device)
    mask = torch.ones_like(ids)

    def run(model, new_tokens: int):
        with torch.no_grad():
            return model.generate(
                input_ids=ids,
                attention_mask=mask,
                min_new_tokens=new_tokens,
                max_new_tokens=new_tokens,
                do_sample=False,
                num_beams=1,
                **lazy_cache(model),
            )

    # Warm up on a one-layer model of the same family and shapes: lazy imports, kernel selection and one-time
    # buffers then happen before the baseline, not inside the figure.
    small = adapter_for(config).with_depths(config, 1, 1)
    warm = AutoModelForSeq2SeqLM.from_config(small, dtype=dtype).to(args.device).eval()
    run(warm, 2)
    del warm
    gc.collect()
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        trim_heap()
        reset = reset_peak()
        before = rss_bytes()
    model = AutoModelForSeq2SeqLM.from_pretrained(args.model_dir, dtype=dtype).to(args.device).eval()
    out = run(model, args.gen_len)
    if args.device == "cuda":
        torch.cuda.synchronize()
        peak, how = torch.cuda.max_memory_allocated() - before, "cuda max_memory_allocated"
    else:
        peak, how = peak_bytes() - before, "VmHWM after reset" if reset else "ru_maxrss"
    return {"peak_bytes": int(peak), "before_bytes": int(before), "how": how, "new_tokens": int(out.shape[1] - 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Peak memory of loading a seq2seq checkpoint and one generate.")
    parser.add_argument("model_dir")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--src-len", type=int, required=True)
    parser.add_argument("--gen-len", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(_MARKER + json.dumps(_child(args)), flush=True)


if __name__ == "__main__":
    main()
