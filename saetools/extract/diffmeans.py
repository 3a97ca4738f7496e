"""Difference of means: mean misaligned-answer activation minus mean aligned-answer activation, per site.

The direction is computed on the probe set's ``train`` split; its separation (AUROC and Cohen's d of
the projection on the unit direction, misaligned vs aligned) is measured on the ``test`` split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..capture import capture, pair_examples
from ..directions import DirectionSet
from ..models import fingerprint
from ..sites import Site, n_layers, parse_sites
from ..stats import auroc, cohens_d


def extract_diffmeans(
    model: nn.Module,
    tokenizer,
    probes,
    sites: Sequence[Site] | str = "all",
    *,
    aggregate: str = "response_mean",
    batch_size: int = 16,
    train_split: str | None = "train",
    test_split: str | None = "test",
    model_id: str | None = None,
    progress: bool = True,
    distributed: bool = False,
    group=None,
) -> DirectionSet:
    """Extract difference-of-means directions from a ``pairs`` probe set.

    ``probes`` is a :class:`probes.ProbeSet`. Raw vectors are stored; per-site statistics (norm,
    held-out AUROC and Cohen's d, aligned/misaligned mean projections) go into the metadata.

    ``distributed=True``: every process of the torch.distributed ``group`` (default group) captures a
    share of the examples and all processes return the same DirectionSet as one process would (see
    :mod:`saetools.distributed`); call it on every rank, write files on rank 0 only.
    """
    if probes.kind != "pairs":
        raise ValueError(
            f"difference of means needs a 'pairs' probe set; {probes.name} is '{probes.kind}'"
        )
    site_list = parse_sites(sites, n_layers(model))
    splits = {it.split for it in probes.items}
    has_splits = train_split in splits and test_split in splits
    train = probes.split(train_split) if has_splits else probes
    test = probes.split(test_split) if has_splits else probes
    kw = dict(aggregate=aggregate, batch_size=batch_size, distributed=distributed, group=group)
    cap_al, cap_mis = _capture_pairs(
        model, tokenizer, train.items, site_list, "train", progress, **kw
    )
    te_al, te_mis = _capture_pairs(
        model, tokenizer, test.items, site_list, "test", progress, keep_per_example=True, **kw
    )

    vectors, stats = {}, {}
    for s in site_list:
        vectors[s.name], stats[s.name] = _site_direction(s, cap_al, cap_mis, te_al, te_mis)
    meta = {
        "model_id": model_id or getattr(getattr(model, "config", None), "_name_or_path", "unknown"),
        "fingerprint": fingerprint(model),
        "method": "diffmeans",
        "aggregation": aggregate,
        "sign": "misaligned minus aligned",
        "probe_set": {
            "name": probes.name,
            "sha256": probes.sha256,
            "train_split": train_split if has_splits else None,
            "test_split": test_split if has_splits else None,
        },
        "counts": {
            "train_pairs": len(train),
            "test_pairs": len(test),
            "train_tokens": cap_al.n_tokens + cap_mis.n_tokens,
        },
        "separation_split": test_split
        if has_splits
        else "train (no held-out split in the probe set)",
        "stats": stats,
    }
    return DirectionSet(vectors, meta)


def _capture_pairs(model, tokenizer, items, site_list, split: str, progress: bool, **kw) -> tuple:
    """The captures of the aligned and of the misaligned answers of ``items`` (one split)."""
    aligned, misaligned = pair_examples(items)
    return tuple(
        capture(
            model,
            tokenizer,
            examples,
            site_list,
            progress=f"{label} ({split})" if progress else False,
            **kw,
        )
        for label, examples in (("aligned", aligned), ("misaligned", misaligned))
    )


def _site_direction(s: Site, cap_al, cap_mis, te_al, te_mis) -> tuple[torch.Tensor, dict]:
    """The raw direction at ``s`` (train means) and its statistics (held-out projections)."""
    mu_al, mu_mis = cap_al.mean(s), cap_mis.mean(s)
    v = mu_mis - mu_al
    norm = float(v.norm())
    unit = v / norm if norm > 0 else v
    p_al = te_al.per_example[s] @ unit
    p_mis = te_mis.per_example[s] @ unit
    return v, {
        "norm": norm,
        "auroc": auroc(p_mis, p_al),
        "cohens_d": cohens_d(p_mis, p_al) if len(p_al) > 1 else float("nan"),
        "proj_aligned_mean": float(mu_al @ unit),
        "proj_misaligned_mean": float(mu_mis @ unit),
        "test_proj_aligned_mean": float(p_al.mean()),
        "test_proj_misaligned_mean": float(p_mis.mean()),
        "activation_norm_mean": float(0.5 * (mu_al.norm() + mu_mis.norm())),
        # the unit of norm-relative steering strengths (DirectionSet.resid_norm)
        "resid_norm_mean": float(
            torch.cat([te_al.per_example[s], te_mis.per_example[s]]).double().norm(dim=-1).mean()
        ),
    }


def projections(per_example: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Projection of each row on the unit version of ``direction``."""
    return per_example.float() @ (direction / direction.norm())
