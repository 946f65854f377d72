"""Sphinx configuration of the skaudiocluster documentation.

Build with warnings as errors, and run every code example::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
    python -m sphinx -W --keep-going -b doctest docs docs/_build/doctest
"""

import os
import re
import sys

# docs/../benchmarks is not a package; nothing else needs a path tweak
sys.path.insert(0, os.path.abspath(".."))

import skaudiocluster  # noqa: E402

project = "skaudiocluster"
author = "skaudiocluster developers"
copyright = "2026, skaudiocluster developers"
release = skaudiocluster.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

exclude_patterns = ["_build", "examples", "auto_examples/*.ipynb", "auto_examples/*.py"]
autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = set()

# examples use small data and run on the CPU. Docstring examples may use their
# module's public names without importing them (as under pytest --doctest-modules).
doctest_global_setup = """
from skaudiocluster import *
import warnings
import matplotlib
matplotlib.use("Agg")
import torch
torch.set_num_threads(1)
warnings.filterwarnings("ignore", message=".*n_jobs value.*")
"""

# docs/examples/*.py become executed pages with .ipynb downloads under auto_examples/
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": "/plot_",
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "download_all_examples": False,
    "remove_config_comments": True,
    "write_computation_times": False,
}

html_theme = "pydata_sphinx_theme"
html_title = "skaudiocluster"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
html_static_path = []


_SHAPE = re.compile(r"shape \(([^()]*)\)")


def _escape_fitted_names(app, what, name, obj, options, lines):
    """``(n_samples, n_clusters_)`` in a shape would be read as an RST link: escape the ``_``."""
    for i, line in enumerate(lines):
        lines[i] = _SHAPE.sub(
            lambda m: "shape (" + re.sub(r"(\w)_(?=[,)\s]|$)", r"\1\\_", m.group(1)) + ")", line
        )


def setup(app):
    app.connect("autodoc-process-docstring", _escape_fitted_names)
