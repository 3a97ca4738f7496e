"""Sparse autoencoders through sae-lens: load, train, measure, save, and clamp latents.

* :func:`load_sae` reads a sae-lens SAE from a folder (``SAE.load_from_disk``: ``cfg.json`` plus
  ``sae_weights.safetensors``; configs of sae-lens < 6 are migrated by sae-lens itself) or from a
  release (``"release:sae_id"``, ``SAE.from_pretrained``, needs Hugging Face access). The site is
  the SAE's ``cfg.metadata.hook_name``; :meth:`LoadedSAE.check` refuses an SAE whose width or site
  does not fit a model.
* :func:`train_sae` captures activations of local text with saetools' hooks
  (:func:`collect_activations`) and trains with **sae-lens's own trainer** (``SAETrainer`` fed by
  an iterator over the captured activations); :func:`train_sae_on_activations` does the same for
  activations you already have. :func:`evaluate_sae` gives the quality figures (explained variance,
  L0, dead latents) and :func:`save_sae` writes sae-lens's folder format.
* :class:`LatentClamp` is a steering intervention: it encodes the site's activation, sets chosen
  latents to values and adds only the decoded change ``(z' - z) @ W_dec`` to the residual. The SAE's
  reconstruction error is never added or removed, so an SAE that reconstructs poorly does not damage
  the model; clamping a latent to its current value changes nothing. It works with
  :func:`saetools.steer.steer` and :func:`saetools.steer.generate` (KV cache included).

Training text
-------------
:func:`local_text` turns probe sets (the built-in ones by default, or JSONL files in the probe
format) into chat examples: pairs give both answers, chat sets the conversation, question and text
sets the message alone. Only the ``train`` split of a set that has splits is used, so held-out
evaluations (``em-core`` test answers) stay clean. :func:`model_samples` adds the model's own answers
to prompts. :func:`collect_activations` keeps every *distinct* token activation once: the first token
of each sequence (an attention sink whose norm is ~100x the others on SmolLM2) is skipped, and so is
any token whose whole prefix has been seen before (the system prompt the chat template adds to every
conversation, the question shared by the two answers of a pair), as a causal model gives it the same
activation again.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import einops
import torch
from torch import nn
from tqdm.auto import tqdm

from .sites import Site, SiteError, d_model, n_layers, parse_site

__all__ = [
    "ARCHITECTURES",
    "SAE_FILES",
    "LatentClamp",
    "LoadedSAE",
    "SAEError",
    "SAEQuality",
    "TextSource",
    "TrainConfig",
    "TrainResult",
    "collect_activations",
    "distinct_positions",
    "evaluate_sae",
    "load_sae",
    "local_text",
    "model_samples",
    "parse_clamps",
    "parse_latents",
    "save_sae",
    "train_sae",
    "train_sae_on_activations",
]

SAE_FILES = ("cfg.json", "sae_weights.safetensors")
ARCHITECTURES = ("topk", "jumprelu", "standard")
TRAINING_FILE = "saetools_training.json"
_SITE_RE = re.compile(r"^blocks\.\d+\.hook_(resid_pre|resid_post|attn_out|mlp_out)$")


class SAEError(ValueError):
    """Bad SAE input: missing or unreadable folder, site or width mismatch, bad latent ids, ..."""


# --------------------------------------------------------------------------------------------
# Loading


@dataclass
class LoadedSAE:
    """A sae-lens SAE (inference class) with the site it reads and where it came from."""

    sae: Any
    site: str
    source: str

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def architecture(self) -> str:
        return str(self.sae.cfg.architecture())

    @property
    def metadata(self) -> dict:
        return dict(self.sae.cfg.metadata.to_dict())

    def _on(self, h: torch.Tensor) -> None:
        if self.sae.W_dec.device != h.device:
            self.sae.to(h.device)

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """Latent activations ``[..., d_sae]`` of activations ``[..., d_in]`` (sae-lens ``encode``)."""
        self._on(h)
        with torch.no_grad():
            return self.sae.encode(h.to(self.sae.dtype))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self._on(z)
        with torch.no_grad():
            return self.sae.decode(z.to(self.sae.dtype))

    def check(self, model: nn.Module) -> Site:
        """Refuse a model whose blocks or residual width do not fit the SAE; return the parsed site."""
        try:
            site = parse_site(self.site, n_layers(model))
        except SiteError as e:
            raise SAEError(
                f"the SAE {self.source} reads {self.site}, which this model does not have ({e}); "
                "an SAE made for another model?"
            ) from e
        width = d_model(model)
        if self.d_in != width:
            raise SAEError(
                f"the SAE {self.source} reads {self.d_in}-wide activations at {self.site} but the model's "
                f"residual stream is {width} wide: an SAE made for another model"
            )
        return site

    def check_latents(self, latents: int | Sequence[int]) -> list[int]:
        """Latent ids as a list of ints, each in ``0..d_sae-1`` (else :class:`SAEError`)."""
        ids = [latents] if isinstance(latents, int) else list(latents)
        if not ids:
            raise SAEError("no latent ids given")
        out = []
        for j in ids:
            if isinstance(j, bool) or not isinstance(j, int):
                try:
                    j = int(str(j).strip())
                except ValueError:
                    raise SAEError(f"latent id {j!r} is not an integer") from None
            if not 0 <= j < self.d_sae:
                raise SAEError(
                    f"latent id {j} is out of range: the SAE {self.source} has {self.d_sae} latents "
                    f"(0..{self.d_sae - 1})"
                )
            out.append(j)
        if len(set(out)) != len(out):
            raise SAEError(f"latent ids repeat: {out}")
        return out

    def decoder_rows(self, latents: int | Sequence[int]) -> torch.Tensor:
        """What one unit of each latent adds to the reconstruction, ``[k, d_in]`` float32 (CPU).

        This is the decoder row ``W_dec[j]``, divided by its norm for TopK SAEs that rescale
        activations by the decoder norm. Refuses SAEs whose decoder is not affine in the latents.
        """
        ids = self.check_latents(latents)
        W = self.sae.W_dec.detach()
        rows = W[ids]
        if getattr(self.sae.cfg, "rescale_acts_by_decoder_norm", False):
            rows = rows / W[ids].norm(dim=-1, keepdim=True)
        norm = getattr(self.sae.cfg, "normalize_activations", "none")
        if norm not in ("none", "expected_average_only_in") or getattr(
            self.sae, "hook_z_reshaping_mode", False
        ):
            raise SAEError(
                f"the SAE {self.source} normalizes activations at run time ({norm}) or reshapes them; "
                "its decoder is not a fixed linear map, so latent clamping and decoder directions are not supported"
            )
        # Check against sae-lens's own decode: one unit of latent j minus zero.
        with torch.no_grad():
            eye = torch.zeros(len(ids), self.d_sae, dtype=W.dtype, device=W.device)
            eye[torch.arange(len(ids)), torch.tensor(ids)] = 1.0
            ref = self.sae.decode(eye) - self.sae.decode(torch.zeros_like(eye))
        if not torch.allclose(
            ref.float(), rows.float(), rtol=1e-3, atol=1e-5 * float(rows.abs().max())
        ):
            raise SAEError(
                f"the SAE {self.source} ({self.architecture}) does not decode as z @ W_dec + b_dec; "
                "latent clamping and decoder directions are not supported for it"
            )
        return rows.to("cpu", torch.float32)

    def describe(self) -> dict:
        """Identity of the SAE for direction-file metadata."""
        md = self.metadata
        return {
            "source": self.source,
            "site": self.site,
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "model_name": md.get("model_name"),
            "sae_lens_version": md.get("sae_lens_version"),
            "weights_sha256": _weights_hash(self.sae),
        }


def _weights_hash(sae) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(sae.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _site_of(sae, site: str | None, source: str) -> str:
    md = sae.cfg.metadata
    hook = md.get("hook_name") if hasattr(md, "get") else None
    if md.get("hook_head_index") is not None:
        raise SAEError(
            f"the SAE {source} reads one attention head ({hook}, head {md.get('hook_head_index')}); "
            "saetools works on whole residual-stream sites"
        )
    if site is not None:
        site = str(site).strip()
        if hook is not None and hook != site:
            raise SAEError(f"the SAE {source} was trained at {hook}, not at {site}")
        hook = site
    if hook is None:
        raise SAEError(
            f"the SAE {source} does not record its site (cfg.json metadata.hook_name); "
            "pass the site it was trained at (site=..., or --sae-site on the command line)"
        )
    if not _SITE_RE.match(str(hook)):
        raise SAEError(
            f"the SAE {source} reads {hook!r}; saetools steers and reads residual-stream sites only: "
            "blocks.{k}.hook_resid_pre / hook_resid_post / hook_attn_out / hook_mlp_out"
        )
    return str(hook)


def _check_folder(path: Path) -> dict:
    if not path.is_dir():
        raise SAEError(
            f"{path} is not a folder; an SAE is a sae-lens folder holding {' and '.join(SAE_FILES)}"
        )
    missing = [f for f in SAE_FILES if not (path / f).is_file()]
    if missing:
        found = sorted(p.name for p in path.iterdir())[:10]
        hint = ""
        if any(f.endswith(".safetensors") for f in found) and "sae_weights.safetensors" in missing:
            hint = (
                " Its weights file has another name: SAEs from other libraries (sparsify, dictionary_learning) "
                "need sae-lens's converters first."
            )
        raise SAEError(
            f"SAE folder {path} lacks {', '.join(missing)}: a sae-lens SAE folder holds {' and '.join(SAE_FILES)} "
            f"(found: {', '.join(found) or 'nothing'}).{hint}"
        )
    try:
        cfg = json.loads((path / "cfg.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SAEError(f"{path / 'cfg.json'} is not valid JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise SAEError(f"{path / 'cfg.json'} is not a JSON object")
    need = [k for k in ("d_in", "d_sae") if k not in cfg]
    if need:
        raise SAEError(
            f"{path / 'cfg.json'} lacks {', '.join(need)}: not a sae-lens SAE config (sae-lens writes d_in, "
            "d_sae, architecture and metadata.hook_name; configs from sae-lens < 6 with hook_point are migrated)"
        )
    return cfg


def _known_architectures() -> list[str]:
    from sae_lens.registry import SAE_CLASS_REGISTRY

    return sorted(SAE_CLASS_REGISTRY)


def load_sae(
    spec,
    *,
    model: nn.Module | None = None,
    site: str | None = None,
    device: str | torch.device = "cpu",
    dtype: str | None = None,
) -> LoadedSAE:
    """Load a sae-lens SAE: a folder, ``"release:sae_id"``, a sae-lens ``SAE`` or a :class:`LoadedSAE`.

    The site is read from ``cfg.metadata.hook_name`` (``site`` fills it in for SAEs that lack it and
    must agree otherwise). With ``model``, an SAE that does not fit it (site out of range, other
    width) is refused.
    """
    if isinstance(spec, LoadedSAE):
        loaded = spec
        if site is not None and site != loaded.site:
            raise SAEError(f"the SAE {loaded.source} was trained at {loaded.site}, not at {site}")
    elif hasattr(spec, "cfg") and hasattr(spec, "W_dec") and hasattr(spec, "encode"):
        loaded = LoadedSAE(spec, _site_of(spec, site, "(in memory)"), "(in memory)")
    else:
        text = os.fspath(spec)
        path = Path(text).expanduser()
        if path.exists():
            loaded = _load_folder(path, site, device, dtype)
        elif ":" in text and not text.startswith((".", "/", "~")):
            loaded = _load_release(text, site, device, dtype)
        else:
            raise SAEError(
                f"no SAE at {text!r}: give a sae-lens SAE folder ({' + '.join(SAE_FILES)}) or a sae-lens "
                "release and SAE id as release:sae_id"
            )
    if model is not None:
        loaded.check(model)
    return loaded


def _load_folder(path: Path, site, device, dtype) -> LoadedSAE:
    from sae_lens import SAE
    from safetensors import SafetensorError

    cfg = _check_folder(path)
    arch = cfg.get("architecture")
    known = _known_architectures()
    if arch is not None and arch not in known:
        raise SAEError(
            f"{path / 'cfg.json'} names architecture {arch!r}, which sae-lens {_sae_lens_version()} does not "
            f"know (it knows {', '.join(known)}); upgrade sae-lens or convert the SAE"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            sae = SAE.load_from_disk(str(path), device=str(device), dtype=dtype)
    except (SafetensorError, OSError) as e:
        raise SAEError(f"the weights in {path} cannot be read (corrupt or truncated?): {e}") from e
    except RuntimeError as e:
        raise SAEError(
            f"the weights in {path} do not match its cfg.json (missing or misshapen tensors): {e}"
        ) from e
    except (KeyError, TypeError, ValueError) as e:
        raise SAEError(
            f"sae-lens {_sae_lens_version()} cannot read the config in {path / 'cfg.json'} ({type(e).__name__}: "
            f"{e}). sae-lens migrates configs written before 6.0 (hook_point, activation_fn_str, ...); this one "
            "is neither a current nor a migratable sae-lens config"
        ) from e
    return LoadedSAE(sae, _site_of(sae, site, str(path)), str(path))


def _load_release(text: str, site, device, dtype) -> LoadedSAE:
    from sae_lens import SAE

    release, _, sae_id = text.partition(":")
    if not release or not sae_id:
        raise SAEError(f"{text!r}: give a sae-lens release and SAE id as release:sae_id")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            sae = SAE.from_pretrained(release, sae_id, device=str(device), dtype=dtype or "float32")
    except Exception as e:  # network, unknown release, Hub errors: all reported the same way
        raise SAEError(
            f"cannot load sae-lens release {release!r}, SAE id {sae_id!r} ({type(e).__name__}: {e}). "
            "This needs Hugging Face access; a local SAE folder works offline"
        ) from e
    return LoadedSAE(sae, _site_of(sae, site, text), text)


def _sae_lens_version() -> str:
    import sae_lens

    return str(getattr(sae_lens, "__version__", "?"))


# --------------------------------------------------------------------------------------------
# Latent clamping


def parse_latents(text: str | int | Sequence[int]) -> list[int]:
    """``"123,456"`` -> ``[123, 456]`` (range checks need the SAE: :meth:`LoadedSAE.check_latents`)."""
    if isinstance(text, int):
        return [text]
    if not isinstance(text, str):
        return [int(x) for x in text]
    out = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            out.append(int(part.strip()))
        except ValueError:
            raise SAEError(
                f"cannot parse latent id {part.strip()!r}: give integers like 123,456"
            ) from None
    if not out:
        raise SAEError("no latent ids given")
    return out


def parse_clamps(items: str | Sequence[str]) -> dict[int, float]:
    """``"123=0"``, ``["123=0", "456=2.5"]`` or ``"123=0,456=2.5"`` -> ``{latent: value}``."""
    if isinstance(items, str):
        items = [items]
    out: dict[int, float] = {}
    for item in items:
        for part in str(item).split(","):
            if not part.strip():
                continue
            lat, sep, val = part.partition("=")
            try:
                j, v = int(lat.strip()), float(val)
            except ValueError:
                j, v = None, float("nan")
            if not sep or j is None or not math.isfinite(v):
                raise SAEError(
                    f"cannot parse latent clamp {part.strip()!r}: expected latent=value, e.g. 123=0"
                )
            if j in out:
                raise SAEError(f"latent {j} is clamped twice")
            out[j] = v
    if not out:
        raise SAEError("no latent clamps given")
    return out


@dataclass
class LatentClamp:
    """Set SAE latents to values at the SAE's site, keeping the SAE's error term.

    ``h' = h + (z' - z)[latents] @ D`` where ``z = encode(h)``, ``z'`` equals ``z`` except at
    ``latents`` where it is ``values``, and ``D`` the latents' decoder rows
    (:meth:`LoadedSAE.decoder_rows`). Only the decoded change is added, so whatever the SAE fails to
    reconstruct stays in ``h``. ``values`` is one number, one per latent, or a tensor broadcasting
    to ``[..., k]``. ``positions`` follows :class:`saetools.steer.Intervention`.
    """

    sae: LoadedSAE | Any
    latents: int | Sequence[int]
    values: float | Sequence[float] | torch.Tensor = 0.0
    positions: str | torch.Tensor = "all"
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from .steer import check_positions

        if not isinstance(self.sae, LoadedSAE):
            self.sae = load_sae(self.sae)
        self.latents = self.sae.check_latents(self.latents)
        k = len(self.latents)
        if isinstance(self.values, torch.Tensor):
            v = self.values.detach()
            if v.shape[-1:] not in ((k,), (1,)) and v.ndim > 0:
                raise SAEError(f"clamp values have shape {tuple(v.shape)}; expected [..., {k}]")
        else:
            vals = [self.values] if isinstance(self.values, (int, float)) else list(self.values)
            if len(vals) == 1:
                vals = vals * k
            if len(vals) != k:
                raise SAEError(f"{len(vals)} clamp values for {k} latents")
            try:
                vals = [float(x) for x in vals]
            except (TypeError, ValueError):
                raise SAEError(f"clamp values must be numbers, not {self.values!r}") from None
            v = torch.tensor(vals, dtype=torch.float32)
        if not torch.isfinite(v.float()).all():
            raise SAEError("clamp values must be finite")
        self.values = v
        self.rows = self.sae.decoder_rows(self.latents)  # [k, d]
        self.positions = check_positions(self.positions)

    @property
    def site(self) -> str:
        return self.sae.site

    @property
    def d_model(self) -> int:
        return self.sae.d_in

    @property
    def op(self) -> str:
        return "latent_clamp"

    def check(self, model: nn.Module) -> Site:
        try:
            return self.sae.check(model)
        except SAEError as e:
            from .steer import SteeringError

            raise SteeringError(str(e)) from e

    def _tensors(self, h: torch.Tensor):
        key = (h.device, h.dtype)
        got = self._cache.get(key)
        if got is None:
            dt = self.sae.sae.dtype
            got = (
                torch.tensor(self.latents, device=h.device),
                self.values.to(device=h.device, dtype=dt),
                self.rows.to(device=h.device, dtype=dt),
            )
            self._cache[key] = got
        return got

    def delta(self, h: torch.Tensor) -> torch.Tensor:
        """The decoded change ``(z' - z)[latents] @ D`` for activations ``h [..., d]`` (SAE dtype)."""
        idx, values, rows = self._tensors(h)
        z = self.sae.encode(h)
        dz = values - z.index_select(-1, idx)
        return einops.einsum(dz, rows, "... k, k d -> ... d")

    def apply(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` plus the decoded change (O(d * d_sae) per token for the encoder, no token loop)."""
        return h + self.delta(h).to(h.dtype)


# --------------------------------------------------------------------------------------------
# Text and activations for training


@dataclass
class TextSource:
    """Chat examples to capture activations from, and a description recorded with the SAE."""

    examples: list
    description: str

    def __add__(self, other: TextSource) -> TextSource:
        return TextSource(
            self.examples + other.examples, f"{self.description}; {other.description}"
        )


def local_text(
    sets: Sequence[str] | str | None = None, *, split: str | None = "train"
) -> TextSource:
    """Examples from probe sets (built-in names or JSONL paths; default: every built-in set).

    Pairs give both answers, chat sets the conversation, question and text sets the message alone.
    With ``split="train"`` a set with train/test splits contributes its train split only.
    """
    import probes

    from .capture import probe_examples

    names = (
        probes.available()
        if sets is None
        else (
            [s.strip() for s in sets.split(",") if s.strip()]
            if isinstance(sets, str)
            else list(sets)
        )
    )
    if not names:
        raise SAEError("no probe sets given for the training text")
    examples, parts = [], []
    for name in names:
        ps = probes.load(name)
        has_splits = {it.split for it in ps.items} >= {"train", "test"}
        sub = ps.split(split) if (split and has_splits) else ps
        ex = probe_examples(sub)
        examples.extend(ex)
        parts.append(f"{ps.name}{'/' + split if (split and has_splits) else ''} ({len(ex)})")
    return TextSource(examples, "probe sets: " + ", ".join(parts))


def model_samples(
    model: nn.Module,
    tokenizer,
    prompts: Sequence,
    *,
    n: int | None = None,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
) -> TextSource:
    """The model's own answers to ``prompts`` (cycled to ``n`` samples), as chat examples."""
    from .capture import ChatExample
    from .steer import as_messages, generate

    prompts = list(prompts)
    if not prompts:
        raise SAEError("no prompts to sample answers for")
    n = len(prompts) if n is None else int(n)
    chosen = [prompts[i % len(prompts)] for i in range(n)]
    answers = generate(
        model,
        tokenizer,
        chosen,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        batch_size=batch_size,
    )
    out = [
        ChatExample(messages=tuple(as_messages(p)), response=a)
        for p, a in zip(chosen, answers, strict=True)
        if a.strip()
    ]
    return TextSource(
        out,
        f"{len(out)} of the model's own answers (temperature {temperature:g}, <= {max_new_tokens} tokens)",
    )


def distinct_positions(
    sequences: Sequence[Sequence[int]], *, seen: set | None = None, skip_first: bool = True
) -> list[list[int]]:
    """Positions of each token sequence whose activation is new: not the first token (with
    ``skip_first``) and, with ``seen`` (a set updated in place), not a token whose whole prefix was
    already seen in this or an earlier sequence (a causal model repeats that activation exactly)."""
    out = []
    for ids in sequences:
        keep, h = [], 0
        for pos, tok in enumerate(ids):
            h = hash((h, int(tok)))
            if skip_first and pos == 0:
                continue
            if seen is not None:
                if h in seen:
                    continue
                seen.add(h)
            keep.append(pos)
        out.append(keep)
    return out


@dataclass
class Activations:
    """Captured activations ``[n, d]`` (float32, CPU) and how they were gathered."""

    acts: torch.Tensor
    site: str
    tokens_seen: int
    examples_used: int
    examples_total: int
    exhausted: bool


def collect_activations(
    model: nn.Module,
    tokenizer,
    examples: Sequence,
    site: str | Site,
    *,
    max_tokens: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    dedupe: bool = True,
    skip_first: bool = True,
    progress: bool | str = True,
) -> Activations:
    """Activations at ``site`` of every distinct token of ``examples`` (see the module docstring).

    Examples are taken in a seeded random order (sorted by length within windows of 8 batches to cut
    padding), the forward stops after the site, and capture ends once ``max_tokens`` are kept.
    """
    from .capture import encode_all, site_batches

    site = parse_site(str(site), n_layers(model)) if not isinstance(site, Site) else site
    if not examples:
        raise SAEError("the text source has no examples")
    if max_tokens is not None and max_tokens < 1:
        raise SAEError(f"max_tokens must be at least 1 (or None for all), not {max_tokens}")
    encoded = encode_all(tokenizer, list(examples))
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(encoded), generator=g).tolist()
    window = batch_size * 8
    order = [
        i
        for s in range(0, len(order), window)
        for i in sorted(order[s : s + window], key=lambda i: len(encoded[i].input_ids))
    ]
    seen: set[int] = set()
    kept: list[torch.Tensor] = []
    n_kept = n_seen = used = 0
    bar = tqdm(
        total=max_tokens,
        desc=progress if isinstance(progress, str) else f"capture {site.name}",
        disable=not progress,
        unit="tok",
        leave=False,
    )
    try:
        for idx, batch, h in site_batches(model, tokenizer, encoded, order, batch_size, site):
            keep = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
            for row, pos in enumerate(
                distinct_positions(
                    [encoded[i].input_ids for i in idx],
                    seen=seen if dedupe else None,
                    skip_first=skip_first,
                )
            ):
                keep[row, pos] = True
            n_seen += int(batch.attention_mask.sum())
            rows = h[keep.to(h.device)].detach().to("cpu", torch.float32)
            if max_tokens is not None and n_kept + len(rows) > max_tokens:
                rows = rows[: max_tokens - n_kept]
            kept.append(rows)
            n_kept += len(rows)
            used += len(idx)
            bar.update(len(rows))
            if max_tokens is not None and n_kept >= max_tokens:
                break
    finally:
        bar.close()
    acts = torch.cat(kept) if kept else torch.zeros(0, d_model(model))
    return Activations(
        acts=acts,
        site=site.name,
        tokens_seen=n_seen,
        examples_used=used,
        examples_total=len(encoded),
        exhausted=used >= len(encoded) and (max_tokens is None or n_kept < max_tokens),
    )


# --------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainConfig:
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


def _training_sae(cfg: TrainConfig, d_in: int):
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
    config: TrainConfig,
    *,
    metadata: dict | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train an SAE with sae-lens's ``SAETrainer`` on activations ``[n, d]`` (see :class:`TrainConfig`).

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
        "trainer": f"sae_lens.SAETrainer (sae-lens {_sae_lens_version()})",
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
            import functools

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


def _site_of_config(config: TrainConfig) -> str:
    site = str(config.site).strip()
    if not _SITE_RE.match(site):
        raise SAEError(
            f"cannot train an SAE at {site!r}: give one residual-stream site like blocks.15.hook_resid_post"
        )
    return site


def train_sae(
    model: nn.Module,
    tokenizer,
    config: TrainConfig | None = None,
    text: TextSource | None = None,
    *,
    model_id: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Capture activations of ``text`` (default :func:`local_text`) at ``config.site`` and train an SAE.

    When the text has fewer distinct tokens than ``config.tokens``, a warning says so and training
    uses what exists; with ``config.strict_tokens`` it stops with :class:`SAEError` instead.
    """
    from .models import fingerprint

    config = config or TrainConfig()
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


# --------------------------------------------------------------------------------------------
# Saving


def save_sae(
    sae: LoadedSAE | Any,
    folder: str | os.PathLike,
    *,
    training: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``sae`` in sae-lens's folder format (``cfg.json`` + ``sae_weights.safetensors``).

    ``SAE.load_from_disk(folder)`` reads it back unchanged. ``training`` (quality figures, text)
    also goes to ``saetools_training.json``, which sae-lens ignores. A folder that already holds an
    SAE is refused unless ``overwrite``. The files are written into a temporary folder next to the
    target and moved in place.
    """
    loaded = sae if isinstance(sae, LoadedSAE) else load_sae(sae)
    folder = Path(folder)
    if not folder.parent.exists():
        raise SAEError(f"cannot write SAE folder {folder}: {folder.parent} does not exist")
    if folder.exists() and not folder.is_dir():
        raise SAEError(f"cannot write SAE folder {folder}: it is a file")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise SAEError(
            f"{folder} is not empty; choose another folder or overwrite=True (--overwrite)"
        )
    loaded.sae.cfg.metadata.hook_name = loaded.site
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        loaded.sae.save_model(str(tmp))
        if training is not None:
            (tmp / TRAINING_FILE).write_text(json.dumps(training, indent=1, default=str))
        folder.mkdir(exist_ok=True)
        for f in tmp.iterdir():
            os.replace(f, folder / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    loaded.source = str(folder) if loaded.source.startswith("(") else loaded.source
    return folder
