"""Propagation family: layer-wise relevance propagation (LRP) on zennit's rules and canonizers."""

#: modules that import zennit (and, through it, torchvision): ``lrp.py`` imports them when LRP
#: runs, and :mod:`xailab.methods` does not import them when it registers the methods
RUN_TIME_MODULES = ("canonizers", "checks", "composites")
