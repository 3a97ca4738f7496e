"""Extractors: each turns captured activations into a DirectionSet.

Modules:

* :mod:`~saetools.extract.diffmeans`: difference of means between misaligned and aligned answers.
* :mod:`~saetools.extract.modeldiff`: the same texts through a base and a fine-tuned model.
* :mod:`~saetools.extract.combine`: several direction sets stacked into one orthonormal basis.
* :mod:`~saetools.extract.latents`: SAE latent statistics on probe answers and latent rankings.
* :mod:`~saetools.extract.latent_report`: the plotly report of a latent ranking.
* :mod:`~saetools.extract.latent_directions`: chosen SAE latents' decoder rows as a DirectionSet.
* :mod:`~saetools.extract.sae`: deprecated; re-exports the three latent modules' public names.
"""

from .combine import stack_directions
from .diffmeans import extract_diffmeans, pair_examples
from .modeldiff import extract_modeldiff

__all__ = ["extract_diffmeans", "extract_modeldiff", "pair_examples", "stack_directions"]
