"""Drives kvmm's `firecracker` entry point with firecracker-python (PyPI
`firecracker-python`, used as published) from its own virtualenv
(.venv-fcpy, made by ci/fcpy-venv): the package's `firecracker.api.Api` on
the API socket, its `ProcessManager` starting and stopping the binary, its
`VMMManager` for the directories, pause/resume and state. `MicroVM` is not
used: it builds root filesystems with Docker and looks up public addresses.

    .venv-fcpy/bin/python driver.py '{"data_path": DIR, "binary_path": EXE}'

The package keeps its paths in the dataclass `firecracker.config.MicroVMConfig`
(defaults /var/lib/firecracker and /usr/local/bin/firecracker) and, when it is
imported, checks the binary and creates the data directory. The driver loads
`firecracker.config` first, gives `MicroVMConfig` the paths above as its
defaults, and only then runs the package's `__init__`, so nothing outside
DIR is touched.

Commands come one JSON object a line on stdin; each answer is one line on
stdout starting with `FCPY ` and a JSON object, {"ok": true, ...} or
{"ok": false, "error": "..."}. The package prints other things to stdout
and its log to stderr.
"""
import dataclasses
import importlib
import importlib.util
import json
import os
import sys
import threading
import traceback

settings = json.loads(sys.argv[1])

_spec = importlib.util.find_spec("firecracker")
_package = importlib.util.module_from_spec(_spec)
sys.modules["firecracker"] = _package
_config = importlib.import_module("firecracker.config")


@dataclasses.dataclass
class LocalConfig(_config.MicroVMConfig):
    data_path: str = settings["data_path"]
    binary_path: str = settings["binary_path"]
    snapshot_path: str = os.path.join(settings["data_path"], "snapshots")


_config.MicroVMConfig = LocalConfig
_spec.loader.exec_module(_package)

from firecracker.api import Api                      # noqa: E402
from firecracker.process import ProcessManager       # noqa: E402
from firecracker.vmm import VMMManager                # noqa: E402


class Driver:
    def __init__(self):
        self.vmm = VMMManager()
        self.process = ProcessManager()
        self.api = None
        self.exit_status = {}
        self.reapers = {}

    def start(self, id, boot_timeout=10.0):
        """MicroVM._run_firecracker's steps: socket, directories, log file,
        ProcessManager.start with its argv, then GET / until it answers."""
        import time
        socket_file = self.vmm.socket_file(id)
        vmm_dir = f"{LocalConfig.data_path}/{id}"
        for path in (vmm_dir, f"{vmm_dir}/logs"):
            self.vmm.create_vmm_dir(path)
        self.vmm.create_log_file(id, f"{id}.log")
        args = ["--api-sock", socket_file, "--id", id,
                "--log-path", f"{vmm_dir}/logs/{id}.log"]
        pid = self.process.start(id, args)
        # ProcessManager drops its Popen; this process is the parent, so it
        # reaps the child (else the library's kill(pid, 0) checks see a zombie).
        reaper = threading.Thread(target=self._reap, args=(pid,), daemon=True)
        reaper.start()
        self.reapers[pid] = reaper
        running = self.process.is_running(id)
        self.api = Api(socket_file)
        deadline = time.monotonic() + boot_timeout
        while True:
            try:
                describe = self.api.describe.get().json()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        return {"pid": pid, "socket": socket_file, "running": running, "describe": describe,
                "log_path": f"{vmm_dir}/logs/{id}.log",
                "console_path": f"{vmm_dir}/firecracker.log"}

    def _reap(self, pid):
        _, status = os.waitpid(pid, 0)
        self.exit_status[pid] = os.waitstatus_to_exitcode(status)

    def call(self, resource, method, kwargs=None):
        """api.<resource>.<method>(**kwargs): the package's Resource methods."""
        res = getattr(getattr(self.api, resource), method)(**(kwargs or {}))
        body = res.json() if res.content else None
        return {"status": res.status_code, "body": body}

    def manager(self, method, args=()):
        """VMMManager.<method>(*args): update_vmm_state, get_vmm_state, get_vmm_config."""
        return {"value": getattr(self.vmm, method)(*args)}

    def get_pid(self, id):
        pid, create_time = self.process.get_pid(id)
        return {"pid": pid, "create_time": create_time}

    def stop(self, id, pid, timeout=20.0):
        stopped = self.process.stop(id)
        reaper = self.reapers.get(pid)
        if reaper is not None:
            reaper.join(timeout)
        return {"stopped": stopped, "exit_status": self.exit_status.get(pid),
                "running": self.process.is_running(id),
                "socket_exists": os.path.exists(f"{LocalConfig.data_path}/{id}/firecracker.socket"),
                "pid_file_exists": os.path.exists(f"{LocalConfig.data_path}/{id}/firecracker.pid")}


def main():
    driver = Driver()
    print("FCPY " + json.dumps({"ok": True, "ready": True,
                                "package": sys.modules["firecracker"].__version__}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        op = cmd.pop("op")
        try:
            answer = {"ok": True, **getattr(driver, op)(**cmd)}
        except Exception as e:
            answer = {"ok": False, "error": f"{type(e).__name__}: {e}",
                      "traceback": traceback.format_exc()}
        print("FCPY " + json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
