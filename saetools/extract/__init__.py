"""Extractors: each turns captured activations into a DirectionSet."""

from .diffmeans import extract_diffmeans, pair_examples

__all__ = ["extract_diffmeans", "pair_examples"]
