"""Unprivileged confinement of a sandboxed child: a seccomp filter and a Landlock ruleset, by ctypes.

Imported by the sandbox host (``_host.py``, a ``python -I -S`` process: stdlib only, no
site-packages) and by ``probe.py`` to detect what the kernel offers. Neither layer needs a privilege:
both only need ``PR_SET_NO_NEW_PRIVS``, which the child sets first.

Why a small ctypes layer and not a library: the host runs with ``-I -S`` so that nothing of the worker
is importable or loaded in it, which rules out site-packages imports there. Of the candidates,
PyPI ``pyseccomp`` (0.1.2, last released 2021) is a ctypes wrapper over the system's libseccomp.so,
which a slim worker image need not carry, and PyPI ``landlock`` is a pre-release (1.0.0.dev5). What we
need is one fixed BPF program (about 50 instructions) and three Landlock syscalls, so the layer below
is short enough to review whole, and is tested against the running kernel (tests/worker/test_sandbox.py).

seccomp (x86_64 and aarch64): other architectures' syscalls (x32 included) are refused; ``socket()`` is
refused for every family (programs get no network, no unix sockets to a runtime or daemon), a
``socketpair()`` only for AF_UNIX (multiprocessing and asyncio need one); ptrace, process_vm_*,
pidfd_getfd, mount and the new mount API, unshare / setns / clone with namespace flags, keyctl, bpf,
perf_event_open, io_uring (it would bypass the socket rule), userfaultfd, module and kexec loading and a
few more are refused with EPERM. ``clone3`` answers ENOSYS, so libc falls back to ``clone``, whose flags
the filter can inspect.

Landlock (ABI detected at start; v1+): reading and executing only under the given read-only roots (the
Python installation and the system's binaries and libraries), everything under the run's own working
directory, a few device files; nothing else in the filesystem (not /tmp, /proc, /etc, the store or
the worker's files). ABI >= 2 also covers renames across directories (REFER), >= 3 truncation, >= 4
denies every TCP bind and connect, >= 5 device ioctls, >= 6 scopes abstract unix sockets and signals
to the run's own processes (the program cannot signal its host or the worker).
"""

import ctypes
import os
import platform
import stat
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

_PR_SET_NO_NEW_PRIVS, _PR_GET_SECCOMP, _PR_SET_SECCOMP = 38, 21, 22
_SECCOMP_MODE_FILTER = 2
_EPERM, _ENOSYS = 1, 38

# ---------------------------------------------------------------------------------------------------
# seccomp

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_BIT = 0x40000000
_SOCKET, _SOCKETPAIR, _CLONE, _CLONE3 = "socket", "socketpair", "clone", "clone3"
# Per architecture, from the kernel's syscall tables (arch/x86/entry/syscalls/syscall_64.tbl and the
# generic include/uapi/asm-generic/unistd.h that aarch64 uses).
_NUMBERS = {
    "x86_64": {
        "socket": 41, "socketpair": 53, "clone": 56, "clone3": 435,
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "pidfd_getfd": 438,
        "process_madvise": 440, "kcmp": 312, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442, "unshare": 272, "setns": 308, "keyctl": 250, "add_key": 248, "request_key": 249,
        "bpf": 321, "perf_event_open": 298, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "userfaultfd": 323, "open_by_handle_at": 304, "name_to_handle_at": 303,
        "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
        "delete_module": 176, "fanotify_init": 300, "swapon": 167, "swapoff": 168, "reboot": 169,
        "acct": 163, "quotactl": 179, "syslog": 103, "iopl": 172, "ioperm": 173, "vhangup": 153,
        "uselib": 134, "lookup_dcookie": 212,
    },
    "aarch64": {
        "socket": 198, "socketpair": 199, "clone": 220, "clone3": 435,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "pidfd_getfd": 438,
        "process_madvise": 440, "kcmp": 272, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442, "unshare": 97, "setns": 268, "keyctl": 219, "add_key": 217, "request_key": 218,
        "bpf": 280, "perf_event_open": 241, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "userfaultfd": 282, "open_by_handle_at": 265, "name_to_handle_at": 264,
        "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
        "delete_module": 106, "fanotify_init": 262, "swapon": 224, "swapoff": 225, "reboot": 142,
        "acct": 89, "quotactl": 60, "syslog": 116, "vhangup": 58, "lookup_dcookie": 18,
    },
}
_AF_UNIX = 1
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME(0x80)
_CLONE_NS_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80

# classic BPF
_LD_W_ABS, _JEQ_K, _JSET_K, _JGE_K, _RET_K = 0x20, 0x15, 0x45, 0x35, 0x06
_RET_ALLOW, _RET_KILL_PROCESS, _RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16  # struct seccomp_data; args[0]'s low word (little endian)


def seccomp_program(machine: str | None = None) -> bytes | None:
    """The filter for this machine as packed ``struct sock_filter`` entries, or None (unknown arch)."""
    machine = machine or platform.machine()
    if machine not in _NUMBERS:
        return None
    nums = _NUMBERS[machine]
    special = (_SOCKET, _SOCKETPAIR, _CLONE, _CLONE3)
    checks = [(n, "deny") for name, n in nums.items() if name not in special]
    checks += [(nums[_SOCKET], "deny"), (nums[_SOCKETPAIR], "socketpair"), (nums[_CLONE], "clone"),
               (nums[_CLONE3], "enosys")]
    # Instructions as (code, jt-label, jf-label, k); labels are resolved to relative jumps below.
    prog: list[tuple] = [
        (_LD_W_ABS, None, None, _OFF_ARCH),
        (_JEQ_K, "nr", "kill", _AUDIT_ARCH[machine]),
        ("kill", _RET_K, None, None, _RET_KILL_PROCESS),  # another ABI's syscall (i386 int 0x80)
        ("nr", _LD_W_ABS, None, None, _OFF_NR),
    ]
    if machine == "x86_64":
        prog.append((_JGE_K, "deny", None, _X32_BIT))  # x32 syscalls
    prog += [(_JEQ_K, kind, None, nr) for nr, kind in checks]
    prog += [
        ("allow", _RET_K, None, None, _RET_ALLOW),
        ("socketpair", _LD_W_ABS, None, None, _OFF_ARG0),  # domain
        (_JEQ_K, "allow2", "deny", _AF_UNIX),
        ("clone", _LD_W_ABS, None, None, _OFF_ARG0),  # flags
        (_JSET_K, "deny", "allow2", _CLONE_NS_FLAGS),
        ("allow2", _RET_K, None, None, _RET_ALLOW),  # classic BPF only jumps forward
        ("deny", _RET_K, None, None, _RET_ERRNO | _EPERM),
        ("enosys", _RET_K, None, None, _RET_ERRNO | _ENOSYS),  # clone3: libc falls back to clone
    ]
    labels = {ins[0]: i for i, ins in enumerate(prog) if isinstance(ins[0], str)}
    out = []
    for i, ins in enumerate(prog):
        code, jt, jf, k = ins[1:] if isinstance(ins[0], str) else ins
        rel = [0 if t is None else labels[t] - i - 1 for t in (jt, jf)]
        out.append(struct.pack("HBBI", code, rel[0], rel[1], k))
    return b"".join(out)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_available() -> bool:
    """Whether this kernel offers seccomp filters (the process may already be under one: they stack)."""
    return platform.machine() in _NUMBERS and _libc.prctl(_PR_GET_SECCOMP, 0, 0, 0, 0) >= 0


def apply_seccomp(program: bytes) -> None:
    """Install ``program`` on the calling thread (no_new_privs must be set). Raises OSError."""
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    if _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")


# ---------------------------------------------------------------------------------------------------
# Landlock

_NR_CREATE, _NR_ADD_RULE, _NR_RESTRICT = 444, 445, 446  # the same on x86_64 and aarch64
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_V1 = (1 << 13) - 1
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1
_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is absent or disabled."""
    if platform.machine() not in _NUMBERS:
        return 0
    version = _libc.syscall(_NR_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return int(version) if version > 0 else 0


def handled_fs(abi: int) -> int:
    rights = _FS_V1
    if abi >= 2:
        rights |= _FS_REFER
    if abi >= 3:
        rights |= _FS_TRUNCATE
    if abi >= 5:
        rights |= _FS_IOCTL_DEV
    return rights


def _ruleset_attr(abi: int) -> bytes:
    """``struct landlock_ruleset_attr`` as this ABI knows it (its size tells the kernel the version)."""
    fs = handled_fs(abi)
    if abi >= 6:
        return struct.pack("QQQ", fs, _NET_BIND_TCP | _NET_CONNECT_TCP, _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL)
    if abi >= 4:
        return struct.pack("QQ", fs, _NET_BIND_TCP | _NET_CONNECT_TCP)
    return struct.pack("Q", fs)


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def apply_landlock(abi: int, read_only: list, read_write: list, devices: list) -> None:
    """Restrict the calling process: read (and execute) under ``read_only``, anything under
    ``read_write``, read and write of the ``devices`` files; nothing else. No_new_privs must be set.
    Paths that do not exist are skipped. Raises OSError."""
    fs = handled_fs(abi)
    attr = _ruleset_attr(abi)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _check(_libc.syscall(_NR_CREATE, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0)),
                     "landlock_create_ruleset")
    try:
        read = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
        rules = [(p, read) for p in read_only] + [(p, fs) for p in read_write]
        rules += [(p, (_FS_READ_FILE | _FS_WRITE_FILE | (_FS_TRUNCATE if abi >= 3 else 0))) for p in devices]
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    access &= _FILE_RIGHTS  # a file rule takes file rights only
                rule = ctypes.create_string_buffer(struct.pack("=Qi", access & fs, fd), 12)
                _check(_libc.syscall(_NR_ADD_RULE, ruleset, ctypes.c_int(_RULE_PATH_BENEATH), rule,
                                     ctypes.c_uint32(0)), f"landlock_add_rule {path}")
            finally:
                os.close(fd)
        _check(_libc.syscall(_NR_RESTRICT, ruleset, ctypes.c_uint32(0)), "landlock_restrict_self")
    finally:
        os.close(ruleset)


def set_no_new_privs() -> None:
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
