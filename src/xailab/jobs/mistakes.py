"""Misclassified images added to the images an explain job explains (``xailab explain --mistakes K``).

A demo or a first look at a model shows little on images it gets right: where ``true`` and
``top1`` differ the explanation of each says what the model saw in the wrong class. The first
``K`` images of the same split (picked class by class, as the dataset spec picks) that the model
misclassifies and that are not among the images already chosen are appended.

    images, labels, names = add_mistakes(loaded, "fashion_mnist:test:8", 2, images, labels, names)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from xailab.core.errors import InputError
from xailab.core.hooks import model_session
from xailab.core.rows import unpack_logits
from xailab.jobs.model import LoadedModel

#: images searched per mistake asked for (beyond the images already chosen)
POOL_PER_MISTAKE = 100


def add_mistakes(loaded: LoadedModel, images_spec: str, k: int, images: Tensor, labels: Tensor | None,
                 names: list[str], *, data_root: str | Path | None = None, batch_size: int = 64,
                 log: Callable[[str], None] = print) -> tuple[Tensor, Tensor | None, list[str]]:
    """``images, labels, names`` with up to ``k`` misclassified images of the same split appended."""
    from xailab.data import load_images
    from xailab.data.images import with_count

    if k <= 0:
        return images, labels, names
    pool_spec = with_count(images_spec, len(images) + POOL_PER_MISTAKE * k)
    if pool_spec is None or labels is None:
        raise InputError(f"--mistakes needs labelled images from a dataset spec such as fashion_mnist:test:8, "
                         f"not {images_spec!r}")
    px, py, pnames, _ = load_images(pool_spec, loaded.preprocessing, root=data_root)
    assert py is not None  # a dataset spec is labelled
    pred = []
    with model_session(loaded.model), torch.no_grad():
        for lo in range(0, len(px), batch_size):
            xb = px[lo: lo + batch_size].to(loaded.device)
            pred.append(unpack_logits(loaded.model(xb), len(xb)).argmax(1).cpu())
    have = set(names)
    wrong = [i for i, (p, y) in enumerate(zip(torch.cat(pred).tolist(), py.tolist(), strict=True))
             if p != y and pnames[i] not in have][:k]
    log(f"added {len(wrong)} misclassified image(s) of {len(px)} searched"
        + (f" (asked for {k})" if len(wrong) < k else ""))
    if not wrong:
        return images, labels, names
    idx = torch.tensor(wrong)
    return (torch.cat([images, px[idx].to(images.dtype)]), torch.cat([labels, py[idx].to(labels.dtype)]),
            names + [pnames[i] for i in wrong])
