"""Training: the trainer, its callbacks, per-epoch prediction records, k-fold, evaluation.

    from xailab.train import Trainer, TrainConfig
    result = Trainer(model, train_set, val_set, config=TrainConfig(epochs=5), run="runs/x").fit()

See docs/training.md.
"""

from xailab.core.hooks import resolve_device
from xailab.train.batches import check_model_fits
from xailab.train.callbacks import Callback, CallbackList, TrainState
from xailab.train.checkpoint import load_weights, save_weights
from xailab.train.config import TrainConfig
from xailab.train.evaluation import (
    Evaluation,
    confusion_matrix,
    evaluate,
    load_evaluation,
    save_evaluation,
)
from xailab.train.kfold import KFoldResult, train_kfold
from xailab.train.recorder import (
    PredictionRecorder,
    backfill_predictions,
    read_predictions,
    read_probabilities,
)
from xailab.train.trainer import Trainer, TrainResult

__all__ = [
    "Callback",
    "CallbackList",
    "Evaluation",
    "KFoldResult",
    "PredictionRecorder",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "Trainer",
    "backfill_predictions",
    "check_model_fits",
    "confusion_matrix",
    "evaluate",
    "load_evaluation",
    "load_weights",
    "read_predictions",
    "read_probabilities",
    "resolve_device",
    "save_evaluation",
    "save_weights",
    "train_kfold",
]
