"""Stores and caches: sealed cache entries, the teacher store and the teacher outputs (live or cached soft labels).

Each takes what it uses as typed arguments; none reads a Hydra config.
"""
