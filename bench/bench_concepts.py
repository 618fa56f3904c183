"""ICE fitting: xailab's streaming NMF against scikit-learn's in-memory NMF, on CIFAR ResNet-20.

For ``N`` real CIFAR-10 test images (ResNet-20, layer ``layer3.2``: 64 channels x 8 x 8, so
``64 N`` rows) and 10 concepts:

* ``xailab`` ICE fit: the activation pass and the online NMF together, streaming (one batch of
  activations alive at a time);
* ``floor``: the activation pass alone (what any method must pay);
* ``sklearn-NMF``: the activation pass into one in-memory matrix, then ``sklearn.decomposition.NMF``
  (coordinate descent, nndsvda init) on it;
* ``sklearn-MiniBatchNMF``: the same matrix through ``MiniBatchNMF.partial_fit`` in batches
  (sklearn's streaming variant; here fed from memory, one epoch).

Seconds per image, peak memory growth (sampled RSS on CPU, allocator peak on GPU) and the
relative reconstruction error ``||V - S P|| / ||V||`` of each basis on the same ``V``.

    python -m bench.bench_concepts                 # N = 1000 and 4000
    python -m bench.bench_concepts --quick         # N = 256
    python -m bench.bench_concepts --sizes 10000 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import torch

from bench.common import SHARED, cifar_batch
from bench.harness import Row, peak_memory_mb, print_table, save_json
from xailab.concepts.activations import iter_activations
from xailab.concepts.ice import fit_ice, to_rows
from xailab.concepts.nmf import nnls, relative_error

LAYER = "layer3.2"
K = 10


def resnet20() -> torch.nn.Module:
    from xailab.models import create_model

    weights = SHARED / "cifar10-resnet" / "resnet20.safetensors"
    if weights.exists():
        return create_model("resnet20", weights=weights)
    torch.manual_seed(0)
    return create_model("resnet20")


def images(n: int) -> torch.Tensor:
    """``n`` CIFAR-10 test images normalised for the ResNet (ImageNet statistics)."""
    x = cifar_batch(n)  # normalised with CIFAR statistics; bring back to [0, 1], then ImageNet's
    cifar_mean = torch.tensor((0.4914, 0.4822, 0.4465))[:, None, None]
    cifar_std = torch.tensor((0.247, 0.243, 0.261))[:, None, None]
    raw = x * cifar_std + cifar_mean
    mean = torch.tensor((0.485, 0.456, 0.406))[:, None, None]
    std = torch.tensor((0.229, 0.224, 0.225))[:, None, None]
    return (raw - mean) / std


def activation_matrix(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([to_rows(a) for _, a in iter_activations(model, LAYER, x, batch_size)])


def measured(fn: Any) -> tuple[float, float, Any]:
    """``(seconds, peak MB, result)`` of one call."""
    box: dict[str, Any] = {}

    def run() -> Any:
        t0 = time.perf_counter()
        out = fn()
        box["s"] = time.perf_counter() - t0
        return out

    mb, out = peak_memory_mb(run)
    return box["s"], mb, out


def bench_size(model: torch.nn.Module, n: int, batch_size: int, epochs: int) -> list[Row]:
    x = images(n)
    case = f"resnet20 N={n}"
    rows: list[Row] = []
    activation_matrix(model, x[:batch_size], batch_size)  # warm-up: first-call allocations

    s, mb, basis = measured(lambda: fit_ice(model, x, n_concepts=K, layer=LAYER, batch_size=batch_size, epochs=epochs))
    V = activation_matrix(model, x, batch_size)  # evaluation only, outside the timed regions
    P = basis.directions.to(V)
    err = relative_error(V, nnls(V, P), P)
    rows.append(Row(case, "ice_fit", "xailab", s / n, epochs, mb,
                    {"seconds": s, "recon_error": err, "rows": len(V), "epochs": epochs}))

    s_floor, mb_floor, _ = measured(lambda: sum(float(a.sum()) for _, a in iter_activations(model, LAYER, x, batch_size)))
    rows.append(Row(case, "ice_fit", "floor", s_floor / n, 1, mb_floor, {"seconds": s_floor}))

    from sklearn.decomposition import NMF, MiniBatchNMF

    def sk_plain() -> tuple[np.ndarray, np.ndarray, float]:
        t0 = time.perf_counter()
        m = activation_matrix(model, x, batch_size).numpy()
        t_act = time.perf_counter() - t0
        nmf = NMF(n_components=K, init="nndsvda", max_iter=400, random_state=0)
        W = nmf.fit_transform(m)
        return W, nmf.components_, t_act

    s, mb, (W, H, t_act) = measured(sk_plain)
    Vn = V.numpy()
    err = float(np.linalg.norm(Vn - W @ H) / np.linalg.norm(Vn))
    rows.append(Row(case, "ice_fit", "sklearn-NMF", s / n, 1, mb,
                    {"seconds": s, "nmf_seconds": s - t_act, "recon_error": err}))

    def sk_minibatch() -> np.ndarray:
        m = activation_matrix(model, x, batch_size).numpy()
        perm = np.random.default_rng(0).permutation(len(m))
        mb_nmf = MiniBatchNMF(n_components=K, batch_size=4096, random_state=0)
        for _ in range(epochs):
            for lo in range(0, len(m), 4096):
                mb_nmf.partial_fit(m[perm[lo : lo + 4096]])
        return np.asarray(mb_nmf.components_)

    s, mb, H2 = measured(sk_minibatch)
    P2 = torch.from_numpy(H2).to(V)
    err = relative_error(V, nnls(V, P2), P2)
    rows.append(Row(case, "ice_fit", "sklearn-MiniBatchNMF", s / n, epochs, mb, {"seconds": s, "recon_error": err}))
    return rows


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one small size (256 images)")
    p.add_argument("--sizes", default="1000,4000", help="numbers of images, comma-separated")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--epochs", type=int, default=1, help="passes of the streaming fits")
    p.add_argument("--threads", type=int, default=1,
                   help="torch / BLAS threads (default 1: on a shared 2-core CPU small ops run "
                        "several times faster on one thread)")
    p.add_argument("--json", help="write the rows as JSON here")
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    sizes = [256] if args.quick else [int(v) for v in args.sizes.split(",") if v.strip()]
    model = resnet20()
    rows: list[Row] = []
    with threadpool_limits(args.threads):
        for n in sizes:
            rows += bench_size(model, n, args.batch_size, args.epochs)
            print_table(rows, f"ICE fit, {K} concepts on {LAYER} (threads={args.threads})")
    for n in sizes:
        case = f"resnet20 N={n}"
        ours = next(r for r in rows if r.case == case and r.impl == "xailab")
        for r in rows:
            if r.case == case and r.impl != "xailab":
                print(f"{case}: {r.impl:22s} time ratio {r.seconds_per_image / ours.seconds_per_image:.2f}x of xailab, "
                      f"memory {r.peak_mb or 0:.0f} MB vs {ours.peak_mb or 0:.0f} MB, "
                      f"recon error {r.extra.get('recon_error', float('nan')):.3f} vs {ours.extra['recon_error']:.3f}")
    save_json(rows, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
