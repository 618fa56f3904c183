"""Progress and start-up of the command line: bars that move, light commands that stay light."""

from __future__ import annotations

import pytest

import xailab


@pytest.mark.parametrize("method", ["lime", "kernel_shap"])
def test_sampling_methods_count_progress_in_samples(tiny_cnn, images, method: str) -> None:
    explainer = xailab.create(method, tiny_cnn, num_samples=40, batch_size=16)
    res = explainer.explain(images[:3], target=["top1", "top2"], progress=True)
    bar = explainer.progress_bar
    assert bar.unit == "sample"
    assert bar.n == bar.total == res.evaluations - 3  # every perturbed sample; the first pass is not one


def test_other_methods_count_progress_in_images(tiny_cnn, images) -> None:
    explainer = xailab.create("saliency", tiny_cnn)
    explainer.explain(images[:3], progress=True)
    assert explainer.progress_bar.unit == "img" and explainer.progress_bar.n == 3


def test_help_of_every_command_imports_neither_torch_nor_plotting() -> None:
    import subprocess
    import sys

    code = (
        "import contextlib, io, sys\n"
        "from xailab.cli import _commands, main\n"
        "names = ['--help'] + [f'{c} --help' for c in sorted(_commands())]\n"
        "for argv in names:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main(argv.split())\n"
        "        except SystemExit:\n"
        "            pass\n"
        "print(len(names), sorted(m for m in ('torch', 'matplotlib', 'pandas', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) > 10 and out[1:] == ["[]"], out


def test_import_xailab_is_light_and_its_names_still_work() -> None:
    import subprocess
    import sys

    code = "import sys, xailab; a = 'torch' in sys.modules; xailab.Explainer; print(a, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]
    assert {"Explainer", "Explanation", "available", "create", "register"} <= set(dir(xailab))
