"""Sandbox host: a long-lived ``python -I -S -B`` process that forks one confined child per program.

Started by ``consistency_worker.sandbox.hosts`` (never imported): stdlib only, no package imports, so
nothing of the worker (credentials, models, open files) exists in its memory or environment. Forking a
small, already-initialised interpreter costs about a millisecond where starting a fresh one costs tens.

It runs one program at a time. Per program the child, before the first line of untrusted code: starts
a new session, enters a private mount namespace with size-capped tmpfs over the world-writable
directories and its working directory, gets /dev/null as stdin and private memfds
as stdout/stderr (and fd 3 for data, fd 4 for its status line), closes every other descriptor, sets
rlimits, drops to the run's uid and sets no_new_privs (staying uid 0 in a user namespace, it sheds
every capability instead), then, where the kernel has them, a Landlock ruleset and a seccomp filter
(``_confine.py``; probed in a throwaway child at start, reported in the hello; all of this is
``_child.py``). Afterwards the
host kills every process the run left (all other processes of its PID namespace, or, without one, all
its descendants: it is a child subreaper, so double-forked orphans come back to it; with a cgroup, the
cgroup's other members), reaps them and returns the result. The host lives in its own cgroup (when
one is writable), so pids.max and the memory limit cover the run's processes together.

Protocol on fd 0 / fd 1: 4-byte big-endian length + JSON, one request then one response.
argv: expose ("prefix:hidden_dir" or "-"), cgroup dirs to create and join (":"-joined or "-"), JSON of
the confinement wanted (landlock, seccomp: bools; read_only, devices: paths).
Hello: ready, pid, landlock (the ABI in force, 0: none), seccomp (bool).
Request: source, timeout_s, uid (-1: keep), cpu_s, memory, file_bytes, nproc, nofile, disk_bytes,
output_bytes, mount (bool), tmp_root (the host's own directory for run dirs).
Response: status, reason, returncode, stdout, stderr, data (what the program wrote on fd 3), wall_s,
[fatal].
"""

import json
import os
import secrets
import select
import signal
import struct
import sys
import time

# The child's code and the confinement layer are sibling modules; -I leaves the script's directory off
# sys.path, so add it for these imports only (nothing else of the package is importable from the host or
# its children).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import _child
    import _confine
finally:
    del sys.path[0]

_PR_SET_CHILD_SUBREAPER = 36
_IN_PIDNS = os.getpid() == 1
_DATA_CAP = 8 << 20  # what a run may write on its data descriptor

# ---------------------------------------------------------------------------------------------------
# once, at start-up


def _expose_interpreter(prefix: str, hidden_top: str) -> None:
    """The interpreter lives under a directory other uids cannot traverse (pyenv in /root). In this
    private mount namespace, cover that directory with an empty tmpfs and bind the interpreter back at
    the same path, read-only: programs can import the stdlib, and nothing else there is visible."""
    keep = os.open(prefix, os.O_RDONLY | os.O_DIRECTORY)
    _child.mount("tmpfs", hidden_top, "tmpfs", _child.MS_NOSUID | _child.MS_NODEV, "mode=0755,size=1m")
    os.makedirs(prefix, mode=0o755, exist_ok=True)
    _child.mount(f"/proc/self/fd/{keep}", prefix, None, _child.MS_BIND | _child.MS_REC, None)
    _child.mount(None, prefix, None, _child.MS_BIND | _child.MS_REMOUNT | _child.MS_RDONLY | _child.MS_NOSUID, None)
    os.close(keep)


# ---------------------------------------------------------------------------------------------------
# protocol


def _read_exact(n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(0, n)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _send(obj: dict) -> None:
    data = json.dumps(obj).encode()
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        view = view[os.write(1, view) :]


# ---------------------------------------------------------------------------------------------------
# per run


_cgroup_dirs: list = []
_cgroup_limits: dict = {}
# The host itself lives in the cgroup (its children then need no join); allow for its own footprint.
_HOST_PIDS, _HOST_MEMORY = 1, 96 << 20


def _join_cgroup(dirs: list) -> None:
    for d in dirs:
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "cgroup.procs"), "w") as fh:
            fh.write("0")
        _cgroup_dirs.append(d)
    # The OOM killer must pick the run's processes, not the host: children raise theirs to 1000, and the
    # host lowers its own where it may (that needs CAP_SYS_RESOURCE).
    try:
        with open("/proc/self/oom_score_adj", "w") as fh:
            fh.write("-1000")
    except OSError:
        pass


def _set_cgroup_limits(req: dict) -> None:
    values = {
        "pids.max": str(int(req["nproc"]) + _HOST_PIDS),
        "memory.limit_in_bytes": str(int(req["memory"]) + _HOST_MEMORY),
        "memory.max": str(int(req["memory"]) + _HOST_MEMORY),
        "memory.swap.max": "0",
    }
    for d in _cgroup_dirs:
        for name, value in values.items():
            path = os.path.join(d, name)
            if _cgroup_limits.get(path) != value and os.path.exists(path):
                with open(path, "w") as fh:
                    fh.write(value)
                _cgroup_limits[path] = value


_uid_count_cache: list = [0.0, 0]  # (when, count)


def _uid_processes(uid: int) -> int:
    """The uid's process count for RLIMIT_NPROC, refreshed at most every half second: counting walks
    /proc, which on a busy node costs more than a run."""
    now = time.monotonic()
    if now - _uid_count_cache[0] > 0.5:
        _uid_count_cache[:] = [now, _count_uid(uid)]
    return _uid_count_cache[1]


def _count_uid(uid: int) -> int:
    count = 0
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:  # noqa: SIM105 - no contextlib in the host: it stays import-light
                count += os.stat(f"/proc/{p}").st_uid == uid
            except OSError:
                pass
    return count


def _leftovers() -> set:
    """Every process of the run still around, whatever setsid or double-fork it did."""
    me = os.getpid()
    found = set()
    if _cgroup_dirs:  # the host's cgroup holds the host and the run, nothing else
        for d in _cgroup_dirs:
            try:
                with open(os.path.join(d, "cgroup.procs")) as fh:
                    found.update(int(x) for x in fh.read().split())
            except OSError:
                pass
    elif _IN_PIDNS:  # /proc is this namespace's: everything but us belongs to the run
        found.update(int(p) for p in os.listdir("/proc") if p.isdigit())
    else:  # we are a subreaper: orphans are re-parented to us, so the run is our descendants
        children: dict = {}
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    with open(f"/proc/{p}/stat") as fh:
                        stat = fh.read()
                    children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(p))
                except (OSError, ValueError, IndexError):
                    pass
        stack = [me]
        while stack:
            for child in children.get(stack.pop(), []):
                if child not in found:
                    found.add(child)
                    stack.append(child)
    found.discard(me)
    found.discard(0)
    return found


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _no_children() -> bool:
    """Whether the host has no child at all. Without a cgroup or PID namespace the host is a child
    subreaper, so every process the run left is its child or a descendant of one: none means nothing
    to hunt for, and the scan of /proc (slow on a busy node) is skipped."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return False


def _kill_run() -> None:
    if not _cgroup_dirs and not _IN_PIDNS and _no_children():
        return
    for attempt in range(500):
        victims = _leftovers()
        if not victims:
            return
        for pid in victims:
            try:  # noqa: SIM105
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        _reap_all()
        if attempt > 5:
            time.sleep(0.002)


def _wait(pid: int, timeout_s: float) -> int | None:
    """The child's wait status, or None on timeout."""
    try:
        fd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        fd = None
    # poll, not select: a long-lived host's descriptors can pass select's FD_SETSIZE (1024).
    poller = None
    if fd is not None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            done, wstatus = os.waitpid(pid, os.WNOHANG)
            if done:
                return wstatus
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if poller is not None:
                poller.poll(max(1, int(left * 1000)))
            else:
                time.sleep(min(left, 0.002))
    finally:
        if fd is not None:
            os.close(fd)  # one pidfd per program: left open, a host that runs ~1,000 programs runs out


def _read_memfd(fd: int, cap: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while len(data) <= cap:
        chunk = os.read(fd, cap + 1 - len(data))
        if not chunk:
            break
        data += chunk
    text = data[:cap].decode("utf-8", "replace")
    return text + ("\n[output truncated]" if len(data) > cap else "")


def _run(req: dict) -> dict:
    run_id = secrets.token_hex(8)
    nonce = secrets.token_hex(16)
    _set_cgroup_limits(req)
    if int(req["uid"]) < 0 and int(req["nproc"]) > 0:
        req = {**req, "uid_processes": _uid_processes(os.getuid())}
    fds = [os.memfd_create(name) for name in ("stdout", "stderr", "status", "data")]
    started = time.monotonic()
    try:
        pid = os.fork()
        if pid == 0:
            try:
                _child.run_child(req, run_id, nonce, *fds, in_cgroup=bool(_cgroup_dirs))
            finally:
                os._exit(4)
        wstatus = _wait(pid, float(req["timeout_s"]))
        wall = time.monotonic() - started
        timed_out = wstatus is None
        _kill_run()
        _reap_all()
        status_text = _read_memfd(fds[2], 4096)
        stdout = _read_memfd(fds[0], int(req["output_bytes"]))
        stderr = _read_memfd(fds[1], int(req["output_bytes"]))
        data = _read_memfd(fds[3], _DATA_CAP)
    finally:
        for fd in fds:
            os.close(fd)
        if not req["mount"]:
            _rmtree(os.path.join(req["tmp_root"], "cw-sbx-" + run_id))
    rc = -signal.SIGKILL
    if wstatus is not None:
        rc = -os.WTERMSIG(wstatus) if os.WIFSIGNALED(wstatus) else os.WEXITSTATUS(wstatus)
    reported = [ln.split(" ", 2)[1:] for ln in status_text.splitlines() if ln.startswith(nonce + " ")]
    result = {"returncode": rc, "stdout": stdout, "stderr": stderr, "wall_s": wall, "data": data}
    if reported:
        state, reason = ([*reported[-1], ""])[:2]
        if state == "setup":
            return {**result, "status": "error", "reason": reason, "fatal": True}
        if state in ("passed", "failed", "error"):
            return {**result, "status": state, "reason": reason}
    if timed_out:
        return {**result, "status": "timeout", "reason": f"wall-clock timeout after {float(req['timeout_s']):g}s"}
    if rc < 0:
        state, reason = {
            signal.SIGXCPU: ("timeout", "CPU time limit exceeded"),
            signal.SIGXFSZ: ("error", "file size limit exceeded"),
            signal.SIGKILL: ("error", "killed (memory or process limit)"),
            signal.SIGSEGV: ("error", "segmentation fault"),
        }.get(-rc, ("error", f"killed by signal {-rc}"))
        return {**result, "status": state, "reason": reason}
    return {**result, "status": "error", "reason": f"exited with code {rc} before the tests finished"}


def _rmtree(path: str) -> None:
    if not os.path.isdir(path) or os.path.islink(path):
        return
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            try:  # noqa: SIM105
                os.unlink(os.path.join(root, name))
            except OSError:
                pass
        for name in dirs:
            full = os.path.join(root, name)
            try:  # noqa: SIM105
                os.unlink(full) if os.path.islink(full) else os.rmdir(full)
            except OSError:
                pass
    try:  # noqa: SIM105
        os.rmdir(path)
    except OSError:
        pass


# Imported and exercised once here so every forked child finds them warm: the first compile() in a
# process costs milliseconds, and so do these imports that tests and solutions commonly make.
_WARM_MODULES = ("math", "re", "collections", "itertools", "functools", "heapq", "typing", "string", "bisect",
                 "operator", "copy", "traceback", "json")


def _warm_up() -> None:
    import gc

    for name in _WARM_MODULES:
        try:  # noqa: SIM105
            __import__(name)
        except ImportError:
            pass
    exec(compile("def f(x):\n    return [i for i in range(x)]\nassert f(3) == [0, 1, 2]\n", "warm", "exec"), {})
    gc.collect()
    gc.freeze()  # keep the collector from touching (and so copying) the host's pages in every child


def _probe_confinement(wanted: dict) -> None:
    """Try the requested Landlock / seccomp layers in a throwaway child; keep those that hold."""
    abi = _confine.landlock_abi() if wanted.get("landlock", True) else 0
    prog = _confine.seccomp_program() if wanted.get("seccomp", True) and _confine.seccomp_available() else None
    read_only, devices = list(wanted.get("read_only", [])), list(wanted.get("devices", []))
    for layer in ("landlock", "seccomp"):
        if (layer == "landlock" and not abi) or (layer == "seccomp" and prog is None):
            continue
        pid = os.fork()
        if pid == 0:
            try:
                _confine.set_no_new_privs()
                if layer == "landlock":
                    _confine.apply_landlock(abi, read_only, ["/nonexistent"], devices)
                else:
                    _confine.apply_seccomp(prog)
                os._exit(0)
            finally:
                os._exit(1)
        _, wstatus = os.waitpid(pid, 0)
        ok = os.WIFEXITED(wstatus) and os.WEXITSTATUS(wstatus) == 0
        if layer == "landlock":
            abi = abi if ok else 0
        elif not ok:
            prog = None
    _child.layers.update(landlock=abi, seccomp=prog is not None, read_only=read_only, devices=devices)
    _child.seccomp_prog = prog


def main() -> None:
    expose = sys.argv[1] if len(sys.argv) > 1 else "-"
    cgroups = sys.argv[2] if len(sys.argv) > 2 else "-"
    _probe_confinement(json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
    if expose != "-":
        prefix, hidden_top = expose.split(":", 1)
        _expose_interpreter(prefix, hidden_top)
    if cgroups != "-":
        _join_cgroup(cgroups.split(":"))
    if not _IN_PIDNS and sys.platform.startswith("linux"):
        _child.libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker's Ctrl-C is for the worker to handle
    _warm_up()
    layers = _child.layers
    _send({"ready": True, "pid": os.getpid(), "landlock": layers["landlock"], "seccomp": layers["seccomp"]})
    while True:
        try:
            (size,) = struct.unpack(">I", _read_exact(4))
            req = json.loads(_read_exact(size))
        except EOFError:
            return
        try:
            reply = _run(req)
        except Exception as exc:
            reply = {"status": "error", "reason": f"sandbox host error: {type(exc).__name__}: {exc}",
                     "fatal": True}
        _send(reply)


if __name__ == "__main__":  # a script for the sandbox; importing it must not start serving
    main()
