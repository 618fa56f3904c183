"""Instance flow of a training run: how each tracked instance's prediction moved over the epochs.

Writes a self-contained interactive page (a Sankey of predicted classes per epoch, the
instance table, where each class goes, the most confused pairs) and prints the widest flows
between classes. The run must hold per-epoch predictions (table ``predictions``), recorded
while training or back-filled from checkpoints.

    xailab flow runs/cifar --class cat --epochs 1-6 --changed-only
    xailab flow runs/cifar --misclassified --color-by correct --out cats.html
"""

from __future__ import annotations

import argparse

HELP = "instance flow: a Sankey of how predictions move between classes over the epochs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this command."""
    p.add_argument("run", help="run directory with recorded per-epoch predictions")
    p.add_argument("--class", dest="true_classes", action="append", metavar="NAME",
                   help="only instances of this true class (name or index; repeat for several)")
    p.add_argument("--epochs", metavar="A-B", help="inclusive epoch range, e.g. 1-6 (default: all)")
    p.add_argument("--changed-only", action="store_true",
                   help="only instances whose prediction changed at least once in the range")
    p.add_argument("--misclassified", action="store_true",
                   help="only instances predicted wrong at the last epoch of the range")
    p.add_argument("--color-by", choices=["true", "correct"], default=None,
                   help="colour the flows by true class or by correctness (the page can switch; "
                        "default: correctness for one true class, else true class)")
    p.add_argument("--out", metavar="PAGE.html", help="where to write the page (default RUN/files/flow.html)")
    p.add_argument("--classes", metavar="A,B,...",
                   help="class names, comma-separated, if the run's manifest has none")
    p.add_argument("--table", default="predictions", help="prediction table of the run (default: predictions)")
    p.add_argument("--top", type=int, default=10, help="flows to print (default 10)")
    p.add_argument("--max-instances", type=int, default=5000,
                   help="rows of the page's instance table (the diagram always counts all)")
    p.add_argument("--thumbnails", type=int, nargs="?", const=500, default=0, metavar="N",
                   help="first render images of the N instances that changed most (default 500) "
                        "into RUN/files/instances/ (runs made by `xailab train`)")


def run(args: argparse.Namespace) -> int:
    """Build the job\'s spec from the options, run the job, print; returns the exit status."""
    from xailab.dynamics.page import flow_page
    from xailab.runs.store import Run

    run_ = Run.open(args.run)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    if args.thumbnails:
        from xailab.dynamics.flow import instance_table, select_history
        from xailab.dynamics.thumbnails import render_thumbnails, tracked_dataset

        h = select_history(run_, true_classes=args.true_classes, epochs=args.epochs,
                           changed_only=args.changed_only, misclassified=args.misclassified,
                           classes=classes, table=args.table)
        ids = instance_table(h)["instance"].head(args.thumbnails).tolist()
        paths = render_thumbnails(run_, tracked_dataset(run_), ids)
        print(f"thumbnails: {len(paths)} in {run_.path / 'files' / 'instances'}")
    page = flow_page(run_, args.out, true_classes=args.true_classes, epochs=args.epochs,
                     changed_only=args.changed_only, misclassified=args.misclassified,
                     color_by=args.color_by, classes=classes, max_instances=args.max_instances,
                     table=args.table)
    h, s = page.history, page.sankey
    ep = h.epochs.tolist()
    span = f"{ep[0]}-{ep[-1]}" if ep else "none"
    print(f"{len(h):,} instances, epochs {span}, {len(s.links):,} bands in {len(s.flows()):,} flows")
    if len(h) == 0:
        print("no instance matches these filters")
    else:
        flows = s.flows()
        stays = int(flows.loc[flows["source"] == flows["target"], "count"].sum())
        moves = int(flows["count"].sum()) - stays
        print(f"epoch-to-epoch steps: {moves:,} changed class, {stays:,} kept it")
        top = s.top_flows(args.top)
        if len(top):
            w = max(8, *(len(x) for x in top["from"]), *(len(x) for x in top["to"]))
            print(f"\n{'epochs':>11s}  {'from':<{w}s}  {'to':<{w}s}  {'instances':>9s}")
            for e0, e1, a, b, n in zip(top["epoch"], top["next_epoch"], top["from"], top["to"],
                                       top["count"], strict=True):
                print(f"{e0:>5d} -> {e1:<3d}  {a:<{w}s}  {b:<{w}s}  {n:>9,d}")
    print(f"\npage: {page.path}")
    return 0
