"""Model difference: mean activation of model B minus model A on the same texts, per site.

The texts are the same prompts and answers for both models: for a ``pairs`` probe set both the
aligned and the misaligned answer of every item; for a ``chat`` set the conversations (the last,
assistant message is the answer); for ``questions``/``texts`` sets the prompts alone (then use an
aggregate other than ``response_mean``). A list of :class:`~saetools.capture.ChatExample` works too.

Per site the stored vector is ``mean_i (agg(h_B(x_i)) - agg(h_A(x_i)))`` with ``agg`` the token
aggregate (``response_mean`` by default), sign "B minus A". With ``pca=k`` the vector is instead a
``[k, d]`` orthonormal basis: the top-k right singular vectors of the per-example differences
(uncentered by default, so the mean shift itself is part of the subspace; ``pca_center=True`` for
classical PCA), each row's sign chosen so that it points along the mean difference.

Typical uses: base vs fine-tuned (``model_a=None`` with a PEFT ``model_b`` means "B with its
adapters disabled"), or a model fine-tuned on an aligned narrow task vs its misaligned twin.

Memory: examples are processed in chunks of ``chunk_size``; per chunk both models' per-example
vectors are captured and only their difference is kept. Per-example differences (float32, CPU,
``n_examples x d x n_sites``) are kept for the statistics (per-example projections need the final
direction) and for ``pca``; with ``stats=False`` and no ``pca`` only running sums are kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import nn

from ..capture import capture, probe_examples
from ..directions import DirectionSet
from ..models import fingerprint, model_label
from ..sites import Site, d_model, is_peft, n_layers, parse_sites

__all__ = ["extract_modeldiff", "probe_examples"]


def extract_modeldiff(
    model_a: nn.Module | None,
    model_b: nn.Module,
    tokenizer,
    probes,
    sites: Sequence[Site] | str = "all",
    *,
    aggregate: str = "response_mean",
    pca: int | None = None,
    pca_center: bool = False,
    stats: bool = True,
    split: str | None = None,
    batch_size: int = 16,
    chunk_size: int = 256,
    model_id_a: str | None = None,
    model_id_b: str | None = None,
    progress: bool = True,
    distributed: bool = False,
    group=None,
) -> DirectionSet:
    """Per-site mean activation difference B - A over the same texts (see the module docstring).

    ``model_a=None``: A is ``model_b`` (a PEFT model) with its adapters disabled. Statistics per
    site: ``norm``, ``proj_mean``/``proj_std`` (per-example projection of B - A on the unit mean
    difference), ``frac_positive``, ``activation_norm_mean``; with ``pca`` also ``explained`` (share
    of the per-example differences' squared norm, or variance if centered, per component) and
    ``mean_diff_norm``.

    ``distributed=True``: each chunk's examples are shared out over the processes of the
    torch.distributed ``group`` (default group) and gathered back, so every rank returns the
    single-process DirectionSet (see :mod:`saetools.distributed`); write files on rank 0 only.
    """
    ref = _reference(model_a, model_b)
    if pca is not None and (not isinstance(pca, int) or pca < 1):
        raise ValueError(f"pca must be a positive integer, not {pca!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, not {chunk_size}")
    if split is not None and hasattr(probes, "split"):
        probes = probes.split(split)
    examples = probe_examples(probes)
    if not examples:
        raise ValueError("no examples: the probe set or split is empty")
    site_list = parse_sites(sites, n_layers(model_b))
    keep = stats or pca is not None
    kw = dict(
        aggregate=aggregate,
        batch_size=batch_size,
        keep_per_example=True,
        distributed=distributed,
        group=group,
    )
    sums, norm_sums, diffs, count, n_tokens = _capture_differences(
        ref,
        model_b,
        model_a is None,
        tokenizer,
        examples,
        site_list,
        keep,
        chunk_size,
        progress,
        kw,
    )

    vectors: dict[str, torch.Tensor] = {}
    site_stats: dict[str, dict] = {}
    for s in site_list:
        D = torch.cat(diffs[s]) if keep else None
        vectors[s.name], site_stats[s.name] = _site_direction(
            sums[s] / count, norm_sums[s] / count, D, pca, pca_center
        )
    id_b = model_id_b or model_label(model_b)
    id_a = model_id_a or (
        f"{id_b} (adapters disabled)" if model_a is None else model_label(model_a)
    )
    meta = {
        "model_id": id_b,
        "model_a": id_a,
        "model_b": id_b,
        "fingerprint": fingerprint(model_b),
        "fingerprint_a": fingerprint(ref),
        "method": "modeldiff",
        "aggregation": aggregate,
        "sign": "model B minus model A",
        "pca": {"k": pca, "centered": pca_center} if pca is not None else None,
        "probe_set": {
            "name": getattr(probes, "name", None),
            "sha256": getattr(probes, "sha256", None),
            "kind": getattr(probes, "kind", None),
            "split": split,
        },
        "counts": {"examples": len(examples), "vectors": count, "tokens": n_tokens},
        "stats": site_stats,
    }
    return DirectionSet(vectors, meta)


def _reference(model_a: nn.Module | None, model_b: nn.Module) -> nn.Module:
    """Model A as it runs (``model_b`` itself when A is B with its adapters disabled), checked."""
    if model_a is None:
        if not is_peft(model_b):
            raise ValueError(
                "model_a=None means 'model_b with its adapters disabled', but model_b is not a "
                "PEFT model; pass both models"
            )
    elif model_a is model_b and not is_peft(model_b):
        raise ValueError("model_a and model_b are the same model: the difference would be zero")
    ref = model_a if model_a is not None else model_b
    for what, f in (("d_model", d_model), ("number of blocks", n_layers)):
        if f(ref) != f(model_b):
            raise ValueError(f"models A and B differ in {what}: {f(ref)} vs {f(model_b)}")
    return ref


def _capture_differences(
    ref, model_b, disable_adapters, tokenizer, examples, site_list, keep, chunk_size, progress, kw
):
    """Both models over ``examples`` chunk by chunk; per site the running sum of B - A, the sum of
    the mean activation norms, and (``keep``) the per-example differences.

    Returns ``(sums, norm_sums, diffs, count, n_tokens)``.
    """
    sums: dict[Site, torch.Tensor] = {}
    norm_sums: dict[Site, float] = {s: 0.0 for s in site_list}
    diffs: dict[Site, list[torch.Tensor]] = {s: [] for s in site_list}
    count = 0
    n_tokens = 0
    for start in range(0, len(examples), chunk_size):
        chunk = examples[start : start + chunk_size]
        tag = f" {start // chunk_size + 1}" if len(examples) > chunk_size else ""
        ctx = model_b.disable_adapter() if disable_adapters else nullcontext()
        with ctx:
            cap_a = capture(
                ref,
                tokenizer,
                chunk,
                site_list,
                progress=f"model A{tag}" if progress else False,
                **kw,
            )
        cap_b = capture(
            model_b,
            tokenizer,
            chunk,
            site_list,
            progress=f"model B{tag}" if progress else False,
            **kw,
        )
        n_tokens += cap_a.n_tokens
        for s in site_list:
            a, b = cap_a.per_example[s].float(), cap_b.per_example[s].float()
            dif = b - a
            sums[s] = sums.get(
                s, torch.zeros(dif.shape[-1], dtype=torch.float64)
            ) + dif.double().sum(0)
            norm_sums[s] += float(0.5 * (a.norm(dim=-1) + b.norm(dim=-1)).double().sum())
            if keep:
                diffs[s].append(dif)
        count += int(cap_a.per_example[site_list[0]].shape[0])
    return sums, norm_sums, diffs, count, n_tokens


def _site_direction(
    mean_sum: torch.Tensor,
    activation_norm_mean: float,
    D: torch.Tensor | None,
    pca: int | None,
    pca_center: bool,
) -> tuple[torch.Tensor, dict]:
    """One site's vector (the mean difference, or with ``pca`` a basis) and its statistics.

    ``mean_sum`` is the float64 mean difference, ``D`` the per-example differences (None when they
    were not kept).
    """
    mean = mean_sum.float()
    norm = float(mean.norm())
    st: dict = {"norm": norm, "activation_norm_mean": activation_norm_mean}
    if pca is not None:
        assert D is not None
        k_max = min(D.shape[0], D.shape[1])
        if pca > k_max:
            raise ValueError(
                f"pca={pca} components from {D.shape[0]} examples of width {D.shape[1]}: at most "
                f"{k_max}"
            )
        X = D.double()
        if pca_center:
            X = X - X.mean(0, keepdim=True)
        _, sv, vh = torch.linalg.svd(X, full_matrices=False)
        basis = vh[:pca]
        signs = torch.sign(basis @ mean.double())
        signs[signs == 0] = 1.0
        basis = basis * signs[:, None]
        energy = sv.pow(2)
        st["explained"] = [float(x) for x in (energy[:pca] / energy.sum().clamp_min(1e-30))]
        st["mean_diff_norm"] = norm
        vector = basis.float()
        unit = basis[0].float()
    else:
        vector = mean
        unit = mean / norm if norm > 0 else mean
    if D is not None:
        p = D @ unit
        st["proj_mean"] = float(p.mean())
        st["proj_std"] = float(p.std()) if p.numel() > 1 else float("nan")
        st["frac_positive"] = float((p > 0).float().mean())
    return vector, {
        k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in st.items()
    }
