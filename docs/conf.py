"""Sphinx configuration of the slugkit book (``make book``): offline, no theme or script from the internet.

The book is built from notebooks that were executed beforehand (``make notebooks`` writes them to
``runs/notebooks``); :mod:`scripts.build_book` copies them and these pages into ``runs/book-src``.
"""
project = "slugkit"
author = "the slugkit authors"
copyright = "2026, the slugkit authors"

extensions = ["myst_nb"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

html_theme = "alabaster"  # ships with Sphinx: nothing is fetched
html_theme_options = {"description": "SLUG, runnable", "page_width": "1180px", "sidebar_width": "250px",
                      "show_relbars": True}
html_sidebars = {"**": ["about.html", "navigation.html", "relations.html", "searchbox.html"]}
html_title = "slugkit — the book"
html_static_path: list[str] = []
html_copy_source = False
html_show_sourcelink = False
html_show_sphinx = False

# Notebooks arrive executed: never run them here.
nb_execution_mode = "off"
# Widgets carry a static PNG in the same output; the live view would need scripts from a CDN.
nb_ipywidgets_js: dict = {}
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None),
                              ("html", "application/vnd.jupyter.widget-state+json", None)]
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
suppress_warnings = ["mystnb.unknown_mime_type"]
