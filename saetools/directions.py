"""DirectionSet: direction vectors per site, with metadata, saved as safetensors.

A direction file is a plain safetensors file:

* one float32 tensor per site, named by the site (``blocks.15.hook_resid_post``), shape ``[d_model]``
  for a single direction or ``[k, d_model]`` for a k-dimensional basis. The **raw** vectors are
  stored (for difference of means: mean misaligned minus mean aligned activation); unit vectors
  are derived on use.
* the header's ``__metadata__`` holds ``"format": "saetools.directions"`` and ``"saetools"``: a JSON
  object with the format version, model id and fingerprint, d_model, method, aggregation, probe
  set (name, sha256, split), counts, per-site statistics and the saetools version.

See docs/file-format.md for the exact layout.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__
from .models import fingerprint
from .sites import KIND_ORDER, SITE_NAME_RE
from .stats import orthonormal_basis

FORMAT_NAME = "saetools.directions"
FORMAT_VERSION = 1
# per-site statistics holding the site's mean residual norm, preferred first
RESID_NORM_KEYS = ("resid_norm_mean", "activation_norm_mean")


class DirectionFileError(ValueError):
    """A direction file is missing, corrupt, foreign, or does not fit the model."""


# The metadata fields readers use, with the JSON type each must have. A scalar field may also be
# null (unknown); an object field, when present, must be an object. Other fields are kept as they
# are. See docs/file-format.md.
METADATA_FIELDS = {
    "format_version": "integer",
    "saetools_version": "string",
    "model_id": "string",
    "d_model": "integer",
    "method": "string",
    "sign": "string",
    "aggregation": "string",
    "separation_split": "string",
    "fingerprint": "object",
    "probe_set": "object",
    "counts": "object",
    "stats": "object",
}
FINGERPRINT_FIELDS = {
    "architecture": "string",
    "model_type": "string",
    "n_layers": "integer",
    "d_model": "integer",
    "vocab_size": "integer",
    "embed_hash": "string",
}
PROBE_SET_FIELDS = {
    "name": "string",
    "sha256": "string",
    "train_split": "string",
    "test_split": "string",
}
# per-site statistics read as numbers (inspect, best_site, clamp values)
STAT_FIELDS = (
    "norm",
    "auroc",
    "cohens_d",
    "proj_aligned_mean",
    "proj_misaligned_mean",
    "test_proj_aligned_mean",
    "test_proj_misaligned_mean",
    "activation_norm_mean",
)


def _json_type(value) -> str:
    """The JSON name of a parsed value's type, with an article (for messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _has_type(value, expected: str) -> bool:
    if expected == "object":
        return isinstance(value, dict)
    if value is None:
        return True
    if expected == "string":
        return isinstance(value, str)
    if expected == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # "number"


def _check_field(where: str | None, name: str, value, expected: str) -> None:
    if not _has_type(value, expected):
        article = "an" if expected[0] in "aeiou" else "a"
        nullable = "" if expected == "object" else " (or null)"
        shown = "" if isinstance(value, (dict, list)) else f" ({json.dumps(value)[:60]})"
        raise DirectionFileError(
            f"{where or 'DirectionSet metadata'}: metadata field '{name}' must be {article} "
            f"{expected}{nullable}, not {_json_type(value)}{shown}"
            + ("; the file is damaged or was not written by saetools" if where else "")
        )


def check_metadata(meta: dict, where: str | None = None) -> None:
    """Refuse metadata whose fields (and their nested fields) have the wrong JSON type, with a
    :class:`DirectionFileError` naming the field and the type it must have. ``where``: the file
    the metadata was read from (None: metadata given in Python)."""
    if not isinstance(meta, dict):
        raise DirectionFileError(
            f"{where or 'DirectionSet metadata'} must be a dict (a JSON object), not "
            f"{_json_type(meta)}"
        )
    for name, expected in METADATA_FIELDS.items():
        if name in meta:
            _check_field(where, name, meta[name], expected)
    nested = (("fingerprint", FINGERPRINT_FIELDS), ("probe_set", PROBE_SET_FIELDS))
    for name, fields in nested:
        for key, expected in fields.items():
            if key in meta.get(name, {}):
                _check_field(where, f"{name}.{key}", meta[name][key], expected)
    for key, value in meta.get("counts", {}).items():
        _check_field(where, f"counts.{key}", value, "number")
    for site, st in meta.get("stats", {}).items():
        _check_field(where, f"stats[{site}]", st, "object")
        for key in STAT_FIELDS:
            if key in st:
                _check_field(where, f"stats[{site}].{key}", st[key], "number")


@dataclass
class DirectionSet:
    """Raw direction vectors per site name, plus metadata (a JSON-serialisable dict)."""

    vectors: dict[str, torch.Tensor]
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.vectors:
            raise DirectionFileError("a DirectionSet needs at least one site")
        widths = set()
        clean = {}
        for name, v in self.vectors.items():
            if not isinstance(v, torch.Tensor) or v.ndim not in (1, 2) or v.shape[-1] == 0:
                raise DirectionFileError(
                    f"direction at {name} must be a tensor [d] or [k, d], got {getattr(v, 'shape', type(v))}"
                )
            if not torch.isfinite(v).all():
                raise DirectionFileError(f"direction at {name} contains NaN or infinite values")
            widths.add(int(v.shape[-1]))
            # a private copy: the caller may change its tensor later, and safetensors refuses to
            # save one tensor under two names
            clean[name] = v.detach().to("cpu", torch.float32, copy=True).contiguous()
        if len(widths) != 1:
            raise DirectionFileError(f"directions have different widths {sorted(widths)}")
        self.vectors = clean
        check_metadata(self.metadata)
        d = self.metadata.get("d_model")
        if d is not None and int(d) != widths.pop():
            raise DirectionFileError(
                f"metadata says d_model {d} but vectors are {self.d_model} wide"
            )

    # ---------------------------------------------------------------- access
    @property
    def sites(self) -> list[str]:
        """Site names in forward order (block, then resid_pre < attn_out < mlp_out < resid_post)."""

        def key(name: str):
            m = SITE_NAME_RE.match(name)
            return (0, int(m.group(1)), KIND_ORDER[m.group(3)], name) if m else (1, 0, 0, name)

        return sorted(self.vectors, key=key)

    @property
    def d_model(self) -> int:
        return int(next(iter(self.vectors.values())).shape[-1])

    def __contains__(self, site: object) -> bool:
        return str(site) in self.vectors

    def _get(self, site) -> torch.Tensor:
        key = str(site)
        if key not in self.vectors:
            raise KeyError(
                f"the direction file has no vector for site {key}; it has: {', '.join(self.sites)}"
            )
        return self.vectors[key]

    def vector(self, site) -> torch.Tensor:
        """The raw stored vector ``[d]`` (or basis ``[k, d]``) at ``site``."""
        return self._get(site)

    def unit(self, site) -> torch.Tensor:
        """The unit vector at ``site`` (first row for a basis). Refuses zero vectors."""
        v = self._get(site)
        v = v[0] if v.ndim == 2 else v
        n = v.norm()
        if n <= 1e-12:
            raise DirectionFileError(
                f"direction at {site} is a zero vector; it cannot be normalised"
            )
        return v / n

    def basis(self, site) -> torch.Tensor:
        """Orthonormal basis ``[k, d]`` spanning the vector(s) at ``site``."""
        try:
            return orthonormal_basis(self._get(site))
        except ValueError as e:
            raise DirectionFileError(f"direction at {site}: {e}") from e

    def stats(self, site) -> dict:
        return dict(self.metadata.get("stats", {}).get(str(site), {}))

    def resid_norm(self, site) -> float:
        """The site's mean residual norm recorded at extraction (``resid_norm_mean``; files from
        before it was recorded: ``activation_norm_mean``, the norm of the mean activation). The
        unit of norm-relative steering strengths (``--alpha-scale norm``)."""
        st = self.stats(site)
        for key in RESID_NORM_KEYS:
            v = st.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v) and v > 0:
                return float(v)
        raise DirectionFileError(
            f"the direction file records no residual norm for {site} (statistic "
            f"{RESID_NORM_KEYS[0]}); extract it again with this saetools, or give absolute strengths"
        )

    def subset(self, sites) -> DirectionSet:
        names = [str(s) for s in sites]
        meta = json.loads(json.dumps(self.metadata))
        if "stats" in meta:
            meta["stats"] = {k: v for k, v in meta["stats"].items() if k in names}
        return DirectionSet({n: self._get(n) for n in names}, meta)

    def cosine(self, other: DirectionSet) -> dict[str, float]:
        """Cosine similarity of the unit vectors at the sites both sets share."""
        out = {}
        for s in self.sites:
            if s in other.vectors:
                out[s] = float(torch.dot(self.unit(s), other.unit(s)))
        if not out:
            raise DirectionFileError("the two direction sets share no site")
        return out

    def best_site(self, key: str = "auroc") -> str:
        """The site with the highest value of a per-site statistic (default: held-out AUROC)."""
        scored = [(self.stats(s).get(key), s) for s in self.sites]
        scored = [(v, s) for v, s in scored if isinstance(v, (int, float)) and not math.isnan(v)]
        if not scored:
            raise DirectionFileError(f"no site has the statistic {key!r}")
        return max(scored)[1]

    # ---------------------------------------------------------------- model checks
    def check_model(self, model_or_fingerprint, *, force: bool = False) -> None:
        """Refuse a model whose d_model or fingerprint differs from the one recorded, unless ``force``."""
        if isinstance(model_or_fingerprint, dict):
            fp = model_or_fingerprint
        else:
            fp = fingerprint(model_or_fingerprint)
        problems = []
        if int(fp.get("d_model", self.d_model)) != self.d_model:
            problems.append(f"d_model: file {self.d_model}, model {fp.get('d_model')}")
        mine = self.metadata.get("fingerprint") or {}
        for key in ("architecture", "n_layers", "d_model", "vocab_size", "embed_hash"):
            if (
                key in mine
                and key in fp
                and mine[key] != fp[key]
                and not (key == "d_model" and problems)
            ):
                problems.append(f"{key}: file {mine[key]!r}, model {fp[key]!r}")
        if problems and not force:
            raise DirectionFileError(
                f"this direction file was made for model {self.metadata.get('model_id', '?')!r}, which differs "
                f"from the loaded model ({'; '.join(problems)}). Use the model it was made for, or pass "
                "force=True (--force on the command line) if you know the directions transfer."
            )
        if int(fp.get("d_model", self.d_model)) != self.d_model:
            raise DirectionFileError(
                f"cannot use {self.d_model}-wide directions on a {fp.get('d_model')}-wide model, even with force"
            )

    # ---------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temporary file in the same folder, then rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        if not path.parent.exists():
            raise DirectionFileError(f"cannot write {path}: folder {path.parent} does not exist")
        check_metadata(self.metadata)
        meta = dict(self.metadata)
        meta["format_version"] = FORMAT_VERSION
        meta["d_model"] = self.d_model
        meta.setdefault("saetools_version", __version__)
        header = {"format": FORMAT_NAME, "saetools": json.dumps(meta, sort_keys=True)}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(dict(self.vectors), tmp, metadata=header)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.metadata = meta
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, model=None, *, force: bool = False) -> DirectionSet:
        """Read a direction file; with ``model``, refuse it if it was made for another model."""
        path = Path(path)
        if path.is_dir():
            raise DirectionFileError(
                f"direction file {path} does not exist: {path} is a directory. Give the "
                ".safetensors file itself"
            )
        if not path.is_file():
            raise DirectionFileError(f"direction file {path} does not exist")
        meta = _read_metadata(path)
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, RuntimeError) as e:
            raise DirectionFileError(f"{path} is corrupt or truncated: {e}") from e
        for name, t in tensors.items():
            if t.dtype != torch.float32:
                raise DirectionFileError(f"{path}: tensor {name} is {t.dtype}, expected float32")
        ds = cls(tensors, meta)
        if model is not None:
            ds.check_model(model, force=force)
        return ds


def _read_metadata(path: Path) -> dict:
    """The ``saetools`` metadata of a direction file, checked (format, version, field types)."""
    meta_raw = read_header(path).get("__metadata__") or {}
    if meta_raw.get("format") != FORMAT_NAME or "saetools" not in meta_raw:
        raise DirectionFileError(
            f"{path} is a safetensors file but not a saetools direction file (no 'saetools' metadata). "
            "To bring in vectors from other tools use `saetools import`."
        )
    try:
        meta = json.loads(meta_raw["saetools"])
    except (ValueError, RecursionError) as e:  # ValueError: also an integer of > 4300 digits
        raise DirectionFileError(f"{path}: the saetools metadata is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise DirectionFileError(f"{path}: the saetools metadata is not a JSON object")
    version = meta.get("format_version")
    if version is not None:
        _check_field(str(path), "format_version", version, "integer")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DirectionFileError(
            f"{path} has direction format version {version!r}; this saetools reads versions up to "
            f"{FORMAT_VERSION}. Upgrade saetools."
        )
    check_metadata(meta, str(path))
    return meta


def read_header(path: Path) -> dict:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise DirectionFileError(
                f"{path} is truncated or not a safetensors file (only {size} bytes)"
            )
        (n,) = struct.unpack("<Q", head)
        if n <= 0 or n > min(size - 8, 100_000_000):
            raise DirectionFileError(
                f"{path} is not a safetensors file, or it is truncated (bad header length)"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSON, UTF-8, integers of > 4300 digits
        raise DirectionFileError(
            f"{path} is not a safetensors file, or it is corrupt (header is not JSON)"
        ) from e
    if not isinstance(header, dict):
        raise DirectionFileError(f"{path}: safetensors header is not an object")
    _check_header_metadata(path, header.get("__metadata__"))
    try:
        end = max(
            (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0
        )
    except (KeyError, TypeError, IndexError, ValueError) as e:
        raise DirectionFileError(
            f"{path} is not a safetensors file, or it is corrupt (bad tensor entry)"
        ) from e
    if 8 + n + end > size:
        raise DirectionFileError(
            f"{path} is truncated: the header promises {8 + n + end} bytes, the file has {size}"
        )
    return header


def _check_header_metadata(path: Path, meta) -> None:
    """safetensors metadata maps strings to strings; a forged file may hold other JSON there."""
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise DirectionFileError(
            f"{path} is not a safetensors file, or it is corrupt (bad __metadata__)"
        )
    for key, value in meta.items():
        if not isinstance(value, str):
            raise DirectionFileError(
                f"{path}: safetensors metadata {key!r} holds {_json_type(value)}, but safetensors "
                "metadata values are strings (a saetools direction file keeps its 'saetools' "
                "metadata as a JSON object serialised into a string); the file is damaged or forged"
            )
