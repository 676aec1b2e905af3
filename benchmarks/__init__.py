"""The benchmark harness: ``python -m benchmarks.run`` in a checkout, ``python -m
surgery_editor.benchmarks.run`` (or ``surgery-editor-bench``) where the package is installed.

The repository keeps this folder at its root; the distribution installs it as
``surgery_editor.benchmarks`` (``setup.py`` maps the package onto this folder), so nothing
generic lands at the top of site-packages. Its modules import each other relatively and work
under either name, but one process uses one of them: loading this folder under the second name
would give every module (and every registry in it) a second copy, so that is refused here.
"""

import os
import sys

_OTHER_NAME = "surgery_editor.benchmarks" if __name__ == "benchmarks" else "benchmarks"
_other = sys.modules.get(_OTHER_NAME)
if _other is not None and getattr(_other, "__file__", None) and \
        os.path.samefile(os.path.dirname(_other.__file__), os.path.dirname(__file__)):
    raise ImportError(f"the benchmark harness is already imported as {_OTHER_NAME!r} in this process; "
                      f"import it under one name only ({_OTHER_NAME!r}, not {__name__!r})")
