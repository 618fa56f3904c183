"""What keeps ``xailab explain`` close to its model work (issue 21): it imports neither matplotlib
nor pandas, draws with saved colour tables, encodes PNGs itself and writes tables without pandas,
each giving what the slower way gave."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from xailab.drawing import lut, matplotlib_lut, png_bytes
from xailab.runs.store import Run, columns_table

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("cmap", ["bwr", "inferno"])
def test_the_saved_colour_tables_are_matplotlibs(cmap: str) -> None:
    assert np.array_equal(lut(cmap), matplotlib_lut(cmap))


def test_another_colour_scale_is_read_from_matplotlib() -> None:
    assert np.array_equal(lut("viridis"), matplotlib_lut("viridis"))


@pytest.mark.parametrize("shape", [(7, 5), (7, 5, 3), (7, 5, 4), (1, 1, 3)])
def test_png_bytes_decode_to_the_pixels_as_pils_png_does(shape: tuple[int, ...]) -> None:
    a = RNG.integers(0, 256, size=shape, dtype=np.uint8)
    if len(a) > 2:
        a[2] = a[1]  # a row like the one above, as on a page: filtered to zeros
    ours = Image.open(io.BytesIO(png_bytes(a)))
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    theirs = Image.open(io.BytesIO(buf.getvalue()))
    assert ours.mode == theirs.mode
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))
    assert np.array_equal(np.asarray(ours), a)


def test_columns_read_back_as_the_dataframe_would(tmp_path: Path) -> None:
    cols = {"i": np.arange(4), "name": ["a", "ç", "", "d/e"], "p": [0.5, 0.25, 1.0, 0.0], "ok": [True, False, True, True],
            "k": [3, 1, 4, 1], "u": np.array([1, 2, 3, 4], dtype=np.uint8)}
    frame = pd.DataFrame(cols)
    assert columns_table(cols).schema.equals(pa.Table.from_pandas(frame, preserve_index=False).schema)
    run = Run.create(tmp_path / "r", kind="t")
    run.write_table("t", cols, part="a")
    run.write_table("t", frame, part="b")  # parts written either way make one table
    back = run.read_table("t")
    pd.testing.assert_frame_equal(back, pd.concat([frame, frame], ignore_index=True))


def test_explain_imports_neither_matplotlib_nor_pandas(tmp_path: Path) -> None:
    for i in range(2):
        Image.fromarray(RNG.integers(0, 256, size=(28, 28), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    code = (
        "import json, sys\nfrom xailab.cli import main\n"
        f"code = main(['explain', '--model', 'small_cnn', '--random-weights', '--images', {str(tmp_path)!r}, "
        "'--methods', 'saliency,gradcam', '--targets', 'top1,least', '--mean', '0.5', '--std', '0.5', "
        f"'--out', {str(tmp_path / 'run')!r}, '--device', 'cpu'])\n"
        "print(json.dumps({'code': code, 'loaded': [m for m in ('matplotlib', 'pandas') if m in sys.modules]}))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == {"code": 0, "loaded": []}
    assert len(list((tmp_path / "run" / "files" / "overlays").glob("*_grid.png"))) == 2
    table = Run.open(tmp_path / "run").read_table("explanations")
    assert len(table) == 2 * 2 * 2  # images x targets x methods
    assert sorted(set(table["method"])) == ["gradcam", "saliency"]
