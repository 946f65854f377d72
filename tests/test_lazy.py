"""skaudiocluster._lazy: public names resolve on first use; importing the package loads no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

import skaudiocluster
import skaudiocluster.cluster
import skaudiocluster.transformers


def test_import_loads_no_torch():
    code = "import sys, skaudiocluster; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "package", [skaudiocluster, skaudiocluster.cluster, skaudiocluster.transformers]
)
def test_every_public_name_resolves_and_is_listed(package):
    for name in package.__all__:
        value = getattr(package, name)
        assert getattr(value, "__name__", name) == name or name.isupper()
        assert name in dir(package)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        skaudiocluster.nope  # noqa: B018
