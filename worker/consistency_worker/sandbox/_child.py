"""The forked child of a sandbox host (``_host.py``): confines itself, then runs one program. Never
returns. Stdlib only, imported by the host alone, like ``_confine``.

Before the program's first line: a new session, a private mount namespace with size-capped tmpfs over
the world-writable directories, /dev/null as stdin and the host's memfds as stdout / stderr / data (fd 3)
/ status (fd 4), every other descriptor closed, rlimits, the run's uid and no_new_privs (or, staying uid
0, no capabilities at all), then Landlock and seccomp where the host's start-up probe found them.
"""

import ctypes
import fcntl
import os
import resource
import signal
import sys

import _confine

libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 38, 24
LINUX_CAPABILITY_VERSION_3 = 0x20080522
TMPFS_TARGETS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock")
# The data channel (one JSON line per recorded test call, written by the graded script) and the status
# line, at fixed descriptor numbers in every child.
DATA_FD, STATUS_FD = 3, 4
# Set by the host's main() from the worker's confinement settings and the start-up probe.
layers: dict = {"landlock": 0, "seccomp": False, "read_only": [], "devices": []}
seccomp_prog = None


def check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source, target, fstype, flags, opts) -> None:
    enc = [x.encode() if isinstance(x, str) else x for x in (source, target, fstype, opts)]
    check(libc.mount(enc[0], enc[1], enc[2], flags, enc[3]), f"mount {source} on {target}")


def run_child(req: dict, run_id: str, nonce: str, out: int, err: int, status: int, data: int, *,
              in_cgroup: bool) -> None:
    """In the forked child: confine, then run the program. Never returns."""
    try:
        os.setsid()
        if in_cgroup:
            with open("/proc/self/oom_score_adj", "w") as fh:
                fh.write("1000")
        workdir = os.path.join(req["tmp_root"], "cw-sbx-" + run_id)
        if req["mount"]:
            check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
            opts = f"size={max(int(req['disk_bytes']), 4096)},mode=1777"
            for target in (*TMPFS_TARGETS, req["tmp_root"]):
                if os.path.isdir(target) and not os.path.islink(target) and not os.path.ismount(target):
                    mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, opts)
        os.makedirs(workdir, mode=0o700, exist_ok=True)
        uid = int(req["uid"])
        if uid >= 0:
            os.chown(workdir, uid, uid)
        devnull = os.open(os.devnull, os.O_RDONLY)
        # Move every descriptor out of the way first: the memfds may sit on 3 or 4 themselves.
        high = [fcntl_dup(fd) for fd in (devnull, out, err, data, status)]
        for target, fd in enumerate(high):
            os.dup2(fd, target)
        keep = [0, 1, 2, DATA_FD, STATUS_FD]
        for lo, hi in zip(keep, [*keep[1:], 65536], strict=True):
            os.closerange(lo + 1, hi)
        status = STATUS_FD
        for sig in (signal.SIGPIPE, signal.SIGINT, signal.SIGTERM, signal.SIGXFSZ, signal.SIGXCPU):
            signal.signal(sig, signal.SIG_DFL)

        def limit(kind: int, value: int, slack: int = 0) -> None:
            if value > 0:
                resource.setrlimit(kind, (value, value + slack))

        limit(resource.RLIMIT_CPU, int(req["cpu_s"]), slack=1)
        limit(resource.RLIMIT_AS, int(req["memory"]))
        limit(resource.RLIMIT_FSIZE, int(req["file_bytes"]))
        limit(resource.RLIMIT_NOFILE, int(req["nofile"]))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if int(req["nproc"]) > 0:
            # RLIMIT_NPROC counts every process of the real uid: with a fresh uid that is this run
            # alone; otherwise the worker's own processes count too, so allow for them.
            base = 0 if uid >= 0 else int(req["uid_processes"])
            resource.setrlimit(resource.RLIMIT_NPROC, (base + int(req["nproc"]),) * 2)
        if uid >= 0:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        _shed_privileges(keep_uid=uid < 0)
        os.chdir(workdir)
        # Landlock, then seccomp (no_new_privs is set): the last steps before the program's first line.
        if layers["landlock"]:
            _confine.apply_landlock(layers["landlock"], layers["read_only"], [workdir], layers["devices"])
        if seccomp_prog is not None:
            _confine.apply_seccomp(seccomp_prog)
        os.umask(0o077)
        os.environ.clear()
        os.environ.update({"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir,
                           "TMPDIR": workdir})
    except BaseException as exc:  # never run the program half-confined
        os.write(status, f"{nonce} setup sandbox setup failed: {type(exc).__name__}: {exc}\n".encode())
        os._exit(3)
    _execute(req["source"], nonce, status)


def fcntl_dup(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_DUPFD, 100)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _shed_privileges(keep_uid: bool) -> None:
    """No privilege gain through exec (setuid binaries, file capabilities) for anyone; and a process that
    stays uid 0 (in a user namespace, or a root worker without fresh uids) drops every capability and
    empties its bounding set, since exec as uid 0 would otherwise hand them back."""
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    if keep_uid and os.geteuid() == 0:
        for cap in range(64):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                break  # EINVAL past the last capability this kernel knows
        header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)()
        check(libc.capset(ctypes.byref(header), data), "capset")


def _execute(source: str, nonce: str, status_fd: int) -> None:
    def report(state: str, reason: str) -> None:
        line = f"{nonce} {state} {reason.replace(chr(10), ' ')[:300]}\n".encode()
        try:  # noqa: SIM105 - keep the child's import set minimal
            os.write(status_fd, line)
        except OSError:
            pass

    try:
        code = compile(source, "solution.py", "exec")
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        report("error", f"{type(exc).__name__}: {getattr(exc, 'msg', exc)}" + (f" (line {line})" if line else ""))
        os._exit(1)
    # Not "__main__": `if __name__ == "__main__":` demo blocks in model answers must not run.
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    state, reason, rc = "passed", "", 0
    try:
        exec(code, namespace)
    except AssertionError as exc:
        state, reason, rc = "failed", _describe(exc), 1
    except SystemExit as exc:
        state, reason, rc = "error", f"program called exit({exc.code!r}) before the tests finished", 1
    except BaseException as exc:
        state, reason, rc = "error", _describe(exc), 1
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - see report()
            stream.flush()
        except BaseException:
            pass
    report(state, reason)
    # os._exit skips atexit hooks and non-daemon threads the program may have left behind.
    os._exit(rc)


def _describe(exc: BaseException) -> str:
    import traceback

    traceback.print_exception(exc)
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "solution.py":
            line = tb.tb_lineno
        tb = tb.tb_next
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:240] + (f" (line {line})" if line else "")
