"""Package layout (the rest of the metadata is in setup.cfg).

The repository keeps the harness in ``benchmarks/`` and the EasyEdit-style settings in
``hparams/<ALG>/<model>.yaml`` at its root; the distribution installs them under the project's
own name, as ``surgery_editor.benchmarks`` and ``surgery_editor.hparams_files`` (data only), so
that nothing generic lands at the top of site-packages. A new method folder under
``surgery_editor/methods/`` or a new subpackage of ``benchmarks/`` is found without a change here.
"""

from setuptools import find_packages, setup

HARNESS = "surgery_editor.benchmarks"
HPARAMS = "surgery_editor.hparams_files"

setup(
    packages=[*find_packages(include=["surgery_editor", "surgery_editor.*"]),
              HARNESS, *(f"{HARNESS}.{name}" for name in find_packages("benchmarks")),
              HPARAMS],
    package_dir={HARNESS: "benchmarks", HPARAMS: "hparams"},
)
