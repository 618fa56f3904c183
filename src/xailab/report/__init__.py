"""Figures and pages for people. Reads the run store; computes nothing of its own."""
