"""bench_cli's forwards' floor of ``compare`` counts the perturbed images compare scores (issue 21)."""

from __future__ import annotations

from pathlib import Path

import torch
from bench.bench_cli import compare_rows

from xailab.jobs.compare import compare_run

from .test_compare_extra import QUICK, make_run


def test_the_floor_counts_every_scoring_forward_of_compare(tmp_path: Path) -> None:
    run, model = make_run(tmp_path)
    seen = []
    # the scoring forwards run without gradients (the explanations' forwards with them)
    model.register_forward_hook(lambda m, i, o: None if torch.is_grad_enabled() else seen.append(len(i[0])))
    compare_run(run, model, reference="saliency", settings=QUICK, log=lambda s: None)
    x = torch.from_numpy(run.read_array("images")[:])
    assert sum(seen) == compare_rows(x, methods=2, cfg=QUICK)
