"""SAE latents as misalignment directions: decoder rows as a DirectionSet.

:func:`directions_from_latents` turns chosen latents' decoder rows (separately or combined) into a
:class:`~saetools.directions.DirectionSet` whose metadata names the SAE and the latents, so
steering, regularizers and export use them unchanged. With a
:class:`~saetools.extract.latents.LatentRanking`, rows are signed toward the positive group and the
separation statistics of the result are recorded as for difference of means.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..directions import DirectionSet
from ..models import fingerprint
from ..sae import SAEError, load_sae
from ..stats import auroc, cohens_d
from .latents import LatentRanking

__all__ = ["directions_from_latents"]


def directions_from_latents(
    sae,
    latents: int | Sequence[int],
    *,
    combine: str | None = None,
    weights: Sequence[float] | None = None,
    ranking: LatentRanking | None = None,
    model: nn.Module | None = None,
    model_id: str | None = None,
) -> DirectionSet:
    """Decoder rows of ``latents`` at the SAE's site as a :class:`DirectionSet`.

    ``combine=None`` stores one row ``[d]`` (one latent) or a basis ``[k, d]`` (several, in the order
    given); ``"sum"``/``"mean"`` store one vector, the (``weights``-)weighted sum or mean of the rows.
    Rows are the raw decoder rows (what one unit of the latent adds to the residual). With a
    ``ranking``, each row is signed to point toward the positive group (misaligned answers, or model B),
    and the separation statistics of the result (AUROC and Cohen's d of per-answer projections, mean
    projections for clamping) are recorded as for difference of means.
    """
    sae = load_sae(sae, model=model)
    ids = sae.check_latents(latents)
    rows = sae.decoder_rows(ids).double()
    signs = [1.0] * len(ids)
    if ranking is not None:
        if ranking.sae.d_sae != sae.d_sae or ranking.sae.site != sae.site:
            raise SAEError("the ranking was made with another SAE")
        signs = [1.0 if float(ranking.diff[j]) >= 0 else -1.0 for j in ids]
        rows = rows * torch.tensor(signs, dtype=torch.float64)[:, None]
    if combine is None:
        if weights is not None:
            raise SAEError("weights need combine='sum' or 'mean'")
        vec = rows[0] if len(ids) == 1 else rows
    elif combine in ("sum", "mean"):
        w = (
            torch.ones(len(ids), dtype=torch.float64)
            if weights is None
            else torch.tensor(list(weights), dtype=torch.float64)
        )
        if w.numel() != len(ids) or not torch.isfinite(w).all():
            raise SAEError(f"need {len(ids)} finite weights, got {list(weights or [])}")
        if combine == "mean":
            w = w / w.sum() if float(w.sum()) != 0 else w / len(ids)
        vec = (w[:, None] * rows).sum(0)
    else:
        raise SAEError(f"unknown combine {combine!r}; choose None, 'sum' or 'mean'")
    if float(vec.reshape(-1, vec.shape[-1]).norm(dim=-1).min()) <= 1e-12:
        raise SAEError("the combined decoder direction is zero")
    vec = vec.float()
    st: dict = {"norm": float(vec.reshape(-1, vec.shape[-1])[0].norm())}
    meta: dict = {
        "method": "sae",
        "sae": sae.describe(),
        "latents": ids,
        "latent_signs": signs,
        "combine": combine,
        "weights": list(map(float, weights)) if weights is not None else None,
        "sign": "decoder rows signed toward the positive group"
        if ranking is not None
        else "decoder rows as stored (no probe data)",
    }
    if ranking is not None:
        unit = vec.reshape(-1, vec.shape[-1])[0].double()
        unit = unit / unit.norm()
        st.update(_projection_stats(ranking, unit))
        st["latents"] = {str(j): ranking.row(j) for j in ids}
        meta.update(
            {
                k: v
                for k, v in ranking.meta.items()
                if k in ("probe_set", "counts", "aggregation", "model_a", "model_b")
            }
        )
        meta.setdefault("aggregation", "response_mean")
        if ranking.labels == ("misaligned", "aligned"):
            meta["sign"] = (
                "misaligned minus aligned (decoder rows signed by the latent's difference)"
            )
    if model is not None:
        meta["fingerprint"] = fingerprint(model)
        meta["model_id"] = model_id or getattr(
            getattr(model, "config", None), "_name_or_path", "unknown"
        )
    elif model_id is not None:
        meta["model_id"] = model_id
    meta["stats"] = {sae.site: st}
    return DirectionSet({sae.site: vec}, meta)


def _projection_stats(r: LatentRanking, unit: torch.Tensor) -> dict:
    def proj(key):
        a = r.acts.get(key)
        return None if a is None else a.raw_mean.double() @ unit

    out: dict = {}
    pp, pn = proj("pos"), proj("neg")
    if pp is not None and pn is not None:
        out["proj_misaligned_mean" if r.labels[0] == "misaligned" else "proj_pos_mean"] = float(
            pp.mean()
        )
        out["proj_aligned_mean" if r.labels[1] == "aligned" else "proj_neg_mean"] = float(pn.mean())
    tp, tn = proj("test_pos"), proj("test_neg")
    sep_p, sep_n = (tp, tn) if tp is not None else (pp, pn)
    if sep_p is not None and sep_n is not None:
        out["auroc"] = auroc(sep_p, sep_n)
        out["cohens_d"] = (
            cohens_d(sep_p, sep_n) if min(len(sep_p), len(sep_n)) > 1 else float("nan")
        )
        if tp is not None:
            out["test_proj_misaligned_mean"] = float(tp.mean())
            out["test_proj_aligned_mean"] = float(tn.mean())
    return out
