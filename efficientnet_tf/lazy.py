"""Public names of a package loaded on first use, from a {name: module} table (PEP 562 module __getattr__)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(package: dict[str, Any], table: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list]]:
    """`__getattr__` and `__dir__` for a package whose globals are `package`: a name of `table` is imported from
    its module when first asked for, then kept in the package's globals."""

    def __getattr__(name: str) -> Any:
        if name in table:
            value = getattr(importlib.import_module(table[name]), name)
            package[name] = value
            return value
        raise AttributeError(f"module {package['__name__']!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(package) | set(table))

    return __getattr__, __dir__
