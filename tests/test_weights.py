"""Weight files: .npz and .safetensors (read and written with numpy alone), and the HF key map."""

import json
import struct

import numpy as np
import pytest

import npperceiver as npp
from npperceiver.weights import flatten, unflatten

CFG = npp.load_preset("small")


@pytest.fixture(scope="module")
def state_dict():
    return npp.PerceiverModel.init(CFG, seed=0).state_dict()


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_save_load_round_trip(tmp_path, state_dict, suffix):
    path = tmp_path / f"w{suffix}"
    npp.save_weights(path, state_dict)
    back = npp.load_weights(path)
    assert list(back) == list(state_dict)
    assert all(back[k].dtype == np.float32 and np.array_equal(back[k], v) for k, v in state_dict.items())
    model = npp.PerceiverModel.from_state_dict(CFG, back)
    assert model.state_dict().keys() == state_dict.keys()


def test_safetensors_interoperates_with_the_reference_library(tmp_path, state_dict):
    st = pytest.importorskip("safetensors.numpy")
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    npp.save_weights(ours, state_dict)
    st.save_file(dict(state_dict), str(theirs))
    for k, v in st.load_file(str(ours)).items():  # the library reads our file
        assert np.array_equal(v, state_dict[k])
    for k, v in npp.load_weights(theirs).items():  # we read the library's file
        assert np.array_equal(v, state_dict[k])


def test_bfloat16_safetensors_become_float32(tmp_path):
    values = np.array([1.0, -2.5, 0.15625, 2.0**100], np.float32)  # exactly representable in bfloat16
    raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"w": {"dtype": "BF16", "shape": [4], "data_offsets": [0, len(raw)]}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + raw)
    out = npp.load_weights(path)["w"]
    assert out.dtype == np.float32 and np.array_equal(out, values)


@pytest.mark.parametrize("name,content,pattern", [
    ("w.safetensors", b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}", "not a valid .safetensors file"),
    ("w.safetensors", b"xx", "not a valid .safetensors file"),
    ("w.npz", b"not a zip", "not a valid .npz file: it is not a zip archive"),
])
def test_corrupt_files_give_value_errors(tmp_path, name, content, pattern):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=pattern):
        npp.load_weights(path)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        npp.load_weights(tmp_path / "nope.npz")
    with pytest.raises(ValueError, match="does not exist"):
        npp.load_weights(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="must end in .npz or .safetensors"):
        npp.load_weights(tmp_path / "w.bin")


def test_flatten_unflatten_are_inverse(state_dict):
    nested = unflatten(state_dict)
    assert len(nested["encoder"]["self_attends"]) == CFG.num_self_attends_per_block
    assert "layernorm2" in nested["encoder"]["cross_attention"]["attention"]["self"]
    assert "layernorm2" not in nested["encoder"]["self_attends"][0]["attention"]["self"]  # nn.Identity in HF
    assert dict(flatten(nested)) == state_dict


def test_param_shapes_of_the_language_perceiver_encoder():
    shapes = npp.param_shapes(npp.load_preset("language-perceiver"))
    # spec §9: full language-perceiver widths (qk 256, v 1280)
    assert shapes["encoder.cross_attention.attention.self.query.weight"] == (256, 1280)
    assert shapes["encoder.cross_attention.attention.self.key.weight"] == (256, 768)
    assert shapes["encoder.cross_attention.attention.self.value.weight"] == (1280, 768)
    assert shapes["encoder.self_attends.25.attention.output.dense.weight"] == (1280, 1280)
    assert len(shapes) == 1 + 18 + 26 * 16
