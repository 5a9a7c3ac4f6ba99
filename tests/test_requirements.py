"""requirements.txt resolves from wheels alone for each platform and Python the README names.

Nothing is installed; uv asks the package registry. pip cannot make this check: its --platform still
evaluates requirements.txt's environment markers for the machine it runs on, and uv's
--python-platform evaluates them for the target.
"""
import os
import subprocess
from pathlib import Path

import pytest
from uv import find_uv_bin

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"
PLATFORMS = ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu", "aarch64-apple-darwin",
             "x86_64-pc-windows-msvc"]
PUFFERLIB_TARGET = ("x86_64-unknown-linux-gnu", "3.11")  # where PufferLib 2.0.2 has its one wheel


@pytest.mark.slow
@pytest.mark.parametrize("python", ["3.11", "3.12", "3.13"])
@pytest.mark.parametrize("platform", PLATFORMS)
def test_requirements_resolve_from_wheels(platform, python):
    command = [find_uv_bin(), "pip", "compile", str(REQUIREMENTS), "--python-platform", platform,
               "--python-version", python, "--only-binary", ":all:", "--no-python-downloads",
               "--no-header", "--no-annotate", "--quiet"]
    if (platform, python) == PUFFERLIB_TARGET:
        command += ["--no-binary", "gym"]  # PufferLib 2.0.2 needs gym 0.23: pure Python, source only
    # torch 2.13's wheels for macOS need macOS 14 or later.
    env = dict(os.environ, MACOSX_DEPLOYMENT_TARGET="14.0")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, f"no resolution for {platform}, Python {python}:\n{result.stderr}"
    pins = dict(line.split("==") for line in result.stdout.splitlines() if "==" in line)
    assert pins["torch"] == "2.13.0"
    assert ("pufferlib" in pins) == ((platform, python) == PUFFERLIB_TARGET)
    assert ("opencv-python" in pins) != ("opencv-python-headless" in pins), "both would install cv2"
