"""Gradient family: saliency, input x gradient, Integrated Gradients, SmoothGrad, GradientSHAP, DeepLIFT."""
