"""What the test stand-ins (``sgl_kernel``, ``torchvision``) are made of: a package whose every
attribute and every submodule exists, as a placeholder that raises when it is used.

SGLang and transformers import names from these packages at import time (for kernels and
image models a tiny text model never runs); a placeholder satisfies the import, and a call,
an instance or an unexpected use fails loudly, naming what was used.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any


class _Placeholder(type):
    """A class standing for any imported name: attributes are placeholders too, calls raise."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return placeholder(f"{cls.__qualname__}.{name}")

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"test stand-in: {cls.__qualname__} was used; the test expected "
                                  "torch's native path (this package is a placeholder)")


def placeholder(name: str) -> Any:
    return _Placeholder(name.rsplit(".", 1)[-1], (), {"__qualname__": name, "__module__": "standin"})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, package: str) -> None:
        self.package = package

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname.startswith(self.package + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        module = types.ModuleType(spec.name)
        module.__path__ = []  # type: ignore[attr-defined]
        module.__getattr__ = _module_getattr(spec.name)  # type: ignore[attr-defined]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def _module_getattr(package: str) -> Any:
    def getattr_(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return placeholder(f"{package}.{name}")

    return getattr_


def install(package: str) -> Any:
    """Make ``package``'s submodules and names placeholders; returns its module ``__getattr__``."""
    sys.meta_path.append(_Finder(package))
    return _module_getattr(package)
