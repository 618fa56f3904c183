"""Method cards: what each explanation method is, where it comes from, and where it fails.

One :class:`Card` per registered method, written as data. The six questions are those of
Hohman et al. (2018), "Visual Analytics in Deep Learning: An Interrogative Survey for the Next
Frontiers" (IEEE TVCG): **why** would one use it, **who** is it for, **what** part of the
network it looks at, **how** it is shown, **when** in the model's life it applies, **where** it
was published and applies. The report adds the parameters a run used and its measured cost.

    card = CARDS["gradcam"]
    card.title, card.paper, card.limits
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Card:
    title: str
    family: str
    summary: str
    paper: str
    limits: tuple[str, ...]
    why: str
    who: str
    what: str
    how: str
    when: str = "After training: the model is fixed; each explanation is computed for one image and class."
    where: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def hohman(self) -> list[tuple[str, str]]:
        return [("Why", self.why), ("Who", self.who), ("What", self.what), ("How", self.how),
                ("When", self.when), ("Where", self.where)]


_WHO = ("Model developers and builders checking what a model relies on; model users and "
        "domain experts asking why one prediction was made.")
_WHY_ATTR = ("Interpretability and explainability of single predictions; debugging (shortcut "
             "features, spurious background cues); comparing models and methods.")
_HOW_ATTR = ("Instance-based analysis: one heatmap per image and class, shown over the image "
             "(algorithms for attribution).")
_GRAD_WHAT = ("The learned parameters as the model uses them on one input: the gradient of a class "
              "score flows back through every layer to the pixels.")
_CAM_WHAT = ("Individual computational units: the feature maps (channels) of one convolutional "
             "layer, weighted by their importance for the class.")
_PERT_WHAT = ("The model as a black box: only its outputs on altered copies of the input are read; "
              "no gradients or internals.")
_LRP_WHAT = ("The computational graph layer by layer: relevance is passed backwards through each "
             "module with a rule chosen for its type.")


def _grad(title: str, summary: str, paper: str, where: str, *limits: str) -> Card:
    return Card(title, "gradient", summary, paper, limits, _WHY_ATTR, _WHO, _GRAD_WHAT, _HOW_ATTR, where=where)


def _cam(title: str, summary: str, paper: str, where: str, *limits: str) -> Card:
    base = ("Coarse: the map has the resolution of the chosen layer (7x7 on a 224 ImageNet model, "
            "8x8 on CIFAR) and is upsampled, so it cannot point at fine detail.",
            "Depends on the layer chosen (default: the last convolution); other layers give other maps.",
            "Non-negative after the ReLU: shows evidence for the class only, never against it.")
    return Card(title, "cam", summary, paper, base + limits, _WHY_ATTR, _WHO, _CAM_WHAT,
                _HOW_ATTR + " A coarse map, upsampled to the image.", where=where)


def _pert(title: str, summary: str, paper: str, where: str, *limits: str) -> Card:
    return Card(title, "perturbation", summary, paper, limits, _WHY_ATTR,
                _WHO + " Works for any model that returns scores, including ones without gradients.",
                _PERT_WHAT, _HOW_ATTR, where=where)


_LRP_PAPER = ("Bach, Binder, Montavon, Klauschen, Müller, Samek (2015), \"On Pixel-Wise Explanations "
              "for Non-Linear Classifier Decisions by Layer-Wise Relevance Propagation\", PLOS ONE; "
              "Montavon, Binder, Lapuschkin, Samek, Müller (2019), \"Layer-Wise Relevance Propagation: "
              "An Overview\", in Explainable AI (Springer LNCS 11700).")
_LRP_LIMITS = (
    "Needs a hook-friendly model: every ReLU a module of its own (not reused, not functional), no "
    "in-place additions in residual blocks; xailab refuses models it would get wrong.",
    "The map depends on the rule chosen for each layer; different composites give visibly different "
    "maps for the same prediction.",
    "BatchNorm must be merged into the preceding layer (canonised) first; unusual layers need a rule.",
)


def _lrp(title: str, rules: str) -> Card:
    return Card(title, "propagation",
                f"Layer-wise relevance propagation: the class score is redistributed backwards, layer by "
                f"layer, so that each layer's relevances sum (approximately) to the score. Rules: {rules}",
                _LRP_PAPER, _LRP_LIMITS, _WHY_ATTR, _WHO, _LRP_WHAT, _HOW_ATTR,
                where="PLOS ONE 2015 and follow-ups; any ReLU CNN built from standard modules (via zennit).")


CARDS: dict[str, Card] = {
    "saliency": _grad(
        "Saliency (vanilla gradient)",
        "The gradient of the class score with respect to each input pixel: how much a tiny change of "
        "that pixel would change the score: |∂S_c/∂x| per colour channel (signed with absolute=False), "
        "summed over the channels for display.",
        "Simonyan, Vedaldi, Zisserman (2014), \"Deep Inside Convolutional Networks: Visualising Image "
        "Classification Models and Saliency Maps\", ICLR workshop (arXiv:1312.6034).",
        "ICLR 2014 workshop; any differentiable classifier.",
        "Noisy and speckled: the gradient of a ReLU network jumps between neighbouring pixels.",
        "Saturation: a feature that already drives the score to its plateau gets a gradient near zero.",
        "Local: says what would change the score, not what produced it; fails the completeness axiom.",
    ),
    "input_x_gradient": _grad(
        "Input × Gradient",
        "The input multiplied element-wise by the gradient of the class score: a first-order Taylor "
        "estimate of each pixel's contribution, x ⊙ ∂S_c/∂x.",
        "Shrikumar, Greenside, Shcherbina, Kundaje (2016), \"Not Just a Black Box: Learning Important "
        "Features Through Propagating Activation Differences\" (arXiv:1605.01713).",
        "arXiv 2016; any differentiable classifier.",
        "Inherits the gradient's noise and saturation.",
        "Zero wherever the input is zero: dark (or mean-valued, after normalisation) pixels get no "
        "attribution whatever their role.",
    ),
    "integrated_gradients": _grad(
        "Integrated Gradients",
        "Gradients averaged along the straight path from a baseline x' to the input, times (x − x'): "
        "IG_i = (x_i − x'_i) ∫₀¹ ∂S_c(x' + α(x − x'))/∂x_i dα, approximated by a Riemann sum. "
        "Satisfies completeness: the map sums to S_c(x) − S_c(x').",
        "Sundararajan, Taly, Yan (2017), \"Axiomatic Attribution for Deep Networks\", ICML.",
        "ICML 2017; any differentiable classifier.",
        "The baseline choice decides the answer: a black baseline cannot credit black pixels; blurred, "
        "uniform or noise baselines give different maps.",
        "Needs enough steps: the completeness gap (delta) shows when the Riemann sum is too coarse.",
        "Cost grows with the number of steps (one gradient per step).",
    ),
    "smoothgrad": _grad(
        "SmoothGrad / VarGrad",
        "A gradient method averaged over noisy copies of the input: mean of M(x + N(0, σ²)) over n "
        "samples (VarGrad: their variance). Sharpens visual quality by removing gradient noise.",
        "Smilkov, Thorat, Kim, Viégas, Wattenberg (2017), \"SmoothGrad: removing noise by adding "
        "noise\" (arXiv:1706.03825); VarGrad: Adebayo et al. (2018).",
        "ICML 2017 workshop; any differentiable classifier.",
        "The noise level σ (a fraction of the input range) changes the map a lot; too much blurs it.",
        "Random: differs with the seed unless the number of samples is large; n times the base cost.",
        "Smoother does not mean more faithful: the averaging hides where the model is sensitive.",
    ),
    "gradient_shap": _grad(
        "GradientSHAP (expected gradients)",
        "Integrated gradients with random baselines from a background set and random points on the "
        "path, averaged: an estimate of SHAP values under an independence assumption.",
        "Lundberg, Lee (2017), \"A Unified Approach to Interpreting Model Predictions\", NeurIPS; "
        "Erion et al. (2021), \"Improving performance of deep learning models with axiomatic "
        "attribution priors and expected gradients\", Nature Machine Intelligence.",
        "NeurIPS 2017; any differentiable classifier.",
        "Depends on the background set: few or unrepresentative baselines give biased maps.",
        "Random and noisy with few samples.",
        "Treats pixels as independent features, which images are not.",
    ),
    "deeplift": _grad(
        "DeepLIFT (rescale rule)",
        "Contributions of each input to the difference between the score and the score of a "
        "reference input, propagated with the rescale rule (Δy/Δx instead of the gradient), so the "
        "map sums exactly to S_c(x) − S_c(x').",
        "Shrikumar, Greenside, Kundaje (2017), \"Learning Important Features Through Propagating "
        "Activation Differences\", ICML.",
        "ICML 2017; ReLU networks built from standard modules.",
        "Needs a hook-friendly model: each ReLU its own module, not reused or functional; xailab "
        "refuses models it would get wrong rather than return a silent wrong answer.",
        "The reference (baseline) input decides the answer, as for IG.",
        "The rescale rule ignores interactions; the reveal-cancel rule is not implemented.",
    ),
    "deeplift_shap": _grad(
        "DeepLIFT-SHAP (DeepSHAP)",
        "DeepLIFT averaged over baselines drawn from a background set (ideally training images): "
        "A(x) = mean_k DeepLIFT(x; b_k), whose sum is exactly S_c(x) − mean_k S_c(b_k), an "
        "approximation of SHAP values.",
        "Lundberg, Lee (2017), \"A Unified Approach to Interpreting Model Predictions\", NeurIPS "
        "(section 4.2, Deep SHAP).",
        "NeurIPS 2017; ReLU networks built from standard modules, with a background set.",
        "Same model requirements as DeepLIFT; costs two passes per image and background baseline.",
        "The background decides the answer: uniform noise by default, training images recommended.",
        "Averaging the rescale rule over baselines is Deep SHAP's approximation, not exact Shapley values.",
    ),
    "gradcam": _cam(
        "Grad-CAM",
        "Channels of a convolutional layer weighted by their spatially averaged gradient, summed and "
        "ReLU'd: ReLU(Σ_k α_k A^k) with α_k = mean_ij ∂S_c/∂A^k_ij.",
        "Selvaraju, Cogswell, Das, Vedantam, Parikh, Batra (2017), \"Grad-CAM: Visual Explanations "
        "from Deep Networks via Gradient-based Localization\", ICCV.",
        "ICCV 2017; CNNs (any layer with spatial feature maps).",
        "Averaged gradients can cancel: several instances of an object are often not all found.",
    ),
    "gradcam_pp": _cam(
        "Grad-CAM++",
        "Like Grad-CAM, but channel weights are sums of positive gradients with pixel-wise "
        "coefficients from second- and third-order terms (exponential score assumption), to cover "
        "several instances of a class.",
        "Chattopadhay, Sarkar, Howlader, Balasubramanian (2018), \"Grad-CAM++: Generalized "
        "Gradient-based Visual Explanations for Deep Convolutional Networks\", WACV.",
        "WACV 2018; CNNs.",
        "Its higher-order terms assume an exponential of the score; on raw logits this is an approximation.",
    ),
    "xgradcam": _cam(
        "XGrad-CAM",
        "Channel weights as the activation-weighted sum of the gradients, chosen to satisfy "
        "sensitivity and conservation axioms approximately.",
        "Fu, Hu, Dong, Guo, Gao, Wang (2020), \"Axiom-based Grad-CAM: Towards Accurate Visualization "
        "and Explanation of CNNs\", BMVC.",
        "BMVC 2020; CNNs.",
    ),
    "layercam": _cam(
        "LayerCAM",
        "Every activation weighted by its own positive gradient, ReLU(Σ_k ReLU(∂S_c/∂A^k_ij) A^k_ij): "
        "usable on earlier layers for finer maps.",
        "Jiang, Zhang, Hou, Cheng, Wei (2021), \"LayerCAM: Exploring Hierarchical Class Activation "
        "Maps for Localization\", IEEE TIP.",
        "IEEE Transactions on Image Processing 2021; CNNs.",
        "Maps from early layers are sharper but noisier and more edge-like.",
    ),
    "score_cam": _cam(
        "Score-CAM",
        "Gradient-free: each channel, upsampled and normalised, masks the image; the channel's weight "
        "is the softmaxed class score of its masked image.",
        "Wang, Wang, Du, Yang, Zhang, Ding, Mardziel, Hu (2020), \"Score-CAM: Score-Weighted Visual "
        "Explanations for Convolutional Neural Networks\", CVPR workshops.",
        "CVPR workshops 2020; CNNs.",
        "One forward pass per channel: hundreds or thousands of model evaluations per image.",
        "Masked images are off the training distribution; the scores measure that shift too.",
    ),
    "ablation_cam": _cam(
        "Ablation-CAM",
        "Gradient-free: each channel's weight is the relative drop of the class score when that "
        "channel is set to zero, (S_c − S_c^k)/S_c.",
        "Desai, Ramaswamy (2020), \"Ablation-CAM: Visual Explanations for Deep Convolutional Network "
        "via Gradient-free Localization\", WACV.",
        "WACV 2020; CNNs.",
        "One forward pass per channel (from the layer on): costly on wide layers.",
        "The relative drop is unstable when the class score is near zero.",
    ),
    "occlusion": _pert(
        "Occlusion",
        "A window slides over the image; each pixel gets the mean drop of the class score over the "
        "windows that cover it when they are filled with a baseline value.",
        "Zeiler, Fergus (2014), \"Visualizing and Understanding Convolutional Networks\", ECCV.",
        "ECCV 2014; any classifier.",
        "Window size and stride set the resolution; objects smaller than the window are missed, "
        "larger ones are only partly hidden.",
        "The fill value matters and creates off-distribution images.",
        "One forward pass per window position: slow on large images.",
    ),
    "lime": _pert(
        "LIME",
        "Superpixels are switched on and off at random; a weighted ridge regression (weights from a "
        "kernel on the distance to the original) of the class score on the on/off pattern gives "
        "each superpixel a weight.",
        "Ribeiro, Singh, Guestrin (2016), \"'Why Should I Trust You?': Explaining the Predictions of "
        "Any Classifier\", KDD.",
        "KDD 2016; any classifier.",
        "Depends on the segmentation: superpixels that cut across the object give misleading maps, "
        "and the map can never be finer than the segments.",
        "Depends on sampling: with few samples the weights change from seed to seed.",
        "The kernel width and regression settings are heuristics with no principled default.",
    ),
    "kernel_shap": _pert(
        "KernelSHAP",
        "Shapley values of superpixels estimated by a weighted least-squares regression with the "
        "Shapley kernel and the efficiency constraint (weights sum to S_c(x) − S_c(baseline)).",
        "Lundberg, Lee (2017), \"A Unified Approach to Interpreting Model Predictions\", NeurIPS.",
        "NeurIPS 2017; any classifier.",
        "Same segmentation dependence as LIME.",
        "Exact Shapley values need 2^M evaluations; the estimate is noisy with few samples.",
        "Removing a superpixel means filling it with a baseline, which is off-distribution.",
    ),
    "rise": _pert(
        "RISE",
        "Random smooth binary masks (low-resolution, upsampled with random shifts); the map is the "
        "sum of the masks weighted by the class score of the masked image.",
        "Petsiuk, Das, Saenko (2018), \"RISE: Randomized Input Sampling for Explanation of Black-box "
        "Models\", BMVC.",
        "BMVC 2018; any classifier.",
        "Needs thousands of masks for a stable map; random.",
        "Mask cell size and keep probability set the resolution and change the result.",
    ),
    "lrp": _lrp("Layer-wise relevance propagation (composite)",
                "a named zennit composite picks a rule per layer type (see the parameters below)."),
    "lrp_epsilon": _lrp("LRP-ε", "ε-rule on every layer: z_ij / (Σ_j z_ij + ε·sign); small ε stays close "
                        "to Input × Gradient."),
    "lrp_zplus": _lrp("LRP-z⁺ (α1β0)", "only positive contributions are propagated on every layer."),
    "lrp_alpha2_beta1": _lrp("LRP-α2β1", "positive contributions weighted 2, negative 1, on every layer."),
    "lrp_epsilon_plus": _lrp("LRP ε + z⁺", "z⁺ on convolutions, ε on dense layers (zennit EpsilonPlus)."),
    "lrp_epsilon_plus_flat": _lrp("LRP ε + z⁺ + flat",
                                  "flat rule on the first layer, z⁺ on convolutions, ε on dense layers."),
    "lrp_epsilon_alpha2_beta1": _lrp("LRP ε + α2β1", "α2β1 on convolutions, ε on dense layers."),
    "lrp_epsilon_gamma_box": _lrp("LRP ε + γ + z^B",
                                  "z^B (bounded) on the first convolution, γ on convolutions, ε on dense "
                                  "layers (Montavon et al. 2019's recipe)."),
}


def card(method: str) -> Card | None:
    return CARDS.get(method)
