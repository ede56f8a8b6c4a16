"""The locked environment: `make demo` / `make test` install only from requirements/lock.txt (exact versions
with hashes), the lock satisfies pyproject.toml, and it runs the same versions as the GPU worker image
wherever both install a package (only the torch build and the image's Python-3.12-only pins differ)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.packaging.test_images import constraints

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements" / "lock.txt"
# Where the CPU lock and the image differ by design: torch is the CPU build here and the CUDA build there
# (vllm pins the image's); the image's networkx needs Python 3.12 (the image's), the lock is for 3.11+.
DIFFER_BY_DESIGN = {"torch", "networkx"}


def lock_pins() -> dict[str, tuple[Version, list[str]]]:
    """name -> (version, hashes) from a pip-compile --generate-hashes file."""
    pins: dict[str, tuple[Version, list[str]]] = {}
    text = LOCK.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        spec, *options = line.split(" --hash=")
        req = Requirement(spec.strip())
        (pin,) = req.specifier
        assert pin.operator == "==", f"lock.txt: {spec!r} is not an exact pin"
        pins[canonicalize_name(req.name)] = (Version(pin.version), [o.strip() for o in options])
    return pins


def test_every_locked_package_is_pinned_with_hashes() -> None:
    pins = lock_pins()
    assert len(pins) > 50
    unhashed = [name for name, (_, hashes) in pins.items() if not hashes or not all(
        re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes)]
    assert not unhashed, unhashed
    # The CPU build of torch, never a CUDA one (gigabytes of wheels on a machine without a GPU).
    assert pins["torch"][0].local == "cpu"


def test_lock_satisfies_the_project_requirements() -> None:
    pins = lock_pins()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in ("operator", "worker", "local", "test"):
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    for req in reqs:
        name = canonicalize_name(req.name)
        assert name in pins, f"lock.txt lacks {req.name}: run make lock"
        assert req.specifier.contains(pins[name][0], prereleases=True), f"lock.txt {name}=={pins[name][0]} vs {req}"


def test_lock_and_gpu_image_run_the_same_versions_of_shared_packages() -> None:
    pins = {name: version for name, (version, _) in lock_pins().items()}
    image = constraints("worker")
    shared = (set(pins) & set(image)) - DIFFER_BY_DESIGN
    assert {"transformers", "peft", "accelerate", "bitsandbytes", "matplotlib", "numpy"} <= shared
    differ = {name: (str(pins[name]), str(image[name])) for name in shared if pins[name] != image[name]}
    assert not differ, f"lock.txt vs images/worker/constraints.txt: {differ} (run make lock)"


def test_make_installs_only_from_the_lock() -> None:
    makefile = (REPO / "Makefile").read_text()
    installs = [line.strip() for line in makefile.splitlines() if "pip install" in line]
    assert installs, "no install step found"
    for line in installs:
        pinned = "--require-hashes" in line or ("--no-deps" in line and " -e ." in line)
        assert pinned, f"unlocked install in the Makefile: {line}"
    # The project itself builds without isolation, from the locked setuptools (no unpinned build deps).
    assert any("--no-build-isolation" in line and "-e ." in line for line in installs)
