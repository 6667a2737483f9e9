"""One training step of the translation model, npperceiver against its torch twin (CPU): time and parity.

A training step of ``npperceiver train-translate``: ``PerceiverSeq2Seq.loss_and_grads`` (teacher-forced
forward, loss, backward) and one ``npperceiver.AdamW`` update, against the same model built from HF's torch
modules (``tests/seq2seq_reference.py``): ``loss.backward(); optimizer.step(); optimizer.zero_grad()`` with
``torch.optim.AdamW``. The model is ``Seq2SeqConfig.for_task(task, decoder)`` -- the recipe of
docs/translation.md -- with its initial weights (``PerceiverSeq2Seq.init``, copied into the twin), and the
batches are what training draws: ``--batch-size`` numbers from ``NumberSplit.sample``, right-padded
(``task.batch``). Both sides take the same batches, alternately, in one process, at each thread count.

Reported per task, decoder and thread count: the median seconds per step of each side and their ratio, as
CPU time (``time.process_time``: the process's own CPU seconds, all its threads together -- at one thread the
fairest figure on a shared machine) and as wall time; and the largest relative difference of the two sides'
gradients, ``max |g_np - g_torch| / max(1, max |g_torch|)`` over the parameters, before any update.
``--eval`` also times a greedy decoding of the whole held-out set (1,611 numbers, what an evaluation during
training does) on each side.

Usage::

    python benchmarks/bench_translate.py                  # both tasks x both decoders, 1 and 2 threads
    python benchmarks/bench_translate.py --threads 1 --eval
    python benchmarks/bench_translate.py --quick          # tiny batches: a smoke run of every code path

Writes ``benchmarks/results/translate-<time>.json`` and ``.md`` (``--out`` to change the folder) and prints
the Markdown table. Check ``cat /proc/loadavg`` first: time only on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))  # the torch twin

import npperceiver as npp  # noqa: E402
from bench_forward import environment, save_results, threads  # noqa: E402  (the same thread control and output as
#                                                                 the other benchmarks)
from npperceiver.seq2seq import DECODERS, PerceiverSeq2Seq, Seq2SeqConfig  # noqa: E402
from npperceiver.tasks import TASKS, NumberSplit, get_task  # noqa: E402


def build(task: str, decoder: str, seed: int = 0):
    """The recipe model (npperceiver's init) and its torch twin with the same weights, in training mode."""
    from seq2seq_reference import TorchSeq2Seq

    model = PerceiverSeq2Seq.init(Seq2SeqConfig.for_task(task, decoder), seed=seed)
    return model, TorchSeq2Seq(model.config).load_numpy(model.state_dict()).train()


def steps(model: PerceiverSeq2Seq, twin, batches: list) -> tuple[Callable, Callable, Callable]:
    """The two training steps (each takes the next batch of ``batches``, cycling) and the gradient check."""
    import torch
    from seq2seq_reference import loss_of

    np_opt = npp.AdamW(model, lr=1e-4)
    torch_opt = torch.optim.AdamW(twin.parameters(), lr=1e-4)
    tensors = [tuple(torch.from_numpy(a) for a in (b.source_ids, b.source_mask, b.target_ids)) for b in batches]
    counters = {"np": 0, "torch": 0}

    def np_grads(i: int):
        b = batches[i % len(batches)]
        return model.loss_and_grads(b.source_ids, b.source_mask, b.target_ids)

    def torch_backward(i: int):
        loss = loss_of(twin, *tensors[i % len(tensors)])
        loss.backward()
        return loss

    def np_step():
        np_opt.step(np_grads(counters["np"])[1])
        counters["np"] += 1

    def torch_step():
        torch_backward(counters["torch"])
        torch_opt.step()
        torch_opt.zero_grad()  # set_to_none: the next backward allocates fresh gradients, as a loop does
        counters["torch"] += 1

    def gradient_difference() -> tuple[float, float]:
        loss, grads = np_grads(0)
        torch_opt.zero_grad()
        torch_loss = torch_backward(0).item()
        named = dict(twin.named_parameters())
        worst = 0.0
        for key, g in grads.items():
            ref = named[key].grad.numpy()
            worst = max(worst, float(np.abs(g - ref).max() / max(1.0, float(np.abs(ref).max()))))
        torch_opt.zero_grad()
        return worst, abs(float(loss) - torch_loss) / torch_loss

    return np_step, torch_step, gradient_difference


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, float]]:
    """Median CPU and wall seconds of each function, run in rounds that alternate their order (A B, B A, ...)."""
    names = list(fns)
    cpu, wall = {n: [] for n in names}, {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            c0, w0 = time.process_time(), time.perf_counter()
            fns[name]()
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    return {n: dict(cpu=float(np.median(cpu[n])), wall=float(np.median(wall[n])), cpu_all=cpu[n], wall_all=wall[n])
            for n in names}


def evaluations(model: PerceiverSeq2Seq, twin, task, numbers: np.ndarray, chunk: int = 1024):
    """Greedy decoding of ``numbers`` in chunks, as an evaluation does: the npperceiver and the torch call."""
    import torch

    batches = [task.batch(numbers[s:s + chunk]) for s in range(0, len(numbers), chunk)]

    def np_eval():
        for b in batches:
            model.generate(b.source_ids, b.source_mask)

    def torch_eval():
        twin.eval()
        with torch.no_grad():
            for b in batches:
                twin.generate(torch.from_numpy(b.source_ids), torch.from_numpy(b.source_mask))
        twin.train()

    return np_eval, torch_eval


def run_case(task_name: str, decoder: str, args: argparse.Namespace) -> list[dict]:
    task, split = get_task(task_name), NumberSplit()
    model, twin = build(task_name, decoder)
    rng = np.random.default_rng(0)
    batches = [task.batch(split.sample(rng, args.batch_size)) for _ in range(args.batches)]
    np_step, torch_step, gradient_difference = steps(model, twin, batches)
    grad_diff, loss_diff = gradient_difference()  # the same weights: before any update
    held_out = split.all_held_out()[: 64 if args.quick else None]
    np_eval, torch_eval = evaluations(model, twin, task, held_out)
    rows = []
    for n in args.threads:
        with threads(n):
            np_step(), torch_step()  # warm up; the optimizers' moments exist from here on
            t = timed({"np": np_step, "torch": torch_step}, args.repeats)
            e = timed({"np": np_eval, "torch": torch_eval}, 3 if args.quick else args.eval_repeats) if args.eval \
                else None
        row = dict(task=task_name, decoder=decoder, threads=n, B=args.batch_size,
                   M=float(np.mean([b.source_ids.shape[1] for b in batches])),
                   params=sum(v.size for v in model.state_dict().values()),
                   np_cpu_s=t["np"]["cpu"], torch_cpu_s=t["torch"]["cpu"], cpu_ratio=t["np"]["cpu"] / t["torch"]["cpu"],
                   np_wall_s=t["np"]["wall"], torch_wall_s=t["torch"]["wall"],
                   wall_ratio=t["np"]["wall"] / t["torch"]["wall"], max_rel_grad_diff=grad_diff,
                   rel_loss_diff=loss_diff, np_cpu_all=t["np"]["cpu_all"], torch_cpu_all=t["torch"]["cpu_all"],
                   np_wall_all=t["np"]["wall_all"], torch_wall_all=t["torch"]["wall_all"])
        if e is not None:
            row.update(eval_numbers=len(held_out), np_eval_cpu_s=e["np"]["cpu"], torch_eval_cpu_s=e["torch"]["cpu"],
                       np_eval_wall_s=e["np"]["wall"], torch_eval_wall_s=e["torch"]["wall"])
        rows.append(row)
        print(f"  {task_name} {decoder} @ {n} thread(s): np {row['np_cpu_s'] * 1e3:.1f} ms CPU "
              f"({row['np_wall_s'] * 1e3:.1f} wall), torch {row['torch_cpu_s'] * 1e3:.1f} ms CPU "
              f"({row['torch_wall_s'] * 1e3:.1f} wall), ratio {row['cpu_ratio']:.2f} CPU / {row['wall_ratio']:.2f} "
              f"wall; grad diff {grad_diff:.1e}", file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------------------- reporting
def markdown(results: dict) -> str:
    env = results["environment"]
    kernels = sorted({f"{b['internal_api']} {b['version']} ({b['architecture']} kernels)"
                      for libs in env["blas"].values() for b in libs})
    kernels = kernels or ["its default BLAS threads (no threadpoolctl: thread counts apply to torch only)"]
    rows = results["rows"]
    with_eval = any("np_eval_cpu_s" in r for r in rows)
    lines = [
        f"{env['cpu']}, {env['nproc']} cores; numpy {env['numpy']} with {'; '.join(kernels)}, torch {env['torch']}, "
        f"transformers {env['transformers']}; OPENBLAS_CORETYPE={env['env']['OPENBLAS_CORETYPE']}; load average "
        f"{env['loadavg_start'][0]:.2f} at the start, {env['loadavg_end'][0]:.2f} at the end; {env['date']}. "
        f"Batch {rows[0]['B'] if rows else '-'}; medians of {results['repeats']} steps each; CPU = process CPU "
        f"seconds (every thread counted).",
        "",
        "| task | decoder | params | mean M | threads | numpy s/step CPU | torch s/step CPU | np / torch CPU "
        "| numpy s/step wall | torch s/step wall | np / torch wall | max rel grad diff |"
        + (" numpy eval s CPU | torch eval s CPU |" if with_eval else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if with_eval else ""),
    ]
    for r in rows:
        line = (f"| {r['task']} | {r['decoder']} | {r['params']:,} | {r['M']:.0f} | {r['threads']} "
                f"| {r['np_cpu_s']:.4f} | {r['torch_cpu_s']:.4f} | **{r['cpu_ratio']:.2f}** "
                f"| {r['np_wall_s']:.4f} | {r['torch_wall_s']:.4f} | **{r['wall_ratio']:.2f}** "
                f"| {r['max_rel_grad_diff']:.1e} |")
        if with_eval:
            line += f" {r['np_eval_cpu_s']:.3f} | {r['torch_eval_cpu_s']:.3f} |" if "np_eval_cpu_s" in r else " | |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated (default: {','.join(TASKS)})")
    p.add_argument("--decoders", default=",".join(DECODERS), help=f"comma-separated (default: {','.join(DECODERS)})")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: 1,2)")
    p.add_argument("--batch-size", type=int, default=128, help="numbers per step (default: 128, the recipe's)")
    p.add_argument("--batches", type=int, default=8, help="distinct batches the steps cycle through (default: 8)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per side (default: 21; --quick 2)")
    p.add_argument("--eval", action="store_true", help="also time greedy decoding of the held-out set")
    p.add_argument("--eval-repeats", type=int, default=3, help="timed evaluations per side (default: 3)")
    p.add_argument("--quick", action="store_true", help="batch 8, 2 repeats, 64 held-out numbers: a smoke run")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for the JSON and Markdown")
    args = p.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.decoders = [d.strip() for d in args.decoders.split(",") if d.strip()]
    for name, given, known in (("task", args.tasks, TASKS), ("decoder", args.decoders, DECODERS)):
        unknown = set(given) - set(known)
        if unknown:
            p.error(f"unknown {name}(s): {', '.join(sorted(unknown))} (known: {', '.join(known)})")
    args.threads = [int(t) for t in args.threads.split(",")]
    if args.quick:
        args.batch_size, args.batches = 8, 2
    args.repeats = args.repeats or (2 if args.quick else 21)
    return args


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    results = dict(environment=environment(args.threads), rows=[], quick=args.quick, repeats=args.repeats)
    for task in args.tasks:
        for decoder in args.decoders:
            print(f"{task} / {decoder}: B={args.batch_size}, {args.repeats} steps each", file=sys.stderr, flush=True)
            results["rows"] += run_case(task, decoder, args)
    results["environment"]["loadavg_end"] = os.getloadavg()
    table = markdown(results)
    save_results(results, table, args.out, "translate")
    return results


if __name__ == "__main__":
    main()
