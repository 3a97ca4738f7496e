"""SAE latents on probe answers: per-latent statistics and rankings.

* :func:`latent_activations` runs chat examples through the model, encodes the site's activation of
  every answer token with the SAE (hooks stop the forward after the site) and keeps, per example and
  latent, the mean activation over the answer, the share of answer tokens where the latent fires
  (> 0), and its largest activation and where it occurs; also each answer's mean raw activation.
  :func:`latent_activations_from_tensors` does the same for activations you already have.
* :func:`rank_latents` compares the misaligned and aligned answers of a ``pairs`` probe set: per
  latent the mean activation on each side, their difference (misaligned minus aligned), firing rates
  and AUROC (per-answer mean activation, misaligned vs aligned). The ranking uses the ``train`` split;
  the same figures on the ``test`` split are kept as held-out separation.
  :func:`rank_latents_modeldiff` runs the same texts through a base model A and a fine-tuned model B
  and ranks latents by the increase B minus A.

A :class:`LatentRanking` goes on to :func:`saetools.extract.latent_report.latent_report` (a plotly
report of the top latents) and :func:`saetools.extract.latent_directions.directions_from_latents`
(chosen latents' decoder rows as a DirectionSet).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..capture import ChatExample, encode_all, pair_examples, probe_examples, site_batches
from ..models import model_label
from ..sae import LoadedSAE, SAEError, load_sae
from ..sites import is_peft, n_layers, parse_site

__all__ = [
    "RANK_BY",
    "LatentActivations",
    "LatentRanking",
    "auroc_columns",
    "latent_activations",
    "latent_activations_from_tensors",
    "rank_from_activations",
    "rank_latents",
    "rank_latents_modeldiff",
]

RANK_BY = ("diff", "auroc", "cohens_d")


@dataclass
class LatentActivations:
    """Per example (rows) and latent (columns): mean, firing share, max and argmax over its tokens."""

    mean: torch.Tensor  # [n, d_sae] float32
    fire: torch.Tensor  # [n, d_sae] float32, share of tokens with activation > 0
    max: torch.Tensor  # [n, d_sae] float32
    argmax: torch.Tensor  # [n, d_sae] int32, token index within the example's tokens
    n_tokens: torch.Tensor  # [n] int
    raw_mean: torch.Tensor  # [n, d_in] float32, mean raw activation over the same tokens
    tokens: list[list[str]] | None = None  # the tokens themselves (for reports)

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.mean.shape[1])


def _reduce_example(z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    mx, am = z.max(0)
    return z.mean(0), (z > 0).float().mean(0), mx, am.int(), x.mean(0)


def _stack(parts: list[tuple], tokens) -> LatentActivations:
    cols = list(zip(*parts, strict=True))
    return LatentActivations(
        mean=torch.stack(cols[0]).float(),
        fire=torch.stack(cols[1]).float(),
        max=torch.stack(cols[2]).float(),
        argmax=torch.stack(cols[3]),
        n_tokens=torch.tensor(cols[5], dtype=torch.long),
        raw_mean=torch.stack(cols[4]).float(),
        tokens=tokens,
    )


def latent_activations_from_tensors(sae, examples: Sequence[torch.Tensor]) -> LatentActivations:
    """Latent statistics of examples given as token activations ``[t_i, d_in]`` each."""
    sae = load_sae(sae)
    if not examples:
        raise SAEError("no examples")
    parts = []
    for i, x in enumerate(examples):
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != sae.d_in:
            raise SAEError(
                f"example {i}: expected activations [tokens, {sae.d_in}], got {tuple(x.shape)}"
            )
        z = sae.encode(x).float().cpu()
        parts.append((*_reduce_example(z, x.float().cpu()), x.shape[0]))
    return _stack(parts, None)


def latent_activations(
    model: nn.Module,
    tokenizer,
    sae,
    examples: Sequence[ChatExample],
    *,
    tokens: str = "response",
    batch_size: int = 16,
    keep_tokens: bool = True,
    progress: bool | str = True,
) -> LatentActivations:
    """Encode each example's answer tokens (``tokens="response"``) or all real tokens (``"all"``)."""
    sae = load_sae(sae, model=model)
    if tokens not in ("response", "all"):
        raise SAEError(f"tokens must be 'response' or 'all', not {tokens!r}")
    if not examples:
        raise SAEError("no examples (the probe set or split is empty)")
    site = parse_site(sae.site, n_layers(model))
    encoded = encode_all(tokenizer, list(examples))
    if tokens == "response" and any(e.response_end == e.response_start for e in encoded):
        raise SAEError(
            "every example needs an answer to encode its answer tokens; use tokens='all'"
        )
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    results: dict[int, tuple] = {}
    bar = tqdm(
        total=len(order),
        desc=progress if isinstance(progress, str) else "SAE latents",
        disable=not progress,
        unit="ex",
        leave=False,
    )
    try:
        for idx, batch, h in site_batches(model, tokenizer, encoded, order, batch_size, site):
            mask = batch.response_mask if tokens == "response" else batch.attention_mask.bool()
            rows = h[mask]
            z = sae.encode(rows).float().cpu()
            rows = rows.float().cpu()
            counts = mask.sum(-1).tolist()
            off = 0
            for i, c in zip(idx, counts, strict=True):
                results[i] = (*_reduce_example(z[off : off + c], rows[off : off + c]), c)
                off += c
            bar.update(len(idx))
    finally:
        bar.close()
    toks = None
    if keep_tokens:
        toks = []
        for e in encoded:
            lo, hi = (
                (e.response_start, e.response_end)
                if tokens == "response"
                else (0, len(e.input_ids))
            )
            toks.append([tokenizer.decode([t]) for t in e.input_ids[lo:hi]])
    return _stack([results[i] for i in range(len(encoded))], toks)


def auroc_columns(pos: torch.Tensor, neg: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """AUROC of every column, ``pos [n1, L]`` (label 1) against ``neg [n2, L]`` (label 0).

    ``P(pos > neg) + 0.5 P(pos == neg)`` over all pairs, exactly as :func:`saetools.stats.auroc`
    (ties count half), vectorised over columns.
    """
    if pos.ndim != 2 or neg.ndim != 2 or pos.shape[1] != neg.shape[1]:
        raise ValueError(f"need [n1, L] and [n2, L], got {tuple(pos.shape)} and {tuple(neg.shape)}")
    if pos.shape[0] == 0 or neg.shape[0] == 0:
        raise ValueError("auroc needs at least one positive and one negative score")
    out = torch.empty(pos.shape[1], dtype=torch.float64)
    step = max(1, chunk * 4096 // max(1, pos.shape[0] * neg.shape[0]))
    for c in range(0, pos.shape[1], step):
        p = pos[:, None, c : c + step]
        n = neg[None, :, c : c + step]
        gt = (p > n).sum((0, 1)).double()
        eq = (p == n).sum((0, 1)).double()
        out[c : c + step] = (gt + 0.5 * eq) / (pos.shape[0] * neg.shape[0])
    return out


def _cohens_d_columns(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    n1, n2 = pos.shape[0], neg.shape[0]
    if n1 < 2 or n2 < 2:
        return torch.full((pos.shape[1],), float("nan"), dtype=torch.float64)
    p, q = pos.double(), neg.double()
    pooled = ((n1 - 1) * p.var(0) + (n2 - 1) * q.var(0)) / (n1 + n2 - 2)
    d = (p.mean(0) - q.mean(0)) / pooled.sqrt()
    return torch.where(pooled > 0, d, torch.zeros_like(d))


@dataclass
class LatentRanking:
    """Per-latent comparison of a positive group (misaligned answers, or model B) with a negative one.

    Tensors are ``[d_sae]``: ``mean_pos``/``mean_neg`` (mean over examples of the per-example mean
    activation), ``diff = mean_pos - mean_neg``, ``freq_pos``/``freq_neg`` (share of tokens firing),
    ``auroc`` and ``cohens_d`` of the per-example means, all on the ranking split; ``test`` holds the
    same figures on the held-out split when there is one. ``order`` sorts latents by ``by``, best
    first.
    """

    sae: LoadedSAE
    by: str
    labels: tuple[str, str]
    mean_pos: torch.Tensor
    mean_neg: torch.Tensor
    freq_pos: torch.Tensor
    freq_neg: torch.Tensor
    auroc: torch.Tensor
    cohens_d: torch.Tensor
    test: dict[str, torch.Tensor] | None = None
    acts: dict[str, LatentActivations] = field(default_factory=dict, repr=False)
    texts: dict[str, list[str]] = field(default_factory=dict, repr=False)
    meta: dict = field(default_factory=dict)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def diff(self) -> torch.Tensor:
        return self.mean_pos - self.mean_neg

    @property
    def score(self) -> torch.Tensor:
        s = {"diff": self.diff, "auroc": self.auroc, "cohens_d": self.cohens_d}[self.by]
        return torch.nan_to_num(s.double(), nan=float("-inf"))

    @property
    def order(self) -> list[int]:
        # ties broken by the difference, then by the latent id
        s, d = self.score, torch.nan_to_num(self.diff.double(), nan=float("-inf"))
        idx = torch.arange(len(s))
        key = sorted(idx.tolist(), key=lambda j: (-float(s[j]), -float(d[j]), j))
        return key

    def top(self, n: int = 20) -> list[int]:
        return self.order[:n]

    def row(self, j: int) -> dict:
        """Every figure of latent ``j`` as plain numbers."""
        out = {
            "latent": int(j),
            f"mean_{self.labels[0]}": float(self.mean_pos[j]),
            f"mean_{self.labels[1]}": float(self.mean_neg[j]),
            "diff": float(self.diff[j]),
            f"freq_{self.labels[0]}": float(self.freq_pos[j]),
            f"freq_{self.labels[1]}": float(self.freq_neg[j]),
            "auroc": float(self.auroc[j]),
            "cohens_d": float(self.cohens_d[j]),
        }
        if self.test is not None:
            for k, v in self.test.items():
                out[f"test_{k}"] = float(v[j])
        for k, v in self.extra.items():
            out[k] = float(v[j])
        return out

    def to_json(self, top: int = 20) -> dict:
        return {
            "sae": self.sae.describe(),
            "ranked_by": self.by,
            "groups": {"positive": self.labels[0], "negative": self.labels[1]},
            **self.meta,
            "top": [self.row(j) for j in self.top(top)],
        }


def rank_from_activations(
    sae,
    pos: LatentActivations,
    neg: LatentActivations,
    *,
    by: str = "diff",
    test_pos: LatentActivations | None = None,
    test_neg: LatentActivations | None = None,
    labels: tuple[str, str] = ("misaligned", "aligned"),
    meta: dict | None = None,
) -> LatentRanking:
    """Rank latents by how much more they fire on ``pos`` than on ``neg`` examples."""
    if by not in RANK_BY:
        raise SAEError(f"unknown ranking {by!r}; choose one of {', '.join(RANK_BY)}")
    sae = load_sae(sae)
    for a in (pos, neg, test_pos, test_neg):
        if a is not None and a.d_sae != sae.d_sae:
            raise SAEError(f"latent statistics have {a.d_sae} latents but the SAE has {sae.d_sae}")

    def freq(a: LatentActivations) -> torch.Tensor:  # token-weighted share of firing tokens
        w = a.n_tokens.double()[:, None]
        return ((a.fire.double() * w).sum(0) / w.sum()).float()

    test = None
    if test_pos is not None and test_neg is not None:
        test = {
            "mean_pos": test_pos.mean.mean(0),
            "mean_neg": test_neg.mean.mean(0),
            "diff": test_pos.mean.mean(0) - test_neg.mean.mean(0),
            "auroc": auroc_columns(test_pos.mean, test_neg.mean).float(),
        }
    acts = {"pos": pos, "neg": neg}
    if test is not None:
        acts.update({"test_pos": test_pos, "test_neg": test_neg})
    return LatentRanking(
        sae=sae,
        by=by,
        labels=labels,
        mean_pos=pos.mean.mean(0),
        mean_neg=neg.mean.mean(0),
        freq_pos=freq(pos),
        freq_neg=freq(neg),
        auroc=auroc_columns(pos.mean, neg.mean).float(),
        cohens_d=_cohens_d_columns(pos.mean, neg.mean).float(),
        test=test,
        acts=acts,
        meta=dict(meta or {}),
    )


def rank_latents(
    model: nn.Module,
    tokenizer,
    sae,
    probes,
    *,
    by: str = "diff",
    train_split: str | None = "train",
    test_split: str | None = "test",
    batch_size: int = 16,
    progress: bool = True,
) -> LatentRanking:
    """Rank latents on a ``pairs`` probe set: misaligned vs aligned answers (answer tokens only).

    Ranks on ``train_split`` and keeps the same figures on ``test_split`` as held-out separation;
    a set without these splits is ranked on all its items, with no held-out figures.
    """
    if by not in RANK_BY:
        raise SAEError(f"unknown ranking {by!r}; choose one of {', '.join(RANK_BY)}")
    if getattr(probes, "kind", None) != "pairs":
        raise SAEError(
            f"ranking latents needs a 'pairs' probe set; {getattr(probes, 'name', probes)!r} is "
            f"'{getattr(probes, 'kind', '?')}' (for a base vs fine-tuned comparison use rank_latents_modeldiff)"
        )
    sae = load_sae(sae, model=model)
    splits = {it.split for it in probes.items}
    has_splits = train_split in splits and test_split in splits
    train = probes.split(train_split) if has_splits else probes
    groups = {"train": train}
    if has_splits:
        groups["test"] = probes.split(test_split)
    acts: dict[str, LatentActivations] = {}
    texts: dict[str, list[str]] = {}
    for name, ps in groups.items():
        al, mis = pair_examples(ps.items)
        for label, side, exs in (("misaligned", "pos", mis), ("aligned", "neg", al)):
            key = side if name == "train" else f"test_{side}"
            acts[key] = latent_activations(
                model,
                tokenizer,
                sae,
                exs,
                batch_size=batch_size,
                progress=f"{label} ({name})" if progress else False,
            )
            texts[key] = [
                f"{it.question} -> {ex.response}" for it, ex in zip(ps.items, exs, strict=True)
            ]
    meta = {
        "probe_set": {
            "name": probes.name,
            "sha256": probes.sha256,
            "train_split": train_split if has_splits else None,
            "test_split": test_split if has_splits else None,
        },
        "counts": {
            "train_pairs": len(train),
            "test_pairs": len(groups["test"]) if has_splits else 0,
        },
        "aggregation": "response_mean",
        "tokens": "response",
    }
    r = rank_from_activations(
        sae,
        acts["pos"],
        acts["neg"],
        by=by,
        test_pos=acts.get("test_pos"),
        test_neg=acts.get("test_neg"),
        meta=meta,
    )
    r.texts = texts
    return r


def rank_latents_modeldiff(
    model_a: nn.Module | None,
    model_b: nn.Module,
    tokenizer,
    sae,
    probes,
    *,
    by: str = "diff",
    tokens: str = "response",
    split: str | None = None,
    batch_size: int = 16,
    model_id_a: str | None = None,
    model_id_b: str | None = None,
    progress: bool = True,
) -> LatentRanking:
    """Same texts through a base model A and a fine-tuned model B; rank latents by the increase B - A.

    ``probes`` is a probe set (every kind; see :func:`saetools.capture.probe_examples`) or
    a list of :class:`~saetools.capture.ChatExample`. ``model_a=None`` means ``model_b`` (a PEFT
    model) with its adapters disabled. Besides the ranking figures (``auroc`` compares B's per-text
    means with A's), ``meta["frac_increase"]`` is not stored per latent; use
    ``ranking.acts["pos"].mean > ranking.acts["neg"].mean`` for paired comparisons.
    """

    if model_a is None and not is_peft(model_b):
        raise SAEError(
            "model_a=None means 'model_b with its adapters disabled', but model_b is not a PEFT model"
        )
    if model_a is model_b and not is_peft(model_b):
        raise SAEError("model_a and model_b are the same model: every difference would be zero")
    sae = load_sae(sae, model=model_b)
    if split is not None and hasattr(probes, "split"):
        probes = probes.split(split)
    examples = probe_examples(probes)
    if tokens == "response" and any(e.response is None for e in examples):
        tokens = "all"
    ref = model_a if model_a is not None else model_b
    sae.check(ref)
    ctx = model_b.disable_adapter() if model_a is None else nullcontext()
    with ctx:
        a = latent_activations(
            ref,
            tokenizer,
            sae,
            examples,
            tokens=tokens,
            batch_size=batch_size,
            progress="model A" if progress else False,
        )
    b = latent_activations(
        model_b,
        tokenizer,
        sae,
        examples,
        tokens=tokens,
        batch_size=batch_size,
        progress="model B" if progress else False,
    )
    id_b = model_id_b or model_label(model_b)
    id_a = model_id_a or (
        f"{id_b} (adapters disabled)" if model_a is None else model_label(model_a)
    )
    meta = {
        "model_a": id_a,
        "model_b": id_b,
        "probe_set": {
            "name": getattr(probes, "name", "(examples)"),
            "sha256": getattr(probes, "sha256", None),
        },
        "counts": {"texts": len(examples)},
        "tokens": tokens,
    }
    r = rank_from_activations(sae, b, a, by=by, labels=("B", "A"), meta=meta)
    r.extra["frac_increase"] = (b.mean > a.mean).float().mean(0)
    r.texts = {
        "pos": [_example_text(e) for e in examples],
        "neg": [_example_text(e) for e in examples],
    }
    return r


def _example_text(e: ChatExample) -> str:
    q = e.messages[-1]["content"] if e.messages else ""
    return f"{q} -> {e.response}" if e.response else q
