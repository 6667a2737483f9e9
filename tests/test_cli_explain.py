"""explain: the compact default (one row per layer, then what becomes of each mask) and the --full table, each
saying exactly where HF's masks act and that the latent mask is npperceiver's (HF passes attention_mask=None)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import npperceiver as npp
from npperceiver.trace import mlm_steps
from npperceiver_cli import cli


@pytest.fixture
def run():
    try:  # click 8.1 mixes stderr into output unless told not to; 8.2 keeps them apart and drops the flag
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()

    def invoke(*args):
        result = runner.invoke(cli.main, ["explain", *args])
        assert result.exit_code == 0, result.stderr
        return result.stdout
    return invoke


def _table(out: str) -> list[list[str]]:
    """The compact table's rows, cut into cells at the header's column starts."""
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("HF module"))
    starts = [i for i, c in enumerate(lines[header + 1]) if c == "-" and (i == 0 or lines[header + 1][i - 1] == " ")]
    rows = []
    for line in lines[header + 2:]:
        if not line:
            break
        rows.append([line[a:b].strip() for a, b in zip(starts, [*starts[1:], None])])
    return rows


def test_compact_view_is_one_row_per_layer(run):
    rows = _table(run("--config", "small", "--batch", "2", "--seq-len", "5"))
    assert [r[0] for r in rows] == [
        "inputs", "embeddings", "encoder.cross_attention",
        "encoder.self_attends.0 (block 1)", "encoder.self_attends.1 (block 1)",
        "encoder.self_attends.0 (block 2)", "encoder.self_attends.1 (block 2)", "last_hidden_state"]
    assert [r[2] for r in rows] == ["(2, 5, 24)"] + ["(2, 16, 32)"] * 7
    assert rows[2][1] == "latents attend to inputs, 2 heads, qk 24, v 24" and rows[2][3] == "inputs_mask"
    assert {r[1] for r in rows[3:7]} == {"latents attend to latents, 4 heads, qk 32, v 32"}
    # HF QUIRK in the rows: layer i reads head_mask[i] in every block
    assert [r[3] for r in rows[3:7]] == [f"head_mask[{i}], latent_mask*" for i in (0, 1, 0, 1)]


def test_compact_view_keeps_hfs_masks_apart_from_the_latent_mask(run):
    out = run("--config", "small", "--batch", "2", "--seq-len", "5")
    lines = out.splitlines()
    hf = lines.index("The masks, as PerceiverModel.forward prepares them:")
    ours = next(i for i, line in enumerate(lines) if line.startswith("* npperceiver's latent_mask"))
    assert hf < ours
    assert not any("latent_mask" in line for line in lines[hf:ours])  # not listed among HF's masks
    assert "attention_mask=None" in lines[ours]
    assert "attention_mask (2, 5) -> inputs_mask (2, 1, 1, 5)" in out and "the cross-attention only" in out
    assert "rows 2..3 never read" in out
    assert "latent_mask (2, 16) -> attention_mask (2, 1, 1, 16): every self-attention layer" in out


def test_compact_view_of_the_language_perceiver_is_short_and_narrow(run):
    out = run("--config", "language-perceiver", "--batch", "1", "--seq-len", "2048")
    lines = out.splitlines()
    assert len(lines) < 45 and max(map(len, lines)) <= 120
    rows = _table(out)
    assert len(rows) == 2 + 1 + 26 + 1 and rows[-2][0] == "encoder.self_attends.25"
    assert rows[2][1] == "latents attend to inputs, 8 heads, qk 256, v 1280"  # qk_channels, v_channels
    assert "--full lists all" in out


def test_compact_view_of_the_mlm(run):
    out = run("--config", "small", "--model", "mlm")
    rows = _table(out)
    assert "latent_mask" not in "".join(r[3] for r in rows) and "PerceiverForMaskedLM takes no latent mask." in out
    decoder = next(r for r in rows if r[0] == "perceiver.decoder.decoding_cross_attention")
    assert decoder[1] == "output queries attend to the latents, 8 heads, qk 256, v 24" and decoder[3] == "none: HF drops query_mask"
    assert [r[0] for r in rows][-2:] == ["embedding_decoder", "logits"]


def test_full_view_says_hf_passes_no_latent_mask(run):
    out = run("--config", "small", "--full")
    headings = [line for line in out.splitlines() if line.startswith("-- ")]
    masks = next(h for h in headings if "masks" in h)
    assert "latent_mask is npperceiver's" in masks and "attention_mask=None" in masks
    assert "three masks" not in masks
    self_headings = [h for h in headings if h.startswith("-- encoder.self_attends.")]
    assert len(self_headings) == 4
    assert all("HF passes attention_mask=None here" in h for h in self_headings)
    bias_rows = [line for line in out.splitlines() if "+ attention_mask" in line]
    assert len(bias_rows) == 4 and all(line.endswith("attention_mask (= latent_mask; HF: None)") for line in bias_rows)


def test_full_view_of_the_mlm_has_no_latent_mask(run):
    out = run("--config", "small", "--model", "mlm", "--full")
    assert "latent_mask" not in out.replace("takes no latent mask", "")
    n = len(mlm_steps(npp.load_preset("small")))
    assert len([line for line in out.splitlines() if line[:1].isdigit()]) == n
