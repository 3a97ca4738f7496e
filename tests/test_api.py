"""The public API on one page (``saetools/__init__.py``): every headline name resolves, and the
packages named after their headline function (steer, capture, train, evaluate) call it."""

from __future__ import annotations

import importlib
import subprocess
import sys

import torch
from conftest import hook_snapshot, new_tiny_model

import saetools


def test_every_exported_name_resolves():
    for name in saetools.__all__:
        assert getattr(saetools, name) is not None, name


def test_import_saetools_does_not_import_torch():
    code = "import sys, saetools; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_callable_packages_are_their_headline_function():
    for name in ("steer", "capture", "train", "evaluate"):
        pkg = importlib.import_module(f"saetools.{name}")
        assert getattr(saetools, name) is pkg and callable(pkg)
        assert callable(getattr(pkg, name)) and getattr(pkg, name) is not pkg


def test_calling_the_steer_package_steers_like_the_function():
    m = new_tiny_model("llama")
    d = m.config.hidden_size
    ids = torch.tensor([[1, 5, 9, 3]])
    iv = saetools.Intervention("blocks.0.hook_resid_post", torch.ones(d), "add", alpha=2.0)
    before = hook_snapshot(m)
    with torch.no_grad():
        plain = m(ids).logits
        with saetools.steer.steer(m, [iv]):
            by_function = m(ids).logits
        with saetools.steer(m, [iv]):
            by_package = m(ids).logits
    assert hook_snapshot(m) == before  # hooks removed
    assert not torch.allclose(plain, by_function)
    torch.testing.assert_close(by_package, by_function, rtol=0, atol=0)
