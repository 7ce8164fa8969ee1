"""What the variant and task registries share: entries by name, and hooks named as ``"module:attribute"``
so that a registry entry imports nothing heavy until the hook is used (the trial imports a
variant's trainer, the report its section; reading a spec imports neither)."""

from __future__ import annotations

import importlib
from typing import Any, Generic, TypeVar

Info = TypeVar("Info")


class Registry(Generic[Info]):
    """Registered units by name, in registration order; ``kind`` names them in errors ("variant", "task")."""

    def __init__(self, kind: str):
        self.kind = kind
        self.entries: dict[str, Info] = {}

    def register(self, info: Info) -> Info:
        if info.name in self.entries:
            raise ValueError(f"{self.kind} {info.name!r} is registered already")
        self.entries[info.name] = info
        return info

    def names(self) -> list[str]:
        return list(self.entries)

    def get(self, name: str) -> Info:
        try:
            return self.entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.entries)}") from None


def load_object(path: str) -> Any:
    """``"module:attribute"`` → the attribute."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)
