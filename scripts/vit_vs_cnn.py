"""The ViT-vs-CNN table of ``xailab study vit_fashion``: both scoreboards side by side, one figure.

Reads ``OUT/{vit,cnn}/explain`` (scored by ``xailab compare``) and, where they exist,
``OUT/{vit,cnn}/train`` (test accuracy, learning curve); prints a Markdown table (one row a
method, deletion / insertion AUC, faithfulness correlation, sanity Spearman and verdict, seconds
per image, for each model; "refused" where a method does not apply) and writes
``OUT/vit_vs_cnn.png`` (deletion and insertion AUC per method, both models) and
``OUT/vit_vs_cnn_curve.png`` (validation accuracy per epoch). ``--also LABEL=RUN`` adds the
scoreboard of any other explained and compared run as more columns (e.g. ResNet-20 on CIFAR-10).

    xailab study vit_fashion --quick --out runs/vit
    python scripts/vit_vs_cnn.py runs/vit
    python scripts/vit_vs_cnn.py runs/vit --also resnet20=runs/resnet20-explain
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from xailab.runs.store import Run, RunError

MODELS = ("vit", "cnn")
COLUMNS = {"deletion_auc": "del↓", "insertion_auc": "ins↑", "faithfulness_corr": "corr↑",
           "sanity_spearman": "sanity ρ↓", "avg_time": "s/img"}


def scoreboard(run: Path) -> pd.DataFrame:
    """The scoreboard ``xailab compare`` wrote into the explain run ``run``, one row a method."""
    try:
        opened = Run.open(run)
    except RunError as e:
        raise SystemExit(f"vit_vs_cnn.py: {e}") from None
    if "scoreboard" not in opened.tables():
        raise SystemExit(f"{run} has no scoreboard: score it first with `xailab compare {run}`")
    return opened.read_table("scoreboard").set_index("method")


def also(spec: str) -> tuple[str, Path]:
    label, sep, run = spec.partition("=")
    if not sep or not label or not run:
        raise argparse.ArgumentTypeError(f"--also takes LABEL=RUN, got {spec!r}")
    return label, Path(run)


def accuracy(out: Path, which: str) -> str:
    path = out / which / "train"
    if not (path / "manifest.json").is_file():
        return "(weights given)"
    run = Run.open(path)
    if "evaluation" in run.tables():
        table = run.read_table("evaluation")
        test = table[table["name"] == "test"]
        return f"{float(test['accuracy'].iloc[0]):.4f} on {int(test['n'].iloc[0])} test images" if len(test) else "?"
    # a training stopped before its final evaluation: the tracked test predictions of its best epoch
    best = int(run.manifest["status"]["best_epoch"])
    p = run.read_table("predictions")
    p = p[p["epoch"] == best]
    return (f"{float((p['label'] == p['predicted']).mean()):.4f} on {len(p)} tracked test images "
            f"(epoch {best}; the training was stopped before its final evaluation)")


def _cell(board: pd.DataFrame, method: str, col: str) -> str:
    if method not in board.index:
        return "refused" if col == "deletion_auc" else ""
    v = board.loc[method, col]
    if col == "sanity_spearman":
        return f"{float(v):.2f} ({board.loc[method, 'sanity']})"
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.3f}"


def table(boards: dict[str, pd.DataFrame]) -> str:
    methods = list(dict.fromkeys(m for b in boards.values() for m in b.index))
    head = ["method"] + [f"{w.upper()} {c}" for w in boards for c in COLUMNS.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        cells = [_cell(boards[w], m, c) for w in boards for c in COLUMNS]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(boards: dict[str, pd.DataFrame], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(m for b in boards.values() for m in b.index))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=False)
    width = 0.8 / len(boards)
    for ax, col, title in ((axes[0], "deletion_auc", "deletion AUC (lower is better)"),
                           (axes[1], "insertion_auc", "insertion AUC (higher is better)")):
        for k, (which, board) in enumerate(boards.items()):
            values = [float(board.loc[m, col]) if m in board.index else 0.0 for m in methods]
            offset = (k - (len(boards) - 1) / 2) * width
            ax.bar([i + offset for i in range(len(methods))], values, width, label=which.upper())
        ax.set_xticks(range(len(methods)), methods, rotation=60, ha="right", fontsize=8)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curve(out: Path, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    drawn = False
    for which in MODELS:
        run = out / which / "train"
        if (run / "manifest.json").is_file():
            m = Run.open(run).read_table("metrics")
            ax.plot(m["epoch"], m["val_acc"], marker="o", label=f"{which.upper()} validation")
            ax.plot(m["epoch"], m["train_acc"], ls="--", label=f"{which.upper()} train")
            drawn = True
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="the study's --out folder")
    p.add_argument("--also", type=also, action="append", default=[], metavar="LABEL=RUN",
                   help="another explained and compared run, shown as more columns (repeatable)")
    args = p.parse_args(argv)
    boards = {w: scoreboard(args.out / w / "explain") for w in MODELS}
    boards.update({label: scoreboard(run) for label, run in args.also})
    for w in MODELS:
        print(f"{w.upper()}: test accuracy {accuracy(args.out, w)}")
    print()
    print(table(boards))
    figure(boards, args.out / "vit_vs_cnn.png")
    print(f"\nfigures: {args.out / 'vit_vs_cnn.png'}"
          + (f", {args.out / 'vit_vs_cnn_curve.png'}" if curve(args.out, args.out / "vit_vs_cnn_curve.png") else ""))


if __name__ == "__main__":
    main()
