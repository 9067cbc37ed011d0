"""MkDocs hooks: generate the configuration reference, the presets, the method pages and the schema tables.

Registered in ``mkdocs.yml`` (``hooks:``). Every page listed in :data:`GENERATED` and every method page is
computed from the code and the configs at build time; hand-written pages pull generated fragments in
with a marker comment ``<!-- kd-docs: NAME -->`` (:data:`FRAGMENTS`).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for path in (_HERE.parent, _HERE.parents[1]):  # docs/ (for kd_docs) and the repository root (for kd_hydra)
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from mkdocs.structure.files import File  # noqa: E402

from kd_docs.site import FRAGMENTS, METHODS_SECTION, build_pages  # noqa: E402

_MARKER = re.compile(r"<!--\s*kd-docs:\s*(?P<name>[\w-]+)\s*-->")
_pages: dict[str, str] = {}


def on_config(config, **kwargs):  # noqa: ANN001, ANN201 - MkDocs hook signature
    """Generate every page once, and list the method pages in the nav's Methods section."""
    _pages.clear()
    _pages.update(build_pages())
    method_pages = sorted(uri for uri in _pages if uri.startswith("methods/") and uri != "methods/index.md")
    for entry in config["nav"] or []:
        if isinstance(entry, dict) and METHODS_SECTION in entry:
            written = [page for page in entry[METHODS_SECTION] or [] if page != "methods/index.md"]
            entry[METHODS_SECTION] = ["methods/index.md", *written, *method_pages]  # hand-written pages first
    return config


def on_files(files, config, **kwargs):  # noqa: ANN001, ANN201
    for uri, content in _pages.items():
        existing = files.get_file_from_path(uri)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, uri, content=content))
    return files


def on_page_markdown(markdown, page, config, files, **kwargs):  # noqa: ANN001, ANN201
    def fragment(match: re.Match) -> str:
        name = match["name"]
        if name not in FRAGMENTS:
            raise KeyError(f"{page.file.src_uri}: unknown kd-docs fragment '{name}'; known: {', '.join(FRAGMENTS)}")
        return FRAGMENTS[name]()

    return _MARKER.sub(fragment, markdown)
