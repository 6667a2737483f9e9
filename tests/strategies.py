"""Hypothesis strategies for npperceiver's property tests: configs, random models, inputs and masks.

Names carry the shape letters of the rest of the project (B batch, M inputs, C ``d_model``, N latents,
L self-attention layers applied, H heads). Sizes stay small -- N <= 6, D <= 16, C <= 12, M <= 9, B <= 3,
at most 2 blocks of at most 2 self-attention layers -- so a test runs in milliseconds.

The strategies draw the cases where bugs hide *on purpose*, rather than hoping random draws reach them:

* :func:`configs` -- every kind of config HF accepts: head counts dividing the widths, ``qk_channels`` /
  ``v_channels`` set or unset (so query/key and value head widths differ), both
  ``cross_attention_shape_for_attention`` values, ``use_query_residual`` both ways, widening factors, all
  activations, 1 or 2 blocks of 1 or 2 layers (2 of each two times in three). N >= 2 in nine configs out of
  ten (with N = 1 self-attention is trivial); D >= 3 always and C >= 3 in most. LayerNorm maps every vector of width 1 to its bias (the latents
  or the inputs would be invisible), and a vector of width 2 to one of two points, except where its two
  entries nearly agree -- there it amplifies float32 rounding hundreds of times.
* :func:`models` -- a :class:`npperceiver.PerceiverModel` whose weights are random *and* large enough for
  attention to be far from uniform, with non-trivial layernorm weights and biases. Weights come from a
  seeded ``np.random.Generator``; hypothesis draws the seed.
* :func:`inputs_BMC`, :func:`generic_arrays` -- bounded float32 inputs (repeated values welcome), and
  generic ones (no ties, never constant along C).
* :func:`keep_masks` -- 0/1 keep-masks (bool, int or float, as the API accepts) whose rows are drawn by kind
  (keep all, drop some, drop all), so one batch mixes kinds; optionally with a row that drops some *and*
  keeps some.
* :func:`head_masks` -- ``head_mask`` of shape (Hs,) or (L, Hs), with zeros or without (fractional
  weights), never all ones where it is read, and with differing rows when 2-D.
* :func:`chunk_sizes` -- ``cross_attention_chunk_size`` smaller than M (dividing it or not, 1 included),
  equal to it, or larger.

:func:`choices` draws the categorical choices whose frequencies matter (hypothesis's own would not keep
them), :func:`optional` leaves an argument out one time in four. :func:`config_kinds`, :func:`row_kinds`,
:func:`head_mask_kind` and :func:`chunk_kind` name what was drawn, for ``hypothesis.event``
(``pytest --hypothesis-show-statistics`` then shows how often each case occurred).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import npperceiver as npp
from npperceiver.config import SUPPORTED_ACTIVATIONS

MAX_LATENTS = 6  # N
MAX_D_LATENTS = 16  # D
MAX_D_MODEL = 12  # C
MAX_INPUTS = 9  # M
MAX_BATCH = 3  # B


# ---------------------------------------------------------------------------- choices with set frequencies
def choices(options: Sequence, weights: Optional[Sequence[float]] = None) -> st.SearchStrategy:
    """One of ``options``, drawn with the given relative ``weights`` (equal by default); shrinks to options[0].

    For the choices whose frequency matters. ``st.sampled_from`` and ``st.booleans`` would not do: hypothesis
    favours the first and last options and repeats earlier choices, so in a run of 50 examples an option meant
    for one case in ten can fill half of them, and one meant for half of them may never come. A numpy
    Generator seeded by hypothesis keeps the frequencies.
    """
    p = np.full(len(options), 1.0 / len(options)) if weights is None else np.asarray(weights, float) / sum(weights)

    def pick(seed: int):
        return options[0] if seed == 0 else options[np.random.default_rng(seed).choice(len(p), p=p)]

    return seeds().map(pick)


def rarely(one_in: int = 10) -> st.SearchStrategy[bool]:
    """True about once in ``one_in`` draws, False otherwise (shrinks to False)."""
    return choices([False, True], [one_in - 1, 1])


@st.composite
def optional(draw, strategy: st.SearchStrategy, none_one_in: int = 4):
    """A value of ``strategy``, or None (the argument is not passed) about once in ``none_one_in`` draws."""
    return None if draw(rarely(none_one_in), label="None") else draw(strategy)


# ---------------------------------------------------------------------------- configs
def _favour_two(low: int, high: int) -> tuple[list[int], list[int]]:
    """The counts low..high, with 2 weighted twice as much as each other count."""
    counts = list(range(low, high + 1))
    return counts, [2 if n == 2 else 1 for n in counts]


@st.composite
def configs(
    draw,
    min_latents: int = 1,
    min_blocks: int = 1,
    max_blocks: int = 2,
    max_self_attends: int = 2,
    min_d_model: int = 1,
) -> npp.PerceiverConfig:
    """A valid :class:`npperceiver.PerceiverConfig` (one HF would build *and* run).

    The widths are drawn so that every rule of HF holds: both head counts divide ``d_latents``; every
    resolved query/key and value width divides by its head count; the self-attention value width is
    ``d_latents`` (HF crashes in ``forward`` otherwise).
    """
    Hs = draw(choices([2, 1, 3, 4]), label="num_self_attention_heads")
    Hc = draw(choices([2, 1, 3, 4]), label="num_cross_attention_heads")
    both = math.lcm(Hs, Hc)  # D must divide by both head counts
    D = both * draw(st.integers(-(-3 // both), MAX_D_LATENTS // both))  # D >= 3 (see the module docstring)
    # The four (qk_channels, v_channels) combinations that resolve the self-attention value width to D.
    widths = draw(choices(["qk set, v = D", "both unset", "v = D", "qk = D"]), label="widths")
    qk = v = None
    if widths == "v = D":
        v = D
    elif widths == "qk set, v = D":  # query/key head width != value head width, where the sizes allow it
        others = [both * k for k in range(1, MAX_D_LATENTS // both + 1) if both * k != D] or [D]
        qk = draw(st.sampled_from(others))  # shared by cross and self: divides by both
        v = D
    elif widths == "qk = D":
        qk = D
    shape_for_attention = draw(choices(["kv", "q"]), label="cross_attention_shape_for_attention")
    # C < 3 rarely (see the module docstring): with C = 1 the inputs cannot matter at all.
    low_c = max(min_d_model, 1 if draw(rarely(), label="C < 3 allowed") else 3)
    if qk is None and shape_for_attention == "kv":
        # The cross-attention's qk (and, with v unset, its v) width is then d_model: it must split over Hc.
        C = Hc * draw(st.integers(-(-low_c // Hc), MAX_D_MODEL // Hc))
    else:
        C = draw(st.integers(low_c, MAX_D_MODEL))
    if min_latents <= 1 and draw(rarely(), label="N = 1"):
        N = 1
    else:
        N = draw(st.integers(max(2, min_latents), MAX_LATENTS), label="num_latents")
    return npp.PerceiverConfig(
        num_latents=N,
        d_latents=D,
        d_model=C,
        # Two of either two times in three: several blocks of several layers are where indexing bugs hide.
        num_blocks=draw(choices(*_favour_two(min_blocks, max_blocks)), label="num_blocks"),
        num_self_attends_per_block=draw(choices(*_favour_two(1, max_self_attends)), label="S"),
        num_self_attention_heads=Hs,
        num_cross_attention_heads=Hc,
        qk_channels=qk,
        v_channels=v,
        cross_attention_shape_for_attention=shape_for_attention,
        self_attention_widening_factor=draw(choices([1, 2]), label="self_attention_widening_factor"),
        cross_attention_widening_factor=draw(choices([1, 2]), label="cross_attention_widening_factor"),
        use_query_residual=draw(choices([True, False]), label="use_query_residual"),
        # HF's default "gelu" about half the time, otherwise any supported activation.
        hidden_act=draw(st.one_of(st.just("gelu"), st.sampled_from(SUPPORTED_ACTIVATIONS))),
    )


def config_kinds(config: npp.PerceiverConfig) -> list[str]:
    """Labels of what makes ``config`` interesting, for ``hypothesis.event``."""
    cross, self_ = config.cross_attention, config.self_attention
    return [
        f"N {'>= 2' if config.num_latents >= 2 else '= 1'}",
        f"blocks x layers = {config.num_blocks} x {config.num_self_attends_per_block}",
        f"qk head width {'!=' if self_.qk_head_dim != self_.v_head_dim else '=='} v head width (self)",
        f"use_query_residual={config.use_query_residual}",
        f"Hs {'!=' if config.num_self_attention_heads != config.num_cross_attention_heads else '=='} Hc",
    ] + (["cross qk head width != v head width"] if cross.qk_head_dim != cross.v_head_dim else [])


# ---------------------------------------------------------------------------- models
def random_model(config: npp.PerceiverConfig, seed: int, sharpness: float = 1.0) -> npp.PerceiverModel:
    """A model with random weights drawn from ``np.random.default_rng(seed)``, loaded by HF key names.

    Unlike HF's initialisation (std 0.02, layernorms 1 and 0, which makes attention almost uniform and
    hides mask bugs), the latents are N(0, 1), Linear weights N(0, 2 / fan_in) so that attention scores
    are O(1), biases N(0, 0.25), layernorm weights N(1, 0.25) and biases N(0, 0.25). ``sharpness``
    multiplies every query and key weight: scores then grow like ``sharpness**2`` (large values test the
    softmax's stability).
    """
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in npp.param_shapes(config).items():
        if key == "embeddings.latents":
            value = rng.standard_normal(shape)
        elif ".layernorm" in key:
            value = (1.0 if key.endswith("weight") else 0.0) + 0.5 * rng.standard_normal(shape)
        elif key.endswith("bias"):
            value = 0.5 * rng.standard_normal(shape)
        else:  # Linear weight (out, in)
            value = rng.standard_normal(shape) * math.sqrt(2.0 / shape[1])
            if key.endswith(("query.weight", "key.weight")):
                value = value * sharpness
        state[key] = value.astype(np.float32)
    return npp.PerceiverModel.from_state_dict(config, state)


def seeds() -> st.SearchStrategy[int]:
    """Seeds for ``np.random.default_rng``."""
    return st.integers(0, 2**32 - 1)


def models(config: npp.PerceiverConfig, sharpness: st.SearchStrategy[float] = st.just(1.0)):
    """Strategy: :func:`random_model` for ``config`` with a drawn seed."""
    return st.builds(random_model, st.just(config), seeds(), sharpness)


# ---------------------------------------------------------------------------- inputs
def inputs_BMC(B: int, M: int, C: int, bound: float = 10.0) -> st.SearchStrategy[np.ndarray]:
    """float32 inputs of shape (B, M, C) with every value in [-bound, bound]."""
    return hnp.arrays(np.float32, (B, M, C), elements=st.floats(-bound, bound, width=32))


def generic_arrays(shape: tuple[int, ...], scale: float = 3.0, stream: int = 0) -> st.SearchStrategy[np.ndarray]:
    """float32 normal(0, scale) arrays of ``shape`` from a drawn seed: generic values, no ties.

    For comparisons with a float64 reference, and wherever a changed vector must be visible through
    LayerNorm. :func:`inputs_BMC` favours repeated values, and a (nearly) constant vector is where LayerNorm is
    ill-conditioned -- the float32 rounding of its mean is divided by ``sqrt(var + eps)``, i.e. amplified up to
    ``1/sqrt(1e-5)`` ~ 316 times, in HF as here -- or blind: a constant vector maps to exactly the bias.

    LayerNorm is blind to ``x -> a*x + b`` too, and hypothesis likes to draw the same seed twice: two arrays (or
    an array and :func:`random_model`'s weights) from one seed are proportional. ``stream=1`` draws from a
    stream independent of every ``stream=0`` array and model, whatever the seeds: use it for the *new* values
    of a change that must be visible.
    """
    def draw(seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed if stream == 0 else [stream, seed])
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    return seeds().map(draw)


@st.composite
def batched_cases(
    draw,
    min_batch: int = 1,
    min_inputs: int = 1,
    min_latents: int = 1,
    min_blocks: int = 1,
    min_d_model: int = 1,
    bound: float = 10.0,
    sharpness: st.SearchStrategy[float] = st.just(1.0),
    generic: bool = False,
):
    """(model, inputs (B, M, C)) for a drawn config, batch size and number of inputs.

    B >= 2 in two cases out of three (so masks can differ between rows). The inputs are :func:`inputs_BMC`
    (``bound``), or :func:`generic_arrays` with ``generic=True``.
    """
    config = draw(configs(min_latents=min_latents, min_blocks=min_blocks, min_d_model=min_d_model), label="config")
    model = draw(models(config, sharpness), label="model")
    B = draw(choices([2, 3, 1]) if min_batch <= 1 else st.integers(min_batch, MAX_BATCH), label="B")
    M = draw(st.integers(min_inputs, MAX_INPUTS), label="M")
    if generic:
        x = draw(generic_arrays((B, M, config.d_model)), label="inputs")
    else:
        x = draw(inputs_BMC(B, M, config.d_model, bound), label="inputs")
    return model, x


# ---------------------------------------------------------------------------- masks
KEEP_ALL, DROP_SOME, DROP_ALL = "keep all", "drop some", "drop all"


def keep_dtypes() -> st.SearchStrategy[type]:
    """The dtypes a 0/1 keep-mask may come in."""
    return st.sampled_from([np.bool_, np.int64, np.float32])


@st.composite
def keep_masks(
    draw, B: int, K: int, min_kept: int = 0, dtype: Optional[type] = None, partial_row: bool = False
) -> np.ndarray:
    """A (B, K) keep-mask of 0s and 1s (1 = keep) in a bool, int or float dtype.

    Each row is drawn by kind: it keeps every position, drops some (at least one 0 *and* one 1), or drops
    all -- the case whose softmax is uniform in HF, left out with ``min_kept=1`` (every row keeps at least
    one position). ``partial_row=True`` makes at least one row drop some and keep some (needs K >= 2).
    """
    kinds = [DROP_SOME, KEEP_ALL] + ([] if min_kept else [DROP_ALL])
    if K == 1:
        kinds.remove(DROP_SOME)
    weights = {DROP_SOME: 2, KEEP_ALL: 1, DROP_ALL: 1}
    row_kind = [draw(choices(kinds, [weights[k] for k in kinds]), label=f"row {b} kind") for b in range(B)]
    if partial_row and DROP_SOME not in row_kind:
        assert K >= 2, "a row that drops some and keeps some needs K >= 2"
        row_kind[draw(st.integers(0, B - 1), label="partial row")] = DROP_SOME
    mask = np.ones((B, K), np.bool_)
    for b, kind in enumerate(row_kind):
        if kind == DROP_ALL:
            mask[b] = False
        elif kind == DROP_SOME:
            mask[b] = draw(hnp.arrays(np.bool_, (K,)), label=f"row {b}")
            dropped, kept = draw(st.lists(st.integers(0, K - 1), min_size=2, max_size=2, unique=True))
            mask[b, dropped], mask[b, kept] = False, True
    dtype = dtype if dtype is not None else draw(keep_dtypes(), label="mask dtype")
    return mask.astype(dtype)


def row_kinds(keep: Optional[np.ndarray]) -> str:
    """Which kinds of rows a keep-mask holds ("none" when there is no mask), e.g. "drop some + keep all"."""
    if keep is None:
        return "none"
    keep = np.asarray(keep, bool)
    kinds = {KEEP_ALL if row.all() else DROP_ALL if not row.any() else DROP_SOME for row in keep}
    return " + ".join(sorted(kinds))


@st.composite
def head_masks(
    draw, L: int, H: int, two_d: Optional[bool] = None, zeros: Optional[bool] = None, read_rows: Optional[int] = None,
) -> np.ndarray:
    """A float32 ``head_mask`` of shape (H,) or (L, H).

    ``zeros=True``: at least one 0 (a silenced head); ``zeros=False``: none, but fractional weights in
    (0, 2] and at least one entry that is not 1 (HF accepts any multiplier); None: either. The guaranteed 0
    or non-1 entry lies in the first ``read_rows`` rows (default all): pass S, the rows the encoder reads. A
    2-D mask with L >= 2 has two rows that differ.
    """
    if two_d is None:
        two_d = draw(choices([False, True]), label="head_mask is 2-D")
    if zeros is None:
        zeros = draw(choices([True, False]), label="head_mask has zeros")
    shape = (L, H) if two_d else (H,)
    weights = st.floats(1 / 16, 2.0, width=32)  # fractional, never 0
    values = st.one_of(st.sampled_from([1.0, 0.0]), weights) if zeros else st.one_of(st.just(1.0), weights)
    mask = draw(hnp.arrays(np.float32, shape, elements=values), label="head_mask values")
    rows = (read_rows or L) if two_d else 1
    forced = (draw(st.integers(0, rows - 1)), draw(st.integers(0, H - 1))) if two_d else (draw(st.integers(0, H - 1)),)
    mask[forced] = 0.0 if zeros else draw(weights.filter(lambda w: w != 1.0), label="forced weight")
    if two_d and L >= 2 and np.all(mask == mask[:1]):  # make two rows differ
        r, h = draw(st.integers(1, L - 1)), draw(st.integers(0, H - 1))
        mask[r, h] = 0.5 if mask[r, h] != 0.5 else 1.0
    return mask


def head_mask_kind(head_mask: Optional[np.ndarray]) -> str:
    """What a head mask is, for ``hypothesis.event``: "none", or its shape and whether it has zeros."""
    if head_mask is None:
        return "none"
    kind = f"{head_mask.ndim}-D, {'with zeros' if np.any(head_mask == 0) else 'zero-free'}"
    if head_mask.ndim == 2 and len(head_mask) >= 2 and not np.all(head_mask == head_mask[:1]):
        kind += ", rows differ"
    return kind


CHUNK_KINDS = ("< M, not dividing M", "1", "< M, dividing M", "= M", "> M")
STREAMING_KINDS = CHUNK_KINDS[:3]  # the kinds that make the model stream (it does not when M <= chunk size)


@st.composite
def chunk_sizes(draw, M: int, kinds: tuple[str, ...] = CHUNK_KINDS) -> int:
    """A ``cross_attention_chunk_size`` for M inputs of one of ``kinds``: smaller than M and not dividing it, 1,
    smaller than M and dividing it, M, or more than M. With ``kinds=STREAMING_KINDS``, M must be at least 2."""
    possible = [k for k in kinds if _chunk_candidates(k, M)]
    kind = draw(choices(possible), label="chunk kind")
    return draw(st.sampled_from(_chunk_candidates(kind, M)), label="cross_attention_chunk_size")


def _chunk_candidates(kind: str, M: int) -> list[int]:
    if kind == "1":
        return [1] if M > 1 else []
    if kind == "< M, not dividing M":
        return [c for c in range(2, M) if M % c]
    if kind == "< M, dividing M":
        return [c for c in range(2, M) if M % c == 0]
    return [M] if kind == "= M" else [M + 1, 2 * M + 3]


def chunk_kind(chunk: Optional[int], M: int) -> str:
    """Which kind of chunk size ``chunk`` is for M inputs ("none" for the one-pass path)."""
    if chunk is None:
        return "none"
    return next(k for k in CHUNK_KINDS if chunk in _chunk_candidates(k, M))
