"""Write a self-contained static report of one or more runs: a folder that opens from disk.

Overview (the three questions answered from the data; model, data, accuracy, confusion,
training curves), one page per explained image (every method for every target), the comparison
that ``xailab compare`` wrote, the instance flow, concepts (ICE, TCAV), network dissection, the
audit (patch attack, backdoor detection), and a card per method. Each page appears when some
run has its data. No server, no network, no script.

Examples:
  xailab report runs/cifar-train runs/cifar-explain --out site/
  xailab report runs/photos-explain --out photos-report --max-images 20
"""

from __future__ import annotations

import argparse

HELP = "static HTML report of runs (three questions, images, comparison, flow, concepts, dissection, audit, method cards)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this command."""
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (train, evaluate, explain, concepts, dissect, audit runs)")
    p.add_argument("--out", required=True, metavar="SITE", help="folder to write (replaced whole if it is a report)")
    p.add_argument("--title", default="xailab report", help="title shown on every page")
    p.add_argument("--max-images", type=int, default=100, help="image pages per explain run (default 100)")


def run(args: argparse.Namespace) -> int:
    """Build the job\'s spec from the options, run the job, print; returns the exit status."""
    from xailab.report.site import build_site

    site = build_site(args.runs, args.out, title=args.title, max_images=args.max_images)
    print(f"report: {site / 'index.html'}")
    return 0
