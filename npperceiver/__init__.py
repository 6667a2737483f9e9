"""npperceiver: the Perceiver encoder of HF transformers' ``PerceiverModel``, in NumPy alone.

Faithful to transformers 4.57.6 to float32 rounding -- masks, ``output_attentions`` and
``output_hidden_states`` included -- and written to be read beside HF's ``modeling_perceiver.py``.

>>> import numpy as np, npperceiver as npp
>>> config = npp.load_preset("small")
>>> model = npp.PerceiverModel.init(config, seed=0)
>>> out = model(np.zeros((2, 5, config.d_model), np.float32), attention_mask=[[1, 1, 1, 0, 0], [1] * 5])
>>> out.last_hidden_state.shape, out.last_hidden_state.dtype
((2, 16, 32), dtype('float32'))
"""

from .attention import (
    perceiver_attention, perceiver_attention_backward, perceiver_self_attention, perceiver_self_attention_backward,
    scaled_dot_product_attention, scaled_dot_product_attention_backward, streaming_cross_attention,
)
from .config import PerceiverConfig
from .encoder import EncoderOutput, latent_array, latent_array_backward, perceiver_encoder, perceiver_encoder_backward
from .functional import Dropout
from .layers import perceiver_layer, perceiver_layer_backward, perceiver_mlp, perceiver_mlp_backward
from .masks import MASK_MIN, get_head_mask, invert_attention_mask
from .model import PerceiverModel, PerceiverModelOutput
from .presets import available_presets, load_preset
from .dims import AttentionDims
from .weights import load_metadata, load_weights, param_shapes, save_weights
from .text import PerceiverForMaskedLM, PerceiverMaskedLMOutput, mlm_param_shapes
from .tokenizer import PerceiverTokenizer
from .optim import AdamW, clip_grad_norm, warmup_cosine_lr

__version__ = "0.2.0"

__all__ = [
    "MASK_MIN", "AttentionDims", "EncoderOutput", "PerceiverConfig", "PerceiverModel", "PerceiverModelOutput",
    "available_presets", "get_head_mask", "invert_attention_mask", "latent_array", "load_preset",
    "load_metadata", "load_weights", "param_shapes", "perceiver_attention", "perceiver_encoder", "perceiver_layer",
    "perceiver_mlp", "perceiver_self_attention", "save_weights", "scaled_dot_product_attention",
    "streaming_cross_attention",
    "__version__",
    "PerceiverForMaskedLM", "PerceiverMaskedLMOutput", "PerceiverTokenizer", "mlm_param_shapes",
    "AdamW", "Dropout", "clip_grad_norm", "warmup_cosine_lr", "latent_array_backward", "perceiver_attention_backward",
    "perceiver_encoder_backward", "perceiver_layer_backward", "perceiver_mlp_backward",
    "perceiver_self_attention_backward", "scaled_dot_product_attention_backward",
]
