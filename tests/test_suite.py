"""The suite itself: a hung test fails with its name instead of stopping the run."""
import subprocess
import sys

import pytest


def test_the_suite_has_a_per_test_time_limit(request):
    assert int(request.config.getini("timeout")) >= 60  # pytest-timeout, configured in pytest.ini


@pytest.mark.slow
def test_a_hung_test_fails_with_its_name_and_the_next_one_runs(tmp_path):
    (tmp_path / "test_hangs.py").write_text(
        "import time\n\ndef test_hangs_forever():\n    time.sleep(10_000)\n\ndef test_after_it():\n    pass\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=2",
                             "test_hangs.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Timeout" in result.stdout and "FAILED test_hangs.py::test_hangs_forever" in result.stdout
    assert "1 failed, 1 passed" in result.stdout
