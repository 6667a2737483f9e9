"""Parameters: HF state-dict names <-> nested dicts, random init, and weight files.

The one key map of npperceiver. A ``PerceiverModel`` state dict in HF transformers has exactly the keys
of :func:`param_shapes` (``PerceiverForMaskedLM`` puts ``perceiver.`` in front). Parameters are kept as
nested dicts whose paths *are* those keys split on ``"."``, with lists for ``self_attends.{i}``::

    params["encoder"]["self_attends"][0]["attention"]["self"]["query"]["weight"]
        <-> "encoder.self_attends.0.attention.self.query.weight"

Linear weights keep torch's (out, in) layout, so no tensor is transposed on the way in or out.

Weight files: ``.npz`` (numpy) and ``.safetensors``, read and written here with numpy alone (the format
is an 8-byte header length, a JSON header, then raw little-endian tensors).
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import numpy as np

from .dims import AttentionDims

if TYPE_CHECKING:  # pragma: no cover
    from .config import PerceiverConfig

PREFIX = "perceiver."  # what PerceiverForMaskedLM & co. put before the PerceiverModel keys


# ---------------------------------------------------------------------------- the key map
def layer_param_shapes(prefix: str, dims: AttentionDims) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of one HF ``PerceiverLayer`` whose keys start with ``prefix`` (encoder or decoder)."""
    q, kv, qk, v, out, hid = (dims.q_dim, dims.kv_dim, dims.qk_channels, dims.v_channels,
                              dims.output_channels, dims.mlp_hidden)
    s = f"{prefix}.attention.self"
    shapes = {f"{s}.layernorm1.weight": (q,), f"{s}.layernorm1.bias": (q,)}
    if dims.is_cross:  # self-attention's layernorm2 is nn.Identity: no parameters
        shapes.update({f"{s}.layernorm2.weight": (kv,), f"{s}.layernorm2.bias": (kv,)})
    shapes.update({
        f"{s}.query.weight": (qk, q), f"{s}.query.bias": (qk,),
        f"{s}.key.weight": (qk, kv), f"{s}.key.bias": (qk,),
        f"{s}.value.weight": (v, kv), f"{s}.value.bias": (v,),
        f"{prefix}.attention.output.dense.weight": (out, v), f"{prefix}.attention.output.dense.bias": (out,),
        f"{prefix}.layernorm.weight": (q,), f"{prefix}.layernorm.bias": (q,),
        f"{prefix}.mlp.dense1.weight": (hid, q), f"{prefix}.mlp.dense1.bias": (hid,),
        f"{prefix}.mlp.dense2.weight": (q, hid), f"{prefix}.mlp.dense2.bias": (q,),
    })
    return shapes


def param_shapes(config: "PerceiverConfig") -> dict[str, tuple[int, ...]]:
    """Every parameter of HF ``PerceiverModel(config)`` (no preprocessor), by state-dict key, in HF order."""
    shapes: dict[str, tuple[int, ...]] = {"embeddings.latents": (config.num_latents, config.d_latents)}
    shapes.update(layer_param_shapes("encoder.cross_attention", config.cross_attention))
    for i in range(config.num_self_attends_per_block):
        shapes.update(layer_param_shapes(f"encoder.self_attends.{i}", config.self_attention))
    return shapes


# ---------------------------------------------------------------------------- nested <-> flat
def unflatten(flat: Mapping[str, np.ndarray]) -> dict:
    """``{"a.b.0.c": x}`` -> ``{"a": {"b": [{"c": x}]}}`` (numeric path parts become list indices)."""
    root: dict = {}
    for key, value in flat.items():
        node: Any = root
        parts = key.split(".")
        for part, nxt in zip(parts[:-1], parts[1:]):
            child = [] if nxt.isdigit() else {}
            if isinstance(node, list):
                idx = int(part)
                while len(node) <= idx:
                    node.append(None)
                if node[idx] is None:
                    node[idx] = child
                node = node[idx]
            else:
                node = node.setdefault(part, child)
        node[parts[-1]] = value
    return root


def flatten(params: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
    """Inverse of :func:`unflatten`: yields ``(dotted key, array)``."""
    for name, value in params.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            yield from flatten(value, key + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield from flatten(item, f"{key}.{i}.")
        else:
            yield key, value


# ---------------------------------------------------------------------------- init and loading
def init_params(
    config: "PerceiverConfig", rng: np.random.Generator, shapes: "Mapping[str, tuple[int, ...]] | None" = None
) -> dict:
    """HF ``PerceiverPreTrainedModel._init_weights``: latents and Linear weights ~ N(0, initializer_range),
    Linear biases 0, LayerNorm weight 1 and bias 0. All float32.

    ``shapes`` (default :func:`param_shapes`) lets a task model with more parameters use the same rules
    (embeddings and position encodings ~ N(0, initializer_range), other biases 0)."""
    std = np.float32(config.initializer_range)
    flat = {}
    for key, shape in (param_shapes(config) if shapes is None else shapes).items():
        if ".layernorm" in key:
            flat[key] = np.ones(shape, np.float32) if key.endswith("weight") else np.zeros(shape, np.float32)
        elif key.endswith("bias"):
            flat[key] = np.zeros(shape, np.float32)
        else:  # Linear weights and the latent array
            flat[key] = rng.standard_normal(shape, dtype=np.float32) * std
    return unflatten(flat)


def params_from_state_dict(
    config: "PerceiverConfig", state_dict: Mapping[str, Any], strict: bool = True
) -> dict:
    """Check an HF state dict against :func:`param_shapes` and turn it into float32 nested params.

    Keys may carry the ``perceiver.`` prefix of HF's task models. With ``strict`` (the default) any
    unexpected key is an error; ``strict=False`` ignores them (e.g. an MLM checkpoint's decoder).
    Missing keys and wrong shapes are always errors. Arrays are copied, so the model owns its weights.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"state_dict must be a mapping of names to arrays, got {type(state_dict).__name__}")
    if any(k.startswith(PREFIX) for k in state_dict):
        state_dict = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in state_dict.items()}
    return params_from_shapes(param_shapes(config), state_dict, strict=strict)


def params_from_shapes(
    expected: Mapping[str, tuple[int, ...]], state_dict: Mapping[str, Any], strict: bool = True
) -> dict:
    """Check a state dict against ``{key: shape}`` (keys used as they are) and return float32 nested params."""
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"state_dict must be a mapping of names to arrays, got {type(state_dict).__name__}")
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    flat, wrong = {}, []
    for key, shape in expected.items():
        if key in state_dict:
            arr = np.array(state_dict[key], dtype=np.float32)  # a copy, float32
            if arr.shape != shape:
                wrong.append(f"{key}: expected {shape}, got {arr.shape}")
            flat[key] = arr
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {', '.join(missing)}")
    if unexpected and strict:
        problems.append(f"unexpected {len(unexpected)} key(s) (pass strict=False to ignore them): "
                        f"{', '.join(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} wrongly shaped tensor(s): {'; '.join(wrong)}")
    if problems:
        raise ValueError("state_dict does not match the config: " + " | ".join(problems))
    return unflatten(flat)


# ---------------------------------------------------------------------------- weight files
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
              "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def load_weights(path: "str | os.PathLike[str]") -> dict[str, np.ndarray]:
    """Read a weight file into ``{name: array}``: ``.npz`` or ``.safetensors`` (bf16 becomes float32)."""
    path = os.fspath(path)
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # a damaged zip is not an OSError
            if not os.path.exists(path):
                raise ValueError(f"weight file {path} does not exist") from None
            raise ValueError(f"{path} is not a readable .npz file: {e}") from None
    if path.endswith(".safetensors"):
        return _load_safetensors(path)
    raise ValueError(f"weight file {path} must end in .npz or .safetensors")


def save_weights(path: "str | os.PathLike[str]", state_dict: Mapping[str, np.ndarray]) -> None:
    """Write ``{name: array}`` to ``.npz`` or ``.safetensors`` (chosen by the extension)."""
    path = os.fspath(path)
    arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
    if path.endswith(".npz"):
        with open(path, "wb") as f:  # np.savez would append ".npz" to other names; a file object avoids it
            np.savez(f, **arrays)
    elif path.endswith(".safetensors"):
        _save_safetensors(path, arrays)
    else:
        raise ValueError(f"weight file {path} must end in .npz or .safetensors")


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"cannot read weight file {path}: {e.strerror}") from None
    try:
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        data = memoryview(raw)[8 + n:]
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            shape = tuple(info["shape"])
            if info["dtype"] == "BF16":  # bfloat16 is the top half of a float32
                bits = np.frombuffer(data[start:end], dtype="<u2").astype(np.uint32) << 16
                out[name] = bits.view(np.float32).reshape(shape)
            else:
                dtype = np.dtype(_ST_DTYPES[info["dtype"]]).newbyteorder("<")
                out[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(shape).copy()
        return out
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a valid .safetensors file ({type(e).__name__}: {e})") from None


def _save_safetensors(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    names = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
    header: dict[str, Any] = {}
    offset, blobs = 0, []
    for name, arr in arrays.items():
        if arr.dtype not in names:
            raise ValueError(f"cannot store {name} of dtype {arr.dtype} in .safetensors")
        blob = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": names[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for blob in blobs:
            f.write(blob)

