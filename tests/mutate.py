"""Mutation check: do the property tests alone catch plausible bugs in the model?

Plants each mutant of :data:`MUTANTS` -- one plausible bug in ``npperceiver/`` -- one at a time in a scratch
copy of the repository (never in the working tree), runs its group's tests there, and reports which mutants
they miss. The mutants come in groups, each scored by its own tests (:data:`GROUPS`):

* ``forward`` -- the forward pass (masks, attention, layers, streaming, outputs), scored by the hypothesis
  properties of ``tests/test_properties.py`` alone: the unit, chunking and parity tests are left out on
  purpose, so the score says what the properties catch on their own;
* ``backward`` -- the hand-written backward pass and the optimizer (hand-derivation bugs: a missing
  transpose or scale, a dropped path, a gradient not summed, AdamW's and clipping's arithmetic), scored by
  the gradient checks (finite differences) and gradient properties: ``tests/test_backward.py``,
  ``tests/test_streamed_backward.py``, ``tests/test_grad_properties.py`` -- not by the torch parity tests;
* ``causal`` -- the sequence-to-sequence model's causal mask, teacher forcing, loss padding and greedy
  decoding, scored by the hypothesis properties of ``tests/test_seq2seq.py`` alone (its unit and parity
  tests left out).

    python -m tests.mutate                     # every group (a quarter of an hour on 2 cores, most of it forward)
    python -m tests.mutate --group backward    # one group: forward, backward, causal or all
    python -m tests.mutate -k stream           # only the mutants whose name contains "stream"
    python -m tests.mutate --check             # no test run: is every snippet still in the code?
    python -m tests.mutate --list              # the mutants and what each one breaks
    python -m tests.mutate --tests-from REV    # score the tests/ folder of git revision REV instead
    python -m tests.mutate --jobs 2 --all-tests

A mutant is ``(file, exact original snippet, replacement, description)``. The snippet must occur exactly
once in its file; when it no longer does (the code changed), the mutant is reported as STALE, never
skipped in silence (``tests/test_mutate.py`` fails too): refresh its snippet.

Each mutant ends as one of:

* KILLED -- some test of its group failed (the first one is named; ``--all-tests`` names every one);
* SURVIVED -- every test of its group passed: a gap in the tests (or an equivalent mutant not yet argued);
* EQUIVALENT -- survived, and its ``equivalent`` field argues why no test could tell it apart;
* NOT EQUIVALENT -- argued equivalent but killed: the argument or a test is wrong;
* STALE -- the snippet is not in the code exactly once;
* INVALID -- the mutated code does not even import, or pytest stopped for another reason;
* TIMEOUT -- the run took longer than ``--timeout`` seconds (counted as caught: CI would not pass).

The runs use the hypothesis profile ``mutate`` (``ci`` without shrinking: the same examples, a failure found
as fast) when the copied ``tests/conftest.py`` defines it, ``ci`` otherwise. A test file of a group that the
scored ``tests/`` folder lacks (``--tests-from`` an older revision) is left out and named. Exit status 0 when
every behaviour-changing mutant was caught and none is stale or invalid.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import dataclasses
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

@dataclass(frozen=True)
class Group:
    """A kind of mutant and the tests whose verdict counts for it."""

    name: str
    tests: tuple[str, ...]  # test files
    properties_only: bool  # only the hypothesis properties (functions decorated with @given) of those files
    about: str


GROUPS: dict[str, Group] = {g.name: g for g in (
    Group("forward", ("tests/test_properties.py",), False, "the forward pass"),
    Group("backward", ("tests/test_backward.py", "tests/test_streamed_backward.py", "tests/test_grad_properties.py"),
          False, "the backward pass and the optimizer"),
    Group("causal", ("tests/test_seq2seq.py",), True, "the causal mask, teacher forcing, the loss and decoding"),
)}


@dataclass(frozen=True)
class Mutant:
    """One planted bug: replace ``original`` (exactly once in ``file``) by ``replacement``."""

    name: str
    file: str
    original: str
    replacement: str
    description: str
    equivalent: str = ""  # why the mutant changes no behaviour the tests can observe ("" for a real bug)
    group: str = "forward"  # a key of GROUPS


def _in_group(group: str, *mutants: Mutant) -> tuple[Mutant, ...]:
    return tuple(dataclasses.replace(m, group=group) for m in mutants)


ATTENTION, MASKS, ENCODER = "npperceiver/attention.py", "npperceiver/masks.py", "npperceiver/encoder.py"
LAYERS, FUNCTIONAL, MODEL = "npperceiver/layers.py", "npperceiver/functional.py", "npperceiver/model.py"
INVERT = "(np.float32(1.0) - mask[:, None, None, :]) * MASK_MIN"
INPUTS_MASK_IF = "if not keep.all():\n                inputs_mask"
LATENT_MASK_IF = "if not keep.all():\n                latent_bias"
SELF_LAYER = "layer, hidden_states, config.num_self_attention_heads, use_query_residual=True,"
STREAM_CALL = "cross, config, hidden_states, inputs, inputs_mask, cross_attention_chunk_size,"
STREAM_STOP = "stop = start + chunk_size\n        keys, values"  # the forward's loop (the backward has its own)

FORWARD_MUTANTS: tuple[Mutant, ...] = (
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
    Mutant("stream-off-by-one", ATTENTION, STREAM_STOP, STREAM_STOP.replace("chunk_size", "chunk_size - 1"),
           "each chunk leaves out its last input"),
    Mutant("stream-overlapping-chunks", ATTENTION, STREAM_STOP, STREAM_STOP.replace("chunk_size", "chunk_size + 1"),
           "consecutive chunks overlap by one input"),
    Mutant("stream-drops-last-partial-chunk", ATTENTION,
           "for start in range(0, inputs.shape[1], chunk_size):\n        " + STREAM_STOP,
           "for start in range(0, inputs.shape[1] - chunk_size + 1, chunk_size):\n        " + STREAM_STOP,
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
    Mutant("stream-mask-of-first-chunk", ATTENTION, "inputs_mask[..., start:stop]  # (B, 1, 1|Q, m)",
           "inputs_mask[..., :stop - start]  # (B, 1, 1|Q, m)",
           "every chunk adds the mask of the first chunk's inputs"),
    Mutant("stream-residual-flipped", ENCODER, "if config.use_query_residual:", "if not config.use_query_residual:",
           "the streamed cross-attention layer adds the query residual exactly when it should not"),
    Mutant("stream-mlp-always-gelu", ENCODER, "feed_forward(params, attention_output, config.hidden_act,",
           'feed_forward(params, attention_output, "gelu",', "the streamed layer's MLP ignores hidden_act"),
    Mutant("stream-reads-latent-mask", ENCODER, STREAM_CALL,
           "cross, config, hidden_states, inputs, attention_mask, cross_attention_chunk_size,",
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

TEXT, OPTIM, SEQ2SEQ = "npperceiver/text.py", "npperceiver/optim.py", "npperceiver/seq2seq.py"
SDPA_SCALE_BACK = "\n    d_scores /= np.float32(math.sqrt(query.shape[-1]))  # the forward's scaling"
STREAM_BACK_STOP = "stop = start + chunk_size\n        chunk_cache"  # the streamed backward's loop
LINEAR_BACK_ROWS = "    d_rows = d_out.reshape(-1, d_out.shape[-1])  # (..., out) -> (rows, out)\n"
BACK_ORDER = ('i = applications[-1]["index"]\n        d_hidden_states, _, grads = perceiver_layer_backward('
              'd_hidden_states, self_attends[i], applications.pop())')

#: Bugs of a hand derivation, in the backward functions on main (functional, attention incl. the streamed
#: backward, layers, encoder, model, text) and in the optimizer. The sequence-to-sequence model's backward is
#: not mutated here.
BACKWARD_MUTANTS: tuple[Mutant, ...] = _in_group(
    "backward",
    # ------------------------------------------------------------------ primitives
    Mutant("linear-backward-dweight-transposed", FUNCTIONAL,
           "dweight = d_rows.T.dot(x.reshape(-1, x.shape[-1]))", "dweight = x.reshape(-1, x.shape[-1]).T.dot(d_rows)",
           "linear's weight gradient is x^T d_out (in, out), the transpose of the (out, in) weight's"),
    Mutant("linear-backward-dx-transposed-weight", FUNCTIONAL, "dx = d_rows.dot(weight)",
           "dx = d_rows.dot(weight.T) if weight.shape[0] == weight.shape[1] else d_rows.dot(weight)",
           "linear's input gradient multiplies by W^T where the forward's x W^T needs W (seen for square W only)"),
    Mutant("linear-backward-bias-mean", FUNCTIONAL, "dbias = d_rows.sum(axis=0)  # (rows, out) -> (out,)",
           "dbias = d_rows.mean(axis=0)", "linear's bias gradient is averaged over the rows instead of summed"),
    Mutant("layer-norm-backward-no-mean-term", FUNCTIONAL, "dx = np.subtract(d_x_hat, mean_d, out=d_x_hat)",
           "dx = d_x_hat", "layer norm's input gradient misses the mean(dxhat) term (the mean's derivative)"),
    Mutant("layer-norm-backward-no-variance-term", FUNCTIONAL, "    dx -= x_hat\n", "",
           "layer norm's input gradient misses the xhat * mean(dxhat * xhat) term (the variance's derivative)"),
    Mutant("layer-norm-backward-no-rstd", FUNCTIONAL, "    dx *= rstd\n", "",
           "layer norm's input gradient is not divided by the standard deviation"),
    Mutant("layer-norm-backward-dweight-without-xhat", FUNCTIONAL,
           'dweight = np.einsum("ri,ri->i", d_rows, x_hat.reshape(-1, dim))', "dweight = d_rows.sum(axis=0)",
           "layer norm's weight gradient is sum(d_out), the bias's, instead of sum(d_out * xhat)"),
    Mutant("softmax-backward-no-row-sum", FUNCTIONAL,
           "dx = np.subtract(d_probs, np.moveaxis(total, -1, axis), out=out)",
           "dx = np.subtract(d_probs, 0, out=out)",
           "softmax's backward is p * dp, without subtracting the row sum sum(dp * p)"),
    Mutant("gelu-backward-no-density-term", FUNCTIONAL, "    pdf *= x\n    cdf += pdf", "    cdf += pdf",
           "GELU's derivative is Phi(x) + phi(x) instead of Phi(x) + x phi(x)"),
    Mutant("gelu-tanh-backward-no-sech2", FUNCTIONAL, "    slope *= _ONE - t * t  # (1 - t^2) du/dx\n", "",
           "the tanh GELU's derivative misses tanh's derivative (1 - t^2)"),
    Mutant("silu-backward-is-sigmoid", FUNCTIONAL, "    slope *= x\n    slope += _ONE\n    slope *= s\n",
           "    slope *= 0\n    slope += _ONE\n    slope *= s\n", "SiLU's derivative is taken as sigmoid(x) alone"),
    Mutant("relu-backward-one-at-zero", FUNCTIONAL, "np.where(x > 0, d_out", "np.where(x >= 0, d_out",
           "ReLU's derivative at exactly 0 is 1 (torch: 0)"),
    # ------------------------------------------------------------------ the attention core
    Mutant("sdpa-backward-no-scale", ATTENTION, SDPA_SCALE_BACK, "",
           "the score gradient forgets the forward's 1/sqrt(dqk)"),
    Mutant("sdpa-backward-scale-by-value-width", ATTENTION, SDPA_SCALE_BACK,
           SDPA_SCALE_BACK.replace("query.shape", "value.shape"),
           "the score gradient is divided by sqrt(value head width) instead of sqrt(query/key head width)"),
    Mutant("sdpa-backward-head-mask-not-applied", ATTENTION,
           "d_probs *= head_mask  # (B, H, Q, K) * (1, H, 1, 1)", "d_probs *= 1  # (B, H, Q, K) * (1, H, 1, 1)",
           "the probabilities' gradient is not multiplied by head_mask (a silenced head still learns its q, k)"),
    Mutant("sdpa-backward-dvalue-unmasked-weights", ATTENTION, "        weights = weights * head_mask\n",
           "        weights = weights\n",
           "the value gradient uses the probabilities before head_mask"),
    Mutant("sdpa-backward-softmax-of-final-weights", ATTENTION, "softmax_backward(d_probs, probs, out=d_probs)",
           "softmax_backward(d_probs, weights, out=d_probs)",
           "the softmax backward is taken at the head-masked (and dropped-out) weights, not at the softmax's output"),
    Mutant("sdpa-backward-dvalue-not-transposed", ATTENTION, "d_value = weights.swapaxes(-1, -2) @ d_context",
           "d_value = weights @ d_context",
           "the value gradient is w d_context, not w^T d_context (a self-attention's shapes agree)"),
    Mutant("sdpa-backward-dkey-not-transposed", ATTENTION, "d_key = d_scores.swapaxes(-1, -2) @ query",
           "d_key = d_scores @ query", "the key gradient is ds q, not ds^T q (a self-attention's shapes agree)"),
    Mutant("sdpa-backward-dropout-not-applied", ATTENTION, "d_probs = dropout_backward(d_probs, noise)",
           "d_probs = d_probs", "a dropped probability still passes gradient back"),
    # ------------------------------------------------------------------ projections, residuals, MLP
    Mutant("cross-kv-backward-values-path-dropped", ATTENTION, "    d_normed += d_from_values\n", "",
           "the inputs get gradient through the keys only, not the values"),
    Mutant("self-attention-backward-key-path-dropped", ATTENTION, "        d_normed += d_from_key\n", "",
           "a self-attention's latents get no gradient through its keys"),
    Mutant("self-attention-backward-value-path-dropped", ATTENTION, "        d_normed += d_from_value\n", "",
           "a self-attention's latents get no gradient through its values"),
    Mutant("query-residual-backward-always", ATTENTION,
           'if cache["use_query_residual"]:\n        d_hidden_states += d_attention_output',
           'if True:\n        d_hidden_states += d_attention_output',
           "the query residual's gradient is added also where there is no residual"),
    Mutant("mlp-residual-backward-missing", LAYERS,
           "    d_attention_output += d_layer_output  # the residual around the MLP\n",
           "", "the residual around the MLP passes no gradient"),
    Mutant("mlp-backward-activation-at-output", LAYERS,
           'ACT2GRAD[cache["hidden_act"]](d_activated, cache["hidden"])',
           'ACT2GRAD[cache["hidden_act"]](d_activated, cache["activated"])',
           "the activation's derivative is taken at its output instead of its input"),
    # ------------------------------------------------------------------ the streamed cross-attention's backward
    Mutant("stream-backward-chunk-off-by-one", ATTENTION, STREAM_BACK_STOP,
           STREAM_BACK_STOP.replace("chunk_size", "chunk_size - 1"),
           "the backward recomputes chunks one input short (the last input of each gets no gradient)"),
    Mutant("stream-backward-chunk-overlap", ATTENTION, STREAM_BACK_STOP,
           STREAM_BACK_STOP.replace("chunk_size", "chunk_size + 1"),
           "the backward's recomputed chunks overlap by one input"),
    Mutant("stream-backward-mask-not-added", ATTENTION,
           "            probs += inputs_mask if inputs_mask.shape[-1] == 1 else inputs_mask[..., start:stop]\n",
           "            pass\n", "the backward recomputes the probabilities without the mask: padding leaks gradient"),
    Mutant("stream-backward-no-delta", ATTENTION, "        d_scores -= delta  # dp - D\n", "",
           "the streamed softmax backward forgets the row sum D = sum(p dp)"),
    Mutant("stream-backward-no-scale", ATTENTION, "        d_scores /= scale\n        d_queries", "        d_queries",
           "the streamed score gradient forgets 1/sqrt(dqk)"),
    Mutant("stream-backward-not-normalised", ATTENTION,
           "        probs /= row_sum_  # (B, H, Q, m): the forward's probabilities of this chunk\n", "",
           "the recomputed probabilities are not divided by the row sum"),
    Mutant("stream-backward-queries-last-chunk-only", ATTENTION, "d_queries += d_scores @ keys",
           "d_queries = d_scores @ keys", "the queries keep the last chunk's gradient only"),
    Mutant("stream-backward-weights-last-chunk-only", ATTENTION,
           "grads = chunk_grads if not grads else _add_grads(grads, chunk_grads)", "grads = chunk_grads",
           "the key/value weights keep the last chunk's gradient only"),
    # ------------------------------------------------------------------ the encoder and the model
    Mutant("shared-block-gradient-not-summed", ENCODER,
           "self_grads[i] = grads if self_grads[i] is None else _accumulate(self_grads[i], grads)",
           "self_grads[i] = grads",
           "a weight shared by num_blocks applications keeps the gradient of one application"),
    Mutant("encoder-backward-in-forward-order", ENCODER, BACK_ORDER,
           BACK_ORDER.replace("[-1]", "[0]").replace(".pop()", ".pop(0)"),
           "the backward walks the self-attention applications in forward order"),
    Mutant("latent-array-gradient-batch-mean", ENCODER, "return d_hidden_states.sum(axis=0)",
           "return d_hidden_states.mean(axis=0)", "the latent array's gradient is averaged over the batch, not summed"),
    Mutant("tied-embedding-counts-one-use", TEXT, 'preprocessor_grads["embeddings"]["weight"] += d_token_embedding',
           'preprocessor_grads["embeddings"]["weight"] = d_token_embedding',
           "the tied token embedding gets the output projection's gradient only, not the input lookup's"),
    Mutant("embedding-backward-no-scatter-add", TEXT, "np.add.reduceat(rows[order], starts, axis=0)",
           "rows[order][starts]", "a token seen twice keeps its first occurrence's gradient (no scatter-add)"),
    Mutant("position-gradient-row-0-only", TEXT, "d_positions[:input_ids.shape[1]] = d_inputs.sum(axis=0)",
           "d_positions[:input_ids.shape[1]] = d_inputs[0]", "the input positions get batch row 0's gradient only"),
    Mutant("decoder-query-gradient-batch-mean", TEXT, "    return d_out.sum(axis=0)\n",
           "    return d_out.mean(axis=0)\n", "the output queries' gradient is averaged over the batch, not summed"),
    Mutant("mlm-loss-backward-over-all-positions", TEXT,
           "kept /= np.asarray(K, dtype=logits.dtype)", "kept /= np.asarray(keep.size, dtype=logits.dtype)",
           "the loss's gradient divides by every position, ignored ones included, not by the K labelled ones"),
    Mutant("mlm-loss-backward-ignored-rows-not-excluded", TEXT, "d_logits = np.zeros_like(logits)  # (B, P, V)",
           "d_logits = softmax(logits) / max(1, int(keep.sum()))  # (B, P, V)",
           "positions labelled -100 get the softmax's gradient instead of none"),
    # ------------------------------------------------------------------ AdamW and clipping
    Mutant("adamw-no-first-bias-correction", OPTIM, "step_size = lr / bias_correction1", "step_size = lr",
           "AdamW's step is not divided by 1 - beta1^t"),
    Mutant("adamw-second-bias-correction-not-sqrt", OPTIM, "bias_correction2_sqrt = bias_correction2 ** 0.5",
           "bias_correction2_sqrt = bias_correction2", "sqrt(v) is divided by 1 - beta2^t, not its square root"),
    Mutant("adamw-coupled-weight-decay", OPTIM, "param *= f(decay)  # p.mul_(1 - lr * weight_decay)",
           "grad = grad + f(weight_decay) * param  # Adam's L2 penalty",
           "weight decay is added to the gradient (Adam + L2) instead of decoupled from it"),
    Mutant("adamw-decay-without-lr", OPTIM, "decay = 1 - lr * weight_decay", "decay = 1 - weight_decay",
           "decoupled weight decay is not scaled by the learning rate"),
    Mutant("adamw-second-moment-not-decayed", OPTIM, "    v *= f(beta2)  # exp_avg_sq", "    v *= 1  # exp_avg_sq",
           "the second moment is never multiplied by beta2"),
    Mutant("adamw-eps-inside-sqrt", OPTIM, "np.sqrt(v, out=denom)", "np.sqrt(v + f(eps), out=denom)",
           "eps is added under the square root too"),
    Mutant("clip-grad-norm-largest-tensor-norm", OPTIM, "return np.linalg.norm(norms)", "return norms.max()",
           "clip_grad_norm clips by the largest per-tensor norm instead of the global norm"),
    Mutant("clip-grad-norm-sum-of-norms", OPTIM, "return np.linalg.norm(norms)", "return norms.sum()",
           "clip_grad_norm clips by the sum of the per-tensor norms instead of the global norm"),
    Mutant("clip-grad-norm-always-scales", OPTIM, "    if coefficient < 1:\n", "    if True:\n",
           "clip_grad_norm also scales gradients below the bound (up to max_norm)"),
    # ------------------------------------------------------------------ equivalent mutants (argued)
    Mutant("backward-keeps-the-core-record", ATTENTION,
           'merge_heads_backward(d_context, num_heads), cache.pop("attention"))',
           'merge_heads_backward(d_context, num_heads), cache["attention"])',
           "the attention core's record is kept in the cache after its backward instead of freed",
           equivalent="popping the record only frees memory earlier; the same arrays are read in the same order "
           "and nothing reads the cache again (a backward uses its cache up), so every gradient is the same"),
    Mutant("layer-norm-backward-no-mean-refinement", FUNCTIONAL,
           "    centered -= row_sum(centered) / dim\n    rstd", "    rstd",
           "the backward recomputes the mean in one pass, without the forward's refinement",
           equivalent="the refinement moves the float32 mean by at most a few ulps of the row's size; xhat and rstd "
           "change by float32 rounding only, far below every test's tolerance (finite differences run in float64, "
           "where the correction is ~1e-16), and no test asks the backward for bit-exact torch parity (the torch "
           "gradient parity tests pass with it too)"),
    Mutant("linear-backward-bias-argument-used", FUNCTIONAL, LINEAR_BACK_ROWS, LINEAR_BACK_ROWS + "    bias = None\n",
           "linear_backward drops the bias it was given",
           equivalent="linear_backward accepts the bias only so calls can pass **params: the gradient of x W^T + b "
           "does not depend on b, and the function never reads it"),
)

LOSS_LABELS = ("labels = np.where(target_ids == PAD_ID, IGNORE_INDEX, target_ids)  # (B, T): padding -> -100\n"
               "    return masked_lm_loss(logits, labels)")  # the forward's loss (its backward has the same line)

#: Bugs of the sequence-to-sequence model's causal mask, teacher forcing, loss and greedy decoding (its forward:
#: the backward of that model is not mutated here).
CAUSAL_MUTANTS: tuple[Mutant, ...] = _in_group(
    "causal",
    Mutant("causal-mask-hides-the-diagonal", SEQ2SEQ, "np.triu(np.ones((T, T), dtype=bool), k=1)",
           "np.triu(np.ones((T, T), dtype=bool), k=0)",
           "the causal mask also hides the position itself (position 0 then sees nothing: uniform over all)"),
    Mutant("causal-mask-transposed", SEQ2SEQ, "np.triu(np.ones((T, T), dtype=bool), k=1)",
           "np.tril(np.ones((T, T), dtype=bool), k=-1)", "the causal mask hides the past instead of the future"),
    Mutant("causal-mask-sees-one-ahead", SEQ2SEQ, "np.triu(np.ones((T, T), dtype=bool), k=1)",
           "np.triu(np.ones((T, T), dtype=bool), k=2)", "the causal mask lets position t see position t + 1"),
    Mutant("causal-mask-not-passed", SEQ2SEQ, "use_query_residual=True, attention_mask=bias,",
           "use_query_residual=True, attention_mask=None,", "the decoder's self-attention gets no causal mask"),
    Mutant("causal-mask-first-layer-only", SEQ2SEQ, "use_query_residual=True, attention_mask=bias,",
           'use_query_residual=True, attention_mask=bias if layer is params["layers"][0] else None,',
           "only the decoder's first layer is causal; the later layers' self-attention sees the future"),
    Mutant("decoder-positions-from-the-end", TEXT, "return tokens + positions[:M], tokens",
           "return tokens + positions[-M:], tokens",
           "a decoder input of length T' < T (and a source shorter than P) reads the last position embeddings"),
    Mutant("shift-right-keeps-the-first-token", SEQ2SEQ, "np.concatenate([bos, target_ids[:, :-1]], axis=1)",
           "np.concatenate([bos, target_ids[:, 1:]], axis=1)",
           "teacher forcing feeds y_2..y_T after [BOS]: position t reads the token it must predict"),
    Mutant("shift-right-without-bos", SEQ2SEQ, "np.concatenate([bos, target_ids[:, :-1]], axis=1)",
           "np.concatenate([target_ids[:, :1], target_ids[:, :-1]], axis=1)",
           "teacher forcing starts with the first target token instead of [BOS]"),
    Mutant("shift-right-starts-with-pad", SEQ2SEQ, "bos = np.full((target_ids.shape[0], 1), BOS_ID,",
           "bos = np.full((target_ids.shape[0], 1), PAD_ID,", "teacher forcing starts with [PAD] instead of [BOS]"),
    Mutant("loss-counts-padding", SEQ2SEQ, LOSS_LABELS, LOSS_LABELS.replace(
           "np.where(target_ids == PAD_ID, IGNORE_INDEX, target_ids)", "target_ids"),
           "the loss counts the [PAD] positions after [EOS]"),
    Mutant("loss-leaves-out-eos", SEQ2SEQ, LOSS_LABELS, LOSS_LABELS.replace(
           "target_ids == PAD_ID", "(target_ids == PAD_ID) | (target_ids == EOS_ID)"),
           "the loss leaves [EOS] out (the model never learns to stop)"),
    Mutant("generate-feeds-the-first-token", SEQ2SEQ, "prefix = np.concatenate([prefix, out[:, t:t + 1]], axis=1)",
           "prefix = np.concatenate([prefix, out[:, :1]], axis=1)",
           "greedy decoding feeds back the first chosen token at every step"),
    Mutant("generate-reads-the-first-position", SEQ2SEQ, "(self.decode(latents, prefix)[:, t] + never)",
           "(self.decode(latents, prefix)[:, 0] + never)",
           "greedy decoding reads the prediction of position 0 at every step"),
    Mutant("generate-stops-when-one-row-ends", SEQ2SEQ, "(out[:, : t + 1] == EOS_ID).any(axis=1).all()",
           "(out[:, : t + 1] == EOS_ID).any(axis=1).any()",
           "greedy decoding stops as soon as one row has produced [EOS]"),
    Mutant("pad-after-eos-also-pads-eos", SEQ2SEQ,
           "after = np.cumsum(ids == EOS_ID, axis=1) - (ids == EOS_ID) > 0",
           "after = np.cumsum(ids == EOS_ID, axis=1) > 0", "decoding's output replaces the [EOS] itself by [PAD]"),
    # ------------------------------------------------------------------ equivalent mutants (argued)
    Mutant("generate-prefix-grows-past-t", SEQ2SEQ, "                if t + 1 < T:\n                    prefix",
           "                if True:\n                    prefix",
           "greedy decoding extends the prefix after the last step too",
           equivalent="the prefix grows after step t only to be read at step t + 1; after the last step (t = T - 1) "
           "the loop ends and the longer prefix is never decoded"),
    Mutant("causal-mask-minus-1e4", SEQ2SEQ, "np.where(future, MASK_MIN, np.float32(0))",
           "np.where(future, np.float32(-1e4), np.float32(0))",
           "the causal mask adds -1e4 instead of float32's minimum",
           equivalent="every causal row keeps its diagonal, so its maximum is a real score and a future key's "
           "exp(s - 1e4 - max) underflows to exactly 0 in float32 (any score gap below ~1e4 - 104): the same "
           "probabilities bit for bit, unlike a fully masked row (which the causal mask never makes)"),
)

MUTANTS: tuple[Mutant, ...] = FORWARD_MUTANTS + BACKWARD_MUTANTS + CAUSAL_MUTANTS


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
    command = [sys.executable, "-m", "pytest", "-q", "-rfE", "--no-header", "-p", "no:cacheprovider", *tests]
    if stop_first:
        command.insert(3, "-x")
    try:
        done = subprocess.run(command, cwd=scratch, env=_environment(scratch), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as timed_out:
        return -1, str(timed_out.stdout or "")
    return done.returncode, done.stdout + done.stderr


def failed_tests(output: str) -> list[str]:
    """The names of the failed tests in pytest's ``-rfE`` summary (a test failing or erroring in its set-up); a
    file that fails to import (``ERROR tests/x.py``, no test named) is not a failed test."""
    return re.findall(r"^(?:FAILED|ERROR) \S+::(\w+)", output, flags=re.M)


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
    if code == 1 and failed_tests(output):  # with -x, a file that fails to import also exits 1: INVALID below
        caught_by = ", ".join(dict.fromkeys(failed_tests(output)))
        return Result(mutant, "NOT EQUIVALENT" if mutant.equivalent else "KILLED", caught_by, seconds)
    last = [line for line in output.strip().splitlines() if line.strip()][-1:] or ["no output"]
    return Result(mutant, "INVALID", f"pytest exit code {code}: {last[0]}", seconds)


CAUGHT = {"KILLED", "TIMEOUT"}
BAD = {"SURVIVED", "NOT EQUIVALENT", "STALE", "INVALID"}


def report(results: list[Result], out=sys.stdout, tests: "dict[str, tuple[str, ...]] | None" = None) -> int:
    """Print one line per mutant, the arguments for the equivalent ones and a score per group; return the exit
    status. ``tests``: the group -> the test files that scored it (named on the score line)."""
    width = max(len(r.mutant.name) for r in results)
    for r in results:
        extra = f" ({r.detail})" if r.detail else ""
        print(f"{r.status:<14} {r.mutant.name:<{width}}  {r.seconds:5.1f} s  {r.mutant.description}{extra}", file=out)
    equivalent = [r for r in results if r.status == "EQUIVALENT"]
    if equivalent:
        print("\nEquivalent mutants (they survive by design):", file=out)
        for r in equivalent:
            print(f"- {r.mutant.name}: {r.mutant.equivalent}", file=out)
    print(file=out)
    for group in dict.fromkeys(r.mutant.group for r in results):
        mine = [r for r in results if r.mutant.group == group]
        counts = {s: sum(r.status == s for r in mine) for s in dict.fromkeys(r.status for r in mine)}
        behaviour_changing = [r for r in mine if not r.mutant.equivalent and r.status not in {"STALE", "INVALID"}]
        caught = sum(r.status in CAUGHT for r in behaviour_changing)
        files = (tests or {}).get(group) or (GROUPS[group].tests if group in GROUPS else ())
        print(f"score [{group}]: {caught}/{len(behaviour_changing)} behaviour-changing mutants caught by "
              f"{', '.join(files)}; " + ", ".join(f"{n} {s}" for s, n in counts.items())
              + f"; {sum(r.seconds for r in mine):.0f} s of test runs", file=out)
    return 1 if any(r.status in BAD for r in results) else 0


def given_tests(path: Path) -> list[str]:
    """The names of the test functions in ``path`` decorated with hypothesis's ``@given`` (its properties)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            for decorator in node.decorator_list:
                call = decorator.func if isinstance(decorator, ast.Call) else decorator
                if getattr(call, "id", getattr(call, "attr", None)) == "given":
                    names.append(node.name)
    return names


def group_tests(group: Group, root: Path) -> tuple[tuple[str, ...], list[str]]:
    """The pytest arguments that score ``group`` in the copy at ``root``, and the group's test files that copy
    lacks (left out)."""
    present = [t for t in group.tests if (root / t).is_file()]
    missing = [t for t in group.tests if t not in present]
    if not group.properties_only:
        return tuple(present), missing
    return tuple(f"{t}::{name}" for t in present for name in given_tests(root / t)), missing


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", choices=[*GROUPS, "all"], default="all", help="which mutants (default: all)")
    parser.add_argument("-k", dest="select", default="", help="only mutants whose name contains this text")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--check", action="store_true", help="report stale snippets only, run no test")
    parser.add_argument("--tests-from", metavar="REV", help="use the tests/ folder of this git revision")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once, one scratch copy each")
    parser.add_argument("--all-tests", action="store_true", help="run every test, not only up to the first failure")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant before it counts as caught")
    args = parser.parse_args(argv)

    mutants = [m for m in MUTANTS if args.select in m.name and args.group in ("all", m.group)]
    names = [m.name for m in MUTANTS]
    assert len(set(names)) == len(names), "mutant names must be unique"
    if args.list:
        for m in mutants:
            print(f"{m.name}  [{m.group}, {m.file}]  {m.description}{'  (equivalent)' if m.equivalent else ''}")
        return 0
    if args.check:
        stale = [(m, stale_reason(m)) for m in mutants if stale_reason(m)]
        for m, reason in stale:
            print(f"STALE {m.name}: {reason}")
        print(f"{len(mutants) - len(stale)}/{len(mutants)} mutants match the code")
        return 1 if stale else 0
    if not mutants:
        print("error: no mutant matches", file=sys.stderr)
        return 1

    scratches = [make_scratch_copy(args.tests_from) for _ in range(max(1, args.jobs))]
    start = time.monotonic()
    try:
        check_imports_from(scratches[0])
        tests: dict[str, tuple[str, ...]] = {}
        for group in dict.fromkeys(m.group for m in mutants):
            tests[group], missing = group_tests(GROUPS[group], scratches[0])
            for t in missing:
                print(f"note: {t} is not in the scored tests/ folder; group {group} is scored without it",
                      file=sys.stderr)
            code, output = run_tests(scratches[0], tests[group], stop_first=True, timeout=args.timeout)
            if code != 0:
                print(output[-3000:], file=sys.stderr)
                print(f"error: the {group} group's tests fail on the unmutated code; fix that first", file=sys.stderr)
                return 1
        free: "queue.Queue[Path]" = queue.Queue()
        for s in scratches:
            free.put(s)

        def job(mutant: Mutant) -> Result:
            scratch = free.get()
            try:
                result = run_mutant(mutant, scratch, tests[mutant.group], not args.all_tests, args.timeout)
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
    files = {g: tuple(dict.fromkeys(t.split("::")[0] for t in ts)) for g, ts in tests.items()}
    status = report(results, tests=files)
    print(f"wall time {time.monotonic() - start:.0f} s with --jobs {len(scratches)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
