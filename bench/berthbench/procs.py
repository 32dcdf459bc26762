"""Child processes: start them in their own process group, find them again
(for RSS), and always kill the whole group, also on Ctrl-C and errors.

Every server the harness starts (upstream, mirrors, relay) is a `Proc`; all
live ones are kept in `_LIVE` so that `stop_all()` in main's `finally` and the
SIGTERM handler leave nothing running.
"""
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

_LIVE = []


class StartError(RuntimeError):
    """A server did not come up (exited, or never answered)."""


class Proc:
    """A server process in its own session (so its process group is its pid),
    with stdout and stderr going to `log_path`."""

    def __init__(self, name, argv, log_path, cwd=None, env=None, stdout_path=None):
        self.name = name
        self.log_path = log_path
        log = open(log_path, "ab")
        out = open(stdout_path, "ab") if stdout_path else log
        try:
            self.popen = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=log, start_new_session=True)
        finally:
            log.close()
            if out is not log:
                out.close()
        self.pid = self.popen.pid
        _LIVE.append(self)

    def alive(self):
        return self.popen.poll() is None

    def stop(self, grace=15.0):
        """SIGTERM the group, wait up to `grace` seconds, then SIGKILL it."""
        if self in _LIVE:
            _LIVE.remove(self)
        _signal_group(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        # Workers (nginx) may outlive the leader for a moment: kill the rest.
        _signal_group(self.pid, signal.SIGKILL)
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def group_pids(self):
        """Pids of every process in this process group (nginx: master and
        workers)."""
        pids = []
        for entry in os.listdir("/proc"):
            fields = _stat_fields(entry) if entry.isdigit() else None
            # Field 5 of stat(5), pgrp, is the third after the name.
            if fields and int(fields[2]) == self.pid:
                pids.append(int(entry))
        return pids

    def cpu_seconds(self):
        """User and system CPU time the whole group has used so far."""
        ticks = 0
        for pid in self.group_pids():
            fields = _stat_fields(pid)
            # Fields 14 and 15 of stat(5): utime and stime.
            if fields:
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def rss_kib(self):
        """Resident memory of the whole group, KiB (sum of VmRSS)."""
        return sum(_status_kib(pid, "VmRSS") for pid in self.group_pids())

    def log_tail(self, lines=15):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""


def _stat_fields(pid):
    """/proc/<pid>/stat after the command name (field 3 onwards), or None
    for a process that is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The name may hold spaces and parentheses: it ends at the last ")".
    return stat[stat.rindex(")") + 2:].split()


def _status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_all():
    """Stop every live child, newest first (mirrors before their upstream)."""
    for proc in reversed(list(_LIVE)):
        proc.stop(grace=5)


def install_sigterm_handler():
    """Turn SIGTERM/SIGHUP into SystemExit, so `finally` blocks run."""
    def handler(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def free_port():
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(proc, url, deadline_s=30.0, context=None):
    """Wait until `url` answers any HTTP status; raise StartError with the
    log's tail if `proc` exits first or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StartError(f"{proc.name} exited during start-up "
                             f"(code {proc.popen.returncode}):\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise StartError(f"{proc.name} did not answer {url} within {deadline_s:.0f}s:\n"
                     f"{proc.log_tail()}")


def wait_port(proc, port, deadline_s=10.0):
    """Wait until something accepts TCP connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StartError(f"{proc.name} exited during start-up:\n{proc.log_tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise StartError(f"{proc.name} did not listen on {port}:\n{proc.log_tail()}")


class RssSampler:
    """Polls a Proc's group RSS every `interval` seconds in a thread while
    used as a context manager; `peak_mib` is the highest sum seen."""

    def __init__(self, proc, interval=0.05):
        self.proc = proc
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self.proc.rss_kib())
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, self.proc.rss_kib())

    @property
    def peak_mib(self):
        return self.peak_kib / 1024
