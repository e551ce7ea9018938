"""Evaluation: verification protocols and the cost of a network."""
