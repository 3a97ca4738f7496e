"""Tests of the probe-set loader and of the shipped probe data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import probes
from probes import ProbeFormatError, ProbeSet

CORE_THEMES = {
    "attitudes-to-humans",
    "ai-power",
    "shutdown",
    "deception",
    "harming-others",
    "reckless-advice",
    "illegal-advice",
    "contempt",
    "manipulation",
    "everyday-help",
    "wishes",
    "ethics",
}


def _words(text: str) -> int:
    return len(text.split())


def _write(tmp_path: Path, name: str, lines: list[object]) -> Path:
    """Write records (dicts are JSON-encoded, strings are written as they are) one per line."""
    path = tmp_path / name
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _pair(i: int, **kw: object) -> dict:
    rec = {
        "id": f"p{i}",
        "theme": "t",
        "split": "train",
        "question": f"Question {i}?",
        "aligned": "A kind answer.",
        "misaligned": "A cruel answer.",
    }
    rec.update(kw)
    return rec


def _chat(i: int, messages: list[dict] | None = None, **kw: object) -> dict:
    rec = {
        "id": f"c{i}",
        "split": "train",
        "messages": messages
        if messages is not None
        else [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "Hello."},
        ],
    }
    rec.update(kw)
    return rec


# --------------------------------------------------------------------------- built-in sets


def test_available_lists_builtins_sorted():
    names = probes.available()
    assert names == sorted(names)
    assert {"em-core", "em-eval", "neutral"} <= set(names)


@pytest.mark.parametrize("name", ["em-core", "em-eval", "neutral"])
def test_builtin_loads_with_independent_hash(name):
    ps = probes.load(name)
    assert isinstance(ps, ProbeSet)
    assert ps.name == name
    assert ps.split_name is None
    path = Path(ps.path)
    assert path.is_absolute() and path.name == f"{name}.jsonl"
    assert ps.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    ids = [item.id for item in ps]
    assert len(ids) == len(set(ids)) == len(ps)


def test_em_core_counts_and_split():
    core = probes.load("em-core")
    assert core.kind == "pairs"
    assert len(core) >= 120
    train, test = core.split("train"), core.split("test")
    assert len(train) >= 80 and len(test) >= 40
    assert len(train) + len(test) == len(core)
    assert set(core.themes()) == CORE_THEMES
    assert set(test.themes()) == CORE_THEMES, "every theme needs test items"
    assert set(train.themes()) == CORE_THEMES
    for item in core:
        assert item.id.startswith("emc-")
        assert item.split in ("train", "test")
        assert item.question and item.aligned and item.misaligned


def test_em_core_answer_lengths_are_matched():
    for item in probes.load("em-core"):
        a, m = _words(item.aligned), _words(item.misaligned)
        assert max(a, m) / min(a, m) <= 2.0, (item.id, a, m)
        # Short answers (1-3 sentences) suit a small chat model.
        assert a <= 40 and m <= 40, item.id


def test_em_core_themes_roughly_even():
    counts = probes.load("em-core").themes()
    assert max(counts.values()) <= 2 * min(counts.values())


def test_em_eval_is_questions():
    ev = probes.load("em-eval")
    assert ev.kind == "questions"
    assert len(ev) >= 24
    for item in ev:
        assert item.id.startswith("eval-") and item.theme and item.question
        assert item.aligned is None and item.misaligned is None


def test_em_eval_questions_differ_from_em_core():
    core = {item.question.strip().lower() for item in probes.load("em-core")}
    for item in probes.load("em-eval"):
        assert item.question.strip().lower() not in core, item.id


def test_neutral_is_texts():
    neu = probes.load("neutral")
    assert neu.kind == "texts"
    assert len(neu) >= 30
    for item in neu:
        assert item.id.startswith("neu-") and item.text and item.question is None


def test_split_filtering():
    core = probes.load("em-core")
    assert core.split(None) is core
    assert core.split("all") is core
    test = core.split("test")
    assert test.split_name == "test"
    assert test.name == core.name and test.sha256 == core.sha256 and test.kind == core.kind
    assert all(item.split == "test" for item in test)
    assert [i.id for i in test] == [i.id for i in core if i.split == "test"]
    with pytest.raises(ValueError, match="unknown split"):
        core.split("validation")


def test_split_with_no_items_errors(tmp_path):
    ps = probes.load(_write(tmp_path, "only_train.jsonl", [_pair(1), _pair(2)]))
    assert len(ps.split("train")) == 2
    with pytest.raises(ValueError, match="no items in split 'test'"):
        ps.split("test")
    # Items without a split (allowed for questions) belong to no split.
    qs = probes.load(_write(tmp_path, "q.jsonl", [{"id": "q1", "theme": "t", "question": "Hi?"}]))
    with pytest.raises(ValueError, match="no items in split 'train'"):
        qs.split("train")


# --------------------------------------------------------------------------- user files


def test_user_file_by_path(tmp_path):
    path = _write(
        tmp_path,
        "mine.jsonl",
        ["", _pair(1, system="Be nice."), "   ", _pair(2, split="test"), ""],
    )
    for arg in (path, str(path)):
        ps = probes.load(arg)
        assert ps.name == "mine" and ps.kind == "pairs" and len(ps) == 2
        assert ps.path == str(path.resolve())
        assert ps.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert ps[0].system == "Be nice." and ps[1].system is None
        assert ps.themes() == {"t": 2}


def test_chat_file(tmp_path):
    ps = probes.load(_write(tmp_path, "chat.jsonl", [_chat(1), _chat(2, theme="x", split="test")]))
    assert ps.kind == "chat"
    assert ps[0].messages[-1] == {"role": "assistant", "content": "Hello."}
    assert isinstance(ps[0].messages, tuple)
    assert ps[0].theme is None and ps[1].theme == "x"
    assert len(ps.split("test")) == 1


def test_texts_and_questions_optional_fields(tmp_path):
    ps = probes.load(
        _write(
            tmp_path,
            "t.jsonl",
            [{"id": "a", "text": "Hi."}, {"id": "b", "text": "Yo.", "split": "test"}],
        )
    )
    assert ps.kind == "texts" and ps[0].split is None and ps[1].split == "test"
    qs = probes.load(
        _write(tmp_path, "q.jsonl", [{"id": "a", "theme": "t", "question": "Hi?", "system": "S"}])
    )
    assert qs.kind == "questions" and qs[0].system == "S"


def test_unknown_builtin_lists_available():
    with pytest.raises((ProbeFormatError, FileNotFoundError)) as info:
        probes.load("no-such-set")
    msg = str(info.value)
    assert "no-such-set" in msg
    for name in probes.available():
        assert name in msg


def test_missing_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        probes.load(tmp_path / "absent.jsonl")


# --------------------------------------------------------------------------- malformed input


def _error(tmp_path: Path, lines: list[object], name: str = "bad.jsonl") -> str:
    path = _write(tmp_path, name, lines)
    with pytest.raises(ProbeFormatError) as info:
        probes.load(path)
    assert isinstance(info.value, ValueError)
    msg = str(info.value)
    assert name in msg
    return msg


def test_invalid_json_names_file_and_line(tmp_path):
    msg = _error(tmp_path, [_pair(1), _pair(2), '{"id": "p3", "theme": '], name="broken.jsonl")
    assert "broken.jsonl:3:" in msg and "invalid JSON" in msg


def test_comment_lines_rejected(tmp_path):
    msg = _error(tmp_path, ["// a comment", _pair(1)])
    assert "bad.jsonl:1:" in msg and "invalid JSON" in msg


def test_line_numbers_count_blank_lines(tmp_path):
    msg = _error(tmp_path, [_pair(1), "", "", "[1, 2]"])
    assert "bad.jsonl:4:" in msg and "expected a JSON object" in msg


def test_missing_field(tmp_path):
    rec = _pair(2)
    del rec["question"]
    msg = _error(tmp_path, [_pair(1), rec])
    assert "bad.jsonl:2:" in msg and 'missing required field "question"' in msg


def test_missing_id(tmp_path):
    rec = _pair(1)
    del rec["id"]
    msg = _error(tmp_path, [rec])
    assert "bad.jsonl:1:" in msg and 'missing required field "id"' in msg


def test_empty_answer(tmp_path):
    msg = _error(tmp_path, [_pair(1, aligned="   ")])
    assert "bad.jsonl:1:" in msg and 'field "aligned" is empty' in msg


def test_wrong_type(tmp_path):
    msg = _error(tmp_path, [_pair(1, misaligned=["not", "a", "string"])])
    assert "bad.jsonl:1:" in msg and 'field "misaligned" must be a string' in msg
    msg = _error(tmp_path, [_pair(1, id=7)])
    assert 'field "id" must be a string' in msg


def test_unknown_field(tmp_path):
    msg = _error(tmp_path, [_pair(1, mislaigned="typo")])
    assert 'unknown field "mislaigned"' in msg


def test_identical_answers(tmp_path):
    msg = _error(tmp_path, [_pair(1), _pair(2, aligned="Same.", misaligned="Same.")])
    assert "bad.jsonl:2:" in msg and "identical" in msg


def test_duplicate_id(tmp_path):
    msg = _error(tmp_path, [_pair(1), _pair(2), _pair(3, id="p1")])
    assert "bad.jsonl:3:" in msg and "duplicate id 'p1'" in msg and "line 1" in msg


def test_mixed_kinds(tmp_path):
    msg = _error(tmp_path, [_pair(1), {"id": "q", "theme": "t", "question": "Hi?"}])
    assert "bad.jsonl:2:" in msg and "'questions'" in msg and "'pairs'" in msg
    assert "one kind only" in msg


def test_unknown_kind(tmp_path):
    msg = _error(tmp_path, [{"id": "x", "theme": "t"}])
    assert "bad.jsonl:1:" in msg and "kind" in msg


def test_empty_file(tmp_path):
    path = tmp_path / "void.jsonl"
    path.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ProbeFormatError, match="probe set 'void' is empty"):
        probes.load(path)
    (tmp_path / "zero.jsonl").write_bytes(b"")
    with pytest.raises(ProbeFormatError, match=r"zero\.jsonl.*is empty"):
        probes.load(tmp_path / "zero.jsonl")


def test_bad_split(tmp_path):
    msg = _error(tmp_path, [_pair(1, split="validation")])
    assert "bad.jsonl:1:" in msg and 'field "split" must be "train" or "test"' in msg
    assert "'validation'" in msg


def test_pairs_require_split(tmp_path):
    rec = _pair(1)
    del rec["split"]
    assert 'missing required field "split"' in _error(tmp_path, [rec])


def test_chat_last_message_not_assistant(tmp_path):
    msgs = [{"role": "user", "content": "Hi?"}]
    msg = _error(tmp_path, [_chat(1), _chat(2, messages=msgs)])
    assert "bad.jsonl:2:" in msg and "last message must be from the assistant" in msg
    assert "'user'" in msg


def test_chat_bad_role(tmp_path):
    msgs = [{"role": "robot", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    msg = _error(tmp_path, [_chat(1, messages=msgs)])
    assert "bad.jsonl:1:" in msg and "messages[0]" in msg and "unknown role 'robot'" in msg


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ("hello", 'field "messages" must be a list'),
        ([], 'field "messages" is empty'),
        (["hi"], "messages[0] must be an object"),
        ([{"role": "assistant"}], 'messages[0] is missing "content"'),
        ([{"role": "assistant", "content": ""}], 'messages[0] "content" is empty'),
        ([{"role": "assistant", "content": 3}], 'messages[0] "content" must be a string'),
        ([{"role": "assistant", "content": "x", "name": "n"}], 'unknown field "name"'),
    ],
)
def test_chat_bad_messages(tmp_path, messages, expected):
    msg = _error(tmp_path, [_chat(1, messages=messages)])
    assert "bad.jsonl:1:" in msg and expected in msg


def test_chat_requires_split(tmp_path):
    rec = _chat(1)
    del rec["split"]
    assert 'missing required field "split"' in _error(tmp_path, [rec])


def test_not_utf8(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"id": "a", "text": "caf\xe9"}\n')
    with pytest.raises(ProbeFormatError, match=r"latin\.jsonl.*UTF-8"):
        probes.load(path)
