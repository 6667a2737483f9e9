"""Hostile and broken inputs: every one gets a clear error, nothing is lost, nothing is silently wrong.

Bad files (weights, configs, checkpoints), odd values, paths and signals, grouped by kind. What is proved:

* the library raises ``ValueError`` naming what was wrong (the file, the tensor, the field);
* a CLI user sees one line on stderr, ``error: ...``, exit 1 (2 for a misused option), no traceback, and
  nothing on stdout -- so nothing wrong is ever printed with exit 0;
* no output file and no temporary file is left behind, on an error or on SIGTERM, SIGHUP or SIGINT (a real
  subprocess and a real signal);
* where a file *is* accepted, what is read is exactly what the format says (hypothesis checks the
  safetensors reader against an independent reading of the format, on random headers and offsets).

Cases that could exhaust memory or loop for long if the guard were missing (``/dev/zero`` as a config or as
weights, ``num_blocks=10**9``) run in a subprocess with a memory limit and a timeout.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npperceiver as npp
import npperceiver.trace as trace
from npperceiver.config import MAX_CONFIG_BYTES, PerceiverConfig
from npperceiver.functional import layer_norm, layer_norm_backward
from npperceiver.trace import MAX_TRACED_LAYERS, encoder_steps
from npperceiver.weights import check_param_memory
from npperceiver_cli.cli import _write, main

ROOT = Path(__file__).resolve().parents[1]
SMALL = npp.load_preset("small")
FEW = settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# ============================================================================ helpers
def run(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_clean_error(result, pattern: str, code: int = 1) -> str:
    """Exit ``code``, no uncaught exception, nothing on stdout, and exactly one ``error:`` line on stderr
    (besides the notice saying which config was used) that contains ``pattern``. Returns that line."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("config: ")]
    assert len(lines) == 1 and lines[0].startswith("error: " if code == 1 else ""), result.stderr
    assert pattern in lines[0], (pattern, lines[0])
    assert result.stdout == ""
    return lines[0]


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def run_process(*args: "str | bytes", timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m npperceiver ARGS`` in a subprocess limited to 4 GiB of memory and ``timeout`` seconds: a
    missing guard ends in a MemoryError or a timeout there, not in this machine's memory running out."""
    return subprocess.run([sys.executable, "-m", "npperceiver", *args], capture_output=True, timeout=timeout,
                          preexec_fn=_limit_memory, cwd=ROOT)


def library_error(call: str, timeout: float = 120) -> str:
    """The ValueError message of ``call`` (Python code using ``npp``), run in a subprocess limited as above."""
    code = f"import npperceiver as npp\ntry:\n    {call}\nexcept ValueError as e:\n    print(e)\nelse:\n    print('no error')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_limit_memory, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def assert_process_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    stderr = proc.stderr.decode("utf-8", "replace")
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("config: ")]
    assert proc.returncode == 1, stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], stderr
    assert proc.stdout == b""


def config_file(tmp_path: Path, **changes) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(SMALL.to_dict(), **changes)))
    return str(path)


def safetensors_bytes(header, data: bytes = b"", header_text: "str | None" = None) -> bytes:
    """A .safetensors file: 8-byte length, JSON header, data (``header_text`` overrides the JSON)."""
    text = (json.dumps(header) if header_text is None else header_text).encode()
    return struct.pack("<Q", len(text)) + text + data


def load_bytes(tmp_path: Path, name: str, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return npp.load_weights(path)


def mlm_weights(config=SMALL) -> dict:
    return npp.PerceiverForMaskedLM.init(config, seed=1).state_dict()


# ============================================================================ 1. the safetensors reader
F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}

BAD_HEADERS = {
    # name: (header (or raw JSON text), data, what the message must say)
    "negative offset": ({"w": dict(F32x2, data_offsets=[-8, 0])}, b"\0" * 8, "tensor 'w' has data_offsets [-8, 0]"),
    "offsets past the end": ({"w": dict(F32x2, data_offsets=[0, 16])}, b"\0" * 8, "only 8 bytes long"),
    "begin after end": ({"w": dict(F32x2, data_offsets=[8, 0])}, b"\0" * 8, "0 <= begin <= end"),
    "too few bytes for dtype x shape": ({"w": dict(F32x2, shape=[3])}, b"\0" * 8, "needs 12 bytes"),
    "overlap": ({"a": F32x2, "b": dict(F32x2, data_offsets=[4, 12])}, b"\0" * 12, "'a' and 'b' overlap"),
    "gap": ({"a": dict(F32x2, shape=[1], data_offsets=[0, 4]), "b": dict(F32x2, shape=[1], data_offsets=[8, 12])},
            b"\0" * 12, "bytes 4 to 8 of the data belong to no tensor"),
    "data not covered": ({"a": dict(F32x2, shape=[1], data_offsets=[0, 4])}, b"\0" * 8, "cover 4 bytes but 8"),
    "header is a list": ([], b"", "must be a JSON object of tensors, got a list"),
    "header is null": (None, b"", "got null"),
    "header is a string": ("w", b"", "got a string"),
    "header is a number": (5, b"", "got a number"),
    "deeply nested header": (None, b"", "nested too deeply"),  # text below
    "__metadata__ as a tensor": ({"__metadata__": F32x2}, b"\0" * 8, "'__metadata__' must be an object of strings"),
    "__metadata__ of numbers": ({"__metadata__": {"format": 1}}, b"", "'__metadata__'"),
    "unknown dtype": ({"w": dict(F32x2, dtype="F8_E4M3")}, b"\0" * 8, "dtype 'F8_E4M3'"),
    "complex dtype": ({"w": dict(F32x2, dtype="C64")}, b"\0" * 8, "dtype 'C64'"),
    "dtype not a string": ({"w": dict(F32x2, dtype=4)}, b"\0" * 8, "dtype 4"),
    "negative shape": ({"w": dict(F32x2, shape=[-2])}, b"\0" * 8, "shape [-2]"),
    "shape of booleans": ({"w": dict(F32x2, shape=[True, True])}, b"\0" * 8, "shape [True, True]"),
    "shape of floats": ({"w": dict(F32x2, shape=[2.0])}, b"\0" * 8, "shape [2.0]"),
    "shape not a list": ({"w": dict(F32x2, shape=2)}, b"\0" * 8, "shape 2"),
    "offsets of booleans": ({"w": dict(F32x2, shape=[0], data_offsets=[False, False])}, b"", "[False, False]"),
    "three offsets": ({"w": dict(F32x2, data_offsets=[0, 4, 8])}, b"\0" * 8, "[0, 4, 8]"),
    "extra field": ({"w": dict(F32x2, extra=1)}, b"\0" * 8, "exactly dtype, shape and data_offsets"),
    "missing field": ({"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "exactly dtype, shape and data_offsets"),
    "tensor entry not an object": ({"w": [0, 8]}, b"\0" * 8, "got a list"),
    "name given twice": (None, b"\0" * 8, "names 'w' twice"),
    "not JSON": (None, b"", "is not valid JSON"),
}
HEADER_TEXTS = {
    "deeply nested header": "[" * 100_000 + "]" * 100_000,
    "name given twice": '{"w": %s, "w": %s}' % (json.dumps(F32x2), json.dumps(F32x2)),
    "not JSON": "{bad json",
}


@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_safetensors_reader_refuses_what_the_format_does_not_allow(tmp_path, case):
    header, data, message = BAD_HEADERS[case]
    content = safetensors_bytes(header, data, HEADER_TEXTS.get(case))
    with pytest.raises(ValueError, match="w.safetensors is not a valid .safetensors file") as error:
        load_bytes(tmp_path, "w.safetensors", content)
    assert message in str(error.value)


@pytest.mark.parametrize("content, message", [
    (b"\x01\x02", "2 byte(s) long"),
    (struct.pack("<Q", 1 << 63) + b"{}", "header length says"),
    (struct.pack("<Q", 4) + b"\xff\xfe{}", "not UTF-8 text"),
])
def test_safetensors_framing(tmp_path, content, message):
    with pytest.raises(ValueError, match="not a valid .safetensors file") as error:
        load_bytes(tmp_path, "w.safetensors", content)
    assert message in str(error.value)


def test_safetensors_metadata_is_read_as_metadata_and_empty_tensors_are_fine(tmp_path):
    header = {"__metadata__": {"format": "pt"}, "w": F32x2, "e": dict(F32x2, shape=[0, 3], data_offsets=[8, 8])}
    out = load_bytes(tmp_path, "w.safetensors", safetensors_bytes(header, np.array([1.5, -2], "<f4").tobytes()))
    assert sorted(out) == ["e", "w"] and out["e"].shape == (0, 3)
    assert np.array_equal(out["w"], [1.5, -2]) and out["w"].dtype == np.float32


def test_a_tensor_named_metadata_is_refused_when_writing(tmp_path):
    with pytest.raises(ValueError, match="named '__metadata__'"):
        npp.save_weights(tmp_path / "w.safetensors", {"__metadata__": np.zeros(2, np.float32)})
    assert not (tmp_path / "w.safetensors").exists()


def test_tampered_offsets_never_reach_the_model(tmp_path):
    """fill-mask used to read other bytes through negative offsets and print other predictions, exit 0."""
    path = tmp_path / "mlm.safetensors"
    npp.save_weights(path, mlm_weights())
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    key = "embedding_decoder.bias"
    begin, end = header[key]["data_offsets"]
    header[key]["data_offsets"] = [begin - 64, end - 64]  # the bias now reads the end of the tensor before it
    path.write_bytes(safetensors_bytes(header, raw[8 + n:]))
    line = assert_clean_error(run("fill-mask", "--config", "small", "--weights", str(path), "a[MASK]"), "overlap")
    assert "mlm.safetensors" in line and key in line


# --------------------------------------------------------------------------- hypothesis: the reader vs the spec
DTYPES = {"F32": ("<f4", 4), "F16": ("<f2", 2), "I64": ("<i8", 8), "U8": ("|u1", 1), "BF16": (None, 2),
          "BOOL": ("|b1", 1)}


def spec_says_valid(header, data_size: int) -> bool:
    """An independent reading of the safetensors format: does this header describe ``data_size`` bytes?"""
    if not isinstance(header, dict):
        return False
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        return False
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or sorted(info) != ["data_offsets", "dtype", "shape"]:
            return False
        if info["dtype"] not in npp.weights._ST_ITEMSIZE:
            return False
        shape, offsets = info["shape"], info["data_offsets"]
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            return False
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            return False
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            return False
        if end - begin != math.prod(shape) * npp.weights._ST_ITEMSIZE[info["dtype"]]:
            return False
        spans.append((begin, end))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            return False
        position = end
    return position == data_size


def offsets_strategy():
    return st.lists(st.integers(-4, 40), min_size=2, max_size=2) | st.just([0, 4]) | st.lists(st.integers(0, 8))


def tensor_info():
    return st.fixed_dictionaries({
        "dtype": st.sampled_from([*DTYPES, "F8_E5M2", "c64"]),
        "shape": st.lists(st.integers(-1, 3), max_size=3) | st.just([2.0]) | st.just([True]),
        "data_offsets": offsets_strategy(),
    }, optional={"extra": st.none()})


def contiguous_header(draw_infos: list) -> dict:
    """Lay tensors out one after the other, as a writer does (so hypothesis also explores valid files)."""
    header, position = {}, 0
    for i, (dtype, shape) in enumerate(draw_infos):
        size = math.prod(shape) * DTYPES[dtype][1]
        header[f"t{i}"] = {"dtype": dtype, "shape": shape, "data_offsets": [position, position + size]}
        position += size
    return header


@st.composite
def headers_and_data(draw):
    if draw(st.booleans()):  # a well-formed layout, sometimes nudged
        infos = draw(st.lists(st.tuples(st.sampled_from(list(DTYPES)), st.lists(st.integers(0, 3), max_size=2)),
                              max_size=3))
        header = contiguous_header(infos)
        if header and draw(st.booleans()):
            name = draw(st.sampled_from(sorted(header)))
            header[name]["data_offsets"][draw(st.integers(0, 1))] += draw(st.integers(-9, 9))
        size = sum(math.prod(s) * DTYPES[d][1] for d, s in infos) + draw(st.sampled_from([0, 0, 0, 1, -1]))
    else:  # anything
        header = draw(st.dictionaries(st.sampled_from(["a", "b", "__metadata__"]), tensor_info(), max_size=3))
        size = draw(st.integers(0, 40))
    if draw(st.booleans()) and "__metadata__" not in header:
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=3), st.text(max_size=3) | st.integers(),
                                                      max_size=2))
    return header, draw(st.binary(min_size=max(size, 0), max_size=max(size, 0)))


@FEW
@given(headers_and_data())
def test_safetensors_reader_accepts_exactly_what_the_spec_allows(tmp_path, header_data):
    header, data = header_data
    valid = spec_says_valid(header, len(data))
    try:
        out = load_bytes(tmp_path, "h.safetensors", safetensors_bytes(header, data))
    except ValueError as e:
        assert not valid, f"a valid file was refused: {e}"
        assert "h.safetensors" in str(e)
        return
    assert valid, "an invalid file was read"
    assert sorted(out) == sorted(k for k in header if k != "__metadata__")
    for name, arr in out.items():  # every tensor is exactly its bytes, as the header says
        info = header[name]
        begin, end = info["data_offsets"]
        assert arr.shape == tuple(info["shape"])
        if info["dtype"] == "BF16":
            expected = (np.frombuffer(data[begin:end], "<u2").astype(np.uint32) << 16).view(np.float32)
            assert np.array_equal(arr.ravel().view(np.uint32), expected.view(np.uint32))
        else:
            assert arr.tobytes() == data[begin:end]


@FEW
@given(st.binary(max_size=200), st.sampled_from(["r.safetensors", "r.npz"]))
def test_random_bytes_are_read_or_refused_with_a_value_error(tmp_path, content, name):
    try:
        out = load_bytes(tmp_path, name, content)
    except ValueError as e:
        assert name in str(e)
    else:
        assert all(isinstance(a, np.ndarray) and a.dtype.kind in "biuf" for a in out.values())


@FEW
@given(st.binary(max_size=120))
def test_random_bytes_after_a_plausible_header_length(tmp_path, tail):
    content = struct.pack("<Q", min(len(tail), 64)) + tail
    try:
        load_bytes(tmp_path, "p.safetensors", content)
    except ValueError as e:
        assert "p.safetensors" in str(e)


# ============================================================================ 2. weights that are not numbers
def test_nan_and_inf_weights_are_refused_before_computing(tmp_path):
    sd = mlm_weights()
    sd["perceiver.embeddings.latents"] = sd["perceiver.embeddings.latents"].copy()
    sd["perceiver.embeddings.latents"][0, :3] = [np.nan, np.inf, -np.inf]
    with pytest.raises(ValueError, match=r"NaN or infinite .*perceiver.embeddings.latents: 3 of 512 values"):
        npp.PerceiverForMaskedLM.from_state_dict(SMALL, sd)
    path = tmp_path / "nan.npz"
    npp.save_weights(path, sd)
    assert_clean_error(run("fill-mask", "--config", "small", "--weights", str(path), "a[MASK]"), "NaN or infinite")


def test_float64_weights_beyond_float32_are_refused():
    sd = npp.PerceiverModel.init(SMALL).state_dict()
    sd["embeddings.latents"] = sd["embeddings.latents"].astype(np.float64) * 1e300
    with pytest.raises(ValueError, match="NaN or infinite.*embeddings.latents"):
        npp.PerceiverModel.from_state_dict(SMALL, sd)


@pytest.mark.parametrize("make, message", [
    (lambda a: a.astype(np.complex64) + 1j, "complex"),
    (lambda a: a.astype(str), "text, not numbers"),
    (lambda a: np.array([str(v) for v in a.ravel()], dtype=object).reshape(a.shape), "Python objects"),
])
def test_weights_that_are_not_real_numbers(tmp_path, make, message):
    sd = npp.PerceiverModel.init(SMALL).state_dict()
    key = "encoder.cross_attention.attention.self.query.bias"
    sd[key] = make(sd[key])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning: refused, not converted
        with pytest.raises(ValueError, match=f"{key}: dtype .*{message}"):
            npp.PerceiverModel.from_state_dict(SMALL, sd)
    if sd[key].dtype != object:  # np.savez cannot store objects without pickle
        path = tmp_path / "w.npz"
        np.savez(path, **sd)
        with pytest.raises(ValueError, match=f"w.npz is not a valid .npz file: array '{key}.npy' has dtype"):
            npp.load_weights(path)


def test_an_object_array_in_an_npz_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, w=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="array 'w.npy' has dtype object"):
        npp.load_weights(path)


def test_an_npy_file_named_npz(tmp_path):
    path = tmp_path / "w.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"a single .npy array \(np.save\), not an .npz archive"):
        npp.load_weights(path)
    assert_clean_error(run("fill-mask", "--config", "small", "--weights", str(path), "a[MASK]"), "single .npy array")


def _npy(shape, dtype="<f4", data: bytes = b"") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def test_an_npz_declaring_a_huge_array_in_a_small_file(tmp_path):
    """37 GiB declared in the .npy header of a 1 KB file: refused from the sizes, nothing allocated."""
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("w.npy", _npy((10_000_000_000,), data=b"\0" * 64))
    assert path.stat().st_size < 1024
    with pytest.raises(ValueError, match=r"array 'w.npy' declares shape \(10000000000,\) of float32 \(37.3 GiB\)"):
        npp.load_weights(path)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_an_npz_member_claiming_more_than_it_can_hold(tmp_path, compression):
    """A zip entry whose declared size is impossible for its compressed size (a "zip bomb" claim)."""
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        z.writestr("w.npy", _npy((4,), data=b"\0" * 16))
    raw = bytearray(path.read_bytes())
    central = raw.rindex(b"PK\x01\x02")
    struct.pack_into("<I", raw, central + 24, 3 << 30)  # uncompressed size: 3 GiB
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="array 'w.npy' claims 3.0 GiB stored in"):
        npp.load_weights(path)


@pytest.mark.parametrize("npy, message", [
    (_npy((-2, -2), data=b"\0" * 16), "negative size"),
    (_npy((2,), data=b"\0" * 4), "holds 4 bytes of data"),
    (_npy((2,), "<c8", b"\0" * 16), "complex"),
    (_npy((1,), "<U3", b"\0" * 12), "text, not numbers"),
    (_npy((1,), [("a", "<f4")], b"\0" * 4), "raw or structured records"),
    (b"\x93NUMPY\x09\x00junk", "not a readable .npy array"),
    (b"not an npy", "not a readable .npy array"),
])
def test_npz_members_are_checked_before_reading(tmp_path, npy, message):
    path = tmp_path / "m.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("w.npy", npy)
    with pytest.raises(ValueError, match="m.npz is not a valid .npz file: array 'w.npy'") as error:
        npp.load_weights(path)
    assert message in str(error.value)


def test_npz_reader_keeps_what_np_savez_writes(tmp_path):
    arrays = {"f": np.arange(6, dtype=np.float32).reshape(2, 3), "fortran": np.asfortranarray(np.eye(3)),
              "i": np.array([1, -2], np.int64), "b": np.array([True]), "big_endian": np.arange(3, dtype=">f4"),
              "empty": np.zeros((0, 4), np.float16)}
    path = tmp_path / "w.npz"
    np.savez_compressed(path, **arrays)
    out = npp.load_weights(path)
    assert sorted(out) == sorted(arrays)
    for k, v in arrays.items():
        assert out[k].dtype == v.dtype and np.array_equal(out[k], v)


@FEW
@given(st.binary(max_size=120), st.booleans())
def test_random_npy_members(tmp_path, tail, with_magic):
    path = tmp_path / "r.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("w.npy", (b"\x93NUMPY\x01\x00" if with_magic else b"") + tail)
    try:
        out = npp.load_weights(path)
    except ValueError as e:
        assert "r.npz" in str(e)
    else:
        assert all(a.dtype.kind in "biuf" for a in out.values())


# ============================================================================ 3. unbounded reads and allocations
needs_dev_zero = pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")


@needs_dev_zero
def test_a_config_is_read_up_to_a_bound():
    message = library_error("npp.PerceiverConfig.from_json('/dev/zero')")
    assert message == f"/dev/zero is larger than {MAX_CONFIG_BYTES // 1024} KiB: a config is a small JSON file"
    assert_process_error(run_process("explain", "--config", "/dev/zero"), "larger than 1024 KiB")


@needs_dev_zero
@pytest.mark.parametrize("name", ["w.safetensors", "w.npz"])
def test_weights_that_are_a_link_to_a_device(tmp_path, name):
    (tmp_path / name).symlink_to("/dev/zero")
    assert "is not a regular file" in library_error(f"npp.load_weights({str(tmp_path / name)!r})")
    assert_process_error(run_process("fill-mask", "--config", "small", "--weights", str(tmp_path / name), "a[MASK]"),
                         "is not a regular file")


def test_weights_that_are_a_pipe_or_a_folder(tmp_path):
    os.mkfifo(tmp_path / "pipe.npz")  # opening it would wait for a writer forever (so: in a subprocess)
    assert "is not a regular file" in library_error(f"npp.load_weights({str(tmp_path / 'pipe.npz')!r})", timeout=60)
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        npp.load_weights(tmp_path / "dir.safetensors")


@pytest.mark.parametrize("changes, largest", [
    (dict(num_latents=10**12), "embeddings.latents"),
    (dict(max_position_embeddings=10**12), "position_embeddings"),
])
def test_random_init_checks_the_size_before_allocating(tmp_path, changes, largest):
    config = SMALL.__class__(**dict(SMALL.to_dict(), **changes))
    with pytest.raises(ValueError, match=f"would take .* TiB .*{largest}.* more than the"):
        npp.PerceiverForMaskedLM.init(config)
    line = assert_clean_error(run("fill-mask", "--config", config_file(tmp_path, **changes), "--random-init",
                                  "a[MASK]"), "would take")
    assert "TiB" in line


def test_the_memory_check_names_the_size():
    with pytest.raises(ValueError, match=r"would take 4.0 KiB \(1,025 float32 values; the largest, a of shape "
                                         r"\(1024,\), alone 4.0 KiB\), more than the 4.0 KiB"):
        check_param_memory({"a": (1024,), "b": (1,)}, limit=4096)
    check_param_memory({"a": (1024,)}, limit=4096)  # exactly fits


def test_the_trace_refuses_more_layers_than_it_can_list(monkeypatch):
    config = SMALL.__class__(**dict(SMALL.to_dict(), num_blocks=MAX_TRACED_LAYERS + 1, num_self_attends_per_block=1))
    with pytest.raises(ValueError, match=r"10,001 x 1 = 10,001 self-attention layers"):
        encoder_steps(config)
    monkeypatch.setattr(trace, "MAX_TRACED_LAYERS", 6)  # the bound itself is allowed
    assert max(s.block or 0 for s in encoder_steps(SMALL.__class__(**dict(SMALL.to_dict(), num_blocks=3)))) == 2
    with pytest.raises(ValueError, match=r"4 x 2 = 8 self-attention layers"):
        encoder_steps(SMALL.__class__(**dict(SMALL.to_dict(), num_blocks=4)))


def test_draw_and_explain_with_a_billion_blocks(tmp_path):
    config = config_file(tmp_path, num_blocks=10**9)
    assert_process_error(run_process("draw-encoder", "--config", config, "--unroll", "--format", "dot", "-o",
                                     str(tmp_path / "x.dot")), "2,000,000,000 self-attention layers")
    assert_process_error(run_process("explain", "--config", config), "1,000,000,000 x 2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


# ============================================================================ 4. the CLI's guard
def test_text_that_is_not_utf8(tmp_path):
    result = run("fill-mask", "--config", "small", "--random-init", "ab\udcff[MASK]")  # byte 0xff from argv
    assert_clean_error(result, "TEXT is not valid UTF-8 (byte 0xff at byte position 2)")
    proc = run_process(b"fill-mask", b"--config", b"small", b"--random-init", b"\xc3[MASK]")
    assert_process_error(proc, "TEXT is not valid UTF-8 (byte 0xc3 at byte position 0)")


@pytest.mark.parametrize("vocab_size", [300, 100])
def test_a_vocabulary_the_byte_tokenizer_cannot_fill(tmp_path, vocab_size):
    result = run("fill-mask", "--config", config_file(tmp_path, vocab_size=vocab_size), "--random-init", "a[MASK]")
    assert_clean_error(result, f"vocab_size is {vocab_size}, but fill-mask reads text with the byte tokenizer")


def test_max_position_embeddings_of_one(tmp_path):
    result = run("fill-mask", "--config", config_file(tmp_path, max_position_embeddings=1), "--random-init", "[MASK]")
    assert_clean_error(result, "the text is 3 tokens long ([CLS] + 1 bytes + [SEP]) but this model accepts at most 1")


def test_a_negative_seed_names_the_option():
    result = run("fill-mask", "--config", "small", "--random-init", "--seed", "-1", "a[MASK]")
    assert result.exit_code == 2 and "--seed" in result.stderr and "Traceback" not in result.output


def test_an_empty_or_folder_output_name(tmp_path):
    assert_clean_error(run("draw-encoder", "--config", "small", "--format", "dot", "-o", ""),
                       "the output file name is empty")
    assert_clean_error(run("draw-encoder", "--config", "small", "--format", "dot", "-o", str(tmp_path)), "is a folder")
    assert_clean_error(run("draw-encoder", "--config", "small", "--format", "dot", "-o", f"{tmp_path}/new/"),
                       "is a folder")
    assert list(tmp_path.iterdir()) == []


def test_a_long_output_name_is_written(tmp_path):
    name = "d" * 251 + ".dot"  # 255 characters: the longest name most file systems take
    result = run("draw-encoder", "--config", "small", "--format", "dot", "-o", str(tmp_path / name))
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert (tmp_path / name).read_text().startswith("digraph")


@pytest.mark.parametrize("field", ["hidden_act", "num_latents", "cross_attention_shape_for_attention",
                                   "initializer_range"])
def test_a_huge_value_is_not_echoed_whole(tmp_path, field):
    huge = "x" * 1_000_000
    with pytest.raises(ValueError, match=field) as error:
        PerceiverConfig.from_dict({field: huge})
    assert len(str(error.value)) < 300
    line = assert_clean_error(run("explain", "--config", config_file(tmp_path, **{field: huge})), field)
    assert len(line) < 600


def test_an_error_line_is_cut_to_a_readable_length():
    from npperceiver_cli.cli import _one_line

    assert _one_line(ValueError("a" * 10_000 + "\nsecond line")).endswith("... (8,000 more characters)")
    assert _one_line(RuntimeError("")) == "RuntimeError"


@FEW
@given(st.binary(max_size=300))
def test_random_bytes_as_a_config(tmp_path, content):
    path = tmp_path / "random.json"
    path.write_bytes(content)
    result = run("explain", "--config", str(path))
    if result.exit_code == 0:  # then the file really is a valid config
        PerceiverConfig.from_json(path)
    else:
        assert_clean_error(result, "--config")


@FEW
@given(st.binary(max_size=300), st.sampled_from(["w.safetensors", "w.npz"]))
def test_random_bytes_as_weights_for_fill_mask(tmp_path, content, name):
    (tmp_path / name).write_bytes(content)
    assert_clean_error(run("fill-mask", "--config", "small", "--weights", str(tmp_path / name), "a[MASK]"), name)


# ============================================================================ 5. config edge cases
@pytest.mark.parametrize("extras", [[["a", 1]], 3, "text", None, True])
def test_extras_must_be_a_mapping(extras):
    with pytest.raises(ValueError, match="extras must be a mapping"):
        PerceiverConfig.from_dict({"num_latents": 4, "extras": extras})


def test_extras_cannot_shadow_a_field():
    with pytest.raises(ValueError, match="extras must not hold 'num_latents'"):
        PerceiverConfig.from_dict({"extras": {"num_latents": 5}})  # to_dict would write it over the field


def test_extras_nesting_is_bounded_without_recursion():
    deep: list = []
    for _ in range(200_000):
        deep = [deep]
    with pytest.raises(ValueError, match="nested more than 100 levels"):
        PerceiverConfig.from_dict({"id2label": deep})
    with pytest.raises(ValueError, match=r"num_latents must be a positive integer, got \[\[\[\[\[\[\[\.\.\.\]\]"):
        PerceiverConfig.from_dict({"num_latents": deep})


def test_json_nested_200000_deep(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"x": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(ValueError, match="deep.json is not valid JSON: it is nested too deeply"):
        PerceiverConfig.from_json(path)
    assert_clean_error(run("explain", "--config", str(path)), "nested too deeply")


def test_a_name_given_twice_in_a_config(tmp_path):
    path = tmp_path / "twice.json"
    path.write_text('{"num_latents": 4, "num_latents": 8}')
    with pytest.raises(ValueError, match="twice.json names 'num_latents' twice"):
        PerceiverConfig.from_json(path)


@pytest.mark.parametrize("field, value", [
    ("initializer_range", math.inf), ("layer_norm_eps", math.inf), ("attention_probs_dropout_prob", math.nan),
    ("initializer_range", -math.inf), ("initializer_range", math.nan),
])
def test_infinite_and_nan_reals_are_refused(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        PerceiverConfig.from_dict({field: value})
    path = tmp_path / "c.json"
    path.write_text(json.dumps({field: value}))  # json writes Infinity / NaN, and Python reads them back
    assert_clean_error(run("explain", "--config", str(path)), field)


def test_initializer_range_infinity_no_longer_gives_nan_predictions(tmp_path):
    result = run("fill-mask", "--config", config_file(tmp_path, initializer_range=math.inf), "--random-init", "a[MASK]")
    assert_clean_error(result, "initializer_range must lie in [0.0, inf), got inf")


def test_numpy_numbers_are_numbers():
    config = PerceiverConfig.from_dict({"num_latents": np.int64(16), "d_latents": np.int32(32), "d_model": np.uint8(24),
                                        "initializer_range": np.float32(0.5), "use_query_residual": np.bool_(False),
                                        "num_self_attention_heads": 4, "num_cross_attention_heads": 2})
    assert config.num_latents == 16 and type(config.num_latents) is int and type(config.d_model) is int
    assert type(config.initializer_range) is float and config.use_query_residual is False
    assert json.loads(config.to_json())["num_latents"] == 16
    with pytest.raises(ValueError, match="num_latents must be a positive integer"):
        PerceiverConfig.from_dict({"num_latents": np.float64(16.0)})


def _json_values():
    return st.recursive(st.none() | st.booleans() | st.integers(-3, 40) | st.floats() | st.text(max_size=4),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                        max_leaves=8)


@FEW
@given(st.dictionaries(st.sampled_from(["num_latents", "d_latents", "d_model", "extras", "initializer_range",
                                        "hidden_act", "qk_channels", "use_query_residual", "other"]),
                       _json_values(), max_size=5))
def test_any_json_is_a_config_or_a_value_error(data):
    try:
        config = PerceiverConfig.from_dict(data)
    except ValueError:
        return
    assert PerceiverConfig.from_dict(json.loads(config.to_json())) == config  # and it round-trips


# ============================================================================ 6. convert-checkpoint, and interrupted writes
def torch_or_skip():
    return pytest.importorskip("torch", reason="convert-checkpoint reads PyTorch checkpoints")


@pytest.mark.parametrize("make, message", [
    (lambda torch: torch.eye(3).to_sparse(), "is sparse_coo, not a dense tensor"),
    (lambda torch: torch.empty(3, 4, device="meta"), "is on the meta device"),
    (lambda torch: torch.zeros(2, dtype=torch.complex64), "is complex"),
    (lambda torch: torch.tensor([1e300], dtype=torch.float64), "holds torch.float64 values beyond float32's range"),
])
def test_checkpoint_tensors_without_a_numpy_form(tmp_path, make, message):
    torch = torch_or_skip()
    source = tmp_path / "model.bin"
    torch.save({"w": make(torch), "ok": torch.zeros(2)}, source)
    assert_clean_error(run("convert-checkpoint", str(source), str(tmp_path / "out.safetensors")),
                       f"model.bin: tensor 'w' {message}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


def test_a_checkpoint_tensor_named_metadata_is_refused_not_dropped(tmp_path):
    torch = torch_or_skip()
    source = tmp_path / "model.bin"
    torch.save({"__metadata__": torch.zeros(2), "w": torch.ones(2)}, source)
    assert_clean_error(run("convert-checkpoint", str(source), str(tmp_path / "out.safetensors")),
                       "cannot store a tensor named '__metadata__' in .safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


def test_dest_equal_to_source_is_refused(tmp_path):
    torch = torch_or_skip()
    source = tmp_path / "weights.npz"  # a PyTorch checkpoint with an .npz name
    torch.save({"w": torch.ones(2)}, source)
    before = source.read_bytes()
    for dest in (str(source), f"{tmp_path}/./weights.npz"):
        assert_clean_error(run("convert-checkpoint", str(source), dest), "is SOURCE")
    (tmp_path / "link.npz").symlink_to(source)
    assert_clean_error(run("convert-checkpoint", str(source), str(tmp_path / "link.npz")), "is SOURCE")
    assert source.read_bytes() == before


def test_a_failed_write_leaves_nothing(tmp_path):
    def half_then_fail(path: str) -> None:
        Path(path).write_bytes(b"half a file")
        raise ValueError("the writer failed")

    with pytest.raises(ValueError, match="the writer failed"):
        _write(str(tmp_path / "out.npz"), half_then_fail, suffix=".npz")
    assert list(tmp_path.iterdir()) == []


SLOW_WRITE = """
import os, sys, time
from pathlib import Path

marker, args = Path(sys.argv[1]), sys.argv[2:]
real_replace = os.replace

def slow_replace(src, dst):  # the temporary file is complete and not yet moved: the window to interrupt
    marker.write_text(repr(sorted(os.listdir(Path(dst).parent))))
    time.sleep(60)
    real_replace(src, dst)

os.replace = slow_replace
from npperceiver_cli.cli import main
main(args, prog_name="npperceiver")
"""


def interrupt_while_writing(tmp_path: Path, signum: int, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run the command, wait until its output is being written, send ``signum``; return the result and the
    folder's listing at that moment."""
    marker = tmp_path.parent / f"{tmp_path.name}-marker"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, str(marker), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    deadline = time.monotonic() + 120
    while not marker.exists() or not marker.read_text():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the command never reached its write"
        time.sleep(0.05)
    listing = marker.read_text()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), listing


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_while_writing_leaves_nothing(tmp_path, signum):
    out = tmp_path / "small.dot"
    proc, listing = interrupt_while_writing(tmp_path, signum, "draw-encoder", "--config", "small", "--format", "dot",
                                            "-o", str(out))
    assert ".small.dot." in listing  # the signal really came while the temporary file existed
    assert list(tmp_path.iterdir()) == []  # neither the output nor the temporary file
    assert b"Traceback" not in proc.stderr
    if signum == signal.SIGINT:
        assert proc.returncode == 1 and b"Aborted!" in proc.stderr  # click's answer to Ctrl-C
    else:
        assert proc.returncode == -signum  # ended by the signal, as without the handler


def test_sigterm_while_converting_leaves_nothing(tmp_path):
    torch = torch_or_skip()
    source = tmp_path.parent / f"{tmp_path.name}-model.bin"
    torch.save({"w": torch.ones(1000, 100)}, source)
    proc, listing = interrupt_while_writing(tmp_path, signal.SIGTERM, "convert-checkpoint", str(source),
                                            str(tmp_path / "out.safetensors"))
    assert ".out.safetensors." in listing
    assert proc.returncode == -signal.SIGTERM and list(tmp_path.iterdir()) == []


def test_an_ignored_sighup_stays_ignored(tmp_path):
    """Under ``nohup`` SIGHUP is ignored; writing a file must not make it fatal."""
    script = ("import signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN);"
              "from npperceiver_cli.cli import _TerminationSignals;"
              "t = _TerminationSignals().__enter__(); assert signal.SIGHUP not in t.previous;"
              "assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN; print('ok')")
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT).stdout == "ok\n"


# ============================================================================ 7. numerics
def test_layer_norm_of_huge_rows_is_exact():
    """Layer norm does not change when a row is scaled; float32's sum of squares overflows beyond about
    1e19, where torch gives wrong values, then NaN. npperceiver rescales such rows (docs/hf-parity.md)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 16)).astype(np.float32)
    w, b = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    reference = layer_norm(x * np.float32(1e3), w, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for scale in (1e19, 3e19, 1e20, 1e30, 1e37):
            np.testing.assert_allclose(layer_norm(x * np.float32(scale), w, b), reference, rtol=0, atol=2e-6)
    mixed = x.copy()
    mixed[0, 0] *= np.float32(1e25)
    mixed[0, 1, 3] = np.nan
    out = layer_norm(mixed, w, b)
    assert np.isnan(out[0, 1]).all() and np.isfinite(np.delete(out, 1, axis=1)).all()  # a NaN row stays NaN
    np.testing.assert_allclose(out[0, 0], reference[0, 0], rtol=0, atol=2e-6)


def test_layer_norm_backward_of_huge_rows_is_exact():
    """The backward follows the forward: a row too large for float32's sum of squares gets the gradient a
    float64 layer norm gives it (not 0), the other rows are untouched, and the weight gradient sums both."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 16)).astype(np.float32)
    x[1] *= np.float32(3e20)
    x[3] *= np.float32(1e36)
    w, b = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    dy = rng.standard_normal((4, 16)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dx, grads = layer_norm_backward(dy, x, w, b)
    dx64, grads64 = layer_norm_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64))
    scale = np.abs(dx64).max(axis=-1, keepdims=True)  # rows differ by 1e36 in scale: compare each to its own
    np.testing.assert_allclose(dx / scale, dx64 / scale, rtol=0, atol=1e-5)
    np.testing.assert_allclose(grads["weight"], grads64["weight"], rtol=0, atol=1e-5 * np.abs(grads64["weight"]).max())


def test_huge_inputs_give_the_encoders_exact_output():
    model = npp.PerceiverModel.init(SMALL, seed=0)
    x = np.random.default_rng(1).standard_normal((2, 5, SMALL.d_model)).astype(np.float32)
    expected = model(x * np.float32(1e3)).last_hidden_state  # layer norm makes the encoder scale-invariant
    for scale in (1e19, 1e20, 1e30):
        np.testing.assert_allclose(model(x * np.float32(scale)).last_hidden_state, expected, rtol=0, atol=1e-5)


def test_nan_at_a_masked_input_turns_its_row_to_nan_as_in_hf():
    """Masking is additive (as in HF): a masked input still goes through the key and value projections, and
    a NaN there reaches the whole row. Rows without it are untouched. Documented in docs/hf-parity.md."""
    model = npp.PerceiverModel.init(SMALL, seed=0)
    x = np.random.default_rng(1).standard_normal((2, 5, SMALL.d_model)).astype(np.float32)
    mask = np.ones((2, 5)); mask[1, 4] = 0
    clean = model(x, attention_mask=mask).last_hidden_state
    x[1, 4] = np.nan
    out = model(x, attention_mask=mask).last_hidden_state
    assert np.isnan(out[1]).all() and np.array_equal(out[0], clean[0])
    x[1, 4] = 0  # the fix the docs give: clean padded positions first
    np.testing.assert_allclose(model(x, attention_mask=mask).last_hidden_state, clean, atol=1e-6)


def test_hf_agrees_on_nan_rows_and_on_sane_scales():
    torch = pytest.importorskip("torch", reason="compares with HF")
    transformers = pytest.importorskip("transformers", reason="compares with HF")
    hf_config = transformers.PerceiverConfig(num_latents=4, d_latents=16, d_model=8, num_blocks=1,
                                             num_self_attends_per_block=1, num_self_attention_heads=2,
                                             num_cross_attention_heads=2)
    hf = transformers.PerceiverModel(hf_config).eval()
    model = npp.PerceiverModel.from_state_dict(PerceiverConfig.from_dict(hf_config.to_dict()),
                                               {k: v.detach().numpy() for k, v in hf.state_dict().items()})
    x = np.random.default_rng(2).standard_normal((2, 5, 8)).astype(np.float32)
    mask = np.ones((2, 5), np.float32); mask[1, 4] = 0
    x[1, 4] = np.nan
    with torch.no_grad():
        ref = hf(inputs=torch.from_numpy(x), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    ours = model(x, attention_mask=mask).last_hidden_state
    assert np.array_equal(np.isnan(ours), np.isnan(ref)) and np.isnan(ref[1]).all()
    np.testing.assert_allclose(ours[0], ref[0], atol=1e-5)
    x[1, 4] = 0
    with torch.no_grad():  # HF at a sane scale == npperceiver at a huge one
        ref = hf(inputs=torch.from_numpy(x * np.float32(1e3))).last_hidden_state.numpy()
    np.testing.assert_allclose(model(x * np.float32(1e25)).last_hidden_state, ref, atol=1e-5)


# ============================================================================ 8. the suite without torch
def test_the_suite_skips_cleanly_without_torch_and_transformers(tmp_path):
    """A learner without the parity extra runs the suite: every test that needs torch or transformers must
    skip, none may error. torch and transformers are hidden behind stubs whose import fails."""
    for name in ("torch", "transformers"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(  # what Python raises for a package that is not there
            f"raise ModuleNotFoundError(\"No module named '{name}' (hidden for this test)\", name='{name}')\n")
    uses_them = re.compile(r"importorskip\(\s*[\"'](torch|transformers)|^\s*(import|from) (torch|transformers|hf_reference)\b",
                           re.M)
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if p.name != "test_hostile.py" and uses_them.search(p.read_text(encoding="utf-8")))
    assert "tests/test_mlm.py" in files and "tests/test_parity.py" in files
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    summary = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0 and not re.search(r"\d+ (failed|errors?)\b", summary), proc.stdout[-3000:]
    assert re.search(r"\d+ skipped", summary)  # the parity tests did run into the missing packages
