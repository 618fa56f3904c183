"""The ViT recipe's training options: AdamW, linear warmup + cosine schedule, label smoothing,
each checked against torch's own implementation, recorded in the run and kept on resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.test_train import Boom, Synthetic, make_model
from tests.test_train_cli import make_folder
from xailab.cli import main
from xailab.core.errors import InputError
from xailab.runs import Run, RunError
from xailab.train import Callback, TrainConfig, Trainer

COS = TrainConfig(epochs=3, batch_size=16, lr=0.01, optimizer="adamw", weight_decay=0.05, schedule="cosine",
                  warmup_epochs=1, label_smoothing=0.1, seed=3, device="cpu", quiet=True)


class Rates(Callback):
    """The learning rate of every optimizer step, and the optimizer's class."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.optimizer = ""

    def on_batch_end(self, batch: int, model: nn.Module, state: object) -> None:
        opt = state.optimizer  # type: ignore[attr-defined]
        self.lrs.append(float(opt.param_groups[0]["lr"]))
        self.optimizer = type(opt).__name__


def torch_rates(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The same schedule from torch.optim.lr_scheduler: LinearLR warmup, then CosineAnnealingLR."""
    w = round(cfg.warmup_epochs * steps_per_epoch)
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / w, total_iters=w - 1)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - w)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[w])
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedule_equals_torchs_linear_warmup_then_cosine() -> None:
    cfg = TrainConfig(epochs=5, lr=0.3, schedule="cosine", warmup_epochs=1.5)
    ours = [cfg.lr_at(s, 4) for s in range(20)]
    assert ours == pytest.approx(torch_rates(cfg, 4), rel=1e-9)
    assert ours[5] == pytest.approx(0.3) and ours[-1] < 0.3 * 0.02  # the peak after 6 steps, ~0 at the end
    flat = TrainConfig(epochs=2, lr=0.3, warmup_epochs=1)
    assert [flat.lr_at(s, 4) for s in range(8)] == pytest.approx([0.075, 0.15, 0.225, 0.3, 0.3, 0.3, 0.3, 0.3])
    assert TrainConfig(lr=0.3).lr_at(0, 4) == 0.3


def test_trainer_sets_each_steps_rate_and_uses_adamw(tmp_path: Path) -> None:
    rates = Rates()
    Trainer(make_model(), Synthetic(), Synthetic(n=30, seed=1), config=COS, run=tmp_path / "r",
            callbacks=[rates]).fit()
    assert rates.optimizer == "AdamW"
    assert rates.lrs == pytest.approx([COS.lr_at(s, 4) for s in range(12)])  # 60 items / 16 = 4 steps
    run = Run.open(tmp_path / "r")
    train = run.manifest["train"]
    assert (train["optimizer"], train["schedule"], train["warmup_epochs"], train["label_smoothing"]) == \
        ("adamw", "cosine", 1, 0.1)
    assert run.read_table("metrics").sort_values("epoch")["lr"].tolist() == pytest.approx(rates.lrs[3::4])


def test_label_smoothing_is_torchs_smoothed_cross_entropy() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    data = Synthetic()
    x, y = data.tensors
    with torch.no_grad():
        z = model(x).double()
        want = F.cross_entropy(z, y, label_smoothing=0.2).item()
        by_hand = (0.8 * F.cross_entropy(z, y) - 0.2 * F.log_softmax(z, 1).mean(1).mean()).item()
    assert want == pytest.approx(by_hand, rel=1e-12)
    cfg = TrainConfig(epochs=1, batch_size=60, lr=1e-30, label_smoothing=0.2, device="cpu", quiet=True)
    res = Trainer(model, data, config=cfg).fit()
    assert res.history["train_loss"].iloc[0] == pytest.approx(want, rel=1e-5)
    plain = Trainer(model, data, config=cfg.replace(label_smoothing=0.0)).fit()
    assert abs(plain.history["train_loss"].iloc[0] - want) > 1e-3


def test_cosine_run_resumes_exactly_and_keeps_its_epochs(tmp_path: Path) -> None:
    def fit(path: Path, cfg: TrainConfig = COS, callbacks: tuple[Callback, ...] = ()) -> object:
        return Trainer(make_model(), Synthetic(), Synthetic(n=30, seed=1), config=cfg, run=path,
                       callbacks=callbacks).fit()

    fit(tmp_path / "full")
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tmp_path / "cut", callbacks=(Boom(at=2),))
    fit(tmp_path / "cut")
    a, b = (Run.open(tmp_path / p).read_table("metrics").sort_values("epoch") for p in ("full", "cut"))
    assert a["train_loss"].tolist() == b["train_loss"].tolist() and a["lr"].tolist() == b["lr"].tolist()
    with pytest.raises(RunError, match="epochs: 3 -> 4"):  # the cosine's length is part of the run
        fit(tmp_path / "full", COS.replace(epochs=4))


@pytest.mark.parametrize("bad, match", [({"warmup_epochs": 4}, "warmup"), ({"label_smoothing": 1.0}, "smoothing"),
                                        ({"schedule": "step"}, "schedule"), ({"optimizer": "lion"}, "adamw")])
def test_bad_settings_are_refused(bad: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match):
        TrainConfig(epochs=3, **bad)  # type: ignore[arg-type]


def test_cli_records_the_recipe_and_reads_old_runs_as_defaults(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder(tmp_path / "pets")
    base = ["train", "--model", "binary_cnn", "--data", f"folder:{data}", "--batch-size", "8", "--quiet"]
    recipe = ["--optimizer", "adamw", "--weight-decay", "0.05", "--schedule", "cosine", "--warmup-epochs", "0.5",
              "--label-smoothing", "0.1", "--augment"]
    out = tmp_path / "vit"
    assert main([*base, "--epochs", "2", *recipe, "--out", str(out)]) == 0
    m = Run.open(out).manifest
    for k, v in {"optimizer": "adamw", "schedule": "cosine", "warmup_epochs": 0.5, "label_smoothing": 0.1,
                 "augment": True, "weight_decay": 0.05}.items():
        assert m["config"][k] == v and m["provenance"]["params"][k] == v
    assert main([*base, "--epochs", "3", *recipe, "--out", str(out)]) == 2
    assert "other settings (epochs: 2 -> 3)" in capsys.readouterr().err
    # a run made before these options existed has no such keys: it resumes as made with the defaults
    old = tmp_path / "old"
    assert main([*base, "--epochs", "1", "--out", str(old)]) == 0
    assert "schedule" not in Run.open(old).manifest["config"]
    assert main([*base, "--epochs", "2", "--out", str(old)]) == 0
    assert Run.open(old).manifest["status"]["epoch"] == 2
    assert main([*base, "--epochs", "2", "--schedule", "cosine", "--out", str(old)]) == 2
    assert "schedule: 'constant' -> 'cosine'" in capsys.readouterr().err
    assert math.isfinite(float(Run.open(old).read_table("metrics")["lr"].iloc[0]))
