"""A sweep worker: one process with one Jupyter kernel that executes runs one after another.

`python -m kfaclab.sweep.execute [--kernel-per-run]` reads one job per line on stdin (JSON:
template, notebook, cwd, parameters) and answers one line per job on stdout (JSON: code,
error). Each job executes the template with papermill into a hidden `.partial` file next to
its notebook, renamed into place when execution ends (with or without an error, whose output
the notebook keeps): a killed run leaves no notebook that looks finished, and the run record
(JSON) is written atomically by `kfaclab.train` itself.

Why a warm kernel: a fresh kernel costs its start-up plus importing torch (and torch._dynamo,
which torch.optim pulls in), 4-7 s of CPU per run on this machine's cores, which would be
20-40% of a CPU study of short runs. The kernel is restarted after any failed run, so a
failure cannot leak into the next run; `--kernel-per-run` restarts it before every run.
Codes: 0 ok, 1 the notebook raised, 3 the kernel died or papermill itself failed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import traceback
from pathlib import Path

ERROR_LINES = 12
# Seconds a kernel may take to answer after it starts (papermill's default is 60): importing torch
# on a machine that other runs keep busy can take longer, and a run must not fail for that.
KERNEL_START_S = 300


def partial_path(notebook: Path) -> Path:
    return Path(notebook).with_name(f".{Path(notebook).name}.partial")


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _engine():
    """A papermill engine that executes on a kernel it is given and keeps it alive, closing
    only its own client's channels."""
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines

    class WarmKernelEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None, stderr_file=None,
                                     start_timeout=60, execution_timeout=None, km=None, **kwargs):
            client = PapermillNotebookClient(nb_man, km=km, kernel_name=kernel_name, timeout=execution_timeout,
                                             startup_timeout=start_timeout, log_output=False)
            try:
                return client.execute()
            finally:
                if client.kc is not None:
                    client.kc.stop_channels()

    papermill_engines.register("kfaclab-warm-kernel", WarmKernelEngine)
    return "kfaclab-warm-kernel"


class Kernel:
    """A kernel kept alive between runs. Each (re)start gets a new kernel manager: a manager
    that shut its kernel down has also closed its ZMQ context and cannot start another."""

    def __init__(self, kernel_name: str):
        from jupyter_core.utils import run_sync

        self.run_sync = run_sync
        self.kernel_name = kernel_name
        self.km = None
        self.cwd = None

    def ensure(self, cwd: str):
        """A live kernel whose working directory is `cwd` (where a run writes its record): a
        kernel keeps the directory it started in, so a job elsewhere gets a fresh one."""
        from jupyter_client.manager import AsyncKernelManager

        if self.km is None or self.cwd != cwd or not self.run_sync(self.km.is_alive)():
            self.stop()
            self.km = AsyncKernelManager(kernel_name=self.kernel_name)
            self.run_sync(self.km.start_kernel)(cwd=cwd)
            self.cwd = cwd

    def kill_now(self):
        """SIGKILL the kernel's process group (jupyter starts kernels in a session of their own,
        so they outlive a killed worker by up to their parent poller's second otherwise)."""
        try:
            os.killpg(self.km.provisioner.process.pid, signal.SIGKILL)
        except Exception:  # no kernel, or already gone
            pass

    def stop(self):
        if self.km is not None:
            try:
                self.run_sync(self.km.shutdown_kernel)(now=True)
            except Exception:  # already dead: nothing to stop
                pass
            self.km = None


def execute(job: dict, kernel: Kernel, engine: str) -> tuple[int, str | None]:
    import papermill as pm
    from nbclient.exceptions import DeadKernelError

    notebook = Path(job["notebook"])
    partial = partial_path(notebook)
    code, error = 0, None
    try:
        kernel.ensure(job["cwd"])
        pm.execute_notebook(job["template"], str(partial), parameters=job["parameters"], engine_name=engine,
                            kernel_name=kernel.kernel_name, km=kernel.km, progress_bar=False, log_output=False,
                            cwd=job["cwd"], start_timeout=KERNEL_START_S)
    except pm.PapermillExecutionError as e:
        lines = [_plain(t) for t in e.traceback][-ERROR_LINES:] + [f"{e.ename}: {e.evalue}"]
        code, error = 1, "\n".join(lines)
    except DeadKernelError as e:
        code, error = 3, f"the kernel died (out of memory, or killed): {e}"
    except Exception:  # kernel start-up or papermill failures: recorded, the sweep goes on
        code, error = 3, "".join(traceback.format_exc().splitlines(True)[-ERROR_LINES:])
    if partial.exists():
        # Only a whole notebook goes under its final name: papermill writing onto a full disk
        # leaves a cut file, which must not look like a finished run's notebook.
        if _whole_notebook(partial):
            os.replace(partial, notebook)
        else:
            partial.unlink(missing_ok=True)
            error = (error + "\n" if error else "") + "the executed notebook could not be written in full " \
                "(No space left on device?)"
            code = code or 3
    return code, error


def _whole_notebook(path: Path) -> bool:
    try:
        nb = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(nb, dict) and isinstance(nb.get("cells"), list) and "nbformat" in nb


def _exit_with_parent(parent: int, kernels: list):
    """The sweep that started this worker may be killed without a chance to stop it: then
    kill the kernel and exit at once, so that nothing of a killed sweep goes on writing
    records while the next sweep starts (tests/test_faults.py). `parent` is the sweep's pid as
    the sweep gave it (KFACLAB_SWEEP_PID): a sweep killed while this process was still
    importing would otherwise be missed, and the job it had already sent would run to the end."""
    import threading
    import time

    def gone() -> bool:
        return os.getppid() != parent

    def watch():
        while True:
            if gone():
                for kernel in kernels:
                    kernel.kill_now()
                os._exit(1)
            time.sleep(0.1)

    if gone():
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # A sweep started in the background by a shell script inherits SIGINT ignored, and so would
    # this worker: the sweep's interrupt must still reach it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    kernels: list = []
    _exit_with_parent(int(os.environ.get("KFACLAB_SWEEP_PID") or os.getppid()), kernels)
    kernel_per_run = "--kernel-per-run" in argv
    kernel_name = next((a.split("=", 1)[1] for a in argv if a.startswith("--kernel=")), "python3")
    # The protocol gets a private copy of stdout; file descriptor 1 itself then points at stderr,
    # so nothing written by libraries, kernels or their children (a torchrun launched by a
    # notebook) can corrupt the protocol.
    sys.stdout.flush()
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    engine = _engine()
    kernel = Kernel(kernel_name)
    kernels.append(kernel)

    def terminated(*_):  # Worker.kill: the kernel (a session of its own) goes too, at once
        kernel.kill_now()
        os._exit(1)

    signal.signal(signal.SIGTERM, terminated)
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            job = json.loads(line)
            if kernel_per_run:
                kernel.stop()
            code, error = execute(job, kernel, engine)
            if code != 0:
                kernel.stop()  # a fresh kernel for the next run
            protocol.write(json.dumps({"code": code, "error": error}) + "\n")
            protocol.flush()
    finally:
        kernel.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
