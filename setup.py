"""Packaging glue that setup.cfg cannot express: install the repository's ``conf/`` as ``kd_hydra/conf``.

A clone (and an editable install) reads its configs from the top-level ``conf/`` directory; a built
package (``pip install .``, a wheel) carries the same files as ``kd_hydra/conf`` and reads them from
there (``pkg://kd_hydra.conf``, see ``kd_hydra.config.sources.config_source``). Copying at build time keeps
the package layout simple, so an editable install stays a plain path entry and Hydra still finds
``hydra_plugins.kd_hydra_sweeper``.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONF_DIR = Path(__file__).resolve().parent / "conf"
CONF_TARGET = ("kd_hydra", "conf")
CONF_PATTERNS = ("*.yaml", "__init__.py")


class BuildPyWithConfigs(build_py):
    """``build_py`` that also copies ``conf/`` into the built package (not for editable installs)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib, *CONF_TARGET)
        for pattern in CONF_PATTERNS:
            for source in CONF_DIR.rglob(pattern):
                destination = target / source.relative_to(CONF_DIR)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, destination)


setup(cmdclass={"build_py": BuildPyWithConfigs})
