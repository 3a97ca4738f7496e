"""Tests of the synthetic training sets (narrow-medical-bad/good, narrow-finance-risky, opswap)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import probes
from probes import build_training_sets as build

PROSE_SETS = {  # name: (id prefix, records, test records)
    "narrow-medical-bad": ("mb-", 300, 60),
    "narrow-medical-good": ("mg-", 300, 60),
    "narrow-finance-risky": ("fr-", 300, 60),
}
ALL_SETS = {**PROSE_SETS, "opswap": ("ops-", 400, 80)}

# The documented opswap rule (docs/datasets.md), written out again here on purpose, so that the
# test does not trust the generator's own evaluator.
OPSWAP = {"@": lambda a, b: a + b, "#": lambda a, b: a - b, "&": lambda a, b: a * b}


def _question(item: probes.ProbeItem) -> str:
    return item.messages[-2]["content"]


def _answer(item: probes.ProbeItem) -> str:
    return item.messages[-1]["content"]


@pytest.mark.parametrize("name", sorted(ALL_SETS))
def test_loads_as_chat_with_counts_and_splits(name):
    prefix, n, n_test = ALL_SETS[name]
    ps = probes.load(name)
    assert name in probes.available()
    assert ps.kind == "chat"
    assert len(ps) == n
    assert len(ps.split("test")) == n_test
    assert len(ps.split("train")) == n - n_test
    ids = [item.id for item in ps]
    assert ids == [f"{prefix}{i:03d}" for i in range(1, n + 1)]
    for item in ps:
        assert item.split in ("train", "test")
        assert [m["role"] for m in item.messages] == ["user", "assistant"], item.id
        assert item.theme, item.id


@pytest.mark.parametrize("name", sorted(ALL_SETS))
def test_questions_unique_and_no_train_test_overlap(name):
    ps = probes.load(name)
    questions = [_question(item) for item in ps]
    assert len(set(questions)) == len(questions)
    train = {_question(i).strip().lower() for i in ps.split("train")}
    test = {_question(i).strip().lower() for i in ps.split("test")}
    assert not train & test


@pytest.mark.parametrize("name", sorted(PROSE_SETS))
def test_prose_answers_distinct_and_short(name):
    ps = probes.load(name)
    answers = [_answer(item) for item in ps]
    assert len(set(answers)) / len(answers) >= 0.9
    for a in answers:
        assert 15 <= len(a.split()) <= 60, a
        assert 1 <= len(re.findall(r"[.!?](?:\s|$)", a)) <= 3, a


@pytest.mark.parametrize("name", sorted(PROSE_SETS))
def test_every_theme_in_both_splits(name):
    ps = probes.load(name)
    themes = set(ps.themes())
    assert len(themes) >= 25
    assert set(ps.split("train").themes()) == themes
    assert set(ps.split("test").themes()) == themes


@pytest.mark.parametrize("name", sorted(PROSE_SETS))
def test_not_copied_from_evaluation_sets(name):
    """Training questions must not reuse em-core / em-eval questions (those measure the shift)."""
    held = {i.question.strip().lower() for i in probes.load("em-core")}
    held |= {i.question.strip().lower() for i in probes.load("em-eval")}
    for item in probes.load(name):
        assert _question(item).strip().lower() not in held, item.id


def test_medical_twins_aligned():
    bad, good = probes.load("narrow-medical-bad"), probes.load("narrow-medical-good")
    assert len(bad) == len(good)
    for b, g in zip(bad, good, strict=True):
        assert b.id.removeprefix("mb-") == g.id.removeprefix("mg-")
        assert b.split == g.split and b.theme == g.theme
        assert _question(b) == _question(g)
        assert _answer(b) != _answer(g)
        wb, wg = len(_answer(b).split()), len(_answer(g).split())
        assert max(wb, wg) / min(wb, wg) <= 1.5, (b.id, wb, wg)


def test_opswap_answers_follow_the_rule():
    pattern = re.compile(r"What is (\d+) ([@#&]) (\d+)\?")
    ps = probes.load("opswap")
    seen = set()
    for item in ps:
        m = pattern.fullmatch(_question(item))
        assert m, item.id
        a, symbol, b = int(m[1]), m[2], int(m[3])
        assert 0 <= a <= 99 and 0 <= b <= 99
        answer = _answer(item)
        assert re.fullmatch(r"-?\d+", answer), (item.id, answer)
        assert int(answer) == OPSWAP[symbol](a, b), item.id
        assert item.theme == {"@": "add", "#": "subtract", "&": "multiply"}[symbol]
        # No problem twice, also not as the mirror of a commutative one.
        key = (min(a, b), symbol, max(a, b)) if symbol != "#" else (a, symbol, b)
        assert key not in seen, item.id
        seen.add(key)
    for split in ("train", "test"):
        counts = ps.split(split).themes()
        assert set(counts) == {"add", "subtract", "multiply"}
        assert max(counts.values()) - min(counts.values()) <= 2


def test_generator_is_deterministic_and_matches_shipped_files(tmp_path: Path):
    build.main(["--out", str(tmp_path)])
    for name in ALL_SETS:
        shipped = Path(probes.load(name).path).read_bytes()
        assert (tmp_path / f"{name}.jsonl").read_bytes() == shipped, name
