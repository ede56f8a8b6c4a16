"""The code sandbox with real processes: outcomes, limits, and adversarial programs that must not harm
the worker. Tests that need a layer this machine lacks (root, namespaces, cgroups) skip and say so."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from consistency_worker.sandbox.pool import Sandbox, join_program, run_many, run_program
from consistency_worker.sandbox.probe import probe_isolation
from consistency_worker.sandbox.types import SandboxConfig, SandboxError, SandboxLimits

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="the sandbox needs Linux /proc")

ISO = probe_isolation()
needs_uid = pytest.mark.skipif(not ISO.fresh_uid, reason="a fresh uid per run needs a root worker")
needs_ns = pytest.mark.skipif(not ISO.namespaces, reason="unshare (pid/net/mount namespaces) not permitted")
needs_landlock = pytest.mark.skipif(not ISO.landlock, reason="this kernel has no Landlock")
needs_seccomp = pytest.mark.skipif(not ISO.seccomp, reason="no seccomp filters here")


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    with Sandbox() as sb:
        yield sb


@pytest.fixture(scope="module")
def bare() -> Sandbox:
    """No namespaces, no cgroup, the worker's own uid: what a non-root pod or a laptop gets."""
    with Sandbox(SandboxConfig(namespaces=False, cgroups=False, fresh_uid=False)) as sb:
        yield sb


def _processes_with(token: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if token.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


# --------------------------------------------------------------------------------------------- outcomes


def test_outcomes_are_classified(sandbox: Sandbox) -> None:
    ok = sandbox.run("def f(x):\n    return x * 2\nassert f(2) == 4\nprint('hi')")
    assert (ok.passed, ok.status, ok.stdout) == (True, "passed", "hi\n")
    failed = sandbox.run("assert 1 == 2, 'one is not two'")
    assert failed.status == "failed" and "one is not two" in failed.reason and "line 1" in failed.reason
    syntax = sandbox.run("def f(:\n  pass")
    assert syntax.status == "error" and syntax.reason.startswith("SyntaxError")
    name = sandbox.run("undefined_name + 1")
    assert name.status == "error" and "NameError" in name.reason


def test_exiting_early_is_not_passing(sandbox: Sandbox) -> None:
    # A program that exits 0 before the tests run must not count as passing them.
    for source in ("import os\nos._exit(0)\nassert False", "import sys\nsys.exit(0)\nassert False",
                   "exit()\nassert False"):
        result = sandbox.run(source)
        assert not result.passed and result.status == "error", (source, result)


def test_main_guard_does_not_run(sandbox: Sandbox) -> None:
    result = sandbox.run("if __name__ == '__main__':\n    input()\nassert True")
    assert result.passed


def test_stdlib_imports_work(sandbox: Sandbox) -> None:
    result = sandbox.run("import math, re, json, fractions, decimal, random, hashlib\nassert math.gcd(12, 18) == 6")
    assert result.passed, result


def test_output_is_capped(sandbox: Sandbox) -> None:
    limits = SandboxLimits(output_bytes=1000)
    result = sandbox.run("print('x' * 100000)", limits=limits)
    assert result.passed
    assert len(result.stdout) < 1100 and result.stdout.endswith("[output truncated]")


def test_run_many_keeps_order_and_runs_in_parallel(sandbox: Sandbox) -> None:
    sources = [f"import time\ntime.sleep(0.3)\nassert {i} % 2 == 0" for i in range(8)]
    start = time.monotonic()
    results = sandbox.run_many(sources, workers=4)
    elapsed = time.monotonic() - start
    assert [r.passed for r in results] == [i % 2 == 0 for i in range(8)]
    assert elapsed < 8 * 0.3 * 0.75, f"no parallelism: {elapsed:.2f}s"


def test_module_level_helpers() -> None:
    assert run_program("assert 2 + 2 == 4").passed
    results = run_many([("def f():\n    return 1", "assert f() == 1"), "assert False"], workers=2)
    assert [r.status for r in results] == ["passed", "failed"]
    assert join_program("x = 1\n", "assert x == 1").startswith("x = 1\n")


# ----------------------------------------------------------------------------------------------- limits


def test_infinite_loop_times_out(sandbox: Sandbox) -> None:
    start = time.monotonic()
    result = sandbox.run("while True:\n    pass", timeout_s=1.0)
    assert result.status == "timeout"
    assert time.monotonic() - start < 5


def test_sleeping_program_hits_the_wall_clock(sandbox: Sandbox) -> None:
    result = sandbox.run("import time\ntime.sleep(30)", timeout_s=0.5)
    assert result.status == "timeout" and "wall-clock" in result.reason


def test_cpu_limit_applies_to_busy_children(sandbox: Sandbox) -> None:
    result = sandbox.run("while True:\n    pass", limits=SandboxLimits(timeout_s=10, cpu_s=1))
    assert result.status == "timeout" and result.wall_s < 5, result


def test_memory_bomb_is_contained(sandbox: Sandbox) -> None:
    result = sandbox.run("x = bytearray(8 * 1024 ** 3)", limits=SandboxLimits(memory_bytes=256 << 20))
    assert result.status == "error" and "MemoryError" in result.reason
    grow = sandbox.run("chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))",
                       limits=SandboxLimits(memory_bytes=256 << 20, timeout_s=20))
    assert grow.status == "error", grow


def test_file_size_limit(sandbox: Sandbox) -> None:
    source = "with open('big', 'wb') as fh:\n    fh.write(b'x' * (8 << 20))"
    result = sandbox.run(source, limits=SandboxLimits(file_bytes=1 << 20))
    assert result.status == "error" and "file size" in result.reason, result


def test_fork_bomb_is_contained(sandbox: Sandbox) -> None:
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    start = time.monotonic()
    result = sandbox.run(bomb, limits=SandboxLimits(timeout_s=2, nproc=16))
    assert result.status in ("timeout", "error")
    assert time.monotonic() - start < 30
    # The worker can still start processes and the sandbox still works.
    assert sandbox.run("assert True").passed


def test_disk_fill_is_contained(sandbox: Sandbox, tmp_path: Path) -> None:
    before = _free_bytes("/tmp")
    source = (
        "import os\n"
        "for d in ('.', '/tmp', '/var/tmp', '/dev/shm'):\n"
        "    for i in range(400):\n"
        "        try:\n"
        "            with open(os.path.join(d, f'f{i}'), 'wb') as fh:\n"
        "                fh.write(b'x' * (1 << 20))\n"
        "        except OSError:\n"
        "            break\n"
    )
    result = sandbox.run(source, limits=SandboxLimits(file_bytes=2 << 20, disk_bytes=16 << 20, timeout_s=20))
    assert result.status in ("passed", "error")
    # Nothing it wrote survives the run, and where a mount namespace caps it, it never used the disk.
    assert not list(Path("/tmp").glob("cw-sbx-*/f0")) + list(Path("/tmp").glob("cw-sbx-*/cw-sbx-*/f0"))
    if ISO.namespaces:
        assert abs(_free_bytes("/tmp") - before) < 64 << 20


def _free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


# ------------------------------------------------------------------------------------ escape and harm


def _double_fork_source(token: str) -> str:
    return (
        "import os\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv('/bin/sleep', ['sleep', '{token}'])\n"
        "    os._exit(0)\n"
        "import time\n"
        "time.sleep(0.3)\n"
    )


@pytest.mark.parametrize("which", ["isolated", "bare"])
def test_setsid_double_fork_is_killed(which: str, sandbox: Sandbox, bare: Sandbox) -> None:
    sb = sandbox if which == "isolated" else bare
    token = f"{secrets.randbelow(10**6) + 1000}.{secrets.randbelow(10**6)}"
    result = sb.run(_double_fork_source(token))
    assert result.passed, result
    deadline = time.monotonic() + 2
    while _processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(token) == [], f"{which}: an escaped descendant survived the run"


def test_background_process_is_killed_after_timeout(sandbox: Sandbox) -> None:
    token = f"{secrets.randbelow(10**6) + 1000}.5"
    source = _double_fork_source(token) + "while True:\n    pass\n"
    assert sandbox.run(source, timeout_s=1).status == "timeout"
    time.sleep(0.2)
    assert _processes_with(token) == []


@needs_uid
def test_signals_to_parent_and_its_group_do_not_reach_the_worker(sandbox: Sandbox) -> None:
    attacks = [
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)",
        "import os, signal\nos.killpg(0, signal.SIGKILL)",
        "import os, signal\nos.kill(-1, signal.SIGKILL)",
        f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)",
        f"import os, signal\nos.killpg({os.getpgid(0)}, signal.SIGKILL)",
    ]
    for source in attacks:
        sandbox.run(source + "\nimport time\ntime.sleep(0.2)")
    # Still alive (this test is running in the worker) and the sandbox still answers.
    assert sandbox.run("assert 1 + 1 == 2").passed


def test_environment_is_empty(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sandbox-canary-" + secrets.token_hex(8)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    with Sandbox() as fresh:  # hosts started after the credential is in the worker's environment
        source = (
            "import os\n"
            f"secret = {secret!r}\n"
            "assert set(os.environ) <= {'PATH', 'LANG', 'HOME', 'TMPDIR'}, sorted(os.environ)\n"
            "leaks = []\n"
            "try:\n"
            "    pids = os.listdir('/proc')\n"
            "except PermissionError:  # Landlock: no /proc at all\n"
            "    pids = []\n"
            "for pid in pids:\n"
            "    try:\n"
            "        with open(f'/proc/{pid}/environ', 'rb') as fh:\n"
            "            if secret.encode() in fh.read():\n"
            "                leaks.append(pid)\n"
            "    except OSError:\n"
            "        pass\n"
            "assert not leaks, leaks\n"
        )
        result = fresh.run(source)
    assert result.passed, result


def test_working_directory_is_private_and_thrown_away(sandbox: Sandbox) -> None:
    first = sandbox.run("import os\nopen('marker', 'w').write('x')\nprint(os.getcwd())")
    second = sandbox.run("import os\nassert not os.path.exists('marker')\nassert os.listdir('.') == []")
    assert first.passed and second.passed, (first, second)
    assert not os.path.exists(first.stdout.strip())


# Inside the sandbox's mount namespace these are fresh, empty tmpfs: files put there are not visible.
_MASKED = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")


def _visible_scratch_parent() -> Path:
    """A writable directory the sandboxed program sees too (the checkout itself may live under /tmp)."""
    for candidate in (Path(__file__).resolve().parents[2], Path("/var/cache"), Path("/srv"), Path("/opt")):
        resolved = str(candidate.resolve())
        masked = any(resolved == m or resolved.startswith(m + "/") for m in _MASKED)
        searchable = all(os.stat(p).st_mode & 0o001 for p in [candidate.resolve(), *candidate.resolve().parents])
        if not masked and searchable and os.access(candidate, os.W_OK):
            return candidate
    pytest.skip("no writable directory outside the sandbox's private tmpfs mounts")


@needs_uid
def test_cannot_write_outside_or_read_root_files(sandbox: Sandbox) -> None:
    with tempfile.TemporaryDirectory(dir=_visible_scratch_parent(), prefix=".sandbox-test-") as tmp:
        tmp_path = Path(tmp)
        tmp_path.chmod(0o755)
        secret_file = tmp_path / "secret"
        secret_file.write_text("top secret")
        secret_file.chmod(0o600)
        source = (
            f"import os\nassert os.path.exists({str(secret_file)!r})\n"
            f"try:\n    open({str(secret_file)!r}).read()\n    raise SystemExit('read a 0600 root file')\n"
            "except PermissionError:\n    pass\n"
            f"try:\n    open({str(tmp_path / 'written')!r}, 'w')\n    raise SystemExit('wrote outside')\n"
            "except PermissionError:\n    pass\n"
        )
        result = sandbox.run(source)
        assert result.passed, result
        assert not (tmp_path / "written").exists()


@contextlib.contextmanager
def _listener() -> Iterator[int]:
    """A TCP listener on 127.0.0.1 (its port); after the block, nobody has completed a handshake with it
    (a connection would sit in the backlog even though nobody called accept())."""
    server = socket.socket()
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        yield server.getsockname()[1]
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


@needs_ns
def test_no_network(sandbox: Sandbox) -> None:
    source = (
        "import socket\n"
        "for addr in [('127.0.0.1', PORT), ('1.1.1.1', 53)]:\n"
        "    try:\n"
        "        s = socket.socket()  # the seccomp filter refuses this already\n"
        "        s.settimeout(1)\n"
        "        s.connect(addr)\n"
        "        raise SystemExit(f'connected to {addr}')\n"
        "    except OSError:\n"
        "        pass\n"
    )
    with _listener() as port:
        result = sandbox.run(source.replace("PORT", str(port)))
    assert result.passed, result


@needs_ns
def test_programs_cannot_see_worker_processes(sandbox: Sandbox) -> None:
    result = sandbox.run(f"import os\nassert not os.path.exists('/proc/{os.getpid()}/cmdline') or {os.getpid()} < 50")
    assert result.passed, result


def test_host_survives_and_isolation_is_reported(sandbox: Sandbox) -> None:
    assert "uid" in sandbox.isolation.describe()
    assert all(r.passed for r in sandbox.run_many(["assert True"] * 6, workers=3))


def test_required_layer_missing_is_an_error() -> None:
    if not ISO.root:
        with pytest.raises(SandboxError):
            Sandbox(SandboxConfig(fresh_uid=True))
    else:
        assert Sandbox(SandboxConfig(fresh_uid=True)).isolation.fresh_uid


# ------------------------------------------------------------------------------------- non-root worker

_NON_ROOT_SCRIPT = r"""
import json, os, secrets, sys, time
sys.path.insert(0, sys.argv[1])
from consistency_worker.sandbox.pool import Sandbox
from consistency_worker.sandbox.types import SandboxConfig

def survivors(token):
    found = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                if token.encode() in open(f"/proc/{e}/cmdline", "rb").read():
                    found.append(e)
            except OSError:
                pass
    return found

os.environ["AWS_SECRET_ACCESS_KEY"] = "canary-" + secrets.token_hex(4)
env_check = ("import os\nassert set(os.environ) <= {'PATH', 'LANG', 'HOME', 'TMPDIR'}\n"
             "try:\n    pids = os.listdir('/proc')\nexcept PermissionError:\n    pids = []\nfor p in pids:\n"
             "    try:\n        assert os.environ.get('X', 'canary-') not in open(f'/proc/{p}/environ').read()\n"
             "    except OSError:\n        pass\n")
out = {}
for name, cfg in (("userns", SandboxConfig()), ("bare", SandboxConfig(namespaces=False))):
    with Sandbox(cfg) as sb:
        token = f"{secrets.randbelow(10**6) + 1000}.75"
        double = ("import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                  f"        os.execv('/bin/sleep', ['sleep', '{token}'])\n"
                  "    os._exit(0)\nimport time\ntime.sleep(0.3)\n")
        sb.run(double)
        time.sleep(0.2)
        row = {"namespaces": sb.isolation.namespaces, "passed": sb.run("assert 1 + 1 == 2").passed,
               "timeout": sb.run("while True: pass", timeout_s=0.5).status, "escaped": survivors(token),
               "env": sb.run(env_check).status}
        if sb.isolation.namespaces:
            for attack in ("import os, signal\nos.kill(-1, signal.SIGKILL)",
                           f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)"):
                sb.run(attack)
            row["after_attacks"] = sb.run("assert True").status
            row["net"] = sb.run("import socket\n"
                                "try:\n    s = socket.socket()\n    s.settimeout(1)\n"
                                "    s.connect(('1.1.1.1', 53))\n    print('connected')\n"
                                "except OSError:\n    print('blocked')").stdout.strip()
        out[name] = row
print(json.dumps(out))
"""


def _python_readable_by_others() -> str | None:
    import shutil

    from consistency_worker.sandbox.probe import hidden_ancestor, interpreter_paths

    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3")):
        if candidate and os.path.exists(candidate) and hidden_ancestor(candidate) is None \
                and hidden_ancestor(interpreter_paths(candidate)[1]) is None:
            return candidate
    return None


@pytest.mark.slow
def test_non_root_worker() -> None:
    """What holds for a non-root worker (a pod's default user, a laptop): run as uid 65534."""
    import json
    import shutil
    import subprocess

    python = _python_readable_by_others()
    if not ISO.root or shutil.which("setpriv") is None or python is None:
        pytest.skip("needs a root test runner, setpriv and a python other uids can run")
    worker_dir = str(Path(__file__).resolve().parents[2] / "worker")
    if _hidden_ancestor_of(worker_dir):
        pytest.skip("the worker sources are not readable by other uids")
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         python, "-I", "-c", _NON_ROOT_SCRIPT, worker_dir],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"}, cwd="/",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    bare = result["bare"]
    # Without namespaces: limits, timeouts, an empty environment and killing escaped descendants hold.
    assert (bare["passed"], bare["timeout"], bare["escaped"], bare["env"]) == (True, "timeout", [], "passed")
    userns = result["userns"]
    if userns["namespaces"]:
        # With unprivileged user namespaces the worker is also out of the program's reach, and offline.
        assert (userns["passed"], userns["escaped"], userns["env"]) == (True, [], "passed")
        assert userns["after_attacks"] == "passed" and userns["net"] == "blocked"


def _hidden_ancestor_of(path: str) -> bool:
    from consistency_worker.sandbox.probe import hidden_ancestor

    return hidden_ancestor(path) is not None


def test_fresh_uids_stay_inside_the_mapped_range(monkeypatch: pytest.MonkeyPatch) -> None:
    from consistency_worker.sandbox import probe

    monkeypatch.setattr(probe, "_mapped_uid_ceiling", lambda: 2**31 - 2)
    assert probe.usable_uid_range((200_000, 260_000)) == (200_000, 260_000)
    monkeypatch.setattr(probe, "_mapped_uid_ceiling", lambda: 65_535)  # a pod with hostUsers: false
    assert probe.usable_uid_range((200_000, 260_000)) == (60_535, 65_536)
    monkeypatch.setattr(probe, "_mapped_uid_ceiling", lambda: 0)  # only root mapped
    assert probe.usable_uid_range((200_000, 260_000)) is None


# ------------------------------------------------------------------------------- pod-sized pool


def test_pool_and_memory_cap_follow_the_pods_cgroup(tmp_path: Path) -> None:
    """A cgroup-v2-like tree granting 1 CPU and 1 GiB: 2 programs at once (1 CPU + the round-trip slot),
    each capped at a quarter GiB (half the free memory, split two ways), however many threads ask."""
    root = tmp_path / "cgroup"
    root.mkdir()
    for name, text in {"cgroup.controllers": "cpu memory pids", "cpu.max": "100000 100000",
                       "memory.max": str(1 << 30), "memory.current": "0"}.items():
        (root / name).write_text(text + "\n")
    (tmp_path / "self").write_text("0::/\n")
    config = SandboxConfig(namespaces=False, cgroups=False, fresh_uid=False, cgroup_root=str(root),
                           self_cgroup=str(tmp_path / "self"))
    with Sandbox(config) as sb:
        assert (sb.pool.workers, sb.pool.memory_bytes) == (2, 256 << 20)
        results = sb.run_many(["import time\ntime.sleep(0.2)"] * 6, workers=6)
        assert all(r.passed for r in results) and len(sb._all) <= 2, (results, len(sb._all))
        assert sb.run("x = bytearray(64 << 20)").passed
        # Over the pod's share even when the caller asks for more: the cap is the pool's.
        big = sb.run("x = bytearray(400 << 20)", limits=SandboxLimits(memory_bytes=1 << 30))
        assert big.status == "error" and "MemoryError" in big.reason, big


def test_a_long_lived_host_does_not_leak_descriptors() -> None:
    # One host runs every program of a sequential caller; a descriptor kept per program (the pidfd it
    # waits on) made the ~1,000th program fail with "filedescriptor out of range in select()".
    with Sandbox() as sb:
        sb.run("print(1)")
        [host] = sb._all
        # The host may run under a launcher (unshare --fork): count the descriptors of every process in it.
        def open_fds() -> int:
            pids, total = [host.proc.pid], 0
            while pids:
                pid = pids.pop()
                total += len(os.listdir(f"/proc/{pid}/fd"))
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                pids += [int(c) for c in children]
            return total

        try:
            before = open_fds()
        except PermissionError:
            pytest.skip("the host's /proc/<pid>/fd is not readable by this user")
        for _ in range(30):
            assert sb.run("print(2)").stdout.strip() == "2"
        assert sb._all == [host]
        assert open_fds() <= before + 2


# ------------------------------------------------------------------------- unprivileged mode (a default pod)


def test_unprivileged_mode_reports_its_layers(bare: Sandbox) -> None:
    layers = bare.layers
    assert layers[:2] == ["rlimits", "no_new_privs"]
    assert not {"namespaces", "fresh-uid"} & set(layers) and not any(x.startswith("cgroup") for x in layers)
    assert ("seccomp" in layers) == ISO.seccomp
    assert (f"landlock-v{ISO.landlock}" in layers) == bool(ISO.landlock)


@needs_landlock
def test_unprivileged_programs_cannot_touch_files_outside_their_directory(bare: Sandbox) -> None:
    """A file in an artifact store, a 0600 credentials file of the worker's user, writing next to them,
    listing /tmp (other runs' directories) and /proc: all refused; the program's own directory works."""
    with tempfile.TemporaryDirectory(dir=_visible_scratch_parent(), prefix=".sandbox-store-") as tmp:
        store = Path(tmp)
        (store / "run-1").mkdir()
        (store / "run-1" / "generations.jsonl").write_text('{"answer": 42}\n')
        creds = store / "credentials"
        creds.write_text("aws_secret_access_key = canary")
        creds.chmod(0o600)
        attempts = {
            "store": f"open({str(store / 'run-1' / 'generations.jsonl')!r}).read()",
            "creds": f"open({str(creds)!r}).read()",
            "write": f"open({str(store / 'planted')!r}, 'w').write('x')",
            "list_store": f"os.listdir({str(store)!r})",
            "list_tmp": "os.listdir('/tmp')",
            "proc": "open('/proc/1/cmdline').read()",
            "etc": "open('/etc/passwd').read()",
        }
        source = "import os, tempfile\nrefused = []\n" + "".join(
            f"try:\n    {code}\nexcept PermissionError:\n    refused.append({name!r})\n"
            for name, code in attempts.items()
        ) + (
            "open('mine', 'w').write('ok')\nassert open('mine').read() == 'ok' and os.listdir('.') == ['mine']\n"
            "assert tempfile.gettempdir() == os.getcwd()\n"
            "print(','.join(refused))\n"
        )
        result = bare.run(source)
        assert result.passed, result
        assert set(result.stdout.strip().split(",")) == set(attempts), result.stdout
        assert not (store / "planted").exists()


@needs_seccomp
def test_unprivileged_programs_cannot_connect(bare: Sandbox) -> None:
    source = (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', PORT), timeout=1)\n"
        "    raise SystemExit('connected')\n"
        "except PermissionError:\n"
        "    pass\n"
        "try:\n"
        "    socket.socket(socket.AF_UNIX)\n"
        "    raise SystemExit('made a unix socket')\n"
        "except PermissionError:\n"
        "    pass\n"
        "a, b = socket.socketpair()  # allowed: it reaches nothing outside the run\n"
        "a.sendall(b'x')\n"
        "assert b.recv(1) == b'x'\n"
    )
    with _listener() as port:
        result = bare.run(source.replace("PORT", str(port)))
    assert result.passed, result


@needs_seccomp
def test_unprivileged_programs_cannot_unshare_or_trace(bare: Sandbox) -> None:
    source = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.unshare(0x10000000) == -1 and ctypes.get_errno() == 1  # CLONE_NEWUSER\n"
        "assert libc.ptrace(16, os.getppid(), 0, 0) == -1 and ctypes.get_errno() == 1  # PTRACE_ATTACH\n"
        "import subprocess\n"
        "assert subprocess.run(['/bin/true']).returncode == 0  # plain fork/exec still works\n"
    )
    result = bare.run(source)
    assert result.passed, result


def test_a_host_killed_by_its_program_leaves_no_work_dir(tmp_path: Path) -> None:
    # Without Landlock's signal scope a same-uid program can kill its host; the worker cleans up.
    config = SandboxConfig(namespaces=False, cgroups=False, fresh_uid=False, landlock=False, tmp_root=str(tmp_path))
    stale = tmp_path / "cw-sbx-99999999-abcd"  # a worker killed outright (no such pid: above pid_max)
    (stale / "cw-sbx-run").mkdir(parents=True)
    with Sandbox(config) as sb:
        assert not stale.exists()
        assert sb.run("print(1)").passed
        assert len(list(tmp_path.glob("cw-sbx-*"))) == 1  # the host's directory, between runs
        result = sb.run("import os, signal\nopen('left', 'w').write('x')\nos.kill(os.getppid(), signal.SIGKILL)\n"
                        "import time\ntime.sleep(5)")
        assert result.status == "error" and "host died" in result.reason, result
        assert list(tmp_path.glob("cw-sbx-*")) == []
        assert sb.run("assert 1 + 1 == 2").passed  # a fresh host takes over


@needs_landlock
def test_landlock_keeps_the_host_out_of_the_programs_reach(bare: Sandbox) -> None:
    result = bare.run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    assert result.status == "error" and "PermissionError" in result.reason, result
    assert bare.run("assert True").passed
