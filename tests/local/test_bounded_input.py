"""`consistency run -f` refuses hostile or careless campaign files fast and with a clear message: YAML
aliases (the "billion laughs" bomb), files over 1 MiB, store URIs with an unknown scheme, names too
long for the Jobs they would name."""

from __future__ import annotations

from pathlib import Path

import pytest
from consistency_local.boundedyaml import MAX_BYTES
from consistency_local.campaign_file import CampaignFileError, load_campaign
from consistency_local.cli import main as cli_main

HEAD = """apiVersion: consistency.dev/v1alpha1
kind: ConsistencyTraining
metadata: {name: %s}
spec:
  model: {uri: hf://org/model}
  store: {uri: %s}
"""


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "campaign.yaml"
    path.write_text(text)
    return path


def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_anything_expands(tmp_path: Path, capsys) -> None:
    path = _file(tmp_path, HEAD % ("bomb", "runs") + "  extra:\n" + "".join(
        "    " + line + "\n" for line in billion_laughs().splitlines()))
    with pytest.raises(CampaignFileError) as err:
        load_campaign(path)
    message = str(err.value)
    assert str(path) in message and "YAML aliases (*a0) are not allowed" in message and "line 9" in message
    assert cli_main(["run", "-f", str(path), "--run-dir", str(tmp_path / "run")]) != 0
    assert "YAML aliases" in capsys.readouterr().err


def test_a_single_alias_is_refused_too(tmp_path: Path) -> None:
    path = _file(tmp_path, HEAD % ("alias", "runs") + "  seed: &s 5\n  budget: {gpuHourUsd: *s}\n")
    with pytest.raises(CampaignFileError, match="YAML aliases"):
        load_campaign(path)


def test_a_file_over_one_mebibyte_is_refused_unread(tmp_path: Path) -> None:
    path = _file(tmp_path, HEAD % ("big", "runs") + "# " + "x" * MAX_BYTES + "\n")
    with pytest.raises(CampaignFileError, match=f"at most {MAX_BYTES} bytes"):
        load_campaign(path)


def test_an_unknown_store_scheme_is_refused_at_validation(tmp_path: Path, capsys) -> None:
    path = _file(tmp_path, HEAD % ("gopher", "gopher://example.org/runs"))
    assert cli_main(["run", "-f", str(path), "--run-dir", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err
    assert "spec.store.uri" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "status.json").exists()


def test_a_name_too_long_for_its_job_names_is_refused(tmp_path: Path) -> None:
    path = _file(tmp_path, HEAD % ("n" * 40, "runs"))
    with pytest.raises(CampaignFileError, match=r"metadata\.name: 40 characters; at most 30"):
        load_campaign(path)


def test_an_ordinary_file_still_loads(tmp_path: Path) -> None:
    campaign = load_campaign(_file(tmp_path, HEAD % ("fine", "runs")))
    assert campaign.name == "fine" and campaign.spec.store.uri == str((tmp_path / "runs").resolve())
