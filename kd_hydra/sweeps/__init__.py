"""Sweeps: the jobs of a multirun (names, matched baselines, the teacher stage) and its end-of-sweep status."""
