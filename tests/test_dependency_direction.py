"""The layering theory <- bounds <- numeric holds in a fresh interpreter."""

import subprocess
import sys

import pytest


def _modules_after_import(package: str) -> set[str]:
    code = f"import sys, {package}; print('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    return {name.split(".")[0] for name in result.stdout.split()}


@pytest.mark.parametrize(("package", "forbidden"), [
    ("theory", {"torch", "networkx"}),
    ("bounds", {"torch"}),
], ids=["theory-imports-neither-torch-nor-networkx", "bounds-imports-no-torch"])
def test_package_does_not_import(package, forbidden):
    loaded = _modules_after_import(package)
    assert package in loaded
    assert not (forbidden & loaded), f"{package} pulled in {sorted(forbidden & loaded)}"
