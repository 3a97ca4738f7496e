"""saetools: find misalignment directions inside language models and put them to work."""

__version__ = "0.1.0"
