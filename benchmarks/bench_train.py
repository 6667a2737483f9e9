"""One training step of npperceiver against HF transformers + torch (CPU): time, peak memory, parity.

A training step is what a training loop repeats: forward, the loss's backward, one AdamW update --
``loss.backward(); optimizer.step(); optimizer.zero_grad()`` in torch, ``loss_and_grads`` (or ``vjp``) and
``AdamW.step`` in npperceiver. For each case the script builds one set of random weights in HF, loads
them into npperceiver, checks that both compute the same loss and gradients, then times the two steps
alternately in one process, at each thread count:

* ``small``: the preset as a masked language model (``PerceiverForMaskedLM``, P = 64), B=32 windows of 64
  tokens, 15% of the positions labelled -- the step ``npperceiver train-mlm`` takes;
* ``language``: deepmind/language-perceiver's encoder (``PerceiverModel``: N=256, D=1280, C=768, 26
  self-attention layers, about 195M parameters) on B=1, M=2048 inputs, with the loss
  ``sum(last_hidden_state * G)`` for a fixed random G (so dL/d(last_hidden_state) = G, what ``vjp`` takes).
  The inputs require a gradient on both sides (npperceiver's ``vjp`` always returns it).

* ``sweep``: vision-perceiver-fourier's encoder cut to one block of one self-attention layer (N=512, D=1024,
  C=261), B=1, M = 2,048 to 32,768, npperceiver with the one-pass cross-attention and streamed
  (``cross_attention_chunk_size``, forward *and* backward): how a step's memory grows with M.

Both run HF's ``eval()`` arithmetic (no dropout: torch's and NumPy's random draws differ). Reported per case
and thread count: the median step time of each and their ratio; the peak extra memory of one step
(tracemalloc for numpy -- numpy reports every array buffer to it -- and torch's profiler with
``profile_memory=True`` for torch; what existed before the step, weights and optimizer moments, is not
counted, the gradients made during it are); and the worst relative gradient difference
``max |g_np - g_torch| / max(1, max |g_torch|)`` over all parameters, before any update.

Usage::

    python benchmarks/bench_train.py                      # every case at 1 and 2 threads (~15 min)
    python benchmarks/bench_train.py --quick              # tiny sizes: a smoke run of every code path
    python benchmarks/bench_train.py --cases language --threads 2 --repeats 5

Writes ``benchmarks/results/train-<time>.json`` and ``.md`` (``--out`` to change the folder) and prints the
Markdown table. Check ``uptime`` first: time only on a quiet machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np

os.environ.setdefault("KINETO_LOG_LEVEL", "99")  # silence the profiler's start/stop lines
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(HERE))

import npperceiver as npp  # noqa: E402
from bench_forward import (  # noqa: E402  (the same measuring tools as the forward benchmark)
    MiB, encoder_fields, environment, median_times, numpy_peak_bytes, save_results, threads, torch_peak_bytes,
)


@dataclasses.dataclass
class Case:
    name: str
    kind: str  # "mlm" or "encoder"
    config: dict
    B: int
    M: int
    chunks: tuple = (None,)  # npperceiver variants: None = one-pass cross-attention, else its chunk size


#: The memory sweep: vision-perceiver-fourier's encoder (N=512, D=1024, C=261, 1 cross head) with one block of
#: one self-attention layer, so that the cross-attention -- the only part that sees M -- is most of the step.
SWEEP = dict(num_latents=512, d_latents=1024, d_model=261, num_blocks=1, num_self_attends_per_block=1,
             num_self_attention_heads=8, num_cross_attention_heads=1)
SWEEP_M = (2048, 8192, 32768)


def cases(args: argparse.Namespace) -> list[Case]:
    small = encoder_fields(npp.load_preset("small"))
    language = encoder_fields(npp.load_preset("language-perceiver"))
    sweep, sweep_m, chunk = dict(SWEEP), SWEEP_M, args.chunk
    sizes = dict(small=(32, 64), language=(1, 2048))
    if args.quick:
        language.update(num_latents=16, d_latents=64, d_model=48, qk_channels=32, v_channels=64,
                        num_self_attends_per_block=2)
        sweep.update(num_latents=16, d_latents=32, d_model=7)
        sizes, sweep_m, chunk = dict(small=(4, 64), language=(1, 64)), (64, 256), 32
    out = []
    for name in args.cases:
        if name == "sweep":
            out += [Case(f"sweep M={m}", "encoder", sweep, 1, m, (None, chunk)) for m in sweep_m]
        else:
            config = dict(small=small, language=language)[name]
            out.append(Case(name, dict(small="mlm", language="encoder")[name], config, *sizes[name]))
    return out


# ---------------------------------------------------------------------------- the two steps
def build(case: Case, seed: int = 0):
    """HF's model (``eval()``) with random weights -- HF's init, then LayerNorm weights 1 + 0.1 N(0,1) and
    biases 0.02 N(0,1), so no parameter is trivially 0 or 1 -- and npperceiver's loaded from it."""
    import torch
    import transformers

    torch.manual_seed(seed)
    hf_config = transformers.PerceiverConfig(**case.config)
    hf = (transformers.PerceiverForMaskedLM if case.kind == "mlm" else transformers.PerceiverModel)(hf_config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if ".layernorm" in name and name.endswith("weight"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
    state = {k: v.detach().numpy().copy() for k, v in hf.state_dict().items()}
    config = npp.PerceiverConfig.from_dict(case.config)
    model = (npp.PerceiverForMaskedLM if case.kind == "mlm" else npp.PerceiverModel).from_state_dict(config, state)
    return hf, model


def steps(case: Case, hf, model):
    """The npperceiver steps (one per chunk variant) and the torch step (each: forward, backward, AdamW)."""
    import torch

    rng = np.random.default_rng(1)
    np_opt = npp.AdamW(model, lr=1e-4)
    torch_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4)
    if case.kind == "mlm":
        P = model.config.max_position_embeddings
        ids = rng.integers(6, 262, (case.B, case.M))  # (B, M) byte ids
        labels = np.full((case.B, P), -100)
        labels[:, :case.M] = np.where(rng.random((case.B, case.M)) < 0.15, ids, -100)  # (B, P)
        t_ids, t_labels = torch.from_numpy(ids), torch.from_numpy(labels)

        def np_grads(chunk=None):
            return model.loss_and_grads(ids, labels)[1]

        def torch_backward():
            loss = hf(inputs=t_ids, labels=t_labels).loss
            loss.backward()

    else:
        C, N, D = model.config.d_model, model.config.num_latents, model.config.d_latents
        x = rng.standard_normal((case.B, case.M, C), dtype=np.float32)  # (B, M, C)
        cotangent = rng.standard_normal((case.B, N, D), dtype=np.float32)  # (B, N, D) = dL/d(last_hidden_state)
        t_x, t_cot = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(cotangent)

        def np_grads(chunk=None):
            return model.vjp(x, cotangent, cross_attention_chunk_size=chunk)[0]

        def torch_backward():
            t_x.grad = None
            loss = (hf(inputs=t_x).last_hidden_state * t_cot).sum()
            loss.backward()

    def np_step(chunk=None):
        np_opt.step(np_grads(chunk))

    def torch_step():
        torch_backward()
        torch_opt.step()
        torch_opt.zero_grad()  # set_to_none: the next backward allocates fresh gradients, as a loop does

    def gradient_difference(chunk=None) -> float:
        grads = np_grads(chunk)
        torch_opt.zero_grad()
        torch_backward()
        named = dict(hf.named_parameters())
        worst = 0.0
        for name, g in grads.items():
            ref = named[name].grad.numpy()
            worst = max(worst, float(np.abs(g - ref).max() / max(1.0, float(np.abs(ref).max()))))
        torch_opt.zero_grad()
        return worst

    return np_step, torch_step, gradient_difference


def run_case(case: Case, thread_counts: list[int], repeats: int) -> list[dict]:
    hf, model = build(case)
    np_step, torch_step, gradient_difference = steps(case, hf, model)
    diffs = {c: gradient_difference(c) for c in case.chunks}  # same weights: before any update
    fns = {f"np{c}": (lambda c=c: np_step(c)) for c in case.chunks}
    fns["torch"] = torch_step
    rows = []
    for n in thread_counts:
        with threads(n):
            for fn in fns.values():
                fn()  # the optimizers' moments exist from here on: they are not the step's memory
            times = median_times(fns, repeats, warmup=0)
            torch_ms = float(np.median(times["torch"])) * 1e3
            torch_mem = torch_peak_bytes(torch_step)
            for c in case.chunks:
                np_ms = float(np.median(times[f"np{c}"])) * 1e3
                np_mem = numpy_peak_bytes(fns[f"np{c}"])
                rows.append(dict(
                    case=case.name, kind=case.kind, B=case.B, M=case.M, chunk=c, threads=n, np_ms=np_ms,
                    torch_ms=torch_ms, ratio=np_ms / torch_ms, np_peak_mib=np_mem / MiB, torch_peak_mib=torch_mem / MiB,
                    memory_ratio=np_mem / max(torch_mem, 1), max_rel_grad_diff=diffs[c],
                    params=sum(v.size for v in model.state_dict().values()),
                    np_times_ms=[t * 1e3 for t in times[f"np{c}"]], torch_times_ms=[t * 1e3 for t in times["torch"]]))
                r = rows[-1]
                chunked = "" if c is None else f" chunk {c}"
                print(f"  {case.name}{chunked} @ {n} thread(s): np {np_ms:.1f} ms, torch {torch_ms:.1f} ms, ratio "
                      f"{r['ratio']:.2f}; memory {r['np_peak_mib']:.1f} / {r['torch_peak_mib']:.1f} MiB; grad diff "
                      f"{r['max_rel_grad_diff']:.1e}", file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------------------- reporting
def markdown(results: dict) -> str:
    env = results["environment"]
    kernels = sorted({f"{b['internal_api']} {b['version']} ({b['architecture']} kernels)"
                      for libs in env["blas"].values() for b in libs})
    kernels = kernels or ["its default BLAS threads (no threadpoolctl: thread counts apply to torch only)"]
    lines = [
        f"{env['cpu']}, {env['nproc']} cores; numpy {env['numpy']} with {'; '.join(kernels)}, torch {env['torch']}, "
        f"transformers {env['transformers']}; OPENBLAS_CORETYPE={env['env']['OPENBLAS_CORETYPE']}; load average "
        f"{env['loadavg_start'][0]:.2f} at the start, {env['loadavg_end'][0]:.2f} at the end; {env['date']}.",
        "",
        "| case | model | B | M | params | threads | npperceiver ms | torch ms | np / torch | np peak MiB "
        "| torch peak MiB | np / torch memory | max rel grad diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        model = "PerceiverForMaskedLM" if r["kind"] == "mlm" else "PerceiverModel"
        name = r["case"] if r["chunk"] is None else f"{r['case']}, chunk {r['chunk']}"
        lines.append(
            f"| {name} | {model} | {r['B']} | {r['M']} | {r['params'] / 1e6:.2f}M | {r['threads']} "
            f"| {_num(r['np_ms'])} | {_num(r['torch_ms'])} | **{r['ratio']:.2f}** | {_num(r['np_peak_mib'])} "
            f"| {_num(r['torch_peak_mib'])} | **{r['memory_ratio']:.2f}** | {r['max_rel_grad_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def _num(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.2g}"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="small,language,sweep",
                   help="comma-separated: small, language, sweep (default: all)")
    p.add_argument("--chunk", type=int, default=2048, help="cross_attention_chunk_size of the sweep's streamed runs")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: 1,2)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per model (default: 21 small, 5 language)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and 3 repeats: a smoke run")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for the JSON and Markdown")
    args = p.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(args.cases) - {"small", "language", "sweep"}
    if unknown:
        p.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    args.threads = [int(t) for t in args.threads.split(",")]
    return args


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    results = dict(environment=environment(args.threads), rows=[], quick=args.quick)
    for case in cases(args):
        repeats = args.repeats or (3 if args.quick else 21 if case.name == "small" else 5 if case.name == "language"
                                   else 3)
        print(f"{case.name}: {case.kind}, B={case.B}, M={case.M}, {repeats} steps each", file=sys.stderr, flush=True)
        results["rows"] += run_case(case, args.threads, repeats)
    results["environment"]["loadavg_end"] = os.getloadavg()
    table = markdown(results)
    save_results(results, table, args.out, "train")
    return results


if __name__ == "__main__":
    main()
