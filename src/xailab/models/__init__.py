"""The model zoo and safe loading of user models.

    from xailab.models import create_model, load_model, model_info
    model = create_model("resnet20", weights="cifar10-resnet/resnet20.safetensors")
    mine = load_model("mypkg.nets:build", weights="best.safetensors", num_classes=2)
    model_info("efficientnet_lite0")["preprocessing"]

Registered: ``cifar_cnn``, ``small_cnn``, ``binary_cnn`` (:mod:`.cnn`), ``resnet20/32/44/56/110``
(:mod:`.resnet_cifar`), ``efficientnet_lite0`` (:mod:`.efficientnet`) and torchvision's
classifiers (:mod:`.torchvision_zoo`). See docs/data-and-models.md.
"""

from xailab.models import cnn, efficientnet, resnet_cifar, student, torchvision_zoo  # noqa: F401  (registers)
from xailab.models.checkpoint import load_weights, read_metadata, read_state_dict, save_weights
from xailab.models.layers import Add, PadShortcut
from xailab.models.loading import check_num_classes, create_model, load_model, model_info
from xailab.models.preprocessing import get_preprocessing, set_preprocessing
from xailab.models.registry import MODELS, ModelEntry, register_model

__all__ = [
    "MODELS",
    "Add",
    "ModelEntry",
    "PadShortcut",
    "check_num_classes",
    "create_model",
    "get_preprocessing",
    "load_model",
    "load_weights",
    "model_info",
    "read_metadata",
    "read_state_dict",
    "register_model",
    "save_weights",
    "set_preprocessing",
]
