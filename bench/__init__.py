"""Benchmarks: xailab side by side with the reference libraries, in one process, as ratios."""
