"""Configs shipped with npperceiver, loadable by name.

* ``small`` -- a tiny encoder that runs and draws instantly (different head counts for cross- and
  self-attention, two blocks of two layers), for lessons and tests;
* ``language-perceiver`` -- the encoder of ``deepmind/language-perceiver`` (HF's ``config.json`` for it,
  unrelated image/audio keys included).
"""

from __future__ import annotations

from importlib import resources

from ..config import PerceiverConfig


def available_presets() -> list[str]:
    """Names of the bundled presets, sorted."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".json"))


def load_preset(name: str) -> PerceiverConfig:
    """The bundled config called ``name`` (with or without ``.json``)."""
    stem = name[:-5] if name.endswith(".json") else name
    if stem not in available_presets():
        raise ValueError(f"unknown preset {name!r}; available presets: {', '.join(available_presets())}")
    with resources.as_file(resources.files(__name__) / f"{stem}.json") as path:
        return PerceiverConfig.from_json(path)
