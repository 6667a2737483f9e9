"""npperceiver against HF transformers' PerceiverModel (torch, CPU): time, throughput, memory and parity.

For each encoder config the script builds one set of random weights (in HF, then loaded into
npperceiver), feeds both models the same inputs in the same process, and alternates their runs so that
both see the same machine. It reports, per config and thread count:

* median wall time of a forward pass, for npperceiver and for torch (``eval()``, ``inference_mode``),
  and their ratio;
* npperceiver's GFLOP/s, counting the matmul FLOPs of the config (elementwise work not counted), and that
  as a fraction of this machine's sgemm peak, measured in the same run with a large numpy matmul;
* peak extra memory of one forward pass: tracemalloc for numpy (numpy reports every array buffer to
  it), torch's profiler (``profile_memory=True``; every CPU tensor allocation and free) for torch;
* ``max |np - torch| / max(1, max |torch|)`` of ``last_hidden_state`` (the parity tests' criterion, 1e-5).

Configs: ``small`` (the preset, B=2, M=128); ``language`` (deepmind/language-perceiver's encoder, B=1,
M=2048); ``image`` (the encoder of deepmind/vision-perceiver-fourier: N=512, D=1024, C=261, 1 cross head,
8 self heads, 6 self-attention layers per block, ``--image-blocks`` blocks -- 8 in the real model -- at
M=224*224=50,176, B=1), run unchunked and with ``cross_attention_chunk_size``; ``sweep`` (the image config
with one block, M from 512 to 50,176), showing the cost of each extra input and the memory.

Usage::

    python benchmarks/bench_forward.py                        # all configs, 1 and 2 threads (~8 min)
    python benchmarks/bench_forward.py --quick                # tiny sizes, a smoke run of every code path
    python benchmarks/bench_forward.py --configs language --threads 1 --repeats 9

Writes ``benchmarks/results/forward-<time>.json`` and ``.md`` (``--out`` to change the folder) and prints
the Markdown tables. Threads: numpy's BLAS through ``threadpoolctl``, torch through
``torch.set_num_threads``; numpy's elementwise work always runs on one thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import sys
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import numpy as np

os.environ.setdefault("KINETO_LOG_LEVEL", "99")  # silence the profiler's start/stop lines
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import npperceiver as npp  # noqa: E402

try:
    import threadpoolctl
except ImportError:  # then only torch's threads can be set; see threads()
    threadpoolctl = None

MiB = 2**20
PARITY_RTOL = 1e-5  # as in tests/test_parity.py

IMAGE = dict(num_latents=512, d_latents=1024, d_model=261, num_self_attends_per_block=6,
             num_self_attention_heads=8, num_cross_attention_heads=1)  # vision-perceiver-fourier's encoder
SWEEP_M = (512, 2048, 8192, 16384, 32768, 50176)


# ---------------------------------------------------------------------------- what to run
@dataclasses.dataclass
class Case:
    """One config at one input size; ``chunks`` lists the npperceiver variants (None = unchunked)."""

    name: str
    config: dict
    B: int
    M: int
    chunks: tuple = (None,)


def encoder_fields(config: npp.PerceiverConfig) -> dict:
    """The config's fields without its extra ``config.json`` keys, as HF's PerceiverConfig takes them."""
    return {k: v for k, v in config.to_dict().items() if k in {f.name for f in dataclasses.fields(config)}}


def cases(args: argparse.Namespace) -> list[Case]:
    """The cases for the chosen ``--configs``; ``--quick`` shrinks each to a few milliseconds."""
    small = encoder_fields(npp.load_preset("small"))
    language = encoder_fields(npp.load_preset("language-perceiver"))
    image = dict(IMAGE, num_blocks=args.image_blocks)
    sizes = dict(small=(2, 128), language=(1, 2048), image=(1, 224 * 224))
    sweep_m = SWEEP_M
    if args.quick:
        language.update(num_latents=16, d_latents=64, d_model=48, qk_channels=32, v_channels=64,
                        num_self_attends_per_block=2)
        image.update(num_latents=16, d_latents=32, d_model=7, num_blocks=1, num_self_attends_per_block=2)
        sizes = dict(small=(2, 16), language=(1, 64), image=(1, 300))
        sweep_m = (64, 128, 256)
    chunk = args.chunk if not args.quick else 64
    out = []
    for name in args.configs:
        if name == "sweep":
            one_block = dict(image, num_blocks=1)
            out += [Case(f"sweep M={m}", one_block, 1, m, (None, chunk)) for m in sweep_m]
        else:
            config = dict(small=small, language=language, image=image)[name]
            out.append(Case(name, config, *sizes[name], chunks=(None, chunk) if name == "image" else (None,)))
    return out


def forward_flops(config: npp.PerceiverConfig, B: int, M: int) -> int:
    """2 x the multiply-adds of every matmul of one forward pass (projections, scores, context, MLPs)."""
    def layer(dims, Q: int, K: int) -> int:  # Q query rows, K key rows
        return (Q * dims.q_dim * dims.qk_channels  # query
                + K * dims.kv_dim * (dims.qk_channels + dims.v_channels)  # key, value
                + Q * K * (dims.qk_channels + dims.v_channels)  # scores, context (all heads)
                + Q * dims.v_channels * dims.output_channels  # output projection
                + 2 * Q * dims.q_dim * dims.mlp_hidden)  # MLP
    N = config.num_latents
    macs = layer(config.cross_attention, N, M) + config.num_self_attention_layers * layer(config.self_attention, N, N)
    return 2 * B * macs


# ---------------------------------------------------------------------------- the two models
def build_pair(config: dict, seed: int = 0):
    """HF ``PerceiverModel(config).eval()`` with random weights, and npperceiver loaded from them.

    HF's own init, then LayerNorm weights 1 + 0.1 N(0,1), LayerNorm and Linear biases 0.02 N(0,1), so
    no parameter is trivially 0 or 1.
    """
    import torch
    from transformers import PerceiverConfig as HFConfig
    from transformers import PerceiverModel as HFModel

    torch.manual_seed(seed)
    hf = HFModel(HFConfig(**config)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if ".layernorm" in name and name.endswith("weight"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    return hf, npp.PerceiverModel.from_state_dict(npp.PerceiverConfig.from_dict(config), state)


@contextmanager
def threads(n: int):
    """numpy's BLAS (through threadpoolctl) and torch limited to ``n`` threads. Without threadpoolctl
    only torch's threads are set, and the run says so (numpy then uses its BLAS's default)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        if threadpoolctl is None:
            yield
        else:
            with threadpoolctl.threadpool_limits(limits=n, user_api="blas"):
                yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------- measuring
def median_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall times of each function, run in rounds that alternate their order (A B C, C B A, ...)."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def numpy_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes allocated during ``fn()`` above what was allocated before (numpy reports its array
    buffers to tracemalloc). The result is kept alive until the end, so it counts."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    result = fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    del result
    return peak


def torch_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of CPU tensors allocated during ``fn()`` (the running sum of the allocation and free
    events torch's profiler records with ``profile_memory=True``)."""
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()  # negative for a free
        peak = max(peak, current)
    del result
    return peak


def sgemm_peak(n: int, repeats: int) -> float:
    """GFLOP/s of a float32 (n, n) @ (n, n) numpy matmul: the best of ``repeats`` runs (a peak; anything
    else running on the machine can only make a run slower)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, n, n), dtype=np.float32)
    times = median_times({"sgemm": lambda: a @ b}, repeats)["sgemm"]
    return 2 * n**3 / min(times) / 1e9


def parity(ours: np.ndarray, theirs: np.ndarray) -> float:
    """``max |ours - theirs| / max(1, max |theirs|)``: the parity tests' criterion."""
    return float(np.abs(ours - theirs).max() / max(1.0, float(np.abs(theirs).max())))


# ---------------------------------------------------------------------------- one case
def run_case(case: Case, thread_counts: list[int], repeats: int) -> list[dict]:
    """Time, memory and parity of one case at every thread count; one result row per npperceiver variant."""
    import torch

    hf, model = build_pair(case.config)
    flops = forward_flops(model.config, case.B, case.M)
    x = np.random.default_rng(1).standard_normal((case.B, case.M, model.config.d_model), dtype=np.float32)
    tx = torch.from_numpy(x)

    def torch_forward():
        with torch.inference_mode():
            return hf(inputs=tx).last_hidden_state

    fns = {f"np{c}": (lambda c=c: model(x, cross_attention_chunk_size=c).last_hidden_state) for c in case.chunks}
    fns["torch"] = torch_forward
    rows = []
    for n in thread_counts:
        with threads(n):
            reference = torch_forward().numpy()
            times = median_times(fns, repeats)
            torch_ms = float(np.median(times["torch"])) * 1e3
            torch_mem = torch_peak_bytes(torch_forward)
            for c in case.chunks:
                np_ms = float(np.median(times[f"np{c}"])) * 1e3
                rows.append(dict(
                    config=case.name, B=case.B, M=case.M, threads=n, chunk=c, gflop=flops / 1e9,
                    np_ms=np_ms, torch_ms=torch_ms, ratio=np_ms / torch_ms, np_gflops=flops / np_ms / 1e6,
                    np_peak_mib=numpy_peak_bytes(fns[f"np{c}"]) / MiB, torch_peak_mib=torch_mem / MiB,
                    max_rel_diff=parity(fns[f"np{c}"](), reference),
                    np_times_ms=[t * 1e3 for t in times[f"np{c}"]], torch_times_ms=[t * 1e3 for t in times["torch"]],
                ))
                print(_row_line(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _row_line(r: dict) -> str:
    chunk = "" if r["chunk"] is None else f" chunk {r['chunk']}"
    return (f"  {r['config']}{chunk} @ {r['threads']} thread(s): np {r['np_ms']:.1f} ms, torch {r['torch_ms']:.1f} ms, "
            f"ratio {r['ratio']:.2f}, {r['np_gflops']:.0f} GFLOP/s, "
            f"memory {r['np_peak_mib']:.1f} / {r['torch_peak_mib']:.1f} MiB, diff {r['max_rel_diff']:.1e}")


# ---------------------------------------------------------------------------- reporting
def environment(thread_counts: list[int]) -> dict:
    """Versions, CPU, BLAS (as threadpoolctl sees it at each thread count) and the BLAS variables."""
    import torch
    import transformers

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    blas = {}
    for n in thread_counts:
        with threads(n):
            libraries = threadpoolctl.threadpool_info() if threadpoolctl is not None else []
            blas[n] = [{k: lib.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
                       for lib in libraries if lib.get("user_api") == "blas"]
    return dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"), cpu=cpu, nproc=os.cpu_count(),
        python=platform.python_version(), numpy=np.__version__, torch=torch.__version__,
        transformers=transformers.__version__, blas=blas, command=" ".join(sys.argv),
        env={k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS",
                                             "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
        loadavg_start=os.getloadavg(),
    )


def markdown(results: dict) -> str:
    """The environment line, the main table and the sweep table, ready to paste into docs."""
    env = results["environment"]
    kernels = sorted({f"{b['internal_api']} {b['version']} ({b['architecture']} kernels)"
                      for libs in env["blas"].values() for b in libs})
    kernels = kernels or ["its default BLAS threads (no threadpoolctl: thread counts apply to torch only)"]
    peaks = ", ".join(f"{n} thread{'s' * (n > 1)}: {g:.0f} GFLOP/s" for n, g in results["sgemm_peak"].items())
    peaks += " (best run, measured at the start and the end)"
    lines = [
        f"{env['cpu']}, {env['nproc']} cores; numpy {env['numpy']} with {'; '.join(kernels)}, "
        f"torch {env['torch']}, transformers {env['transformers']}; OPENBLAS_CORETYPE="
        f"{env['env']['OPENBLAS_CORETYPE']}, OPENBLAS_L2_SIZE={env['env']['OPENBLAS_L2_SIZE']}; "
        f"load average {env['loadavg_start'][0]:.2f} at the start, {env['loadavg_end'][0]:.2f} at the end; "
        f"{env['date']}. sgemm peak (numpy, {results['sgemm_n']}^3): {peaks}.",
        "",
        "| config | B | M | threads | npperceiver ms | torch ms | np / torch | GFLOP/s | of sgemm peak "
        "| np peak MiB | torch peak MiB | max rel diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (r for r in results["rows"] if not r["config"].startswith("sweep")):
        name = r["config"] if r["chunk"] is None else f"{r['config']}, chunk {r['chunk']}"
        lines.append(
            f"| {name} | {r['B']} | {r['M']} | {r['threads']} | {_num(r['np_ms'])} | {_num(r['torch_ms'])} "
            f"| **{r['ratio']:.2f}** | {r['np_gflops']:.0f} | {100 * r['peak_fraction']:.0f}% "
            f"| {_num(r['np_peak_mib'])} | {_num(r['torch_peak_mib'])} | {r['max_rel_diff']:.1e} |")
    lines += sweep_markdown([r for r in results["rows"] if r["config"].startswith("sweep")])
    return "\n".join(lines) + "\n"


def _num(value: float) -> str:
    """1 decimal, or 2 significant digits below 10 (0.45 ms, 0.12 MiB)."""
    return f"{value:.1f}" if value >= 10 else f"{value:.2g}"


def sweep_markdown(rows: list[dict]) -> list[str]:
    """Per thread count, by M: time, the average cost of each input beyond the smallest M (flat if the
    cost is linear in M), and peak extra memory."""
    out = []
    for n in sorted({r["threads"] for r in rows}):
        by_m = {}
        for r in (r for r in rows if r["threads"] == n):
            by_m.setdefault(r["M"], {})[r["chunk"]] = r
        chunk = next(c for variants in by_m.values() for c in variants if c)
        out += ["", f"Scaling sweep, {n} thread{'s' * (n > 1)} (image config, 1 block; chunked = "
                    f"cross_attention_chunk_size={chunk}):", "",
                "| M | npperceiver ms | chunked ms | torch ms | µs per input beyond the first M: np / chunked / torch "
                "| np peak MiB | chunked MiB | torch MiB |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        first = None
        for m, variants in sorted(by_m.items()):
            plain, chunked = variants[None], variants[chunk]
            times = (plain["np_ms"], chunked["np_ms"], plain["torch_ms"])
            slope = "—" if first is None else " / ".join(
                f"{1e3 * (t - t0) / (m - first[0]):.1f}" for t, t0 in zip(times, first[1]))
            memory = " | ".join(_num(v) for v in (plain["np_peak_mib"], chunked["np_peak_mib"],
                                                  plain["torch_peak_mib"]))
            out.append(f"| {m} | {times[0]:.0f} | {times[1]:.0f} | {times[2]:.0f} | {slope} | {memory} |")
            first = first or (m, times)
    return out


# ---------------------------------------------------------------------------- main
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="small,language,image,sweep",
                   help="comma-separated: small, language, image, sweep (default: all)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: 1,2)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per model (default: 7; 101 for small)")
    p.add_argument("--image-blocks", type=int, default=8, help="num_blocks of the image config (default: 8)")
    p.add_argument("--chunk", type=int, default=2048, help="cross_attention_chunk_size of the chunked runs")
    p.add_argument("--quick", action="store_true", help="tiny sizes and 3 repeats: a smoke run")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the JSON and Markdown")
    args = p.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(args.configs) - {"small", "language", "image", "sweep"}
    if unknown:
        p.error(f"unknown config(s): {', '.join(sorted(unknown))}")
    args.threads = [int(t) for t in args.threads.split(",")]
    return args


def save_results(results: dict, table: str, folder: str, name: str) -> None:
    """Print the Markdown table, and write it and the results as ``FOLDER/NAME-<time>.md`` and ``.json`` (the
    other benchmarks write theirs with it too)."""
    print(table)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    stem.with_suffix(".md").write_text(table, encoding="utf-8")
    print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)

def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    results = dict(environment=environment(args.threads), rows=[])
    results["sgemm_n"] = 512 if args.quick else 4096
    peak_runs = {n: [] for n in args.threads}

    def measure_peaks(when: str) -> None:
        for n in args.threads:
            with threads(n):
                peak_runs[n].append(sgemm_peak(results["sgemm_n"], 3 if args.quick else 5))
            print(f"sgemm peak at the {when}, {n} thread(s): {peak_runs[n][-1]:.0f} GFLOP/s", file=sys.stderr)

    measure_peaks("start")
    for case in cases(args):
        repeats = args.repeats or (3 if args.quick else 101 if case.name == "small" else 7)
        print(f"{case.name}: B={case.B}, M={case.M}, {repeats} runs each", file=sys.stderr, flush=True)
        results["rows"] += run_case(case, args.threads, repeats)
    measure_peaks("end")
    results["sgemm_peak_runs"] = peak_runs
    results["sgemm_peak"] = {n: max(runs) for n, runs in peak_runs.items()}
    for r in results["rows"]:
        r["peak_fraction"] = r["np_gflops"] / results["sgemm_peak"][r["threads"]]
    results["environment"]["loadavg_end"] = os.getloadavg()
    table = markdown(results)
    save_results(results, table, args.out, "forward")
    return results


if __name__ == "__main__":
    main()
