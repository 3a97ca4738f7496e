"""Load and save sae-lens SAEs, and check that an SAE fits a model.

:func:`load_sae` reads a sae-lens SAE from a folder (``SAE.load_from_disk``: ``cfg.json`` plus
``sae_weights.safetensors``; configs of sae-lens < 6 are migrated by sae-lens itself) or from a
release (``"release:sae_id"``, ``SAE.from_pretrained``, needs Hugging Face access). The site is the
SAE's ``cfg.metadata.hook_name``; :meth:`LoadedSAE.check` refuses an SAE whose width or site does
not fit a model. :func:`save_sae` writes sae-lens's folder format. :class:`SAEError` is the error
of the whole SAE path; :func:`parse_latents` reads latent ids from the command line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..sites import SITE_NAME_RE, Site, SiteError, d_model, n_layers, parse_site

__all__ = [
    "SAE_FILES",
    "TRAINING_FILE",
    "LoadedSAE",
    "SAEError",
    "is_one_site",
    "load_sae",
    "parse_latents",
    "sae_lens_version",
    "save_sae",
]

SAE_FILES = ("cfg.json", "sae_weights.safetensors")
TRAINING_FILE = "saetools_training.json"


class SAEError(ValueError):
    """Bad SAE input: missing or unreadable folder, site or width mismatch, bad latent ids, ..."""


def is_one_site(name: str) -> bool:
    """Whether ``name`` is one residual-stream site, ``blocks.{k}.hook_resid_pre`` / ``hook_resid_post``
    / ``hook_attn_out`` / ``hook_mlp_out`` (no layer range): the sites an SAE may read."""
    m = SITE_NAME_RE.match(str(name))
    return m is not None and m.group(2) is None


def sae_lens_version() -> str:
    """The installed sae-lens version (``"?"`` when it does not say)."""
    import sae_lens

    return str(getattr(sae_lens, "__version__", "?"))


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

    def follow(self, h: torch.Tensor) -> None:
        """Move the SAE's weights to the device of ``h`` (a model split over devices)."""
        if self.sae.W_dec.device != h.device:
            self.sae.to(h.device)

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """Latent activations ``[..., d_sae]`` of activations ``[..., d_in]`` (sae-lens ``encode``)."""
        self.follow(h)
        with torch.no_grad():
            return self.sae.encode(h.to(self.sae.dtype))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self.follow(z)
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
    if not is_one_site(hook):
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
            f"{path / 'cfg.json'} names architecture {arch!r}, which sae-lens {sae_lens_version()} does not "
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
            f"sae-lens {sae_lens_version()} cannot read the config in {path / 'cfg.json'} ({type(e).__name__}: "
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


# --------------------------------------------------------------------------------------------
# Latent ids


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
