"""Helpers for the parity tests: build an HF transformers ``PerceiverModel`` and its npperceiver twin with
the same random weights, run HF the way ``PerceiverModel.forward`` (transformers 4.57.6) does, and compare
outputs.

Imported only by ``test_parity.py``, after it has checked that torch and transformers 4.57.x are present.
Everything is deterministic: weights and inputs come from ``np.random.default_rng`` seeded from names.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np
import torch
from transformers import PerceiverConfig as HFConfig
from transformers import PerceiverModel as HFModel

import npperceiver

#: Parity criterion: max |npperceiver - HF| <= RTOL * max(1, max |HF|), per tensor.
RTOL = 1e-5

OUTPUT_FIELDS = ("last_hidden_state", "hidden_states", "attentions", "cross_attentions")


def seed_of(*names: object) -> int:
    """A stable seed from names (``hash()`` is salted per process; crc32 is not)."""
    return zlib.crc32("/".join(map(str, names)).encode())


# ---------------------------------------------------------------------------- weights
def randomize_(module: torch.nn.Module, rng: np.random.Generator) -> None:
    """Overwrite every parameter of ``module`` (in place) with random values that exercise everything.

    * LayerNorm weights ~ 1 + 0.3 N(0, 1) and biases ~ 0.2 N(0, 1), so neither is the identity;
    * Linear weights ~ N(0, 1/fan_in), so each projection keeps activations O(1); query and key weights
      get a gain of 1.5 so that attention scores have a spread of a few units -- attention is far from
      uniform but not one-hot;
    * Linear biases ~ 0.1 N(0, 1); anything else (the latent array, embeddings) ~ N(0, 1).
    """
    with torch.no_grad():
        for name, p in module.named_parameters():
            shape = tuple(p.shape)
            if ".layernorm" in name or name.startswith("layernorm"):
                base = 1.0 if name.endswith("weight") else 0.0
                scale = 0.3 if name.endswith("weight") else 0.2
                value = base + scale * rng.standard_normal(shape)
            elif len(shape) == 2 and name.endswith(".weight") and "embeddings" not in name:
                gain = 1.5 if name.endswith(("query.weight", "key.weight")) else 1.0
                value = rng.standard_normal(shape) * (gain / np.sqrt(shape[1]))
            elif name.endswith(".bias"):
                value = 0.1 * rng.standard_normal(shape)
            else:  # embeddings.latents, position / token embeddings
                value = rng.standard_normal(shape)
            p.copy_(torch.from_numpy(value.astype(np.float32)))


def numpy_state_dict(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """``{key: v.detach().numpy()}`` of an HF module's state dict, in its order."""
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


@dataclass
class Pair:
    """An HF model (eval mode) and the npperceiver model loaded from its weights."""

    name: str
    hf: HFModel
    np: npperceiver.PerceiverModel

    @property
    def config(self) -> npperceiver.PerceiverConfig:
        return self.np.config


def build_pair(name: str, cfg: Mapping[str, Any]) -> Pair:
    """``HFModel(HFConfig(**cfg)).eval()`` with randomized weights, and its npperceiver twin."""
    torch.manual_seed(seed_of("torch", name))  # HF's own init draws from torch's global generator
    hf = HFModel(HFConfig(**cfg)).eval()
    randomize_(hf, np.random.default_rng(seed_of("weights", name)))
    config = npperceiver.PerceiverConfig.from_dict(dict(cfg))
    model = npperceiver.PerceiverModel.from_state_dict(config, numpy_state_dict(hf))
    return Pair(name, hf, model)


# ---------------------------------------------------------------------------- HF calls
def to_torch(a: Optional[np.ndarray]) -> Optional[torch.Tensor]:
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


def hf_model_call(hf: HFModel, x: np.ndarray, attention_mask=None, head_mask=None,
                  output_attentions=False, output_hidden_states=False) -> dict[str, Any]:
    """HF ``PerceiverModel.forward`` (no latent mask exists at this level)."""
    with torch.no_grad():
        out = hf(inputs=to_torch(x), attention_mask=to_torch(attention_mask), head_mask=to_torch(head_mask),
                 output_attentions=output_attentions, output_hidden_states=output_hidden_states)
    return {f: getattr(out, f) for f in OUTPUT_FIELDS}


def hf_encoder_masks(hf: HFModel, batch: int, num_inputs: int, attention_mask=None, latent_mask=None,
                     head_mask=None) -> dict[str, Any]:
    """The tensors HF's ``PerceiverEncoder.forward`` receives, built as ``PerceiverModel.forward`` builds
    them, plus the additive latent mask ``(1 - m) * finfo(float32).min`` of shape (B, 1, 1, N)."""
    cfg = hf.config
    am = torch.ones((batch, num_inputs)) if attention_mask is None else to_torch(attention_mask)
    with torch.no_grad():
        inputs_mask = hf.invert_attention_mask(am)  # (B, 1, 1, M)
        latent_bias = None
        if latent_mask is not None:
            keep = to_torch(latent_mask).to(torch.float32)
            latent_bias = (1.0 - keep[:, None, None, :]) * torch.finfo(torch.float32).min  # (B, 1, 1, N)
        hm = hf.get_head_mask(to_torch(head_mask), cfg.num_blocks * cfg.num_self_attends_per_block)
    return {"attention_mask": latent_bias, "inputs_mask": inputs_mask, "head_mask": hm}


def hf_encoder_call(hf: HFModel, x: np.ndarray, masks: Mapping[str, Any]) -> dict[str, Any]:
    """HF ``PerceiverEncoder.forward`` called directly on the latent array, every output on."""
    with torch.no_grad():
        out = hf.encoder(hf.embeddings(batch_size=x.shape[0]), attention_mask=masks["attention_mask"],
                         head_mask=masks["head_mask"], inputs=to_torch(x), inputs_mask=masks["inputs_mask"],
                         output_attentions=True, output_hidden_states=True)
    return {f: getattr(out, f) for f in OUTPUT_FIELDS}


# ---------------------------------------------------------------------------- comparison
def rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max(1, max |ref|)."""
    ref = np.asarray(ref, dtype=np.float64)
    diff = np.max(np.abs(np.asarray(ours, dtype=np.float64) - ref)) if ref.size else 0.0
    scale = max(1.0, float(np.max(np.abs(ref))) if ref.size else 0.0)
    return float(diff) / scale


def compare_outputs(hf_out: Mapping[str, Any], np_out: Any, where: str, rtol: float = RTOL,
                    fields: tuple[str, ...] = OUTPUT_FIELDS, single: tuple[str, ...] = ("last_hidden_state",)) -> float:
    """Compare every output field, entry by entry; return the worst relative error.

    Checks, for each of ``fields`` (by default ``last_hidden_state``, ``hidden_states``, ``attentions``,
    ``cross_attentions``; ``single`` names those that are one tensor, not a tuple): presence (None on one
    side only fails), tuple length, shape, float32 dtype, finiteness and
    ``max |ours - HF| <= rtol * max(1, max |HF|)``. Failures name ``where``, the field and the entry.
    """
    worst = 0.0
    problems = []
    for field in fields:
        ref, ours = hf_out.get(field), getattr(np_out, field)  # HF drops None fields from its mapping
        if ref is None or ours is None:
            if (ref is None) != (ours is None):
                problems.append(f"{field}: HF gives {'None' if ref is None else type(ref).__name__}, "
                                f"npperceiver gives {'None' if ours is None else type(ours).__name__}")
            continue
        if field in single:
            pairs = [("", ref, ours)]
        else:
            if len(ref) != len(ours):
                problems.append(f"{field}: HF has {len(ref)} entries, npperceiver {len(ours)}")
                continue
            pairs = [(f"[{i}]", r, o) for i, (r, o) in enumerate(zip(ref, ours))]
        for idx, r, o in pairs:
            r, o = r.detach().numpy(), np.asarray(o) if np.isscalar(o) else o
            label = f"{field}{idx}"
            if not isinstance(o, np.ndarray) or o.shape != r.shape:
                problems.append(f"{label}: shape {getattr(o, 'shape', type(o).__name__)}, HF {r.shape}")
                continue
            if o.dtype != np.float32:
                problems.append(f"{label}: dtype {o.dtype}, expected float32")
            if not np.all(np.isfinite(o)):
                problems.append(f"{label}: {int(np.sum(~np.isfinite(o)))} non-finite values")
                continue
            err = rel_error(o, r)
            worst = max(worst, err)
            if not err <= rtol:
                problems.append(f"{label}: relative error {err:.3g} > {rtol:g} "
                                f"(max |HF| = {float(np.max(np.abs(r))):.3g})")
    if problems:
        raise AssertionError(f"{where}: outputs differ from HF:\n  " + "\n  ".join(problems))
    return worst
