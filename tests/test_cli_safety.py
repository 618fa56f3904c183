"""Issue #16 through the command line: one test per finding (f3, f5, f9, f12, ...)."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import xailab
from xailab.cli import main
from xailab.core.explanation import Explanation
from xailab.models import create_model, get_preprocessing, save_weights


def _folder(root: Path, n: int = 2, size: int = 28, mode: str = "L") -> Path:
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = (size, size) if mode == "L" else (size, size, len(mode))
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"im{i}.png")
    return folder


def _small_cnn(root: Path) -> Path:
    torch.manual_seed(0)
    return save_weights(create_model("small_cnn"), root / "w.safetensors")


def test_f3_api_and_cli_use_the_same_black_baseline(tmp_path: Path) -> None:
    """xailab.create("integrated_gradients", zoo model) takes the model's normalisation, as the CLI."""
    weights = _small_cnn(tmp_path)
    out = tmp_path / "run"
    argv = ["explain", "--model", "small_cnn", "--weights", str(weights), "--images", str(_folder(tmp_path)),
            "--methods", "integrated_gradients", "--set", "integrated_gradients.n_steps=8", "--no-png",
            "--out", str(out)]
    assert main(argv) == 0
    cli = Explanation.load(out / "explanations" / "integrated_gradients")
    images = torch.from_numpy(np.load(next((out / "arrays" / "images").glob("*.npy"))))
    model = create_model("small_cnn", weights=weights)
    api = xailab.create("integrated_gradients", model, n_steps=8).explain(images)
    assert api.params["mean"] == cli.params["mean"] == list(get_preprocessing(model).mean)
    torch.testing.assert_close(api.maps, cli.maps)

PROGRESS = re.compile(r"\d+%\|")  # a progress bar's line (tqdm, on stderr)


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str], match: str) -> str:
    """Run the CLI in-process: exit 2, exactly one line on stderr, matching ``match``."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip() and not PROGRESS.search(line)]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(match, lines[0]), lines[0]
    return lines[0]


def _explain(weights: Path | str, images: Path, out: Path, *extra: str) -> list[str]:
    return ["explain", "--model", "small_cnn", "--weights", str(weights), "--images", str(images),
            "--methods", "saliency", "--no-png", "--out", str(out), *extra]


@pytest.mark.parametrize(("content", "match"), [(b"", r"empty \(0 bytes\)"),
                                                 (b"hello, not tensors\n", "not a safetensors file")])
def test_f9_empty_or_text_safetensors_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  content: bytes, match: str) -> None:
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(content)
    _one_line_error(_explain(bad, _folder(tmp_path), tmp_path / "run"), capsys, match)


def test_f9_set_a_word_for_a_number_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = _explain(_small_cnn(tmp_path), _folder(tmp_path), tmp_path / "run",
                    "--set", "integrated_gradients.n_steps=abc")
    argv[argv.index("saliency")] = "integrated_gradients"
    _one_line_error(argv, capsys, r"n_steps must be an integer in \[1, inf\), got 'abc'")


@pytest.mark.parametrize("command", [["report", "{run}", "--out", "{tmp}/site"], ["compare", "{run}"],
                                     ["evaluate", "--run", "{run}"], ["flow", "{run}"]])
def test_f9_a_manifest_that_is_a_json_list_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       command: list[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("[1, 2]")
    argv = [a.format(run=run, tmp=tmp_path) for a in command]
    _one_line_error(argv, capsys, "not an xailab run")


def test_f9_disk_full_while_explaining_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors import SafetensorError

    import xailab.core.explanation as explanation

    def full(*_: object, **__: object) -> None:
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    weights, images = _small_cnn(tmp_path), _folder(tmp_path)
    monkeypatch.setattr(explanation, "save_file", full)
    _one_line_error(_explain(weights, images, tmp_path / "run"), capsys, r"No space left on device.*run .*again")
    assert not list((tmp_path / "run").rglob("*.tmp")) and not (tmp_path / "run" / "explanations" / "saliency").exists()

    def full_np(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full_np)
    _one_line_error(_explain(weights, images, tmp_path / "run2"), capsys, "No space left on device")


def test_f9_disk_full_while_writing_a_report_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    assert main(_explain(_small_cnn(tmp_path), _folder(tmp_path), run)) == 0
    import xailab.runs.store as store

    real = store.atomic_write

    def full(path: Path, write: object) -> Path:
        if path.suffix == ".html":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, write)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "atomic_write", full)
    _one_line_error(["report", str(run), "--out", str(tmp_path / "site")], capsys, "No space left on device")


def test_f12_pickle_refusal_names_the_class_not_torchs_sentence(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "w.pt"
    torch.save({"net": Evil()}, bad)
    line = _one_line_error(_explain(bad, _folder(tmp_path), tmp_path / "run"), capsys,
                           r"refused to load .*w\.pt: it holds Python objects other than tensors \(.*Evil\)")
    assert "Weights only load failed" not in line and "WeightsUnpickler" not in line


def test_f12_model_name_typo_gets_did_you_mean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = _explain(_small_cnn(tmp_path), _folder(tmp_path), tmp_path / "run")
    argv[argv.index("small_cnn")] = "smal_cnn"
    _one_line_error(argv, capsys, "unknown model 'smal_cnn'. Did you mean small_cnn")


def test_f18_factory_from_the_working_directory_under_the_xailab_command(tmp_path: Path) -> None:
    """`xailab explain --model mynet:build` beside mynet.py works as `python -m xailab` does."""
    (tmp_path / "mynet.py").write_text(
        "from torch import nn\n\n\ndef build():\n"
        "    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),"
        " nn.Linear(2, 3))\n")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(2, 3))
    from safetensors.torch import save_file

    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    _folder(tmp_path)
    exe = Path(sys.executable).with_name("xailab")
    cmd = [str(exe), "explain", "--model", "mynet:build", "--weights", "w.safetensors", "--images", "images",
           "--methods", "saliency", "--no-png", "--out", "run"]
    env = {**os.environ, "PYTHONPATH": str(Path(xailab.__file__).parents[1])}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "explanations" / "saliency" / "manifest.json").is_file()
    assert "mynet" not in sys.modules


class Evil:
    """Not a tensor: a checkpoint holding it must be refused, not unpickled."""


def test_f21_adaptive_ig_at_its_step_budget_warns_and_records_the_error(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = _explain(_small_cnn(tmp_path), _folder(tmp_path), out, "--set", "ig.rule='adaptive'",
                    "--set", "ig.n_steps=6", "--set", "ig.tol=1e-12")
    argv[argv.index("saliency")] = "ig=integrated_gradients"
    with pytest.warns(UserWarning, match=r"stopped at the step budget n_steps=6 with a completeness error"):
        assert main(argv) == 0
    res = Explanation.load(out / "explanations" / "ig")
    rel = res.extras["relative_delta"]
    assert rel.shape == res.targets.shape and bool((rel > 1e-12).all())
    model = create_model("small_cnn", weights=tmp_path / "w.safetensors")
    prep = get_preprocessing(model)
    black = torch.full((1, 1, 28, 28), (0 - prep.mean[0]) / prep.std[0])
    with torch.no_grad():
        gap = res.logits.gather(1, res.targets) - model(black)[0, res.targets]
    torch.testing.assert_close(rel, res.extras["delta"].abs() / gap.abs(), rtol=1e-4, atol=1e-6)
    loose = xailab.create("integrated_gradients", model, rule="adaptive", tol=10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loose.explain(torch.rand(1, 1, 28, 28))


@pytest.mark.parametrize(("command", "name", "alias"), [("methods", "integrated_gradients", "ig"),
                                                        ("models", "small_cnn", "fashion_cnn")])
def test_f12_listings_show_aliases(capsys: pytest.CaptureFixture[str], command: str, name: str, alias: str) -> None:
    assert main([command]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(name + " "))
    assert re.search(rf"\(also: .*\b{alias}\b", line), line


def test_f12_skip_bad_images_through_the_cli_lists_them_in_the_run(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    weights, folder = _small_cnn(tmp_path), _folder(tmp_path, n=3)
    (folder / "corrupt.png").write_bytes(b"\x89PNG broken")
    _one_line_error(_explain(weights, folder, tmp_path / "strict"), capsys, r"cannot decode image .*corrupt\.png")
    assert not (tmp_path / "strict" / "manifest.json").exists()
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match=r"corrupt\.png: skipped"):
        assert main([*_explain(weights, folder, out), "--skip-bad-images"]) == 0
    notes = json.loads((out / "manifest.json").read_text())["config"]["image_notes"]
    assert any("corrupt.png: skipped" in n for n in notes)
    assert Explanation.load(out / "explanations" / "saliency").maps.shape[0] == 3


def test_f5_what_was_done_to_the_images_is_in_the_run(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray((np.arange(28 * 28).reshape(28, 28) * 80).astype(np.uint16)).save(folder / "deep.png")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(folder / "tiny.png")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="images changed while loading"):
        assert main(_explain(_small_cnn(tmp_path), folder, out)) == 0
    notes = json.loads((out / "manifest.json").read_text())["config"]["image_notes"]
    assert any("deep.png: 16-bit grey scaled to 8 bits" in n for n in notes)
    assert any("tiny.png: a 2x2 image upscaled 14.0x" in n for n in notes)
