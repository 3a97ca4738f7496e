"""saetools: find misalignment directions inside language models and put them to work.

The public API on one page, re-exported lazily (importing ``saetools`` does not import torch).
The data flow, stage by stage:

    from saetools import load_model, capture, DirectionSet              # load, capture
    from saetools import extract_diffmeans, extract_modeldiff          # extract directions
    from saetools import steer, Intervention, generate                 # steer while generating
    from saetools import RegularizedLoss, DirectionalKL, KL            # regularize fine-tuning
    from saetools import train, TrainConfig, evaluate                  # train, evaluate
    from saetools import load_sae, LatentClamp                          # SAEs through sae-lens
    from saetools import export_directions, import_directions          # other tools' files

``steer`` and ``capture`` are packages that can be called as their headline function:
``with saetools.steer(model, [iv]): ...`` (see :mod:`saetools.callable_package`).
The package map (what each module owns and may import) is in docs/design.md.
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
    "extract_modeldiff": "extract.modeldiff",
    # steering
    "steer": "steer",
    "Intervention": "steer",
    "interventions_from_directions": "steer",
    "generate": "steer",
    # SAEs
    "load_sae": "sae",
    "LatentClamp": "sae",
    # regularize
    "RegularizedLoss": "regularize",
    "DirectionalKL": "regularize",
    "DirectionalL2": "regularize",
    "KL": "regularize",
    "LDIFS": "regularize",
    "Steer": "regularize",
    "Ablate": "regularize",
    "SAELatents": "regularize",
    # train
    "train": "train",
    "TrainConfig": "train",
    "RegularizedTrainer": "train",
    "RegularizedTrainerMixin": "train",
    # evaluate
    "evaluate": "evaluate",
    # export
    "export_directions": "export",
    "import_directions": "export",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        mod = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        # a package that is its own headline function (steer, capture) is returned as the package:
        # importing it makes it an attribute of ``saetools`` anyway (see callable_package)
        return mod if _EXPORTS[name] == name and callable(mod) else getattr(mod, name)
    raise AttributeError(f"module 'saetools' has no attribute {name!r}")
