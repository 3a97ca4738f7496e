"""1 when the generated answer names the right capital (case-insensitive), else 0."""


def contains(references, predictions, **kwargs):
    return float(references[0].lower() in predictions[0].lower())
