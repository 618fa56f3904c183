"""The kernel every other room builds on. Imports nothing else of xailab."""
