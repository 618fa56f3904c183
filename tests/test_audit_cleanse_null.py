"""Neural Cleanse's per-class null from clean reference models (xailab.audit.cleanse_null): the
statistic by hand, its false-flag rate on simulated clean models where the null holds (classes
with different spreads, models with different scales), its power on a shrunk class, and the CLI
with three reference runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t

from tests.test_audit_cleanse_cli import model_args
from tests.test_audit_cli import folder, poisoned_run  # noqa: F401  (fixtures)
from xailab.audit.cleanse import relative_flags
from xailab.audit.cleanse_null import (
    centred_logs,
    critical_t,
    leave_one_out,
    null_test,
    reference_null,
)
from xailab.cli import main
from xailab.core.errors import InputError
from xailab.runs import Run

K = 10
SPREAD = np.array([0.05, 0.05, 0.1, 0.1, 0.2, 0.2, 0.3, 0.4, 0.5, 0.6])  # per class sd of log l1


def clean_norms(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` clean models' norms: class means, per-class spreads, a per-model scale."""
    base = np.log(np.linspace(20, 60, K))
    return np.exp(base + rng.normal(0, 0.5, (n, 1)) + rng.normal(0, 1, (n, K)) * SPREAD)


def test_statistic_by_hand() -> None:
    refs = np.array([[10.0, 20, 30, 40, 50], [11.0, 19, 33, 38, 55], [9.0, 22, 28, 41, 45]])
    d = centred_logs(refs)
    logs = np.log(refs)
    np.testing.assert_allclose(d[:, 0], logs[:, 0] - (logs[:, 2] + logs[:, 3]) / 2)  # median of 20 30 40 50
    np.testing.assert_allclose(d[:, 2], logs[:, 2] - (logs[:, 1] + logs[:, 3]) / 2)  # median of 10 20 40 50
    null = reference_null(refs)
    np.testing.assert_allclose(null.mean, d.mean(0))
    np.testing.assert_allclose(null.scale, d.std(0, ddof=1) * np.sqrt(4 / 3))
    np.testing.assert_allclose(null.l1, np.exp(np.median(logs, 0)))
    assert null.dof == 2
    x = np.array([10.0, 7, 30, 40, 50])
    flags, t, p, p_adj = null_test(x, null)
    np.testing.assert_allclose(t, (null.mean - centred_logs(x)) / null.scale)
    np.testing.assert_allclose(p, student_t.sf(t, 2))
    np.testing.assert_allclose(p_adj, np.minimum(1, 5 * p))
    assert flags == [int(k) for k in np.flatnonzero(p_adj < 0.05)] and int(np.argmax(t)) == 1
    assert critical_t(null, 0.05, 5) == pytest.approx(student_t.isf(0.01, 2))
    # a model whose triggers are all 3 times larger is the same model to the test
    np.testing.assert_allclose(null_test(3 * x, null)[1], t)
    with pytest.raises(InputError, match="do not vary"):  # three copies of one model
        reference_null([refs[0]] * 3)


def test_false_flags_stay_below_alpha_where_the_old_test_does_not() -> None:
    """Clean models drawn like the references: the chance of any flag is at most alpha
    (Bonferroni), while the MAD test on log(l1 / reference) flags classes with a wide spread."""
    rng = np.random.default_rng(0)
    trials, new_flags, old_flags = 600, 0, 0
    for _ in range(trials):
        refs, test = clean_norms(rng, 9), clean_norms(rng, 1)[0]
        new_flags += bool(null_test(test, reference_null(refs), 0.05)[0])
        geo = np.exp(np.median(np.log(refs), 0))
        old_flags += bool(relative_flags(test, geo, 2.0)[0])
    assert 0.005 < new_flags / trials <= 0.06
    assert old_flags / trials > 3 * new_flags / trials


def test_a_shrunk_class_is_flagged_even_if_it_is_not_the_smallest() -> None:
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(100):  # a backdoor: class 3's trigger a third of its clean size (class 0 still smaller)
        null, x = reference_null(clean_norms(rng, 9)), clean_norms(rng, 1)[0]
        x[3] /= 3
        hits += 3 in null_test(x, null, reached=np.ones(K, dtype=bool))[0]
    assert hits >= 90
    null = reference_null(clean_norms(rng, 9))
    x = clean_norms(rng, 1)[0]
    x[3] /= 3
    assert null_test(x, null, reached=np.arange(K) != 3)[0] == []  # an unfinished mask is no trigger
    assert null_test(x[:4], reference_null(clean_norms(rng, 5)[:, :4]))[0] == []  # too few classes


def test_leave_one_out_and_bad_input() -> None:
    refs = clean_norms(np.random.default_rng(2), 6)
    loo = leave_one_out(refs)
    assert len(loo) == 6 and all(0 <= p <= 1 for _f, p in loo)
    with pytest.raises(InputError, match="at least 3"):
        reference_null(refs[:2])
    with pytest.raises(InputError, match="positive"):
        reference_null(np.zeros((3, K)))
    with pytest.raises(InputError, match="classes"):
        null_test(refs[0, :5], reference_null(refs))
    with pytest.raises(InputError, match="alpha"):
        null_test(refs[0], reference_null(refs), alpha=1.5)


def fake_reference(path: Path, l1: np.ndarray, params: dict) -> Path:
    """An audit run with only what --nc-reference reads: the cleanse table and its settings."""
    run = Run.create(path, kind="audit")
    run.write_table("cleanse", pd.DataFrame({"class": np.arange(len(l1)), "l1": l1}))
    run.update_manifest("cleanse", {"params": params})
    return path


def test_cli_with_three_reference_runs(poisoned_run: Path, folder: Path, tmp_path: Path,  # noqa: F811
                                       capsys: pytest.CaptureFixture[str]) -> None:
    common = [*model_args(poisoned_run), "--images", f"folder:{folder}:test:12", "--nc-method", "saliency",
              "--nc-steps", "10"]
    assert main(["audit", "backdoor", *common, "--out", str(tmp_path / "own")]) == 0
    params = Run.open(tmp_path / "own").manifest["cleanse"]["params"]
    own = Run.open(tmp_path / "own").read_table("cleanse")["l1"].to_numpy()
    refs = [str(fake_reference(tmp_path / f"r{i}", own * f, params))
            for i, f in enumerate(([1.0, 1.1, 0.9], [1.2, 1.0, 1.0], [0.9, 0.95, 1.1]))]
    capsys.readouterr()
    out = tmp_path / "null"
    assert main(["audit", "backdoor", *common, "--nc-reference", *refs, "--nc-alpha", "0.1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "p_adjusted" in text and "t against the clean references" in text
    run = Run.open(out)
    t = run.read_table("cleanse")
    null = reference_null([own * np.array(f) for f in ([1.0, 1.1, 0.9], [1.2, 1.0, 1.0], [0.9, 0.95, 1.1])])
    np.testing.assert_allclose(t["z"], null_test(own, null)[1])
    np.testing.assert_allclose(t["p_adjusted"], np.minimum(1, 3 * t["p_value"]))
    assert run.manifest["cleanse"]["params"]["reference_test"] == "null"
    assert run.manifest["cleanse"]["params"]["alpha"] == 0.1
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    assert "t against the clean references" in (tmp_path / "rep" / "audit.html").read_text()
    rc = main(["audit", "backdoor", *common, "--nc-reference", refs[0], refs[0], refs[0], "--out", str(tmp_path / "b")])
    assert rc == 2 and "do not vary" in capsys.readouterr().err
