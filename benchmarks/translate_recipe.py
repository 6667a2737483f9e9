"""Find a training recipe for the translation tasks, in torch (fast to iterate on CPU), before NumPy trains it.

Trains the torch twin of ``npperceiver.seq2seq`` (``tests/seq2seq_reference.py``: the same parameters, HF's
own Perceiver modules) from npperceiver's own initial weights with ``torch.optim.AdamW`` (one parameter
group, as ``npperceiver.AdamW``) and a linear-warmup + cosine learning rate, on batches from
``npperceiver.tasks.NumberSplit.sample`` (every digit length equally likely). Every ``--eval-every`` steps
it decodes the held-out set greedily and records exact match, overall and per digit length, plus the
exhaustive exact match on all one- and two-digit numbers. It reports the first step (and the training
seconds, evaluation excluded) at which held-out exact match reached 95 % and 99 % overall *and* on every
length.

It also times what a NumPy training step will cost at the same sizes and batch (``--time-numpy``, or
``--numpy-only`` without training): the forward pass, the encoder's hand-written backward and
``npperceiver.AdamW`` as they are, and the decoder's backward -- not written yet -- as twice its forward.

torch runs on one thread (``torch.set_num_threads(1)``); so does numpy's BLAS when threadpoolctl is
installed. Check ``cat /proc/loadavg`` first: timings are only meaningful on a quiet machine.

Usage::

    python benchmarks/translate_recipe.py --task digits-to-words --decoder autoregressive --steps 2000
    python benchmarks/translate_recipe.py --task words-to-digits --decoder queries --latents 16 --lr 2e-3

Each run appends one JSON line to ``benchmarks/results/translate-recipe.jsonl`` (``--out``) and prints a
summary. ``results/`` is not committed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

import npperceiver as npp  # noqa: E402
from npperceiver.seq2seq import PerceiverSeq2Seq, Seq2SeqConfig, seq2seq_loss, shift_right  # noqa: E402
from npperceiver.tasks import MAX_DIGITS, NumberSplit, digit_length, get_task  # noqa: E402
from npperceiver.text import text_preprocessor  # noqa: E402
from seq2seq_reference import TorchSeq2Seq, loss_of  # noqa: E402

try:
    import threadpoolctl
except ImportError:
    threadpoolctl = None


def build_config(args: argparse.Namespace) -> Seq2SeqConfig:
    task = get_task(args.task)
    encoder = npp.PerceiverConfig(
        num_latents=args.latents, d_latents=args.d_latents, d_model=args.d_model, num_blocks=args.blocks,
        num_self_attends_per_block=args.self_attends, num_self_attention_heads=args.heads,
        num_cross_attention_heads=args.cross_heads, self_attention_widening_factor=args.widening,
        cross_attention_widening_factor=args.widening, attention_probs_dropout_prob=0.0,
        initializer_range=args.init_std, vocab_size=npp.tasks.SOURCE_VOCAB_SIZE,
        max_position_embeddings=task.max_source_length,
    )
    return Seq2SeqConfig(
        encoder, decoder=args.decoder, target_vocab_size=task.target_vocab.size,
        max_target_length=task.max_target_length, d_decoder=args.d_decoder,
        num_decoder_layers=args.decoder_layers if args.decoder == "autoregressive" else 1,
        num_decoder_heads=args.decoder_heads, decoder_widening_factor=args.decoder_widening,
        decoder_use_query_residual=not args.no_query_residual, task=args.task,
    )


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warmup over ``--warmup`` steps, then cosine from ``--lr`` to ``--lr * --final-lr``."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (args.final_lr + (1 - args.final_lr) * 0.5 * (1 + math.cos(math.pi * progress)))


def tensors(batch):
    return (torch.from_numpy(batch.source_ids), torch.from_numpy(batch.source_mask), torch.from_numpy(batch.target_ids))


def exact_match(model: TorchSeq2Seq, task, numbers: np.ndarray, padding_side: str, chunk: int = 1024) -> tuple[np.ndarray, list]:
    """Per number: does greedy decoding give exactly the target (up to and including [EOS])? And the
    decoded text of the misses."""
    model.eval()
    hits, wrong = [], []
    for start in range(0, len(numbers), chunk):
        batch = task.batch(numbers[start:start + chunk], padding_side)
        source_ids, source_mask, target_ids = tensors(batch)
        predicted = model.generate(source_ids, source_mask)
        ok = (predicted == target_ids).all(dim=1).numpy()
        hits.append(ok)
        wrong += [(int(n), task.decode_target(p)) for n, p, k in zip(batch.numbers, predicted.numpy(), ok) if not k]
    model.train()
    return np.concatenate(hits), wrong


def evaluate(model, task, held_out: np.ndarray, short: np.ndarray, padding_side: str) -> dict:
    hits, wrong = exact_match(model, task, held_out, padding_side)
    lengths = digit_length(held_out)
    by_length = {int(d): float(hits[lengths == d].mean()) for d in range(1, MAX_DIGITS + 1)}
    short_hits, _ = exact_match(model, task, short, padding_side)
    return {"held_out": float(hits.mean()), "by_length": by_length, "min_length": min(by_length.values()),
            "short_exhaustive": float(short_hits.mean()), "errors": wrong[:12]}


def time_numpy_forward(config: Seq2SeqConfig, task, split: NumberSplit, batch_size: int, repeats: int,
                       padding_side: str = "right") -> dict:
    """What one NumPy training step will cost at this batch size, from the pieces that exist today: median wall
    and CPU seconds of a batch draw, the teacher-forced forward + loss, the encoder's own forward and its
    hand-written backward (``PerceiverModel.backward``), the decoder's forward, ``npperceiver.AdamW.step`` over
    every parameter, and a greedy evaluation of the held-out set.

    The decoder's backward is not written yet: it is counted as twice its forward. CPU seconds
    (``time.process_time``, one BLAS thread) are what a step would take on a core of its own; on a busy machine
    the wall time is longer by however much the core was shared.
    """
    model = PerceiverSeq2Seq.init(config, seed=0)
    rng = np.random.default_rng(0)
    batches = [task.batch(split.sample(rng, batch_size), padding_side) for _ in range(repeats)]
    held_out = split.all_held_out()
    preprocessor = model.params["perceiver"]["input_preprocessor"]
    decoder_inputs = [shift_right(b.target_ids) if config.decoder == "autoregressive" else None for b in batches]

    def encoder_forward(b, cache=None):
        inputs, _ = text_preprocessor(preprocessor, b.source_ids)  # (B, M, C)
        return model.encoder(inputs, attention_mask=b.source_mask, cache=cache).last_hidden_state

    caches = [{} for _ in batches]
    latents = [encoder_forward(b, c) for b, c in zip(batches, caches)]
    d_latents = [np.ones_like(z) for z in latents]

    def evaluate_held_out():  # greedy decoding of the whole held-out set, as an evaluation does
        for start in range(0, len(held_out), 512):
            b = task.batch(held_out[start:start + 512], padding_side)
            model.generate(b.source_ids, b.source_mask)

    grads = {k: np.full_like(v, 1e-4) for k, v in model.state_dict().items()}
    opt = npp.AdamW(model, lr=1e-9)  # a negligible step: the weights stay as they are
    with threadpoolctl.threadpool_limits(1) if threadpoolctl else _nothing():
        model(batches[0].source_ids, batches[0].source_mask, batches[0].target_ids)  # warm up
        t = {
            "forward": _timed([lambda b=b: model(b.source_ids, b.source_mask, b.target_ids) for b in batches]),
            "encoder_forward": _timed([lambda b=b: encoder_forward(b, {}) for b in batches]),
            "encoder_backward": _timed([lambda c=c, d=d: model.encoder.backward(d, c)
                                        for c, d in zip(caches, d_latents)]),
            "decoder_forward": _timed([lambda b=b, z=z, i=i: seq2seq_loss(model.decode(z, i), b.target_ids)
                                       for b, z, i in zip(batches, latents, decoder_inputs)]),
            "adamw": _timed([lambda: opt.step(grads)] * repeats),
            "sample_batch": _timed([lambda: task.batch(split.sample(rng, batch_size), padding_side)] * repeats),
            "eval": _timed([evaluate_held_out] * 2),
        }
    out = {}
    for clock in ("wall", "cpu"):
        out.update({f"numpy_{name}_{clock}_s": v[clock] for name, v in t.items()})
        # a step: draw a batch, encoder forward (recording its cache), decoder forward + loss, encoder
        # backward, decoder backward (~ 2x its forward), AdamW
        out[f"estimated_numpy_step_{clock}_s"] = (
            t["sample_batch"][clock] + t["encoder_forward"][clock] + 3 * t["decoder_forward"][clock]
            + t["encoder_backward"][clock] + t["adamw"][clock])
    return out


def _timed(calls: list) -> dict:
    """Median wall and CPU seconds of each call."""
    wall, cpu = [], []
    for call in calls:
        w0, c0 = time.perf_counter(), time.process_time()
        call()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return {"wall": float(np.median(wall)), "cpu": float(np.median(cpu))}


@contextmanager
def _nothing():
    yield


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    task, split = get_task(args.task), NumberSplit()
    config = build_config(args)
    np_model = PerceiverSeq2Seq.init(config, seed=args.seed)
    model = TorchSeq2Seq(config, args.dropout).load_numpy(np_model.state_dict()).train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(args.beta1, args.beta2), eps=1e-8,
                            weight_decay=args.weight_decay)
    rng = np.random.default_rng(args.seed)
    held_out = split.all_held_out()
    short = np.array([n for n in range(100)])
    loadavg = os.getloadavg()
    train_time, train_cpu, history, reached = 0.0, 0.0, [], {}
    losses = []
    for step in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        source_ids, source_mask, target_ids = tensors(task.batch(split.sample(rng, args.batch), args.padding_side))
        loss = loss_of(model, source_ids, source_mask, target_ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        train_time += time.perf_counter() - t0
        train_cpu += time.process_time() - c0
        losses.append(float(loss))
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            ev = evaluate(model, task, held_out, short, args.padding_side)
            ev.update(step=step + 1, seconds=round(train_time, 2), cpu_seconds=round(train_cpu, 2),
                      loss=float(np.mean(losses[-args.eval_every:])))
            history.append(ev)
            for level in (0.95, 0.99):
                if level not in reached and ev["held_out"] >= level and ev["min_length"] >= level:
                    reached[level] = {"step": step + 1, "seconds": round(train_time, 2),
                                      "cpu_seconds": round(train_cpu, 2)}
            if not args.quiet:
                print(f"step {step + 1:5d}  loss {ev['loss']:.4f}  held-out {ev['held_out']:.4f}  "
                      f"by length {' '.join(f'{v:.3f}' for v in ev['by_length'].values())}  "
                      f"1-2 digits {ev['short_exhaustive']:.3f}  {train_time:.1f}s", flush=True)
            if args.stop_at and 0.99 in reached and len(history) >= 2 and history[-2]["min_length"] >= 0.99:
                break  # held at 99 % on two evaluations in a row
    result = {
        "args": vars(args), "params": n_params, "train_seconds": round(train_time, 2),
        "train_cpu_seconds": round(train_cpu, 2), "cpu_ms_per_step": round(1000 * train_cpu / (step + 1), 2),
        "steps_run": step + 1, "ms_per_step": round(1000 * train_time / (step + 1), 2),
        "reached": {str(k): v for k, v in reached.items()}, "final": history[-1], "history": history,
        "loadavg_start": loadavg, "loadavg_end": os.getloadavg(),
    }
    if args.time_numpy:
        result.update(time_numpy_forward(config, task, split, args.batch, repeats=20, padding_side=args.padding_side))
    return result


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="digits-to-words", choices=["digits-to-words", "words-to-digits"])
    p.add_argument("--decoder", default="autoregressive", choices=["autoregressive", "queries"])
    p.add_argument("--latents", type=int, default=16)
    p.add_argument("--d-latents", type=int, default=64)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--blocks", type=int, default=1)
    p.add_argument("--self-attends", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--cross-heads", type=int, default=1)
    p.add_argument("--widening", type=int, default=1)
    p.add_argument("--d-decoder", type=int, default=64)
    p.add_argument("--decoder-layers", type=int, default=1)
    p.add_argument("--decoder-heads", type=int, default=4)
    p.add_argument("--decoder-widening", type=int, default=1)
    p.add_argument("--no-query-residual", action="store_true", help="queries decoder as HF's MLM: no residual")
    p.add_argument("--padding-side", default="right", choices=["right", "left"],
                   help="left: every source ends at the last position (pads to the longest source of the task)")
    p.add_argument("--dropout", type=float, default=0.0, help="attention-probability dropout in training (HF's)")
    p.add_argument("--init-std", type=float, default=0.02)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--final-lr", type=float, default=0.0, help="cosine floor, as a fraction of --lr")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.999)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=0.0, help="gradient-norm clipping (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--stop-at", action="store_true", help="stop once 99 %% held on two evaluations in a row")
    p.add_argument("--time-numpy", action="store_true", help="also time npperceiver's forward at these sizes")
    p.add_argument("--summarize", action="store_true", help="print a Markdown table of the runs in --out")
    p.add_argument("--numpy-only", action="store_true", help="only time npperceiver's forward (no training)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--tag", default="")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "translate-recipe.jsonl"))
    return p.parse_args(argv)


def summarize(path: Path) -> str:
    """A Markdown table of every run recorded in ``path``: settings, steps to 95 % / 99 %, final accuracy."""
    rows = ["| tag | task | decoder | N | S | Hc | batch | lr | other | seed | steps | to 95 % | to 99 % "
            "| final held-out | final by length 1-6 | 1-2 digits, all | ms/step wall / CPU (load) |", "|" + "---|" * 17]
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        a, f = r["args"], r["final"]
        cpu = f"{r['cpu_ms_per_step']:.0f}" if "cpu_ms_per_step" in r else "-"
        reached = {k: f"{v['step']} ({v.get('cpu_seconds', v['seconds']):.0f} s{'' if 'cpu_seconds' in v else ' wall'})"
                   for k, v in r["reached"].items()}
        other = [f"wd {a['weight_decay']:g}"] if a["weight_decay"] != 0.01 else []
        other += [f"dropout {a['dropout']:g}"] if a.get("dropout") else []
        other += ["left-padded"] if a.get("padding_side") == "left" else []
        other += ["no query residual"] if a["no_query_residual"] else []
        rows.append(
            f"| {a['tag']} | {a['task']} | {a['decoder']} | {a['latents']} | {a['self_attends']} | {a['cross_heads']} "
            f"| {a['batch']} | {a['lr']:g} | {', '.join(other) or '-'} | {a['seed']} | {r['steps_run']} "
            f"| {reached.get('0.95', '-')} | {reached.get('0.99', '-')} | {100 * f['held_out']:.2f} % "
            f"| {' '.join(f'{100 * v:.1f}' for v in f['by_length'].values())} | {100 * f['short_exhaustive']:.0f} % "
            f"| {r['ms_per_step']:.0f} / {cpu} ({r['loadavg_start'][0]:.1f}) |")
    return "\n".join(rows)


def main(argv=None) -> dict:
    args = parse(argv)
    if args.summarize:
        print(summarize(Path(args.out)))
        return {}
    if args.numpy_only:  # no training: time npperceiver's forward at these sizes
        task, config = get_task(args.task), build_config(args)
        timing = time_numpy_forward(config, task, NumberSplit(), args.batch, repeats=30, padding_side=args.padding_side)
        n_params = sum(v.size for v in PerceiverSeq2Seq.init(config).state_dict().values())
        print(json.dumps({"tag": args.tag, "task": args.task, "decoder": args.decoder, "batch": args.batch,
                          "params": n_params, **timing, "loadavg": os.getloadavg()}))
        return timing
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    final = result["final"]
    print(json.dumps({"tag": args.tag, "task": args.task, "decoder": args.decoder, "params": result["params"],
                      "ms_per_step": result["ms_per_step"], "reached": result["reached"],
                      "final_held_out": final["held_out"], "final_by_length": final["by_length"],
                      "short_exhaustive": final["short_exhaustive"], "errors": final["errors"],
                      **{k: v for k, v in result.items() if k.startswith(("numpy_", "estimated_", "sample_"))}}))
    return result


if __name__ == "__main__":
    main()
