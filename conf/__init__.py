"""kd-hydra's configs; installed as the package ``kd_hydra.conf`` (Hydra reads packaged configs from a package)."""
