"""Hydra loads sweepers only from the ``hydra_plugins`` namespace: kd-hydra's lives here."""
