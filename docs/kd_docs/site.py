"""Every generated page of the site, by its path under ``docs/``, and the fragments hand-written pages include."""

from __future__ import annotations

from collections.abc import Callable

from .configs import Composer, composer, describe_groups
from .method_pages import describe_methods, method_page, methods_index
from .readme_sections import own_method_section
from .reference_page import presets_page, reference_page
from .schema_page import history_table, metrics_table, settings_list
from .zoo_page import feature_points_table

#: The nav section that the method pages are listed under (mkdocs.yml).
METHODS_SECTION = "Methods"

#: ``<!-- kd-docs: NAME -->`` in a hand-written page is replaced by ``FRAGMENTS[NAME]()``.
FRAGMENTS: dict[str, Callable[[], str]] = {
    "metrics-keys": metrics_table,
    "history-columns": history_table,
    "settings-keys": settings_list,
    "feature-points": feature_points_table,
    "readme-own-method": own_method_section,
}


def build_pages(comp: Composer | None = None) -> dict[str, str]:
    """Path under ``docs/`` -> Markdown of every generated page (``comp``: an open session to reuse)."""
    if comp is None:
        with composer() as own:
            return build_pages(own)
    groups = describe_groups(comp)
    pages = {
        "reference/configuration.md": reference_page(comp, groups),
        "reference/presets.md": presets_page(comp, groups),
    }
    methods = describe_methods(comp, groups)
    pages["methods/index.md"] = methods_index(methods)
    for doc in methods:
        pages[f"methods/{doc.name}.md"] = method_page(doc)
    return pages
