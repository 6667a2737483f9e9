"""Where npperceiver's forward pass spends its time: a per-function profile, numpy only.

Runs one config under ``cProfile`` (clocked by the thread's CPU time at 1 thread, so other processes on
the machine do not inflate it; by wall time otherwise) and groups npperceiver's functions into the kinds
of work they do. Time inside numpy's matmul is not visible to a profiler, so each group is "the function
and the numpy calls it makes itself"; the matmul shares are therefore the ``linear`` and attention-core
rows, and every other row is elementwise work.

Usage::

    python benchmarks/profile_forward.py language            # the language-perceiver encoder, M=2048
    python benchmarks/profile_forward.py image --chunk 2048  # the image config (1 block), streamed
    python benchmarks/profile_forward.py small --threads 2
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import npperceiver as npp  # noqa: E402

# function name in npperceiver -> the kind of work it does (its own time, callees excluded)
GROUPS = {
    "linear": "linear layers (GEMM + bias)",
    "scaled_dot_product_attention": "attention core (scores and context matmuls, scaling, normalising)",
    "streaming_cross_attention": "attention core (scores and context matmuls, scaling, normalising)",
    "exp_shifted": "softmax: row max, subtract, exp",
    "softmax": "softmax: row max, subtract, exp",
    "layer_norm": "layer norm",
    "gelu": "activation (GELU)", "erf": "activation (GELU)", "_polynomial": "activation (GELU)",
    "gelu_tanh": "activation (GELU)", "relu": "activation (GELU)", "silu": "activation (GELU)",
}


HELPERS = {"row_sum"}  # npperceiver helpers charged to their callers, like numpy's own
OTHER = "other (residuals, head split/merge, query scaling, Python)"


def config_and_size(name: str, image_blocks: int) -> tuple[npp.PerceiverConfig, int, int]:
    if name == "image":
        return npp.PerceiverConfig(num_latents=512, d_latents=1024, d_model=261, num_blocks=image_blocks,
                                   num_self_attends_per_block=6, num_self_attention_heads=8,
                                   num_cross_attention_heads=1), 1, 224 * 224
    preset = {"small": "small", "language": "language-perceiver"}[name]
    return npp.load_preset(preset), *{"small": (2, 128), "language": (1, 2048)}[name]


def _owners(stats: dict, key: tuple, seconds: float, depth: int = 0) -> dict[str, float]:
    """Charge a function's own time to the nearest npperceiver function up its call chain: numpy's
    Python-level helpers (``mean``, ``einsum``, ...) count as work of the npperceiver function using them."""
    file, _, func = key
    if ("npperceiver" in file and func not in HELPERS) or depth > 5 or key not in stats:
        return {func: seconds}
    callers = stats[key][4]  # caller key -> (calls, ncalls, tottime, cumtime) on behalf of that caller
    own = sum(timing[2] for timing in callers.values()) or 1.0
    out: dict[str, float] = {}
    for caller, timing in callers.items():
        for owner, s in _owners(stats, caller, seconds * timing[2] / own, depth + 1).items():
            out[owner] = out.get(owner, 0.0) + s
    return out


def profile(model, x, chunk, runs: int, clock) -> dict[str, float]:
    """Seconds per forward pass spent in each group (own time of its functions), and the total."""
    model(x, cross_attention_chunk_size=chunk)  # warm up
    prof = cProfile.Profile(clock)
    prof.enable()
    for _ in range(runs):
        model(x, cross_attention_chunk_size=chunk)
    prof.disable()
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (calls, ncalls, tottime, cumtime, callers)
    shares: dict[str, float] = {}
    total = 0.0
    for key, (_, _, tottime, _, _) in stats.items():
        total += tottime
        for owner, seconds in _owners(stats, key, tottime).items():
            group = GROUPS.get(owner, OTHER)
            shares[group] = shares.get(group, 0.0) + seconds / runs
    shares["total"] = total / runs
    return shares


def main(argv=None) -> None:
    import threadpoolctl

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", choices=["small", "language", "image"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk", type=int, default=None, help="cross_attention_chunk_size")
    p.add_argument("--image-blocks", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    config, B, M = config_and_size(args.config, args.image_blocks)
    model = npp.PerceiverModel.init(config, seed=0)
    x = np.random.default_rng(0).standard_normal((B, M, config.d_model), dtype=np.float32)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    with threadpoolctl.threadpool_limits(args.threads, user_api="blas"):
        shares = profile(model, x, args.chunk, args.runs if args.config != "small" else 200, clock)
    total = shares.pop("total")
    print(f"{args.config}, B={B}, M={M}, {args.threads} thread(s), chunk {args.chunk}: "
          f"{total * 1e3:.1f} ms per forward ({'CPU' if args.threads == 1 else 'wall'} time, under cProfile)\n")
    print("| work | ms per forward | share |\n|---|---:|---:|")
    for group, seconds in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"| {group} | {seconds * 1e3:.1f} | {100 * seconds / total:.0f}% |")


if __name__ == "__main__":
    main()
