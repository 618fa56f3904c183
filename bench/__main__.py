"""Run every benchmark module (``python -m bench [NAME ...]``)."""

import importlib
import pkgutil
import sys
from pathlib import Path

names = sys.argv[1:] or sorted(
    m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.startswith("bench_")
)
for name in names:
    mod = importlib.import_module(f"bench.{name if name.startswith('bench_') else 'bench_' + name}")
    print(f"\n# {mod.__name__}")
    mod.main([])
