"""Sphinx configuration of the qe4 documentation.

Build (from the repository root, after ``pip install ".[docs]"``)::

    sphinx-build -W -b html docs docs/_build/html

``-W`` turns every warning into an error; the gallery scripts in ``docs/gallery`` run
during the build (sphinx-gallery) and their figures go into the pages.
"""

import os
import sys
import warnings

from docutils import nodes
from docutils.parsers.rst import Directive, directives

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    import qe4                    # the installed package (pip install ".[docs]")
except ImportError:               # a source checkout: its own qe4 (qe4_fast needs build_ext --inplace)
    sys.path.insert(0, ROOT)
    import qe4

project = "qe4"
author = "the qe4 authors"
copyright = "the qe4 authors; GloVe vectors: Pennington, Socher and Manning (PDDL-1.0)"
release = version = qe4.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "gallery/README.rst", "**.ipynb_checkpoints"]
root_doc = "index"

autosummary_generate = True
autosummary_imported_members = False
autodoc_typehints = "none"            # numpydoc's Parameters sections carry the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "pydata_sphinx_theme"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
html_title = f"qe4 {release}"
html_static_path = []

sphinx_gallery_conf = {
    "examples_dirs": "gallery",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "show_memory": False,
    "min_reported_time": 1,
}

# matplotlib: no display, and its font-cache notice is not a documentation warning
os.environ.setdefault("MPLBACKEND", "Agg")
warnings.filterwarnings("ignore", message="Matplotlib is currently using agg")


class OptionalInclude(Directive):
    """``.. optional-include:: path``: include ``path`` (relative to this page) if it exists,
    else render the directive's own content.  The project's CONTRIBUTING.rst is included
    when present; the page's own text stands for it otherwise."""

    required_arguments = 1
    has_content = True
    option_spec = {"start-after": directives.unchanged}

    def run(self):
        env = self.state.document.settings.env
        src_dir = os.path.dirname(env.doc2path(env.docname))
        path = os.path.normpath(os.path.join(src_dir, self.arguments[0]))
        if os.path.exists(path):
            env.note_dependency(path)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            lines = text.splitlines()
        else:
            lines = list(self.content)
        self.state_machine.insert_input(lines, path)
        return []


def setup(app):
    app.add_directive("optional-include", OptionalInclude)
    return {"parallel_read_safe": True}
