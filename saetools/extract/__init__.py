"""Extractors: each turns captured activations into a DirectionSet."""

from .diffmeans import extract_diffmeans, pair_examples
from .modeldiff import extract_modeldiff

__all__ = ["extract_diffmeans", "extract_modeldiff", "pair_examples"]
