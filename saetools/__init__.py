"""saetools: find misalignment directions inside language models and put them to work.

The public API, re-exported lazily (importing ``saetools`` does not import torch):

    from saetools import load_model, capture, extract_diffmeans, DirectionSet
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # models
    "load_model": "models",
    "LoadedModel": "models",
    "default_model_dir": "models",
    "fingerprint": "models",
    # sites
    "Site": "sites",
    "parse_sites": "sites",
    "hooks": "sites",
    # capture
    "ChatExample": "capture",
    "capture": "capture",
    "record": "capture",
    "CaptureResult": "capture",
    # directions
    "DirectionSet": "directions",
    "DirectionFileError": "directions",
    # extract
    "extract_diffmeans": "extract.diffmeans",
    # steering
    "Intervention": "steer",
    "generate": "steer",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        mod = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(mod, name)
    raise AttributeError(f"module 'saetools' has no attribute {name!r}")
