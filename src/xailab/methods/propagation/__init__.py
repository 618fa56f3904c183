"""Propagation family: layer-wise relevance propagation (LRP) on zennit's rules and canonizers."""
