"""Errors xailab raises on bad input. The CLI prints them as one clear line and exits non-zero."""


class XailabError(Exception):
    """Base of every error that is the user's input, not a bug in xailab."""


class InputError(XailabError, ValueError):
    """Images, labels or files that cannot be used (wrong shape, not finite, not an image...)."""


class TargetError(XailabError, ValueError):
    """A target spec that cannot be resolved (unknown name, class out of range, no labels)."""


class LayerError(XailabError, ValueError):
    """A layer that does not exist or cannot be used."""


class ModelError(XailabError, ValueError):
    """A model that returns unusable output (wrong shape, NaN or infinite logits)."""


class UnsupportedModelError(XailabError, ValueError):
    """A method that would silently give a wrong answer on this model (e.g. a reused ReLU)."""


class CheckpointError(XailabError, ValueError):
    """A checkpoint that is missing, corrupt, unsafe to load, or does not fit the model."""


class DataError(XailabError, ValueError):
    """A dataset that is missing, empty, or holds files that cannot be decoded."""
