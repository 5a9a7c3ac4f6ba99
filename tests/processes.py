"""Scripts started by the tests, in a session of their own, with waits that always end.

Threads read stdout and stderr as they come, so a chatty process never blocks on a full pipe and a
wait for a line keeps its deadline even while the process prints nothing.
"""
import os
import queue
import signal
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import psutil


class Started:
    """A process whose output lines are collected as they come."""

    def __init__(self, command, cwd, env=None):
        self.popen = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True)  # signalled as a terminal would
        self.pid = self.popen.pid
        self.lines = {"stdout": [], "stderr": []}
        self.new_lines = {"stdout": queue.Queue(), "stderr": queue.Queue()}
        self.readers = [threading.Thread(target=self._read, args=(name,), daemon=True) for name in self.lines]
        for reader in self.readers:
            reader.start()

    def _read(self, name):
        for line in getattr(self.popen, name):
            self.lines[name].append(line)
            self.new_lines[name].put(line)
        self.new_lines[name].put(None)  # the end

    @property
    def returncode(self):
        return self.popen.returncode

    def wait_for_line(self, prefix: str, timeout: float = 90, stream: str = "stdout") -> str:
        """The next line of `stream` starting with `prefix`; fails the test after `timeout` seconds or at exit."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.new_lines[stream].get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise AssertionError(f"no line starting {prefix!r} within {timeout} s") from None
            if line is None:
                self.popen.wait(timeout=30)
                raise AssertionError(f"exited ({self.returncode}) before printing {prefix!r}: {self.stderr()}")
            if line.startswith(prefix):
                return line

    def signal_group(self, signum):
        """Send `signum` to the whole process group, as a terminal's Ctrl-C does."""
        os.killpg(self.pid, signum)

    def finish(self, timeout: float) -> tuple[str, str]:
        """(stdout, stderr) once it has exited; fails the test (killing it) if it has not within `timeout` s."""
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"did not exit within {timeout} s: {self.stderr()}") from None
        for reader in self.readers:
            reader.join(timeout=30)
        return self.stdout(), self.stderr()

    def kill(self):
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=30)

    def stdout(self) -> str:
        return "".join(self.lines["stdout"])

    def stderr(self) -> str:
        return "".join(self.lines["stderr"])


def processes_in(cwd, settle: float = 0.5) -> list:
    """Processes still running from `cwd` (workers or ranks that outlived their parent), after `settle` s."""
    time.sleep(settle)
    found = []
    for process in psutil.process_iter(["pid", "cwd"]):
        try:
            if process.info["cwd"] == str(cwd) and process.pid != os.getpid():
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def children_in(pid: int, cwd) -> list:
    """The children of process `pid` running from `cwd`: a trainer's env workers, say."""
    return [child for child in psutil.Process(pid).children() if child.cwd() == str(cwd)]


def patched_script(folder, script: str, patch: str) -> Path:
    """A script in `folder` that applies `patch` (Python source), then runs `script` as `python script` would."""
    path = Path(folder) / "driver.py"
    path.write_text("\n".join([
        "import runpy, sys, warnings",
        "warnings.filterwarnings('ignore', message='The pynvml package is deprecated')  # as the scripts do",
        f"sys.path.insert(0, {str(Path(script).parent)!r})",
        textwrap.dedent(patch).strip(),
        f"sys.argv[0] = {script!r}",
        f"runpy.run_path({script!r}, run_name='__main__')",
    ]) + "\n")
    return path


def signal_inside_the_tick(signum, when: str) -> str:
    """A patch that sends `signum` once, the first time `when` (Python; `calls` counts the reads) is true, from
    inside PyBoy's tick: it reads PIL's Image.readonly every frame, from code that cannot pass an exception on.
    It says so on stderr, so that a test can check it happened."""
    return f"""
        import glob, os, sys, PIL.Image
        readonly = PIL.Image.Image.readonly
        def readonly_then_signal(image, calls=[0]):
            calls[0] += 1
            if calls[0] > 0 and ({when}):
                calls[0] = -10**12  # once
                print("signal from inside the tick", file=sys.stderr, flush=True)
                os.kill(os.getpid(), {int(signum)})  # its handler runs before this function returns
            return readonly.fget(image)
        PIL.Image.Image.readonly = property(readonly_then_signal, readonly.fset)
    """
