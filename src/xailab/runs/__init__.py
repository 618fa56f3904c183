"""The run store (see :mod:`xailab.runs.store`)."""

from xailab.runs.store import Run, RunError, atomic_write, atomic_write_bytes, atomic_write_text

__all__ = ["Run", "RunError", "atomic_write", "atomic_write_bytes", "atomic_write_text"]
