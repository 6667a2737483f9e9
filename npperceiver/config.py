"""PerceiverConfig: the hyper-parameters of the Perceiver encoder, with HF's field names.

Mirrors ``transformers.PerceiverConfig`` (``configuration_perceiver.py``, transformers 4.57.6): the same
field names and defaults, so an HF ``config.json`` loads as it is. Unlike HF, every value is checked
here, once, when the config is built: a config that HF rejects *or* one that HF accepts but then crashes
on in ``forward`` (for example self-attention whose value width is not ``d_latents``) raises a
``ValueError`` naming the field, the value and the rule.

Keys of an HF ``config.json`` that do not concern the encoder (``image_size``, ``architectures``,
``transformers_version``, ...) are kept, untouched, in :attr:`PerceiverConfig.extras` so that
``from_dict(to_dict(c)) == c`` and nothing is lost on the way back to JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import reprlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np

from .dims import AttentionDims

#: Activations the MLP understands, by HF ``hidden_act`` name (``transformers.activations.ACT2FN``).
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")
#: The largest config file read: an HF ``config.json`` is a few KB (a few tens with label names).
MAX_CONFIG_BYTES = 1 << 20
#: How deeply :attr:`PerceiverConfig.extras` may nest (HF configs nest two or three levels).
MAX_EXTRAS_DEPTH = 100


@dataclass(frozen=True)
class PerceiverConfig:
    """Hyper-parameters of the Perceiver encoder (HF ``PerceiverConfig``; defaults are HF's).

    Dimension letters used throughout npperceiver are given in brackets.
    """

    num_latents: int = 256  # [N] rows of the latent array
    d_latents: int = 1280  # [D] width of each latent; q_dim of every encoder layer
    d_model: int = 768  # [C] width of each input (kv_dim of the cross-attention)
    num_blocks: int = 1  # how many times the *same* block of self-attention layers is applied
    num_self_attends_per_block: int = 26  # [S] distinct self-attention layers in that block
    num_self_attention_heads: int = 8  # [Hs]
    num_cross_attention_heads: int = 8  # [Hc]
    qk_channels: Optional[int] = None  # query/key width, shared by cross- and self-attention (None: derived)
    v_channels: Optional[int] = None  # value width, shared by cross- and self-attention (None: = qk width)
    cross_attention_shape_for_attention: str = "kv"  # qk width of the cross-attention when qk_channels is None:
    #                                                  "kv" -> d_model, "q" -> d_latents
    self_attention_widening_factor: int = 1  # self-attention MLP hidden width = factor * D
    cross_attention_widening_factor: int = 1  # cross-attention MLP hidden width = factor * D
    hidden_act: str = "gelu"  # MLP activation; "gelu" is the exact erf form
    attention_probs_dropout_prob: float = 0.1  # dropout on attention probabilities; training only, unused here
    initializer_range: float = 0.02  # std of the normal initialisation of weights and latents
    layer_norm_eps: float = 1e-12  # HF QUIRK: unused -- every LayerNorm uses torch's default eps 1e-5
    use_query_residual: bool = True  # residual around the *cross*-attention (self-attention always has one)
    vocab_size: int = 262  # text path only: byte vocabulary incl. 6 special tokens
    max_position_embeddings: int = 2048  # text path only: longest input, number of MLM output queries
    extras: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)  # other config.json keys

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        _normalise_numbers(self)  # numpy scalars (np.int64(16), np.float32(0.02)) -> Python int / float
        positive_ints = (
            "num_latents", "d_latents", "d_model", "num_blocks", "num_self_attends_per_block",
            "num_self_attention_heads", "num_cross_attention_heads", "self_attention_widening_factor",
            "cross_attention_widening_factor", "vocab_size", "max_position_embeddings",
        )
        for name in positive_ints:
            _check_positive_int(name, getattr(self, name))
        for name in ("qk_channels", "v_channels"):
            value = getattr(self, name)
            if value is not None:
                _check_positive_int(name, value, extra=" or None")
        if not isinstance(self.use_query_residual, bool):
            raise ValueError(f"use_query_residual must be a bool, got {_show(self.use_query_residual)}")
        if not _is_str_in(self.hidden_act, SUPPORTED_ACTIVATIONS):
            raise ValueError(
                f"hidden_act must be one of {', '.join(SUPPORTED_ACTIVATIONS)}, got {_show(self.hidden_act)}"
            )
        if not _is_str_in(self.cross_attention_shape_for_attention, ("q", "kv")):
            raise ValueError(
                "cross_attention_shape_for_attention must be 'q' or 'kv', "
                f"got {_show(self.cross_attention_shape_for_attention)}"
            )
        _check_real("attention_probs_dropout_prob", self.attention_probs_dropout_prob, 0.0, 1.0, hi_open=True)
        _check_real("initializer_range", self.initializer_range, 0.0, math.inf, hi_open=True)
        _check_real("layer_norm_eps", self.layer_norm_eps, 0.0, math.inf, lo_open=True, hi_open=True)
        _check_extras(self.extras)

        D = self.d_latents
        # HF PerceiverEncoder.__init__: both head counts must divide d_latents (even when the
        # cross-attention's qk width is d_model).
        for name in ("num_self_attention_heads", "num_cross_attention_heads"):
            heads = getattr(self, name)
            if D % heads:
                raise ValueError(f"d_latents ({D}) must be divisible by {name} ({heads})")
        # HF PerceiverSelfAttention.__init__: every qk / v width must split evenly over the heads.
        for dims, heads_field in ((self.cross_attention, "num_cross_attention_heads"),
                                  (self.self_attention, "num_self_attention_heads")):
            kind = "cross" if dims.is_cross else "self"
            for width, what in ((dims.qk_channels, "query/key"), (dims.v_channels, "value")):
                if width % dims.num_heads:
                    raise ValueError(
                        f"{kind}-attention {what} width {width} (from {_width_source(self, dims, what)}) "
                        f"must be divisible by {heads_field} ({dims.num_heads})"
                    )
        # HF accepts this at construction but crashes in forward: the self-attention output projection
        # maps v -> v and is then added to a residual of width d_latents.
        if self.self_attention.v_channels != D:
            raise ValueError(
                f"self-attention value width must equal d_latents ({D}), but v_channels={self.v_channels}, "
                f"qk_channels={self.qk_channels} resolve it to {self.self_attention.v_channels}; "
                f"set v_channels={D} (or leave both unset)"
            )

    # ------------------------------------------------------------------ derived sizes
    @property
    def cross_attention(self) -> AttentionDims:
        """Resolved widths of the encoder's cross-attention (HF ``PerceiverEncoder.cross_attention``).

        With ``qk_channels`` unset, the query/key width is ``d_model`` ("kv") or ``d_latents`` ("q");
        the value width is ``v_channels``, else the query/key width; the output maps back to ``d_latents``.
        """
        D, C = self.d_latents, self.d_model
        if self.qk_channels is None:
            qk = D if self.cross_attention_shape_for_attention == "q" else C
        else:
            qk = self.qk_channels
        v = self.v_channels if self.v_channels is not None else qk
        return AttentionDims(
            is_cross=True, num_heads=self.num_cross_attention_heads, q_dim=D, kv_dim=C,
            qk_channels=qk, v_channels=v, output_channels=D,
            widening_factor=self.cross_attention_widening_factor, use_query_residual=self.use_query_residual,
        )

    @property
    def self_attention(self) -> AttentionDims:
        """Resolved widths of every latent self-attention layer (HF ``PerceiverEncoder.self_attends[i]``).

        Query/key width ``qk_channels or d_latents``, value width ``v_channels or`` that; the output
        projection maps v -> v. Self-attention layers always keep their query residual: HF never passes
        ``use_query_residual`` to them, so its default ``True`` applies.
        """
        D = self.d_latents
        qk = self.qk_channels if self.qk_channels is not None else D
        v = self.v_channels if self.v_channels is not None else qk
        return AttentionDims(
            is_cross=False, num_heads=self.num_self_attention_heads, q_dim=D, kv_dim=D,
            qk_channels=qk, v_channels=v, output_channels=v,
            widening_factor=self.self_attention_widening_factor, use_query_residual=True,
        )

    @property
    def num_self_attention_layers(self) -> int:
        """[L] self-attention layers applied: ``num_blocks * num_self_attends_per_block``."""
        return self.num_blocks * self.num_self_attends_per_block

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "PerceiverConfig":
        """Build from a mapping such as an HF ``config.json``; unknown keys go to :attr:`extras`.

        A key ``"extras"`` (a mapping) is merged into :attr:`extras` too. Integers and floats may be Python
        or numpy numbers."""
        if not isinstance(config, Mapping):
            raise ValueError(f"config must be a mapping of field names to values, got {type(config).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extras"}
        known = {k: v for k, v in config.items() if k in names}
        given = config.get("extras", {})
        if not isinstance(given, Mapping):
            raise ValueError(f"extras must be a mapping (a JSON object) of other config keys, "
                             f"got {type(given).__name__}: {_show(given)}")
        extras = dict(given)
        extras.update({k: v for k, v in config.items() if k not in names and k != "extras"})
        return cls(**known, extras=extras)

    @classmethod
    def from_json(cls, path: "str | os.PathLike[str]") -> "PerceiverConfig":
        """Read a JSON file (an HF ``config.json`` works as it is).

        At most :data:`MAX_CONFIG_BYTES` are read, so a wrong path such as ``/dev/zero`` ends in an error,
        not in a full memory. A file that cannot be read, is not UTF-8, is not JSON (duplicate names
        included) or is not a valid config raises a ``ValueError`` naming the file."""
        where = os.fspath(path)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_CONFIG_BYTES + 1)
        except OSError as e:
            raise ValueError(f"cannot read {where}: {e.strerror or e}") from None
        if len(raw) > MAX_CONFIG_BYTES:
            raise ValueError(f"{where} is larger than {MAX_CONFIG_BYTES // 1024} KiB: a config is a small JSON file")
        try:
            text = raw.decode("utf-8-sig")  # a byte-order mark, as some editors write, is allowed
        except UnicodeDecodeError as e:
            raise ValueError(f"{where} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        try:
            data = parse_json(text)
        except ValueError as e:
            raise ValueError(f"{where} {e}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The fields (HF names) followed by the extra keys, ready for ``json.dump``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extras"}
        out.update(self.extras)
        return out

    def to_json(self, path: "str | os.PathLike[str] | None" = None) -> str:
        """Serialise to JSON text; also write it to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        return text


# ---------------------------------------------------------------------- JSON
def parse_json(text: str) -> Any:
    """``json.loads``, stricter: a name given twice in one object is an error (JSON parsers disagree on
    which one wins; Python keeps the last, silently), and so is nesting too deep to parse. The
    ``ValueError`` reads after the name of what was parsed: ``f"{path} {error}"``."""
    def no_duplicates(pairs: list) -> dict:
        out = {}
        for key, value in pairs:
            if key in out:
                raise _DuplicateName(f"names {_show(key)} twice in one object")
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise ValueError(f"is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except _DuplicateName as e:
        raise ValueError(str(e)) from None
    except RecursionError:
        raise ValueError("is not valid JSON: it is nested too deeply to be read") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise ValueError(f"is not valid JSON: {_clip(str(e))}") from None


class _DuplicateName(ValueError):
    """A JSON object naming one key twice."""


# ---------------------------------------------------------------------- helpers
def _show(value: Any) -> str:
    """``repr(value)`` for an error message, kept short: a config may hold a million-character string or
    lists nested thousands deep, and an error must stay one readable line."""
    return _clip(reprlib.repr(value), 80)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_str_in(value: Any, options: tuple) -> bool:
    return isinstance(value, str) and value in options


def _normalise_numbers(config: "PerceiverConfig") -> None:
    """Numpy integers and floats (``np.int64(16)``) become Python ``int`` / ``float``, numpy bools ``bool``:
    they are the numbers they say, and ``to_json`` can write them."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, (bool, str)) or value is None:
            continue
        if isinstance(value, np.bool_):  # not a numbers.Integral
            object.__setattr__(config, f.name, bool(value))
        elif isinstance(value, numbers.Integral):
            object.__setattr__(config, f.name, int(value))
        elif isinstance(value, numbers.Real):
            object.__setattr__(config, f.name, float(value))


def _check_positive_int(name: str, value: Any, extra: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a positive integer{extra}, got {_show(value)} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer{extra}, got {_show(value)}")


def _check_real(name: str, value: Any, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {_show(value)}")
    too_low = value <= lo if lo_open else value < lo
    too_high = value >= hi if hi_open else value > hi
    if too_low or too_high:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must lie in {interval}, got {_show(value)}")


def _check_extras(extras: Any) -> None:
    """:attr:`PerceiverConfig.extras`: a mapping with string keys that are not field names (``to_dict`` puts
    extras beside the fields, so such a key would overwrite one), nested at most MAX_EXTRAS_DEPTH deep."""
    if not isinstance(extras, Mapping):
        raise ValueError(f"extras must be a mapping, got {type(extras).__name__}")
    fields = {f.name for f in dataclasses.fields(PerceiverConfig)}
    for key in extras:
        if not isinstance(key, str):
            raise ValueError(f"extras' keys must be strings (JSON names), got {_show(key)}")
        if key in fields:
            raise ValueError(f"extras must not hold {key!r}, a field of the config: set the field itself")
    stack = [(extras, 1)]  # depth-first, without recursion: nesting cannot exhaust the stack
    while stack:
        value, depth = stack.pop()
        if depth > MAX_EXTRAS_DEPTH:
            raise ValueError(f"extras are nested more than {MAX_EXTRAS_DEPTH} levels deep")
        children = value.values() if isinstance(value, Mapping) else value if isinstance(value, (list, tuple)) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (Mapping, list, tuple)))


def _width_source(config: PerceiverConfig, dims: AttentionDims, what: str) -> str:
    """Say which config field a resolved attention width came from, for error messages."""
    if what == "value" and config.v_channels is not None:
        return "v_channels"
    if config.qk_channels is not None:
        return "qk_channels"
    if dims.is_cross:
        return "d_model" if config.cross_attention_shape_for_attention == "kv" else "d_latents"
    return "d_latents"
