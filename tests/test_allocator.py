"""The allocator setting is an explicit call: nothing changes it as a side effect."""

import platform
import subprocess
import sys

import pytest


def test_importing_portacnn_and_making_backends_changes_no_process_setting():
    code = (
        "import os, portacnn\n"
        "from portacnn import allocator\n"
        "env = dict(os.environ)\n"
        "portacnn.get_backend('cpu'); portacnn.get_backend('array_api_strict')\n"
        "m = portacnn.models.lenet5()\n"
        "print(allocator._APPLIED, env == dict(os.environ))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "True"]


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the allocator setting exists on glibc only")
def test_keep_freed_memory_applies_once_when_called():
    code = ("from portacnn import allocator\n"
            "print(allocator.keep_freed_memory(), allocator.keep_freed_memory(), "
            "allocator._APPLIED)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True"]
