"""The layering theory <- bounds <- numeric holds in a fresh interpreter.

The check reads the names of the modules an import loads, so it catches any reach upward
(``bounds`` importing ``numeric`` loads no torch, but it loads ``numeric``), and the
torch-free command line is checked the same way.
"""

import subprocess
import sys

import pytest


def _modules_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    return {name.split(".")[0] for name in result.stdout.split()}


#: what each import may not load: theory is SymPy only (mpmath comes with SymPy)
FORBIDDEN = {
    "import theory": {"bounds", "numeric", "networkx", "torch", "numpy", "scipy"},
    "import bounds": {"numeric", "torch", "numpy", "scipy", "matplotlib"},
    "from numeric.cli import build_parser; build_parser()": {"torch", "sympy", "networkx",
                                                             "numpy", "matplotlib"},
    "import numeric.validation": {"torch", "sympy"},
}


@pytest.mark.parametrize("code", sorted(FORBIDDEN))
def test_import_loads_nothing_above_it(code):
    loaded = _modules_after(code)
    package = code.split()[1].split(".")[0]
    assert package in loaded
    assert not (FORBIDDEN[code] & loaded), f"{code!r} pulled in {sorted(FORBIDDEN[code] & loaded)}"


def test_the_check_sees_a_package_that_loads_no_torch():
    """``import numeric`` loads no torch; the check must still see it by name."""
    loaded = _modules_after("import bounds, numeric")
    assert "numeric" in loaded and "torch" not in loaded
    assert FORBIDDEN["import bounds"] & loaded == {"numeric"}
