"""Perturbation family: occlusion, LIME, KernelSHAP and RISE.

Each method changes parts of the image, runs the model on the changed copies and reads off how
the explained score moves. They need no gradient and no access to the model's insides, only
forward passes, which is what they cost: the perturbed copies of several images go through the
model together, at most ``batch_size`` a forward pass, and one pass serves every target.

* :mod:`.occlusion`: a sliding window replaced by a fill value (Zeiler & Fergus 2014).
* :mod:`.lime`: a weighted ridge regression on superpixels switched on and off (Ribeiro et al. 2016).
* :mod:`.kernel_shap`: Shapley values of the superpixels by KernelSHAP (Lundberg & Lee 2017).
* :mod:`.rise`: random smooth masks weighted by the score they leave (Petsiuk et al. 2018).

Shared pieces: :mod:`._base` (the batched evaluator), :mod:`.segmentation` (superpixels whose
scale follows the image size), :mod:`.sampling` (coalition samplers) and :mod:`.regression`.
"""
