"""Configuration: the structured configs, where the YAML lives, composition and every check before any work.

Nothing here trains: ``structured`` gives the config's types, ``sources`` where its files are, ``files`` checks
them as YAML, ``compose`` builds a config from overrides, ``checks`` validates its values (calling each
package's own checks: data, methods, trackers, optimization), ``search_space`` and ``objective`` cover Optuna.
"""
