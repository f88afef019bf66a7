"""Sphinx configuration for paramshare_nb.

Builds offline (no intersphinx) and clean under ``-W``:

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Three pages are generated here, at build time, from code rather than typed:

* ``api.rst`` itself: one autosummary table per public module, listing every
  name of its ``__all__``, so the reference follows the code (autosummary
  only scans real documents, so the page is written, not included; it is
  git-ignored: edit ``API_SECTIONS`` below);
* the theory page's claims table is the output of ``docs/paper_claims.py``
  when that script exists, else of ``docs/_claims_fallback.py``;
* the benchmarks page renders ``docs/_static/benchmarks.json``, written by
  ``docs/make_benchmarks.py`` (which runs ``benchmarks/compare.py``), and
  ``docs/_static/gpu_check.json`` (``benchmarks/gpu_check.py`` on a GPU, stored
  by ``make_benchmarks.py --store-gpu``).
"""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
os.environ.setdefault("MPLBACKEND", "Agg")
# the gallery runs many small models: one numba thread pool is plenty on CI
os.environ.setdefault("NUMBA_NUM_THREADS", str(min(2, os.cpu_count() or 1)))

import paramshare_nb  # noqa: E402

project = "paramshare_nb"
author = "the paramshare_nb developers"
copyright = "2026, the paramshare_nb developers"  # noqa: A001
version = release = paramshare_nb.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.doctest",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "matplotlib.sphinxext.plot_directive",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "_generated", "examples"]
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
default_role = "code"
pygments_style = "sphinx"
suppress_warnings = ["config.cache"]  # sphinx-gallery's dict config is not picklable

# -- autodoc / autosummary / numpydoc ------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_typehints = "none"  # numpydoc's Parameters section says it better
autodoc_mock_imports: list[str] = []

numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_attributes_as_param_list = False
numpydoc_validation_checks = {
    "all",
    # style choices, not errors, for this project:
    "GL01",  # summary may start on the first line
    "ES01",  # extended summaries are optional
    "SA01",  # "See Also" is optional
    "EX01",  # examples are optional (the gallery and user guide have them)
    "PR07",  # "action : Action" alone is fine when the type names the role
    "PR08",  # parameter descriptions may start with a backtick or a digit
    "PR09",  # ... and need not end with a period (shapes, tables)
    "RT02",  # a return's name may be given with its type
    "RT03",  # a return may be self-explaining from its type
    "RT05",  # return descriptions need not end with a period
    "SS05",  # summaries may start with "The", not only a verb
    "SS06",  # summaries may wrap onto two lines
    "YD01",  # no generators in the public face
    "GL08",  # private helpers without docstrings are not documented anyway
}
# Validated: every public function and class of the API reference.  Class
# members are documented (autoclass :members:) but not validated: many are
# one-line accessors whose summary says what they return.
numpydoc_validation_exclude = {
    r"\.__",                                  # dunders
    r"\._[a-z]",                              # private members
    r"^paramshare_nb(\.[a-z_]\w*)*\.[A-Z]\w*\.\w+$",   # members of a class
}

# Sphinx 9.0's autosummary cuts a summary at the first ". " and then checks the
# whole paragraph instead of the cut, so a sentence ending inside a literal
# (``|f(g . x) - g . f(x)|``) gives a broken summary and a warning.  Check the
# cut itself, growing it sentence by sentence until its markup is whole.
import sphinx.ext.autosummary as _autosummary  # noqa: E402
from docutils import nodes as _nodes  # noqa: E402

_sphinx_extract_summary = _autosummary.extract_summary


def _markup_broken(text: str, settings) -> bool:
    node = _autosummary._parse_summary([text], settings)
    return any(node.findall(_nodes.system_message)) or any(node.findall(_nodes.problematic))


def _extract_summary(doc, settings):
    summary = _sphinx_extract_summary(doc, settings)
    if not summary or not _markup_broken(summary, settings):
        return summary
    stanza = []
    for line in doc:
        if line.strip():
            stanza.append(line.strip())
        elif stanza:
            break
    sentences = _autosummary.periods_re.split(" ".join(stanza))
    for i in range(1, len(sentences) + 1):
        candidate = ". ".join(sentences[:i]).rstrip(".") + "."
        if not _markup_broken(candidate, settings):
            return _autosummary.literal_re.sub(".", candidate)
    return " ".join(stanza)


if all(hasattr(_autosummary, n) for n in ("_parse_summary", "periods_re", "literal_re")):
    _autosummary.extract_summary = _extract_summary  # else: a Sphinx whose internals moved

# -- pictures in the user guide (matplotlib's plot directive) ---------------------
plot_include_source = True
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 90)]
plot_rcparams = {"figure.max_open_warning": 0}

# -- gallery -------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": ["examples"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py|_util\.py",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib",),
    "show_memory": False,
    "plot_gallery": os.environ.get("PARAMSHARE_DOCS_PLOT_GALLERY", "True"),
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "capture_repr": ("_repr_html_", "__repr__"),
    "min_reported_time": 1,
}

# -- HTML ----------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"paramshare_nb {release}"
html_static_path = ["_static"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": [],
    "navbar_end": ["theme-switcher"],
}
html_sidebars = {"**": ["sidebar-nav-bs"], "index": [], "getting_started": []}
html_show_sourcelink = False
html_copy_source = False

# -- pages generated from code ---------------------------------------------------
GENERATED = HERE / "_generated"

#: (heading, module, intro) of each API section; modules that do not import
#: (an optional part not installed or not built yet) are left out.
API_SECTIONS = [
    ("Top level", "paramshare_nb",
     "Everything re-exported by ``import paramshare_nb as ps``."),
    ("Permutations", "paramshare_nb.perm", "Permutation arrays: ``p[i]`` is the image of ``i``."),
    ("Groups", "paramshare_nb.groups",
     "Named groups and group queries not already listed at the top level."),
    ("Tied multiply", "paramshare_nb.ops", "The kernels' public wrappers."),
    ("Symmetry proofs", "paramshare_nb.symmetry", "Automorphisms of a pattern and uniqueness."),
    ("Autograd", "paramshare_nb.autograd", "A small reverse-mode autograd."),
    ("Neural networks", "paramshare_nb.nn", "Layers, pooling and losses."),
    ("Optimizers", "paramshare_nb.optim", "Gradient-descent optimizers."),
    ("Checkpoints", "paramshare_nb.checkpoint", "Saving and loading models."),
    ("Pictures", "paramshare_nb.plot",
     "Needs the ``plot`` extra: ``pip install 'paramshare_nb[plot]'``."),
    ("Scale-out with Dask", "paramshare_nb.dask",
     "Needs the ``dask`` extra: ``pip install 'paramshare_nb[dask]'``."),
    ("Configuration", "paramshare_nb.config", "Tunables with environment overrides."),
]


def _write_if_changed(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _public_names(mod, skip: set[str]) -> list[str]:
    names = []
    for name in getattr(mod, "__all__", []):
        obj = getattr(mod, name, None)
        if obj is None or inspect.ismodule(obj) or name in skip:
            continue
        if not (inspect.isclass(obj) or callable(obj)):
            continue  # constants are described in the module text
        names.append(name)
    return names


API_HEADER = """.. This file is generated by docs/conf.py from each module's __all__: do not edit.

.. _api:

API reference
=============

Every public name, module by module.  ``import paramshare_nb as ps`` gives the
top level; submodules are reached as ``ps.groups``, ``ps.nn``, ``ps.plot`` and
so on.  Optional parts (pictures, Dask) need their extra installed.

"""


def write_api_sections() -> None:
    """``api.rst``: one autosummary table per importable public module."""
    top = importlib.import_module("paramshare_nb")
    top_ids = {id(getattr(top, n)) for n in top.__all__ if hasattr(top, n)}
    blocks = []
    for heading, modname, intro in API_SECTIONS:
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        skip = set() if mod is top else {n for n in getattr(mod, "__all__", [])
                                           if id(getattr(mod, n, None)) in top_ids}
        names = _public_names(mod, skip)
        if not names:
            continue
        lines = [heading, "-" * len(heading), "", f".. automodule:: {modname}",
                 "   :no-members:", "   :no-index:", "", intro, "",
                 f".. currentmodule:: {modname}", "", ".. autosummary::",
                 "   :toctree: generated/", "   :nosignatures:", ""]
        lines += [f"   {n}" for n in names]
        blocks.append("\n".join(lines) + "\n")
    _write_if_changed(HERE / "api.rst", API_HEADER + "\n".join(blocks))


def write_claims_table() -> None:
    """The paper's claims, checked by code: ``paper_claims.py`` or the fallback."""
    script = HERE / "paper_claims.py"
    if not script.exists():
        script = HERE / "_claims_fallback.py"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), env_pp])
               if (env_pp := os.environ.get("PYTHONPATH")) else str(ROOT))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, cwd=str(ROOT), timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} failed:\n{proc.stderr}")
    _write_if_changed(GENERATED / "paper_claims.rst",
                      f".. generated by docs/{script.name}\n\n{proc.stdout}")


def write_benchmarks_page() -> None:
    """Render the committed benchmark results (``make_benchmarks.py`` writes them)."""
    import make_benchmarks

    _write_if_changed(GENERATED / "benchmarks.rst", make_benchmarks.render_rst())
    _write_if_changed(GENERATED / "gpu_benchmarks.rst", make_benchmarks.render_gpu_rst())


def write_cli_example() -> None:
    """The real output of ``python -m paramshare_nb explain dihedral:5`` for the CLI page."""
    proc = subprocess.run([sys.executable, "-m", "paramshare_nb", "explain", "dihedral:5"],
                          capture_output=True, text=True, cwd=str(ROOT), timeout=600,
                          check=True)
    _write_if_changed(GENERATED / "cli_explain.txt",
                      "$ python -m paramshare_nb explain dihedral:5\n" + proc.stdout)


write_api_sections()
write_claims_table()
write_benchmarks_page()
write_cli_example()
