"""The listings (``xailab methods`` / ``models`` / ``datasets``) start without torch and still say
what the registries hold; building a zoo model and registering the methods import neither zennit
nor torchvision (LRP imports zennit when it runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
LISTINGS = [["methods"], ["methods", "*cam*", "--family", "cam"], ["models", "--details"], ["models", "resnet*"],
            ["datasets", "--classes"]]


def _child(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_catalogue_equals_the_registries() -> None:
    from xailab.cli.listings import catalogue, live_catalogue

    assert catalogue() == live_catalogue(), "a method, model or dataset changed: run `python -m xailab.cli.listings`"


def test_listings_import_no_torch_and_list_the_registries() -> None:
    code = (
        "import contextlib, io, json, sys\nfrom xailab.cli import main\nout = []\n"
        f"for argv in {LISTINGS!r}:\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        assert main(argv) == 0\n"
        "    out.append(buf.getvalue())\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'out': out}))\n"
    )
    got = _child(code)
    assert not got["torch"], "a listing imported torch"
    from xailab.core.registry import METHODS
    from xailab.data import DATASETS, dataset_info
    from xailab.models import MODELS, model_info

    expected = [METHODS.available(), METHODS.available("*cam*", "cam"), MODELS.available(), MODELS.available("resnet*"),
                DATASETS.available()]
    for argv, text, names in zip(LISTINGS, got["out"], expected, strict=True):
        lines = text.splitlines()
        if argv[0] == "methods":
            rows = lines
        elif argv[0] == "models":  # a header, detail lines indented, a closing note
            rows = [ln for ln in lines[1:-1] if not ln.startswith(" ")]
        else:  # a header, a line of classes after each dataset, two closing notes
            rows = lines[1:-2][::2]
        assert [r.split()[0] for r in rows] == names, argv
        for n, row in zip(names, rows, strict=True):
            if argv[0] == "methods":
                assert f" {METHODS.family(n)} " in row and (METHODS.get(n).__doc__ or "").strip().splitlines()[0] in row
            elif argv[0] == "models":
                info = model_info(n)
                assert info["description"] in row and f" {info['num_classes']} " in row and f" {info['family']} " in row
            else:
                info = dataset_info(n)
                found = info.locate("test")
                assert row.endswith(str(found) if found else "download=True)") and f" {len(info.classes)} " in row
    details = got["out"][2]
    for n in MODELS.available():
        mean = ", ".join(f"{v:.4f}" for v in model_info(n)["mean"])
        assert f"mean ({mean})" in details


def test_a_zoo_model_and_the_method_registry_import_neither_zennit_nor_torchvision() -> None:
    code = (
        "import json, sys\nimport xailab\nfrom xailab.models import create_model\n"
        "model = create_model('resnet20')\nxailab.available()\n"
        "before = {m: m in sys.modules for m in ('zennit', 'torchvision')}\n"
        "import torch\nxailab.create('lrp_epsilon_plus', model).explain(torch.randn(1, 3, 32, 32))\n"
        "print(json.dumps({'before': before, 'after': 'zennit' in sys.modules}))\n"
    )
    got = _child(code)
    assert got["before"] == {"zennit": False, "torchvision": False}
    assert got["after"]  # LRP imports zennit when it runs
