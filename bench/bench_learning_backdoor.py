"""When is a backdoor learned? Relevance on the trigger, SpRAy's eigengap and attack success per epoch.

Trains the Fashion-MNIST backdoor recipe (``xailab audit poison``: a 4x4 patch in the bottom-right
corner, a small share of every other class relabelled as the target), back-fills the predictions
of triggered test images from the per-epoch checkpoints, explains them at every epoch with
``xailab learning``'s job, and prints per epoch: attack success (triggered images predicted as
the target), the share of |relevance| on the trigger box, and SpRAy's eigengap score over the
target class's maps (clean target images and triggered ones).

    python -m bench.bench_learning_backdoor --out /tmp/poisoned --epochs 8
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

FASHION = "/usr/share/datasets/fashion-mnist"


def main() -> None:
    from xailab.audit.backdoor import poison_dataset
    from xailab.audit.clustering import spectral
    from xailab.audit.detection import map_features
    from xailab.data import load_dataset
    from xailab.dynamics.drift import to_size
    from xailab.dynamics.learning import explained_epochs, instances, load_maps
    from xailab.jobs.audit import PoisonSpec, poison_to_run
    from xailab.jobs.learning import LearningSpec, learning_to_run
    from xailab.runs.store import Run
    from xailab.train.recipe import model_from_run, stratified_indices, stratified_sample
    from xailab.train.recorder import backfill_predictions

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--fraction", type=float, default=0.01)
    p.add_argument("--limit-train", type=int, default=6000)
    p.add_argument("--tracked", type=int, default=300)
    p.add_argument("--target", default="1")
    a = p.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    cpu = time.process_time()
    if not (out / "manifest.json").is_file():
        poison_to_run(PoisonSpec(data="fashion_mnist", data_root=FASHION, target=a.target, model="small_cnn",
                                 fraction=a.fraction, trigger="patch:4", epochs=a.epochs, limit_train=a.limit_train,
                                 limit_test=1000, seed=0, device="cpu", quiet=True), out)
    print(f"training: {time.process_time() - cpu:.0f} s CPU")
    run = Run.open(out)
    test = stratified_sample(load_dataset("fashion_mnist", "test", FASHION), 1000, 0)
    tracked = poison_dataset(test, "patch:4", target=a.target, fraction=1.0, seed=0)  # every non-target image stamped
    idx = stratified_indices(test.targets.numpy(), a.tracked, 0)
    model, _ = model_from_run(run, "1")
    backfill_predictions(run, tracked, model, indices=idx)
    h, w = tracked.image_size
    box = f"box:{w - 5},{h - 5},{w - 1},{h - 1}"  # patch:4 @corner: 1 pixel from the bottom-right borders
    cpu = time.process_time()
    learning_to_run(LearningSpec(run=str(out), methods=("gradcam", "saliency"), regions=(box,), strips=12),
                    dataset=tracked)
    print(f"learning: {time.process_time() - cpu:.0f} s CPU")
    ids = instances(run)
    poisoned = tracked.poisoned.numpy()[ids]
    steps = run.read_table("learning_steps")
    target = int(tracked.target)
    print(f"\n{'epoch':>5s} {'ASR':>6s} {'gradcam trig':>12s} {'saliency trig':>13s} {'clean trig':>10s} "
          f"{'SpRAy gap':>9s}")
    maps, epochs = load_maps(run, "gradcam")
    for k, e in enumerate(explained_epochs(run, "gradcam")):
        s = steps[steps["epoch"] == e].set_index(["method", "instance"])
        g, sal = s.loc["gradcam"].loc[ids], s.loc["saliency"].loc[ids]
        asr = float((g["predicted"].to_numpy()[poisoned] == target).mean())
        col = f"mass {box}"
        of_target = (g["label"].to_numpy() == target)  # clean target images and triggered ones
        feats = map_features(torch.from_numpy(to_size(maps[k][of_target], (h, w))))[1].numpy()
        gap = spectral(feats).gap_score
        print(f"{e:5d} {asr:6.2f} {g[col].to_numpy()[poisoned].mean():12.3f} "
              f"{sal[col].to_numpy()[poisoned].mean():13.3f} {g[col].to_numpy()[~poisoned].mean():10.3f} {gap:9.3f}")
    print(f"\ntracked: {len(ids)} ({int(poisoned.sum())} triggered); trigger {box}; "
          f"box share of the image {16 / (h * w):.3f}")
    print(np.asarray(epochs))


if __name__ == "__main__":
    main()
