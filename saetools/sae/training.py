"""Train an SAE with sae-lens's own trainer and measure it.

:func:`train_sae` captures activations of local text with saetools' hooks
(:func:`~saetools.sae.activations.collect_activations`) and trains with **sae-lens's own trainer**
(``SAETrainer`` fed by an iterator over the captured activations); :func:`train_sae_on_activations`
does the same for activations you already have. :class:`SAETrainConfig` says how (it was called
``TrainConfig``, a name :mod:`saetools.train` also uses; ``saetools.sae.TrainConfig`` still works).
:func:`evaluate_sae` gives the quality figures (explained variance, L0, dead latents) and
:meth:`TrainResult.save` writes sae-lens's folder format.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..models import fingerprint
from ..sites import n_layers, parse_site
from .activations import TextSource, collect_activations, local_text
from .io import LoadedSAE, SAEError, is_one_site, sae_lens_version, save_sae

__all__ = [
    "ARCHITECTURES",
    "SAEQuality",
    "SAETrainConfig",
    "TrainResult",
    "evaluate_sae",
    "train_sae",
    "train_sae_on_activations",
]

ARCHITECTURES = ("topk", "jumprelu", "standard")


@dataclass
class SAETrainConfig:
    """How to train an SAE with sae-lens's trainer.

    ``tokens`` is the number of distinct activations to capture (capped at what the text has, see
    ``strict_tokens``); training runs ``epochs`` passes over them in shuffled batches of
    ``batch_size``. ``k`` (topk), ``l1_coefficient`` (standard) and ``l0_coefficient`` (jumprelu)
    set the sparsity; ``sae_kwargs`` passes any other field of sae-lens's training config.
    Activations are scaled to an average norm of sqrt(d) while training
    (``normalize_activations="expected_average_only_in"``) and the factor is folded into the saved
    weights, so the coefficients mean the same on every model.
    """

    site: str = "blocks.15.hook_resid_post"
    architecture: str = "topk"
    d_sae: int | None = None
    k: int = 32
    l1_coefficient: float = 5.0
    l0_coefficient: float = 1.0
    tokens: int = 200_000
    epochs: int = 1
    batch_size: int = 1024
    lr: float = 3e-4
    seed: int = 0
    eval_fraction: float = 0.05
    normalize_activations: str = "expected_average_only_in"
    capture_batch_size: int = 16
    strict_tokens: bool = False
    sae_kwargs: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise SAEError(
                f"unknown SAE architecture {self.architecture!r}; choose one of {', '.join(ARCHITECTURES)}"
            )
        for name in ("tokens", "epochs", "batch_size", "k", "capture_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise SAEError(f"{name} must be a positive integer, not {v!r}")
        if self.d_sae is not None and (not isinstance(self.d_sae, int) or self.d_sae < 1):
            raise SAEError(f"d_sae must be a positive integer, not {self.d_sae!r}")
        if self.architecture == "topk" and self.d_sae is not None and self.k > self.d_sae:
            raise SAEError(f"k ({self.k}) cannot exceed d_sae ({self.d_sae})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SAEError(f"lr must be a positive number, not {self.lr!r}")
        if not 0 <= self.eval_fraction < 0.5:
            raise SAEError(f"eval_fraction must be in [0, 0.5), not {self.eval_fraction!r}")


@dataclass
class SAEQuality:
    """Reconstruction and sparsity of an SAE on a set of activations.

    ``explained_variance`` is ``1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2``; ``l0`` the mean number
    of latents firing (> 0) per token; ``dead_latents`` the latents that fire on none of the tokens.
    """

    explained_variance: float
    mse: float
    l0: float
    dead_latents: int
    d_sae: int
    n_tokens: int
    on: str = "held-out"

    @property
    def dead_fraction(self) -> float:
        return self.dead_latents / self.d_sae


def evaluate_sae(
    sae, acts: torch.Tensor, *, batch_size: int = 4096, on: str = "held-out"
) -> SAEQuality:
    """Quality figures of ``sae`` (a :class:`LoadedSAE` or sae-lens SAE) on activations ``[n, d]``."""
    if acts.ndim != 2 or acts.shape[0] == 0:
        raise SAEError(f"need activations [n, d] with n >= 1, got shape {tuple(acts.shape)}")
    s = sae.sae if isinstance(sae, LoadedSAE) else sae
    was_training = s.training
    s.eval()
    x64 = acts.double()
    mean = x64.mean(0)
    err = tot = 0.0
    l0 = 0.0
    fired = torch.zeros(s.cfg.d_sae, dtype=torch.bool)
    try:
        with torch.no_grad():
            for i in range(0, len(acts), batch_size):
                x = acts[i : i + batch_size].to(s.W_dec.device, s.dtype)
                z = s.encode(x)
                rec = s.decode(z)
                err += float((rec.double() - x.double()).pow(2).sum())
                tot += float((x.double() - mean.to(x.device)).pow(2).sum())
                on_ = z > 0
                l0 += float(on_.sum())
                fired |= on_.any(0).cpu()
    finally:
        s.train(was_training)
    n = len(acts)
    return SAEQuality(
        explained_variance=1.0 - err / tot if tot > 0 else float("nan"),
        mse=err / (n * acts.shape[1]),
        l0=l0 / n,
        dead_latents=int((~fired).sum()),
        d_sae=int(s.cfg.d_sae),
        n_tokens=n,
        on=on,
    )


class _Batches(Iterator[torch.Tensor]):
    """Endless shuffled batches of rows of ``acts`` (a new permutation each epoch)."""

    def __init__(self, acts: torch.Tensor, batch_size: int, seed: int):
        self.acts = acts
        self.bs = batch_size
        self.g = torch.Generator().manual_seed(seed)
        self._perm = torch.randperm(len(acts), generator=self.g)
        self._i = 0

    def __next__(self) -> torch.Tensor:
        if self._i + self.bs > len(self.acts):
            self._perm = torch.randperm(len(self.acts), generator=self.g)
            self._i = 0
        rows = self._perm[self._i : self._i + self.bs]
        self._i += self.bs
        return self.acts[rows]


@dataclass
class TrainResult:
    """A trained SAE, its quality figures and a record of the run."""

    sae: LoadedSAE
    quality: SAEQuality
    info: dict

    def save(self, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
        return save_sae(self.sae, folder, training=self.summary(), overwrite=overwrite)

    def summary(self) -> dict:
        return {"quality": asdict(self.quality), **self.info}


def _training_sae(cfg: SAETrainConfig, d_in: int):
    from sae_lens.registry import get_sae_training_class

    sae_cls, cfg_cls = get_sae_training_class(cfg.architecture)
    kw: dict = dict(
        d_in=d_in,
        d_sae=cfg.d_sae or 4 * d_in,
        normalize_activations=cfg.normalize_activations,
    )
    if cfg.architecture == "topk":
        kw["k"] = cfg.k
    elif cfg.architecture == "standard":
        kw["l1_coefficient"] = cfg.l1_coefficient
    elif cfg.architecture == "jumprelu":
        kw["l0_coefficient"] = cfg.l0_coefficient
    kw.update(cfg.sae_kwargs)
    try:
        tcfg = cfg_cls(**kw)
    except TypeError as e:
        raise SAEError(f"bad option for a {cfg.architecture} SAE: {e}") from e
    return sae_cls(tcfg)


def train_sae_on_activations(
    acts: torch.Tensor,
    config: SAETrainConfig,
    *,
    metadata: dict | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train an SAE with sae-lens's ``SAETrainer`` on activations ``[n, d]`` (see :class:`SAETrainConfig`).

    A random ``eval_fraction`` of the rows is held out for the quality figures (all rows are used
    when fewer than 200 would be held out). ``metadata`` goes into the SAE's ``cfg.metadata``.
    """
    from sae_lens import SAE
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    config.validate()
    site = _site_of_config(config)
    if acts.ndim != 2 or acts.shape[0] < 2:
        raise SAEError(f"need activations [n, d] with n >= 2 to train on, got {tuple(acts.shape)}")
    if not torch.isfinite(acts).all():
        raise SAEError("the activations contain NaN or infinite values")
    acts = acts.detach().to("cpu", torch.float32)
    n, d_in = acts.shape
    g = torch.Generator().manual_seed(config.seed)
    perm = torch.randperm(n, generator=g)
    n_eval = int(n * config.eval_fraction)
    if n_eval >= 200:
        train_x, eval_x, on = acts[perm[n_eval:]], acts[perm[:n_eval]], "held-out"
    else:
        train_x, eval_x, on = acts, acts, "training"
    bs = min(config.batch_size, len(train_x))
    steps = max(1, (len(train_x) * config.epochs) // bs)
    torch.manual_seed(config.seed)
    sae = _training_sae(config, d_in)
    tcfg = SAETrainerConfig(
        total_training_samples=steps * bs,
        train_batch_size_samples=bs,
        lr=config.lr,
        lr_end=config.lr,
        lr_scheduler_name="constant",
        device="cpu",
        dead_feature_window=max(1, min(1000, len(train_x) // bs)),
        feature_sampling_window=max(1, min(2000, steps)),
        n_batches_for_norm_estimate=max(1, min(100, len(train_x) // bs)),
        logger=LoggingConfig(log_to_wandb=False),
        save_final_checkpoint=False,
        checkpoint_path=None,
    )
    t0 = time.perf_counter()
    trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=_Batches(train_x, bs, config.seed))
    with _quiet_tqdm(not progress):
        trained = trainer.fit()
    seconds = time.perf_counter() - t0
    md = trained.cfg.metadata
    md.hook_name = site
    for key, value in (metadata or {}).items():
        md[key] = value
    # Through sae-lens's own inference format and back: what we use is exactly what a save writes.
    with tempfile.TemporaryDirectory(prefix="saetools-sae-") as tmp:
        trained.save_inference_model(tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            inference = SAE.load_from_disk(tmp)
    loaded = LoadedSAE(inference, site, "(trained in memory)")
    quality = evaluate_sae(loaded, eval_x, on=on)
    if on == "held-out":  # dead latents over every token, not only the held-out ones
        quality.dead_latents = evaluate_sae(loaded, acts, on="all").dead_latents
    info = {
        "architecture": config.architecture,
        "site": site,
        "d_in": d_in,
        "d_sae": loaded.d_sae,
        "train_tokens": len(train_x),
        "eval_tokens": len(eval_x) if on == "held-out" else 0,
        "epochs": config.epochs,
        "steps": trainer.n_training_steps,
        "batch_size": bs,
        "lr": config.lr,
        "seed": config.seed,
        "seconds": round(seconds, 2),
        "trainer": f"sae_lens.SAETrainer (sae-lens {sae_lens_version()})",
    }
    for key in ("k", "l1_coefficient", "l0_coefficient"):
        if hasattr(sae.cfg, key):
            info[key] = getattr(sae.cfg, key)
    return TrainResult(loaded, quality, info)


class _quiet_tqdm:  # noqa: N801
    """Silence sae-lens's own training progress bar when asked (the trainer has no switch for it)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def __enter__(self):
        if self.quiet:
            from sae_lens.training import activation_scaler, sae_trainer

            self._saved = [
                (m, m.tqdm) for m in (sae_trainer, activation_scaler) if hasattr(m, "tqdm")
            ]
            for m, old in self._saved:
                m.tqdm = functools.partial(old, disable=True)
        return self

    def __exit__(self, *exc):
        if self.quiet:
            for m, old in self._saved:
                m.tqdm = old


def _site_of_config(config: SAETrainConfig) -> str:
    site = str(config.site).strip()
    if not is_one_site(site):
        raise SAEError(
            f"cannot train an SAE at {site!r}: give one residual-stream site like blocks.15.hook_resid_post"
        )
    return site


def train_sae(
    model: nn.Module,
    tokenizer,
    config: SAETrainConfig | None = None,
    text: TextSource | None = None,
    *,
    model_id: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Capture activations of ``text`` (default :func:`local_text`) at ``config.site`` and train an SAE.

    When the text has fewer distinct tokens than ``config.tokens``, a warning says so and training
    uses what exists; with ``config.strict_tokens`` it stops with :class:`SAEError` instead.
    """
    config = config or SAETrainConfig()
    config.validate()
    site = parse_site(_site_of_config(config), n_layers(model))
    text = text or local_text()
    t0 = time.perf_counter()
    got = collect_activations(
        model,
        tokenizer,
        text.examples,
        site,
        max_tokens=config.tokens,
        batch_size=config.capture_batch_size,
        seed=config.seed,
        progress=progress,
    )
    capture_s = time.perf_counter() - t0
    n = len(got.acts)
    short = n < config.tokens
    if short:
        msg = (
            f"asked for {config.tokens} training tokens but the text source ({text.description}) has only "
            f"{n} distinct tokens"
        )
        if config.strict_tokens:
            raise SAEError(msg + "; add text (more probe sets, --samples) or ask for fewer tokens")
        warnings.warn(msg + f"; training on the {n} that exist", stacklevel=2)
    name = model_id or getattr(getattr(model, "config", None), "_name_or_path", None) or "unknown"
    meta = {
        "model_name": name,
        "dataset_path": f"saetools local text: {text.description}",
        "prepend_bos": False,
        "context_size": None,
        "saetools": {"fingerprint": fingerprint(model), "text": text.description},
    }
    res = train_sae_on_activations(got.acts, config, metadata=meta, progress=progress)
    res.info.update(
        {
            "model_id": name,
            "text": text.description,
            "tokens_requested": config.tokens,
            "tokens_captured": n,
            "text_exhausted": got.exhausted,
            "tokens_forwarded": got.tokens_seen,
            "capture_seconds": round(capture_s, 2),
        }
    )
    res.sae.sae.cfg.metadata["saetools"] = {
        **meta["saetools"],
        "quality": asdict(res.quality),
        "training": {k: v for k, v in res.info.items() if k not in ("text",)},
    }
    return res
