"""Mutation check: do the property tests alone catch plausible bugs in the model?

Plants each mutant of :data:`MUTANTS` -- one plausible bug in ``npperceiver/`` -- one at a time in a scratch
copy of the repository (never in the working tree), runs the property tests there, and reports which
mutants they miss. Only the files in :data:`PROPERTY_TESTS` count: the unit, chunking and parity tests are
left out on purpose, so the score says what the hypothesis properties catch on their own.

    python -m tests.mutate                     # every mutant (about ten minutes on 2 cores)
    python -m tests.mutate -k stream           # only the mutants whose name contains "stream"
    python -m tests.mutate --check             # no test run: is every snippet still in the code?
    python -m tests.mutate --list              # the mutants and what each one breaks
    python -m tests.mutate --tests-from REV    # score the tests/ folder of git revision REV instead
    python -m tests.mutate --jobs 2 --all-tests

A mutant is ``(file, exact original snippet, replacement, description)``. The snippet must occur exactly
once in its file; when it no longer does (the code changed), the mutant is reported as STALE, never
skipped in silence: refresh its snippet. Snippets target the forward math, which stays put while other
functions (backward passes, caches) grow around it.

Each mutant ends as one of:

* KILLED -- some property test failed (the first one is named; ``--all-tests`` names every one);
* SURVIVED -- every property test passed: a gap in the tests (or an equivalent mutant not yet argued);
* EQUIVALENT -- survived, and its ``equivalent`` field argues why no test could tell it apart;
* NOT EQUIVALENT -- argued equivalent but killed: the argument or a test is wrong;
* STALE -- the snippet is not in the code exactly once;
* INVALID -- the mutated code does not even import, or pytest stopped for another reason;
* TIMEOUT -- the run took longer than ``--timeout`` seconds (counted as caught: CI would not pass).

The runs use the hypothesis profile ``mutate`` (``ci`` without shrinking: the same examples, a failure found
as fast) when the copied ``tests/conftest.py`` defines it, ``ci`` otherwise. Exit status 0 when every
behaviour-changing mutant was caught and none is stale or invalid.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import queue
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The test files whose verdict counts.
PROPERTY_TESTS = ("tests/test_properties.py",)


@dataclass(frozen=True)
class Mutant:
    """One planted bug: replace ``original`` (exactly once in ``file``) by ``replacement``."""

    name: str
    file: str
    original: str
    replacement: str
    description: str
    equivalent: str = ""  # why the mutant changes no behaviour the tests can observe ("" for a real bug)


ATTENTION, MASKS, ENCODER = "npperceiver/attention.py", "npperceiver/masks.py", "npperceiver/encoder.py"
LAYERS, FUNCTIONAL, MODEL = "npperceiver/layers.py", "npperceiver/functional.py", "npperceiver/model.py"
INVERT = "(np.float32(1.0) - mask[:, None, None, :]) * MASK_MIN"
INPUTS_MASK_IF = "if not keep.all():\n                inputs_mask"
LATENT_MASK_IF = "if not keep.all():\n                latent_bias"
SELF_LAYER = "layer, hidden_states, config.num_self_attention_heads, use_query_residual=True,"
STREAM_CALL = "cross, config, hidden_states, inputs, inputs_mask, cross_attention_chunk_size), None"

MUTANTS: tuple[Mutant, ...] = (
    # ------------------------------------------------------------------ the additive masks
    Mutant("mask-polarity-flipped", MASKS, INVERT, "mask[:, None, None, :] * MASK_MIN",
           "invert_attention_mask drops the kept positions and keeps the dropped ones"),
    Mutant("mask-minus-inf", MASKS, INVERT,
           "np.where(mask[:, None, None, :] > 0, np.float32(0.0), np.float32(-np.inf))",
           "masks add -inf instead of float32's minimum (a fully masked row becomes NaN, not uniform)"),
    Mutant("mask-minus-1e4", MASKS, "MASK_MIN = np.finfo(np.float32).min", "MASK_MIN = np.float32(-1e4)",
           "masks add -1e4 (older BERT code) instead of float32's minimum: a fully masked row is not uniform"),
    Mutant("mask-batch-axis-on-heads", MASKS, INVERT, "(np.float32(1.0) - mask[None, :, None, :]) * MASK_MIN",
           "the mask's batch axis is broadcast against the heads axis"),
    Mutant("bool-mask-flipped", MASKS, "if arr.dtype == bool:\n        return arr.astype(np.float32)",
           "if arr.dtype == bool:\n        return (~arr).astype(np.float32)",
           "a bool keep-mask is read with the opposite polarity (int and float masks are right)"),
    Mutant("attention-mask-row0-for-all", MODEL, "inputs_mask = invert_attention_mask(keep)",
           "inputs_mask = invert_attention_mask(keep[:1])",
           "batch row 0's attention_mask is applied to every row"),
    Mutant("attention-mask-skipped-if-a-row-keeps-all", MODEL, INPUTS_MASK_IF,
           "if not keep.all(axis=-1).any():\n                inputs_mask",
           "attention_mask is dropped as soon as one batch row keeps every input"),
    Mutant("all-zero-attention-mask-ignored", MODEL, INPUTS_MASK_IF,
           "if keep.any() and not keep.all():\n                inputs_mask",
           "an attention_mask that drops every input of every row is ignored (HF: uniform over all inputs)"),
    Mutant("cross-reads-latent-mask", ATTENTION, "bias = inputs_mask", "bias = attention_mask",
           "the cross-attention adds the latent mask instead of inputs_mask"),
    # ------------------------------------------------------------------ the latent mask
    Mutant("latent-mask-on-rows", MODEL, "latent_bias = invert_attention_mask(keep)",
           "latent_bias = invert_attention_mask(keep).swapaxes(-1, -2)",
           "the latent mask drops query rows (B, 1, N, 1) instead of keys (B, 1, 1, N)"),
    Mutant("latent-mask-row0-for-all", MODEL, "latent_bias = invert_attention_mask(keep)",
           "latent_bias = invert_attention_mask(keep[:1])",
           "batch row 0's latent mask is applied to every row"),
    Mutant("latent-mask-skipped-if-a-row-keeps-all", MODEL, LATENT_MASK_IF,
           "if not keep.all(axis=-1).any():\n                latent_bias",
           "the latent mask is dropped as soon as one batch row keeps every latent"),
    Mutant("latent-mask-ignored", ATTENTION, "bias = attention_mask", "bias = None",
           "self-attention ignores its additive mask (the latent mask)"),
    Mutant("latent-mask-in-cross-attention", ATTENTION, "bias = inputs_mask",
           "bias = inputs_mask if attention_mask is None else attention_mask.swapaxes(-1, -2)",
           "the cross-attention also applies the latent mask (on its query rows)"),
    # ------------------------------------------------------------------ the head mask
    Mutant("head-mask-before-softmax", ATTENTION, "probs = softmax(scores, out=scores)",
           "probs = softmax(scores if head_mask is None else scores * head_mask); head_mask = None",
           "the head mask multiplies the scores before the softmax instead of the probabilities after it"),
    Mutant("head-mask-on-values", ATTENTION, "probs = probs * head_mask", "value = value * head_mask",
           "the head mask scales the values: the same context, but attentions are returned unmasked"),
    Mutant("head-mask-global-index", ENCODER, "head_mask[i]", "head_mask[_ * len(self_attends) + i]",
           "layer i of block b reads head_mask[b*S + i] (the 'fixed' HF quirk)"),
    Mutant("head-mask-last-block-rows", ENCODER, "head_mask[i]", "head_mask[i - len(self_attends)]",
           "every block reads the last block's rows L-S..L-1 of head_mask"),
    Mutant("head-mask-rows-reversed", MASKS, "arr = arr[:, None, :, None, None]",
           "arr = arr[::-1, None, :, None, None]",
           "a 2-D head_mask's rows are read in reverse layer order"),
    Mutant("head-mask-1d-heads-reversed", MASKS, "arr[None, None, :, None, None]", "arr[None, None, ::-1, None, None]",
           "a 1-D head_mask is applied to the heads in reverse order"),
    Mutant("head-mask-1d-first-layer-only", MASKS,
           "arr = np.broadcast_to(arr[None, None, :, None, None], (L, 1, H, 1, 1))",
           "arr = np.concatenate([arr[None, None, :, None, None], np.ones((L - 1, 1, H, 1, 1))])",
           "a 1-D head_mask reaches the first self-attention layer only"),
    Mutant("zero-free-head-mask-ignored", MODEL, "np.all(head_mask == 1)", "np.all(head_mask != 0)",
           "a head mask without zeros (e.g. fractional weights) is dropped as if it were all ones"),
    Mutant("head-mask-reaches-cross-attention", ENCODER,
           "attention_mask=attention_mask, head_mask=None, inputs=inputs",
           "attention_mask=attention_mask, head_mask=None if head_mask is None else head_mask[0], inputs=inputs",
           "the cross-attention is multiplied by head_mask row 0 too"),
    # ------------------------------------------------------------------ attention core and layers
    Mutant("scores-scaled-by-value-width", ATTENTION, "\n    scores /= np.float32(math.sqrt(query.shape[-1]))",
           "\n    scores /= np.float32(math.sqrt(value.shape[-1]))",
           "scores divided by sqrt(value head width) instead of sqrt(query/key head width)"),
    Mutant("softmax-over-queries", ATTENTION, "probs = softmax(scores, out=scores)", "probs = softmax(scores, axis=-2)",
           "the softmax normalises over the queries instead of the keys"),
    Mutant("split-heads-without-transpose", ATTENTION,
           "return x.reshape(B, T, num_heads, C // num_heads).transpose(0, 2, 1, 3)",
           "return x.reshape(B, num_heads, T, C // num_heads)",
           "heads split by a bare reshape (B, T, H*d) -> (B, H, T, d): tokens and heads mixed"),
    Mutant("merge-heads-without-transpose", ATTENTION, "return x.transpose(0, 2, 1, 3).reshape(B, T, H * d)",
           "return x.reshape(B, T, H * d)",
           "heads merged by a bare reshape (B, H, T, d) -> (B, T, H*d): tokens and heads mixed"),
    Mutant("keys-values-from-raw-inputs", ATTENTION, 'normed = layer_norm(inputs, **params["layernorm2"])',
           "normed = inputs", "the cross-attention's keys and values skip layernorm2"),
    Mutant("cross-heads-from-self-config", ENCODER, "cross, hidden_states, config.num_cross_attention_heads,",
           "cross, hidden_states, config.num_self_attention_heads,",
           "the cross-attention splits into num_self_attention_heads heads"),
    Mutant("query-residual-always", ATTENTION, "if use_query_residual:", "if True:",
           "the cross-attention adds the query residual even with use_query_residual=False"),
    Mutant("query-residual-after-layernorm", ATTENTION, "attention_output += hidden_states",
           'attention_output += layer_norm(hidden_states, **params["self"]["layernorm1"])',
           "the query residual adds the layer-normed query instead of the raw one"),
    Mutant("self-attention-residual-follows-config", ENCODER, SELF_LAYER,
           "layer, hidden_states, config.num_self_attention_heads, use_query_residual=config.use_query_residual,",
           "self-attention layers drop their residual when use_query_residual=False (HF: always kept)"),
    Mutant("mlp-residual-dropped", LAYERS, "layer_output += attention_output", "layer_output = layer_output",
           "no residual around the MLP"),
    Mutant("mlp-residual-from-layer-input", LAYERS, "layer_output += attention_output", "layer_output += hidden_states",
           "the MLP's residual adds the layer's input instead of the attention output"),
    Mutant("mlp-without-layernorm", LAYERS, 'layer_output = layer_norm(attention_output, **params["layernorm"])',
           "layer_output = attention_output", "the MLP reads the attention output without its layernorm"),
    Mutant("activation-ignored", LAYERS, "ACT2FN[hidden_act]", 'ACT2FN["gelu"]',
           "every MLP uses GELU, whatever config.hidden_act says"),
    Mutant("layer-norm-eps-outside-sqrt", FUNCTIONAL, "np.sqrt(sum_sq / dim + eps)", "(np.sqrt(sum_sq / dim) + eps)",
           "LayerNorm adds eps to the standard deviation instead of the variance"),
    Mutant("layer-norm-unbiased-variance", FUNCTIONAL, "np.sqrt(sum_sq / dim + eps)",
           "np.sqrt(sum_sq / max(dim - 1, 1) + eps)", "LayerNorm uses the unbiased variance (torch: biased)"),
    Mutant("softmax-without-max-shift", FUNCTIONAL, "e = np.subtract(x, x_max, out=out)",
           "e = np.subtract(x, 0, out=out)",
           "softmax exponentiates the raw scores (overflow; a fully masked row is 0/0)"),
    # ------------------------------------------------------------------ the shared block and the outputs
    Mutant("shared-block-uses-first-layer", ENCODER, SELF_LAYER,
           "self_attends[0], hidden_states, config.num_self_attention_heads, use_query_residual=True,",
           "every self-attention layer of the block uses the weights of layer 0"),
    Mutant("blocks-rotate-layers", ENCODER, "for i, layer in enumerate(self_attends):",
           "for i, layer in enumerate(self_attends[_ % len(self_attends):] + self_attends[:_ % len(self_attends)]):",
           "block b applies the shared layers starting at layer b mod S (broken weight sharing)"),
    Mutant("num-blocks-ignored", ENCODER, "for _ in range(config.num_blocks):", "for _ in range(1):",
           "the block of self-attention layers is applied once, whatever num_blocks says"),
    Mutant("hidden-states-miss-layer-inputs", ENCODER, "\n                all_hidden_states += (hidden_states,)",
           "\n                pass", "hidden_states omits the input of every self-attention layer"),
    Mutant("hidden-states-miss-block-ends", ENCODER, "\n            all_hidden_states += (hidden_states,)",
           "\n            pass", "hidden_states omits the output of each block"),
    Mutant("hidden-states-include-embeddings", ENCODER, "all_hidden_states = () if output_hidden_states else None",
           "all_hidden_states = (hidden_states,) if output_hidden_states else None",
           "hidden_states starts with the latent array (HF's Perceiver encoder does not)"),
    Mutant("attentions-reversed", ENCODER, "all_self_attentions += (probs,)",
           "all_self_attentions = (probs,) + all_self_attentions", "attentions listed last layer first"),
    Mutant("cross-attentions-doubled", ENCODER, "all_cross_attentions = (cross_probs,) if output_attentions else None",
           "all_cross_attentions = (cross_probs, cross_probs) if output_attentions else None",
           "cross_attentions holds the one cross-attention map twice"),
    Mutant("output-fields-swapped", MODEL, "out.attentions, out.cross_attentions)",
           "out.cross_attentions, out.attentions)",
           "the output record's attentions and cross_attentions are swapped"),
    # ------------------------------------------------------------------ the streamed cross-attention
    Mutant("stream-off-by-one", ATTENTION, "stop = start + chunk_size", "stop = start + chunk_size - 1",
           "each chunk leaves out its last input"),
    Mutant("stream-overlapping-chunks", ATTENTION, "stop = start + chunk_size", "stop = start + chunk_size + 1",
           "consecutive chunks overlap by one input"),
    Mutant("stream-drops-last-partial-chunk", ATTENTION, "for start in range(0, inputs.shape[1], chunk_size):",
           "for start in range(0, inputs.shape[1] - chunk_size + 1, chunk_size):",
           "a last chunk shorter than chunk_size is never read"),
    Mutant("stream-swapped-rescaling", ATTENTION,
           "old_scale, new_scale = np.exp(running_max - new_max), np.exp(chunk_max - new_max)",
           "new_scale, old_scale = np.exp(running_max - new_max), np.exp(chunk_max - new_max)",
           "the online softmax rescales the running and the new chunk's terms with each other's factor"),
    Mutant("stream-sum-not-rescaled", ATTENTION, "running_sum = running_sum * old_scale + chunk_sum * new_scale",
           "running_sum = running_sum + chunk_sum", "the running softmax denominator is never rescaled"),
    Mutant("stream-max-not-updated", ATTENTION, "running_max = new_max", "running_max = running_max",
           "the running maximum keeps the first chunk's value"),
    Mutant("stream-normalised-by-last-chunk", ATTENTION, "context /= running_sum", "context /= chunk_sum",
           "the streamed context is divided by the last chunk's sum instead of the running sum"),
    Mutant("stream-mask-of-first-chunk", ATTENTION, "inputs_mask[..., start:stop]", "inputs_mask[..., :stop - start]",
           "every chunk adds the mask of the first chunk's inputs"),
    Mutant("stream-residual-flipped", ENCODER, "if config.use_query_residual:", "if not config.use_query_residual:",
           "the streamed cross-attention layer adds the query residual exactly when it should not"),
    Mutant("stream-mlp-always-gelu", ENCODER, "feed_forward(params, attention_output, config.hidden_act)",
           'feed_forward(params, attention_output, "gelu")', "the streamed layer's MLP ignores hidden_act"),
    Mutant("stream-reads-latent-mask", ENCODER, STREAM_CALL,
           "cross, config, hidden_states, inputs, attention_mask, cross_attention_chunk_size), None",
           "the streamed cross-attention is given the latent mask instead of inputs_mask"),
    Mutant("stream-cross-heads-from-self-config", ENCODER,
           'attention["self"], hidden_states, inputs, config.num_cross_attention_heads,',
           'attention["self"], hidden_states, inputs, config.num_self_attention_heads,',
           "the streamed cross-attention splits into num_self_attention_heads heads"),
    Mutant("stream-with-output-attentions", ENCODER, "if streamed and not output_attentions and",
           "if streamed and",
           "streams with output_attentions=True too, so cross_attentions holds None"),
    # ------------------------------------------------------------------ equivalent mutants (argued)
    Mutant("stream-when-one-chunk", ENCODER, "and M > cross_attention_chunk_size",
           "and M >= cross_attention_chunk_size",
           "streams when the inputs fill exactly one chunk",
           equivalent="one chunk of the online softmax is exp(s - max) @ v / sum, the one-pass softmax with the "
           "division moved after the matmul: the same number up to float32 rounding, and no property (nor HF "
           "parity) claims the two paths agree bit for bit"),
    Mutant("scale-as-python-float", ATTENTION, "\n    scores /= np.float32(math.sqrt(query.shape[-1]))",
           "\n    scores /= math.sqrt(query.shape[-1])", "divide the scores by a Python float",
           equivalent="an in-place division of a float32 array by a Python float computes in float32 with the "
           "float rounded to float32 first (NumPy 2 promotion rules): the same bits as np.float32(...)"),
    Mutant("softmax-max-propagates-nan", FUNCTIONAL, "x_max = np.fmax.reduce(x, axis=axis, keepdims=True)",
           "x_max = x.max(axis=axis, keepdims=True)", "the softmax shift uses max instead of fmax",
           equivalent="fmax and max differ only when a row holds a NaN; finite inputs and weights give no NaN "
           "score (test_output_shape_and_finiteness), and a NaN row ends all-NaN after the division either way"),
    Mutant("ones-head-mask-not-skipped", MODEL, "if head_mask is not None and np.all(head_mask == 1):",
           "if head_mask is not None and False:", "an all-ones head_mask is multiplied in instead of skipped",
           equivalent="multiplying a float32 probability by exactly 1.0 returns the same bits, so skipping the "
           "all-ones head mask is only a shortcut"),
    Mutant("ones-latent-mask-not-skipped", MODEL, LATENT_MASK_IF, "if True:\n                latent_bias",
           "an all-ones latent_mask is added (as zeros) instead of skipped",
           equivalent="invert_attention_mask of ones is all +0.0 and s + 0.0 == s for every float32 score, so "
           "skipping it is only a shortcut"),
    Mutant("ones-attention-mask-not-skipped", MODEL, INPUTS_MASK_IF, "if True:\n                inputs_mask",
           "an all-ones attention_mask is added (as zeros) instead of skipped",
           equivalent="invert_attention_mask of ones is all +0.0 and s + 0.0 == s for every float32 score "
           "(in the streamed path too), so skipping it is only a shortcut"),
)


# ---------------------------------------------------------------------------- the scratch copy
def _git(*args: str, cwd: Path = ROOT) -> bytes:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True).stdout


def make_scratch_copy(tests_from: "str | None") -> Path:
    """A copy of the repository's files (tracked and untracked, as in the working tree, without .git) in a new
    temporary directory; with ``tests_from``, its ``tests/`` folder is that git revision's instead."""
    scratch = Path(tempfile.mkdtemp(prefix="npperceiver-mutate-"))
    files = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard").decode().split("\0")
    for rel in filter(None, files):
        source = ROOT / rel
        if source.is_file():
            (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, scratch / rel)
    if tests_from:
        shutil.rmtree(scratch / "tests")
        archive = _git("archive", "--format=tar", tests_from, "tests")
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(scratch)  # our own repository's files
    return scratch


def _environment(scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(scratch), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a mutated file of the same size must never reuse a stale .pyc
    conftest = (scratch / "tests" / "conftest.py").read_text(encoding="utf-8")
    env["HYPOTHESIS_PROFILE"] = "mutate" if re.search(r"register_profile\(\s*[\"']mutate", conftest) else "ci"
    return env


def check_imports_from(scratch: Path) -> None:
    """The scratch copy's ``npperceiver`` must be the one its tests import (never the installed working tree)."""
    found = subprocess.run(
        [sys.executable, "-c", "import npperceiver; print(npperceiver.__file__)"], cwd=scratch,
        env=_environment(scratch), capture_output=True, text=True, check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(scratch.resolve()):
        raise SystemExit(f"error: the scratch copy imports npperceiver from {found}, not from {scratch}")


# ---------------------------------------------------------------------------- running
@dataclass
class Result:
    mutant: Mutant
    status: str
    detail: str = ""
    seconds: float = 0.0


def stale_reason(mutant: Mutant, root: Path = ROOT) -> str:
    """Why ``mutant`` cannot be planted in the files under ``root`` ("" when its snippet occurs exactly once)."""
    path = root / mutant.file
    if not path.is_file():
        return f"{mutant.file} does not exist"
    count = path.read_text(encoding="utf-8").count(mutant.original)
    return "" if count == 1 else f"snippet found {count} times in {mutant.file}"


def run_tests(scratch: Path, tests: tuple[str, ...], stop_first: bool, timeout: float) -> tuple[int, str]:
    """Run pytest on ``tests`` inside ``scratch``; return its exit code (-1 on timeout) and its output."""
    command = [sys.executable, "-m", "pytest", "-q", "-rf", "--no-header", "-p", "no:cacheprovider", *tests]
    if stop_first:
        command.insert(3, "-x")
    try:
        done = subprocess.run(command, cwd=scratch, env=_environment(scratch), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as timed_out:
        return -1, str(timed_out.stdout or "")
    return done.returncode, done.stdout + done.stderr


def failed_tests(output: str) -> list[str]:
    """The names of the failed tests in pytest's ``-rf`` summary."""
    return re.findall(r"^FAILED \S+::(\w+)", output, flags=re.M)


def run_mutant(mutant: Mutant, scratch: Path, tests: tuple[str, ...], stop_first: bool, timeout: float) -> Result:
    """Plant ``mutant`` in ``scratch``, run the tests, restore the file."""
    reason = stale_reason(mutant, scratch)
    if reason:
        return Result(mutant, "STALE", reason)
    path = scratch / mutant.file
    original = path.read_text(encoding="utf-8")
    path.write_text(original.replace(mutant.original, mutant.replacement), encoding="utf-8")
    start = time.monotonic()
    try:
        code, output = run_tests(scratch, tests, stop_first, timeout)
    finally:
        path.write_text(original, encoding="utf-8")
    seconds = time.monotonic() - start
    if code == -1:
        return Result(mutant, "TIMEOUT", f"over {timeout:.0f} s", seconds)
    if code == 0:
        return Result(mutant, "EQUIVALENT" if mutant.equivalent else "SURVIVED", "", seconds)
    if code == 1:
        caught_by = ", ".join(failed_tests(output)) or "?"
        return Result(mutant, "NOT EQUIVALENT" if mutant.equivalent else "KILLED", caught_by, seconds)
    last = [line for line in output.strip().splitlines() if line.strip()][-1:] or ["no output"]
    return Result(mutant, "INVALID", f"pytest exit code {code}: {last[0]}", seconds)


CAUGHT = {"KILLED", "TIMEOUT"}
BAD = {"SURVIVED", "NOT EQUIVALENT", "STALE", "INVALID"}


def report(results: list[Result], out=sys.stdout) -> int:
    """Print one line per mutant, the arguments for the equivalent ones and the score; return the exit status."""
    width = max(len(r.mutant.name) for r in results)
    for r in results:
        extra = f" ({r.detail})" if r.detail else ""
        print(f"{r.status:<14} {r.mutant.name:<{width}}  {r.seconds:5.1f} s  {r.mutant.description}{extra}", file=out)
    equivalent = [r for r in results if r.status == "EQUIVALENT"]
    if equivalent:
        print("\nEquivalent mutants (they survive by design):", file=out)
        for r in equivalent:
            print(f"- {r.mutant.name}: {r.mutant.equivalent}", file=out)
    counts = {s: sum(r.status == s for r in results) for s in dict.fromkeys(r.status for r in results)}
    behaviour_changing = [r for r in results if not r.mutant.equivalent and r.status not in {"STALE", "INVALID"}]
    caught = sum(r.status in CAUGHT for r in behaviour_changing)
    print(f"\nscore: {caught}/{len(behaviour_changing)} behaviour-changing mutants caught by "
          f"{', '.join(PROPERTY_TESTS)}; " + ", ".join(f"{n} {s}" for s, n in counts.items()), file=out)
    return 1 if any(r.status in BAD for r in results) else 0


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutate", description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", dest="select", default="", help="only mutants whose name contains this text")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--check", action="store_true", help="report stale snippets only, run no test")
    parser.add_argument("--tests-from", metavar="REV", help="use the tests/ folder of this git revision")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once, one scratch copy each")
    parser.add_argument("--all-tests", action="store_true", help="run every test, not only up to the first failure")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant before it counts as caught")
    args = parser.parse_args(argv)

    mutants = [m for m in MUTANTS if args.select in m.name]
    names = [m.name for m in MUTANTS]
    assert len(set(names)) == len(names), "mutant names must be unique"
    if args.list:
        for m in mutants:
            print(f"{m.name}  [{m.file}]  {m.description}{'  (equivalent)' if m.equivalent else ''}")
        return 0
    if args.check:
        stale = [(m, stale_reason(m)) for m in mutants if stale_reason(m)]
        for m, reason in stale:
            print(f"STALE {m.name}: {reason}")
        print(f"{len(mutants) - len(stale)}/{len(mutants)} mutants match the code")
        return 1 if stale else 0

    scratches = [make_scratch_copy(args.tests_from) for _ in range(max(1, args.jobs))]
    try:
        check_imports_from(scratches[0])
        code, output = run_tests(scratches[0], PROPERTY_TESTS, stop_first=True, timeout=args.timeout)
        if code != 0:
            print(output[-3000:], file=sys.stderr)
            print("error: the property tests fail on the unmutated code; fix that first", file=sys.stderr)
            return 1
        free: "queue.Queue[Path]" = queue.Queue()
        for s in scratches:
            free.put(s)

        def job(mutant: Mutant) -> Result:
            scratch = free.get()
            try:
                result = run_mutant(mutant, scratch, PROPERTY_TESTS, not args.all_tests, args.timeout)
            finally:
                free.put(scratch)
            print(f"  {result.status:<14} {mutant.name} ({result.seconds:.1f} s)", file=sys.stderr, flush=True)
            return result

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(scratches)) as pool:
            results = list(pool.map(job, mutants))
    finally:
        for s in scratches:
            shutil.rmtree(s, ignore_errors=True)
    if args.tests_from:
        print(f"tests/ from {args.tests_from}")
    return report(results)


if __name__ == "__main__":
    sys.exit(main())
