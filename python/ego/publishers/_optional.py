"""Imports of the connectors' optional clients, with the extra to install when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from ego.errors import ConfigurationError


def require(module: str, extra: str) -> ModuleType:
    """`module`, or a ConfigurationError naming ``pip install 'ego-cqrs[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigurationError(f"this publisher needs {module!r}: pip install 'ego-cqrs[{extra}]'") from e
