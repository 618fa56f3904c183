"""Runs in a report are told apart by name: two runs of the same folder name (the studies'
``vit/explain`` and ``cnn/explain``) get as many parent folders as separate them."""

from __future__ import annotations

from pathlib import Path

from xailab.report.site import run_names


def test_unique_folder_names_stay_short(tmp_path: Path) -> None:
    assert run_names([tmp_path / "a" / "train", tmp_path / "b" / "explain"]) == ["train", "explain"]


def test_same_folder_names_get_the_parents_that_separate_them(tmp_path: Path) -> None:
    paths = [tmp_path / "vit" / "explain", tmp_path / "cnn" / "explain", tmp_path / "cnn" / "train",
             tmp_path / "x" / "s" / "run", tmp_path / "y" / "s" / "run"]
    assert run_names(paths) == ["vit/explain", "cnn/explain", "train", "x/s/run", "y/s/run"]


def test_the_same_run_twice_keeps_its_name(tmp_path: Path) -> None:
    assert run_names([tmp_path / "r", tmp_path / "r" / ".." / "r"]) == ["r", "r"]
