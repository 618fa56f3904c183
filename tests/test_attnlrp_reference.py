"""Agreement of xailab's ``attnlrp`` with lxt (LRP-eXplains-Transformers, the AttnLRP authors' package).

lxt 2.1 (PyPI) cannot be imported as a package beside transformers 5: its ``lxt.efficient``
``__init__`` imports its BERT patches, which import ``find_pruneable_heads_and_indices`` that
transformers 5 removed. Its ViT code does not need them, so the reference runs in a subprocess
that stubs ``lxt.efficient.models``' ``__init__`` (its modules are still lxt's files) and imports
lxt's own rules and patches. lxt is not a dependency: the test runs when ``XAILAB_LXT_SITE`` names
a folder holding it (``pip install --no-deps --target DIR lxt``) or lxt is importable, else skips.

The model is torchvision's ViT (lxt's supported ViT), ε = 0 on linear layers (lxt's plain
gradient x input, no zennit composite), float64:

* ``softmax="constant"``: lxt's own ``cp_LRP`` map for ``torchvision.models.vision_transformer``
  (identity rule on GELU, its LayerNorm forward, gradient stopped at MHA's query and key);
* ``softmax="linearize"``: lxt's GELU and LayerNorm patches and, on ``nn.MultiheadAttention``,
  lxt's ``divide_gradient`` on query (4), key (4) and value (2), as lxt's ``wrap_attention_forward``
  does for Hugging Face attention (lxt ships no AttnLRP map for torchvision's MHA).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import xailab

pytestmark = pytest.mark.reference

SCRIPT = r'''
import sys, types, importlib.util, torch
from functools import partial
site, workdir, variant = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, site)
spec = importlib.util.find_spec("lxt")
models = types.ModuleType("lxt.efficient.models")  # its __init__ imports transformers-4-only code
models.__path__ = [str(__import__("pathlib").Path(spec.origin).parent / "efficient" / "models")]
models.get_default_map = lambda module: {}
sys.modules["lxt.efficient.models"] = models
from lxt.efficient import monkey_patch
from lxt.efficient.patches import patch_method, non_linear_forward, layer_norm_forward
from lxt.efficient.rules import divide_gradient
from lxt.efficient.models.vit_torch import cp_LRP
from torchvision.models import vision_transformer

def attn_lrp_mha(self, query, key, value, *args, **kwargs):
    return self.original_forward(divide_gradient(query, 4), divide_gradient(key, 4), divide_gradient(value, 2),
                                 *args, **kwargs)

if variant == "constant":
    patch_map = cp_LRP
else:
    patch_map = {
        vision_transformer.nn.GELU: partial(patch_method, non_linear_forward, keep_original=True),
        vision_transformer.nn.LayerNorm: partial(patch_method, layer_norm_forward),
        vision_transformer.nn.MultiheadAttention: partial(patch_method, attn_lrp_mha, keep_original=True),
    }
monkey_patch(vision_transformer, patch_map)
torch.manual_seed(0)
model = vision_transformer.VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16,
                                             mlp_dim=32, num_classes=5).double().eval()
model.load_state_dict(torch.load(workdir + "/state.pt", weights_only=True))
for p in model.parameters():
    p.requires_grad_(False)
x = torch.load(workdir + "/x.pt", weights_only=True).requires_grad_(True)
targets = torch.load(workdir + "/targets.pt", weights_only=True)
maps = []
for j in range(targets.shape[1]):
    x.grad = None
    y = model(x)
    y.gather(1, targets[:, j : j + 1]).sum().backward()
    maps.append((x * x.grad).detach())
torch.save(torch.stack(maps, 1), workdir + "/lxt.pt")
'''


def lxt_site() -> str | None:
    site = os.environ.get("XAILAB_LXT_SITE")
    if site and (Path(site) / "lxt" / "__init__.py").exists():
        return site
    spec = importlib.util.find_spec("lxt")
    return str(Path(spec.origin).parent.parent) if spec is not None and spec.origin else None


def torchvision_vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=5)
    with torch.no_grad():  # torchvision starts the head at zero; random biases so they matter
        nn.init.normal_(model.heads.head.weight)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model.double().eval()


@pytest.mark.parametrize("softmax", ["constant", "linearize"])
def test_attnlrp_equals_lxt_on_torchvision_vit(softmax: str, tmp_path: Path) -> None:
    site = lxt_site()
    if site is None:
        pytest.skip("lxt is not installed: pip install --no-deps --target DIR lxt; XAILAB_LXT_SITE=DIR")
    model = torchvision_vit()
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = xailab.create("attnlrp", model, epsilon=0.0, softmax=softmax).explain(x, target=["top1", "least"])
    torch.save(model.state_dict(), tmp_path / "state.pt")
    torch.save(x, tmp_path / "x.pt")
    torch.save(ours.targets, tmp_path / "targets.pt")
    run = subprocess.run([sys.executable, "-c", SCRIPT, site, str(tmp_path), softmax],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    ref = torch.load(tmp_path / "lxt.pt", weights_only=True)
    # measured: max |difference| 1e-9 (constant) and 5e-10 (linearize) for maps up to 0.4: lxt's identity
    # rule divides by ``x + 1e-10`` (ours by ``x``)
    torch.testing.assert_close(ours.maps, ref, rtol=1e-6, atol=1e-8)
    assert float(ref.abs().sum()) > 0
