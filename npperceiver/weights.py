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
import math
import os
import reprlib
import stat
import struct
import zipfile
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator, Mapping

import numpy as np

from .config import parse_json
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
    (embeddings and position encodings ~ N(0, initializer_range), other biases 0). A config whose
    parameters would not fit in this machine's memory is refused before anything is allocated
    (:func:`check_param_memory`)."""
    shapes = param_shapes(config) if shapes is None else shapes
    check_param_memory(shapes)
    std = np.float32(config.initializer_range)
    flat = {}
    for key, shape in shapes.items():
        if ".layernorm" in key:
            flat[key] = np.ones(shape, np.float32) if key.endswith("weight") else np.zeros(shape, np.float32)
        elif key.endswith("bias"):
            flat[key] = np.zeros(shape, np.float32)
        else:  # Linear weights and the latent array
            flat[key] = rng.standard_normal(shape, dtype=np.float32) * std
    return unflatten(flat)


def check_param_memory(shapes: Mapping[str, tuple[int, ...]], limit: "int | None" = None) -> None:
    """Refuse parameters of ``shapes`` that would take more than ``limit`` bytes as float32 (default: this
    machine's physical memory), *before* allocating them, with an error saying how big they would be.

    A typo such as ``num_latents=10**12`` would otherwise end in a ``MemoryError`` or a long swap."""
    counts = {key: math.prod(shape) for key, shape in shapes.items()}
    total = 4 * sum(counts.values())  # float32
    limit = _physical_memory() if limit is None else limit
    if limit is not None and total > limit:
        biggest = max(counts, key=counts.__getitem__)
        raise ValueError(
            f"the parameters of this config would take {format_bytes(total)} ({total // 4:,} float32 values; "
            f"the largest, {biggest} of shape {shapes[biggest]}, alone {format_bytes(4 * counts[biggest])}), "
            f"more than the {format_bytes(limit)} of memory this machine has; check the config's sizes"
        )


def _physical_memory() -> "int | None":
    """Bytes of physical memory, or None where the system does not say (then nothing is refused)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - Windows has no sysconf
        return None


def format_bytes(n: int) -> str:
    """``3.6 TiB``: a byte count for people (binary units)."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,} bytes" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def params_from_state_dict(
    config: "PerceiverConfig", state_dict: Mapping[str, Any], strict: bool = True
) -> dict:
    """Check an HF state dict against :func:`param_shapes` and turn it into float32 nested params.

    Keys may carry the ``perceiver.`` prefix of HF's task models. With ``strict`` (the default) any
    unexpected key is an error; ``strict=False`` ignores them (e.g. an MLM checkpoint's decoder).
    Missing keys, wrong shapes and values that are not finite real numbers are always errors. Arrays are
    copied, so the model owns its weights.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"state_dict must be a mapping of names to arrays, got {type(state_dict).__name__}")
    if any(isinstance(k, str) and k.startswith(PREFIX) for k in state_dict):
        state_dict = {k[len(PREFIX):] if isinstance(k, str) and k.startswith(PREFIX) else k: v
                      for k, v in state_dict.items()}
    return params_from_shapes(param_shapes(config), state_dict, strict=strict)


def params_from_shapes(
    expected: Mapping[str, tuple[int, ...]], state_dict: Mapping[str, Any], strict: bool = True
) -> dict:
    """Check a state dict against ``{key: shape}`` (keys used as they are) and return float32 nested params.

    Every expected tensor must be there, have its shape, hold real numbers (integers or floats: not complex,
    not strings, not objects) and be finite once in float32 (no NaN, no inf; a float64 beyond float32's
    range becomes inf and is refused too). All problems are reported at once, in one ``ValueError``.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"state_dict must be a mapping of names to arrays, got {type(state_dict).__name__}")
    missing = [k for k in expected if k not in state_dict]
    unexpected = [str(k) for k in state_dict if k not in expected]
    flat, wrong, not_numbers, not_finite = {}, [], [], []
    for key, shape in expected.items():
        if key not in state_dict:
            continue
        arr, problem = _real_array(state_dict[key])
        if problem:
            not_numbers.append(f"{key}: {problem}")
        elif arr.shape != shape:
            wrong.append(f"{key}: expected {shape}, got {arr.shape}")
        else:
            with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, reported below
                arr = arr.astype(np.float32)  # a copy, float32
            bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
            if bad:
                not_finite.append(f"{key}: {bad:,} of {arr.size:,} values")
            flat[key] = arr
    problems = []  # every problem, every key (each name cut to 200 characters: names come from files)
    if missing:
        problems.append(f"missing {len(missing)} key(s): {', '.join(missing)}")
    if unexpected and strict:
        problems.append(f"unexpected {len(unexpected)} key(s) (pass strict=False to ignore them): "
                        f"{', '.join(_clip(k) for k in unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} wrongly shaped tensor(s): {'; '.join(wrong)}")
    if not_numbers:
        problems.append(f"{len(not_numbers)} tensor(s) not of real numbers: {'; '.join(not_numbers)}")
    if not_finite:
        problems.append(f"{len(not_finite)} tensor(s) with NaN or infinite values (as float32): "
                        f"{'; '.join(not_finite)}")
    if problems:
        raise ValueError("state_dict does not match the config: " + " | ".join(problems))
    return unflatten(flat)


def _real_array(value: Any) -> "tuple[np.ndarray | None, str]":
    """``value`` as a numpy array of real numbers, or ``(None, what is wrong)``."""
    try:
        arr = np.asarray(value)
    except Exception as e:  # noqa: BLE001 - torch tensors numpy cannot see (grad, sparse, meta, GPU) raise many kinds
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return None, f"cannot be read as an array ({type(e).__name__}: {first})"
    if arr.dtype.kind not in _REAL_KINDS:
        return None, f"dtype {arr.dtype} ({_KIND_NAMES.get(arr.dtype.kind, 'not a number')})"
    return arr, ""


# ---------------------------------------------------------------------------- weight files
#: numpy kinds a weight may have: bool, signed and unsigned integers, floats.
_REAL_KINDS = "biuf"
_KIND_NAMES = {"c": "complex: the imaginary part would be lost", "U": "text, not numbers",
               "S": "bytes, not numbers", "O": "Python objects", "V": "raw or structured records",
               "M": "dates", "m": "time spans"}
#: safetensors dtype names npperceiver reads and writes, with their numpy types (BF16 is read as float32).
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
              "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_ST_ITEMSIZE = {**{name: np.dtype(t).itemsize for name, t in _ST_DTYPES.items()}, "BF16": 2}
#: The longest safetensors header read (the safetensors library's own limit, 100 MB).
MAX_SAFETENSORS_HEADER = 100_000_000
#: How much an .npz member may grow when inflated: deflate cannot do better than about 1032 : 1, so a member
#: claiming more is lying about its size (a "zip bomb" declaring a huge array in a small file).
MAX_DEFLATE_RATIO = 1100


def load_weights(path: "str | os.PathLike[str]") -> dict[str, np.ndarray]:
    """Read a weight file into ``{name: array}``: ``.npz`` or ``.safetensors`` (bf16 becomes float32).

    The file is validated before any array is made, and anything malformed is a ``ValueError`` naming the
    file and, where there is one, the tensor: it must be a regular file (not a folder, a device such as
    /dev/zero, or a pipe); every declared array must fit, byte for byte, in the data the file holds (so a
    small file cannot make npperceiver allocate a huge array); and every tensor must hold numbers (bool,
    integers or floats: complex, text and object arrays are refused). For ``.safetensors``, exactly what
    the format promises: an 8-byte little-endian header length, a JSON object header (no duplicate names)
    whose entries have exactly ``dtype``, ``shape`` and ``data_offsets``, offsets that are non-negative,
    ordered, non-overlapping and together cover the data, each matching dtype x shape, and an optional
    ``__metadata__`` of strings. For ``.npz``, a zip of ``.npy`` members whose headers are checked
    against the members' sizes (a single ``.npy`` file named ``.npz`` is recognised and refused).
    """
    path = os.fspath(path)
    if not path.endswith((".npz", ".safetensors")):
        raise ValueError(f"weight file {path} must end in .npz or .safetensors")
    size = _regular_file_size(path)
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size != size:
                raise ValueError(f"weight file {path} changed while it was being read")
            return _read_npz(f, path, size) if path.endswith(".npz") else _read_safetensors(f, path, size)
    except OSError as e:
        raise ValueError(f"cannot read weight file {path}: {e.strerror or e}") from None
    except MemoryError:
        raise ValueError(f"weight file {path} ({format_bytes(size)}) does not fit in memory") from None


def _regular_file_size(path: str) -> int:
    """The size of the regular file at ``path`` (after symlinks); a ``ValueError`` for anything else."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"weight file {path} does not exist") from None
    except OSError as e:
        raise ValueError(f"cannot read weight file {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"weight file {path} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"weight file {path} is not a regular file (a device, pipe or socket): "
                         "weights are read from a file of known size")
    return st.st_size


def save_weights(
    path: "str | os.PathLike[str]", state_dict: Mapping[str, np.ndarray], metadata: "Mapping[str, str] | None" = None,
) -> None:
    """Write ``{name: array}`` to ``.npz`` or ``.safetensors`` (chosen by the extension).

    Names must be strings; arrays must hold numbers (bool, integers, floats; ``.safetensors`` takes the
    dtypes of ``_ST_DTYPES``). ``.safetensors`` reserves the name ``__metadata__``, so a tensor of that name
    is refused rather than written where every reader would skip it. ``metadata`` (strings to strings) goes
    there instead, where :func:`load_metadata` finds it (``.npz`` has no place for it: a ``ValueError``).
    """
    path = os.fspath(path)
    if not path.endswith((".npz", ".safetensors")):
        raise ValueError(f"weight file {path} must end in .npz or .safetensors")
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError("metadata must map strings to strings")
    if metadata and path.endswith(".npz"):
        raise ValueError(f"weight file {path}: .npz files cannot hold metadata; use .safetensors")
    arrays = {}
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise ValueError(f"tensor names must be strings, got {name!r} ({type(name).__name__})")
        arr, problem = _real_array(value)
        if problem:
            raise ValueError(f"cannot store tensor {name!r}: {problem}")
        arrays[name] = np.ascontiguousarray(arr)
    if path.endswith(".npz"):
        with open(path, "wb") as f:  # np.savez would append ".npz" to other names; a file object avoids it
            np.savez(f, **arrays)
    else:
        _save_safetensors(path, arrays, metadata)


def load_metadata(path: "str | os.PathLike[str]") -> dict[str, str]:
    """The ``__metadata__`` strings of a ``.safetensors`` file (``{}`` if it has none, and for ``.npz``), from its
    header alone, validated as :func:`load_weights` validates it. npperceiver's checkpoints keep their config
    there (``train-mlm``)."""
    path = os.fspath(path)
    if not path.endswith((".npz", ".safetensors")):
        raise ValueError(f"weight file {path} must end in .npz or .safetensors")
    size = _regular_file_size(path)
    if path.endswith(".npz"):
        return {}
    try:
        with open(path, "rb") as f:
            return _read_safetensors_header(f, path, size)[1]
    except OSError as e:
        raise ValueError(f"cannot read weight file {path}: {e.strerror or e}") from None


# ---------------------------------------------------------------------------- .safetensors
def _read_safetensors(f: BinaryIO, path: str, size: int) -> dict[str, np.ndarray]:
    def bad(message: str) -> ValueError:
        return ValueError(f"{path} is not a valid .safetensors file: {message}")

    header, _, n = _read_safetensors_header(f, path, size)
    data_size = size - 8 - n
    tensors = []  # (start, end, name, dtype, shape)
    for name, info in header.items():
        where = f"tensor {_short(name)}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            got = f"the fields {_short(sorted(info))}" if isinstance(info, dict) else _json_kind(info)
            raise bad(f"{where} must be an object with exactly dtype, shape and data_offsets, got {got}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _ST_ITEMSIZE:
            raise bad(f"{where} has dtype {_short(dtype)}, which npperceiver does not read "
                      f"(it reads {', '.join(_ST_ITEMSIZE)})")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise bad(f"{where} has shape {_short(shape)}; a shape is a list of non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets)
                or offsets[0] > offsets[1]):
            raise bad(f"{where} has data_offsets {_short(offsets)}; they must be [begin, end] with "
                      "0 <= begin <= end")
        begin, end = offsets
        if end > data_size:
            raise bad(f"{where} has data_offsets [{begin}, {end}] but the data after the header is only "
                      f"{data_size:,} bytes long")
        needed = math.prod(shape) * _ST_ITEMSIZE[dtype]
        if end - begin != needed:
            raise bad(f"{where} has data_offsets [{begin}, {end}] ({end - begin:,} bytes) but dtype {dtype} x "
                      f"shape {shape} needs {needed:,} bytes")
        tensors.append((begin, end, name, dtype, tuple(shape)))

    covered, previous = 0, None  # sorted by position, the tensors must tile the data exactly
    for begin, end, name, _, _ in sorted(tensors, key=lambda t: t[:2]):
        if begin < covered:
            raise bad(f"tensors {_short(previous)} and {_short(name)} overlap (byte {begin:,} belongs to both)")
        if begin > covered:
            raise bad(f"bytes {covered:,} to {begin:,} of the data belong to no tensor")
        covered, previous = end, name
    if covered != data_size:
        raise bad(f"the tensors cover {covered:,} bytes but {data_size:,} follow the header")

    data = bytearray(data_size)
    if f.readinto(data) != data_size:
        raise ValueError(f"weight file {path} ended early: it changed while it was being read")
    out = {}
    for begin, end, name, dtype, shape in tensors:
        count = (end - begin) // _ST_ITEMSIZE[dtype]
        if dtype == "BF16":  # bfloat16 is the top half of a float32
            bits = np.frombuffer(data, dtype="<u2", count=count, offset=begin).astype(np.uint32) << 16
            arr = bits.view(np.float32).reshape(shape)
        else:
            arr = np.frombuffer(data, dtype=np.dtype(_ST_DTYPES[dtype]).newbyteorder("<"), count=count,
                                offset=begin).reshape(shape)
            if not arr.flags.aligned:
                arr = arr.copy()
        out[name] = arr
    return out


def _read_safetensors_header(f: BinaryIO, path: str, size: int) -> "tuple[dict, dict[str, str], int]":
    """The validated JSON header of a .safetensors file: ``(tensor entries, __metadata__ ({} if none), header
    length)``; the file's position is then at the start of the data."""
    def bad(message: str) -> ValueError:
        return ValueError(f"{path} is not a valid .safetensors file: {message}")

    if size < 8:
        raise bad(f"it is {size} byte(s) long; the format starts with an 8-byte header length")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > size - 8:
        raise bad(f"its header length says {n:,} bytes but only {size - 8:,} follow")
    if n > MAX_SAFETENSORS_HEADER:
        raise bad(f"its header length says {n:,} bytes, more than the format's {MAX_SAFETENSORS_HEADER:,}")
    raw = _read_exactly(f, n, path)
    try:
        header = parse_json(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise bad(f"its header is not UTF-8 text ({e.reason} at byte {8 + e.start})") from None
    except ValueError as e:
        raise bad(f"its header {e}") from None
    if not isinstance(header, dict):
        raise bad(f"its header must be a JSON object of tensors, got {_json_kind(header)}")

    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(v, str) for v in metadata.values())):
        raise bad("'__metadata__' must be an object of strings (the name is reserved for metadata, "
                  f"it cannot be a tensor), got {_json_kind(metadata)}")
    return header, metadata or {}, n


def _save_safetensors(path: str, arrays: Mapping[str, np.ndarray], metadata: "Mapping[str, str] | None" = None) -> None:
    names = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset, blobs = 0, []
    for name, arr in arrays.items():
        if name == "__metadata__":
            raise ValueError("cannot store a tensor named '__metadata__' in .safetensors: the format reserves "
                             "that name for metadata (every reader skips it); rename it")
        if arr.dtype.newbyteorder("=") not in names:
            raise ValueError(f"cannot store tensor {name!r} of dtype {arr.dtype} in .safetensors "
                             f"(it takes {', '.join(str(np.dtype(t)) for t in _ST_DTYPES.values())})")
        blob = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": names[arr.dtype.newbyteorder("=")], "shape": list(arr.shape),
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


# ---------------------------------------------------------------------------- .npz
def _read_npz(f: BinaryIO, path: str, size: int) -> dict[str, np.ndarray]:
    def bad(message: str) -> ValueError:
        return ValueError(f"{path} is not a valid .npz file: {message}")

    magic = f.read(6)
    f.seek(0)
    if magic == b"\x93NUMPY":
        raise bad("it is a single .npy array (np.save), not an .npz archive of named arrays (np.savez)")
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise bad("it is not a zip archive (an .npz file is a zip of .npy files, as np.savez writes)")
    try:
        with zipfile.ZipFile(f) as archive:
            members = archive.infolist()
            out = {}
            for member in members:  # np.savez names the array "x" "x.npy"
                name = member.filename[:-4] if member.filename.endswith(".npy") else member.filename
                if name in out:
                    raise bad(f"it holds two arrays named {_short(name)}")
                out[name] = _read_npy_member(archive, member, bad)
            return out
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, RuntimeError) as e:
        # a damaged or unusual zip is none of these (not OSError); RuntimeError: encrypted members
        raise bad(f"{type(e).__name__}: {_clip(str(e))}") from None


def _read_npy_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo,
                     bad: Callable[[str], ValueError]) -> np.ndarray:
    """One ``.npy`` member, its header checked against its size before any array is made."""
    where = f"array {_short(member.filename)}"
    if member.compress_type == zipfile.ZIP_STORED:
        plausible = member.file_size <= member.compress_size
    else:
        plausible = member.file_size <= MAX_DEFLATE_RATIO * max(member.compress_size, 1)
    if not plausible:
        raise bad(f"{where} claims {format_bytes(member.file_size)} stored in {format_bytes(member.compress_size)}")
    with archive.open(member) as fp:
        try:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(fp)
            else:
                raise ValueError(f"npy format version {version} is not read here (1.0 and 2.0 are)")
        except (ValueError, EOFError, SyntaxError, TypeError) as e:
            raise bad(f"{where} is not a readable .npy array ({_clip(str(e))})") from None
        header_size = fp.tell()
        if any(d < 0 for d in shape):
            raise bad(f"{where} declares shape {_short(shape)}, with a negative size")
        if dtype.kind not in _REAL_KINDS or dtype.hasobject or dtype.fields is not None:
            raise bad(f"{where} has dtype {dtype} ({_KIND_NAMES.get(dtype.kind, 'not a number')}); "
                      "weights must be numbers (bool, integers, floats)")
        needed = math.prod(shape) * dtype.itemsize
        if needed != member.file_size - header_size:
            raise bad(f"{where} declares shape {shape} of {dtype} ({format_bytes(needed)}) but holds "
                      f"{format_bytes(member.file_size - header_size)} of data")
        data = bytearray(needed)
        if fp.readinto(data) != needed:
            raise bad(f"{where} ended early")
    arr = np.frombuffer(data, dtype=dtype)
    return arr.reshape(shape[::-1]).T if fortran_order else arr.reshape(shape)


# ---------------------------------------------------------------------------- helpers
def _read_exactly(f: BinaryIO, n: int, path: str) -> bytes:
    raw = f.read(n)
    if len(raw) != n:
        raise ValueError(f"weight file {path} ended early: it changed while it was being read")
    return raw


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _is_count(value: Any) -> bool:
    """A non-negative integer (JSON true/false are not integers)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _short(value: Any) -> str:
    """A short ``repr(value)``: a hostile file's names and values go into messages, so they are cut -- a
    string to 200 characters (tensor names are long), anything else by ``reprlib``, which also stops at a
    few levels of nesting."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 200 else repr(value[:200]) + "..."
    return _clip(reprlib.repr(value), 80)


def _clip(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters."""
    return text if len(text) <= limit else text[:limit - 3] + "..."
