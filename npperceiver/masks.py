"""The three masks: checking them, and turning them into what the attention layers add or multiply.

What each one does, as HF transformers 4.57.6 does it (``modeling_perceiver.py`` and ``modeling_utils.py``):

``attention_mask`` -- shape (B, M), 1 = keep an *input*, 0 = drop it.
    ``PerceiverModel.forward`` inverts it with :func:`invert_attention_mask` into the additive
    ``inputs_mask`` (B, 1, 1, M): 0 where kept, ``finfo(float32).min`` where dropped. It is added to the
    scores of the **cross-attention only**. A row with every input dropped has every score equal to
    that minimum, so its softmax is uniform over all M inputs (padding included), never NaN.

``latent_mask`` -- shape (B, N), 1 = keep a *latent* (npperceiver's name; HF has no model-level one).
    Inverted the same way into (B, 1, 1, N) and passed as the encoder's additive ``attention_mask``,
    which HF adds in **every latent self-attention layer** and which the cross-attention ignores.
    ``PerceiverModel`` in HF always passes ``attention_mask=None`` to its encoder, so this path is only
    reachable in HF by calling ``PerceiverEncoder`` directly.

``head_mask`` -- shape (Hs,) or (L, Hs) with L = num_blocks * num_self_attends_per_block.
    :func:`get_head_mask` turns it into (L, 1, Hs, 1, 1); the encoder multiplies the self-attention
    probabilities of layer ``i`` *within the block* by row ``i`` -- in every block. HF QUIRK: rows
    S..L-1 are never read. It never reaches the cross-attention. Removed in transformers 5.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

#: The additive "minus infinity" HF uses: finite, so an all-masked row stays uniform instead of NaN.
MASK_MIN = np.finfo(np.float32).min


def check_keep_mask(mask: object, name: str, expected_shape: tuple[int, int], dims: str) -> np.ndarray:
    """Validate a 0/1 keep-mask and return it as float32.

    Accepts bool arrays or numeric arrays whose entries are exactly 0 or 1 (the only values on which
    transformers 4 and 5 agree); anything else is a ``ValueError`` naming ``name`` and the expected shape.
    """
    arr = np.asarray(mask)
    if arr.shape != tuple(expected_shape):
        raise ValueError(
            f"{name} must have shape {dims} = {tuple(expected_shape)}, got {arr.shape}"
        )
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be a bool or numeric 0/1 array, got dtype {arr.dtype}")
    if not np.all((arr == 0) | (arr == 1)):
        bad = arr[(arr != 0) & (arr != 1)].ravel()[0]
        raise ValueError(f"{name} must contain only 0 and 1 (1 = keep), found {bad!r}")
    return arr.astype(np.float32)


def invert_attention_mask(mask: np.ndarray) -> np.ndarray:
    """HF ``ModuleUtilsMixin.invert_attention_mask``: keep-mask (B, K) -> additive bias (B, 1, 1, K).

    ``(1 - mask) * finfo(float32).min``: 0 where kept, float32's minimum where dropped.
    """
    mask = mask.astype(np.float32, copy=False)
    return (np.float32(1.0) - mask[:, None, None, :]) * MASK_MIN  # (B, K) -> (B, 1, 1, K)


def get_head_mask(head_mask: Optional[object], num_heads: int, num_hidden_layers: int) -> Optional[np.ndarray]:
    """HF ``ModuleUtilsMixin.get_head_mask``: (Hs,) or (L, Hs) -> float32 (L, 1, Hs, 1, 1), or None.

    A 1-D mask is the same for every layer. Each row ``head_mask[i]`` has shape (1, Hs, 1, 1) and
    broadcasts against attention probabilities (B, Hs, N, N). Values are multipliers: 1 keeps a head,
    0 silences it, anything else scales it (as in HF).
    """
    if head_mask is None:
        return None
    arr = np.asarray(head_mask)
    L, H = num_hidden_layers, num_heads
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(f"head_mask must be numeric, got dtype {arr.dtype}")
    if arr.shape == (H,):
        arr = np.broadcast_to(arr[None, None, :, None, None], (L, 1, H, 1, 1))  # (Hs,) -> (L, 1, Hs, 1, 1)
    elif arr.shape == (L, H):
        arr = arr[:, None, :, None, None]  # (L, Hs) -> (L, 1, Hs, 1, 1)
    else:
        raise ValueError(
            f"head_mask must have shape (Hs,) = ({H},) or (L, Hs) = ({L}, {H}) with "
            f"L = num_blocks * num_self_attends_per_block, got {arr.shape}"
        )
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError("head_mask must contain only finite values")
    return arr
