"""Attention-based methods for vision transformers: attention rollout, gradient-weighted attention."""
