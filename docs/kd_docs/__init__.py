"""Generators of kd-hydra's documentation pages, run at build time by the MkDocs hook (``hooks.py``).

Every generated page is computed from the code and the configs as they are when the site is built:
the configuration reference from the composed structured configs, one page per registered method,
the output schema from :mod:`kd_hydra.records.schema`. Nothing here is kept by hand.
"""
