"""Counterfactual explanations: what would have to change for the model to decide otherwise.

Four searches, one result type (:class:`Counterfactuals`), one table per search:

* :func:`pixel_counterfactuals`: optimisation in pixel space (Wachter et al. 2017), with a
  search over the weight of the distance, batched over images;
* :func:`region_counterfactuals`: the fewest superpixels whose fill (blur, mean, a donor image)
  flips the decision, greedy or beam search (SEDC);
* :func:`prototype_counterfactuals`: the nearest training images of the target class in the
  model's feature space (and of the predicted class);
* :func:`concept_counterfactuals`: the fewest ICE concepts to remove or add in a layer.

:func:`plausibility` scores any counterfactual against training images in feature space.

    from xailab.counterfactual import pixel_counterfactuals
    cf = pixel_counterfactuals(model, images, "top2")
    print(cf.format()); cf.table()
"""

from xailab.counterfactual.base import OTHER, Counterfactuals, PixelMap
from xailab.counterfactual.concept import class_concept_maps, concept_counterfactuals
from xailab.counterfactual.pixel import pixel_counterfactuals
from xailab.counterfactual.prototype import Reference, plausibility, prototype_counterfactuals
from xailab.counterfactual.region import region_counterfactuals

__all__ = ["OTHER", "Counterfactuals", "PixelMap", "Reference", "class_concept_maps", "concept_counterfactuals",
           "pixel_counterfactuals", "plausibility", "prototype_counterfactuals", "region_counterfactuals"]
