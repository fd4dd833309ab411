"""The shell, top of the house: the CLI and its commands, and the notebook API. `from pipeline import
read_topic, read_table` imports no pandas or client until called.
"""

from __future__ import annotations

from typing import Any

__all__ = ["read_table", "read_topic"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pipeline import notebook

        return getattr(notebook, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
