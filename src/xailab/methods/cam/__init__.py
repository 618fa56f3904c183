"""CAM family: Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, Ablation-CAM, Score-CAM.

One base class (:class:`~xailab.methods.cam.base.CAM`) records the layer's activations (and
gradients) with hooks and upsamples; each method only computes its channel weights.
"""

from xailab.methods.cam.ablation import AblationCAM
from xailab.methods.cam.base import CAM
from xailab.methods.cam.gradient import GradCAM, GradCAMPlusPlus, LayerCAM, XGradCAM
from xailab.methods.cam.score import ScoreCAM

__all__ = ["CAM", "AblationCAM", "GradCAM", "GradCAMPlusPlus", "LayerCAM", "ScoreCAM", "XGradCAM"]
