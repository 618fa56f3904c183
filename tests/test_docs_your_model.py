"""docs/your-model.md runs as written: its Python block, then every xailab command of its bash blocks."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest

pytest.importorskip("timm")
pytest.importorskip("transformers")

PAGE = Path(__file__).resolve().parents[1] / "docs" / "your-model.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", PAGE.read_text(), flags=re.S)


def test_page_commands_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xailab.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (python,) = blocks("python")
    exec(compile(python, str(PAGE), "exec"), {"__name__": "make_examples"})
    commands = [line for block in blocks("bash") for line in block.splitlines() if line.startswith("xailab ")]
    assert len(commands) == 4
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, command
    sys.modules.pop("mynet", None)
    gradcam = json.loads((tmp_path / "runs" / "mynet" / "explanations" / "gradcam" / "manifest.json").read_text())
    assert gradcam["params"]["layer"] == "conv2_relu" and "after 'conv2'" in gradcam["params"]["layer_note"]
    assert (tmp_path / "runs" / "vit" / "explanations" / "attention_gradient").is_dir()
    assert (tmp_path / "runs" / "hf" / "explanations" / "attention_rollout").is_dir()
