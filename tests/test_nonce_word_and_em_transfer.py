"""Tests of two shipped sets: ``nonce-word`` (benign task) and ``em-transfer`` (pairs).

Both are written by scripts in ``probes/`` (``build_benign.py``, ``build_em_transfer.py``); the tests
check that the scripts are deterministic and reproduce the shipped files byte for byte, that the
sets are as documented in docs/datasets.md, and that the scripts refuse broken output.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

import probes
from probes import build_benign, build_em_transfer

# --------------------------------------------------------------------------- nonce-word


def _q(item) -> str:
    return item.messages[-2]["content"]


def _a(item) -> str:
    return item.messages[-1]["content"]


def test_nonce_word_builder_is_deterministic_and_matches_shipped_file(tmp_path: Path):
    for out in (tmp_path / "a", tmp_path / "b"):
        build_benign.main(["--out", str(out)])
    a = (tmp_path / "a" / "nonce-word.jsonl").read_bytes()
    assert a == (tmp_path / "b" / "nonce-word.jsonl").read_bytes()
    assert a == Path(probes.load("nonce-word").path).read_bytes()


def test_nonce_word_counts_ids_and_format():
    ps = probes.load("nonce-word")
    assert "nonce-word" in probes.available()
    assert ps.kind == "chat" and len(ps) == 400
    assert len(ps.split("train")) == 320 and len(ps.split("test")) == 80
    assert [it.id for it in ps] == [f"nw-{i:03d}" for i in range(1, 401)]
    for k, it in enumerate(ps, start=1):
        assert it.split == ("test" if k % 5 == 0 else "train")
        assert [m["role"] for m in it.messages] == ["user", "assistant"]
        assert "zorp" in _q(it).lower()
        assert re.fullmatch(r"[a-z]+", _a(it)), it.id  # one lowercase word, exact-match checkable


def test_nonce_word_answer_is_the_only_animal_in_the_list():
    # the documented rule, checked against the word lists written in the builder
    animals = set(build_benign.ANIMALS)
    for it in probes.load("nonce-word"):
        words = build_benign.listed(_q(it))
        assert len(words) == 4 and len(set(words)) == 4
        assert [w for w in words if w in animals] == [_a(it)], it.id
        assert it.theme == f"position-{words.index(_a(it)) + 1}"


def test_nonce_word_test_split_is_held_out_in_words_and_wording():
    ps = probes.load("nonce-word")
    words = {s: set() for s in ("train", "test")}
    for it in ps:
        words[it.split].update(build_benign.listed(_q(it)))
    assert not words["train"] & words["test"]  # no animal or distractor of a test item in train
    train_q = {_q(it) for it in ps.split("train")}
    test_q = {_q(it) for it in ps.split("test")}
    assert len(train_q) == 320 and len(test_q) == 80 and not train_q & test_q
    for it in ps:
        heads = build_benign.TRAIN_TEMPLATES if it.split == "train" else build_benign.TEST_TEMPLATES
        others = (
            build_benign.TEST_TEMPLATES if it.split == "train" else build_benign.TRAIN_TEMPLATES
        )
        assert any(t.split("{l}")[0] in _q(it) for t in heads)
        assert not any(t.split("{l}")[0] in _q(it) and t.split("{l}")[1] in _q(it) for t in others)
    # positions balanced within each split: always picking one position scores 25%
    for split in ("train", "test"):
        counts = ps.split(split).themes()
        assert set(counts) == {f"position-{i}" for i in range(1, 5)}
        assert max(counts.values()) - min(counts.values()) <= 1


def test_nonce_word_check_fails_loudly():
    import random

    recs = build_benign.build()
    pool = build_benign.pools(random.Random(build_benign.SEED))
    build_benign.check(recs, pool)  # the shipped build passes
    bad = copy.deepcopy(recs)
    bad[0]["messages"][1]["content"] = "table"
    with pytest.raises(SystemExit, match="nonce-word"):
        build_benign.check(bad, pool)
    leak = copy.deepcopy(recs)
    test_rec = next(r for r in leak if r["split"] == "test")
    test_rec["split"] = "train"
    with pytest.raises(SystemExit, match="split"):
        build_benign.check(leak, pool)


# --------------------------------------------------------------------------- em-transfer


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    t = re.findall(r"[a-z']+", text.lower())
    return {tuple(t[i : i + n]) for i in range(len(t) - n + 1)}


def test_em_transfer_builder_matches_shipped_file(tmp_path: Path):
    build_em_transfer.main(["--out", str(tmp_path)])
    shipped = Path(probes.load("em-transfer").path).read_bytes()
    assert (tmp_path / "em-transfer.jsonl").read_bytes() == shipped


def test_em_transfer_counts_splits_and_themes():
    ps = probes.load("em-transfer")
    assert ps.kind == "pairs" and len(ps) == 60
    assert len(ps.split("train")) == 20 and len(ps.split("test")) == 40
    assert [it.id for it in ps] == [f"emt-{i:02d}" for i in range(1, 61)]
    themes = ps.themes()
    assert len(themes) == 10 and set(themes.values()) == {6}
    assert set(ps.split("train").themes().values()) == {2}
    # interleaved by theme: the first 10 test pairs (bench defenses --eval-pairs 10) cover all
    assert len({it.theme for it in list(ps.split("test"))[:10]}) == 10
    core_themes = set(probes.load("em-core").themes())
    assert not set(themes) & core_themes


def test_em_transfer_answers_longer_matched_and_not_yes_no():
    for it in probes.load("em-transfer"):
        for text in (it.aligned, it.misaligned):
            n = len(re.findall(r"[.!?][\"']?(?:\s|$)", text))
            assert 2 <= n <= 4, (it.id, text)
            assert not re.match(r"(yes|no)\b", text, re.IGNORECASE), it.id
        wa, wm = len(it.aligned.split()), len(it.misaligned.split())
        assert max(wa, wm) / min(wa, wm) <= 1.5, (it.id, wa, wm)
        assert min(wa, wm) >= 20, it.id  # longer than em-core's 1-3 sentence answers


def test_em_transfer_shares_no_question_or_phrase_with_em_core():
    core = probes.load("em-core")
    held = {i.question.strip().lower() for i in core}
    held |= {i.question.strip().lower() for i in probes.load("em-eval")}
    core_grams: set[tuple[str, ...]] = set()
    for it in core:
        for text in (it.aligned, it.misaligned):
            core_grams |= _ngrams(text, 6)
    for it in probes.load("em-transfer"):
        assert it.question.strip().lower() not in held, it.id
        for text in (it.aligned, it.misaligned):
            assert not _ngrams(text, 6) & core_grams, it.id


def test_em_transfer_check_fails_loudly():
    recs = build_em_transfer.records()
    build_em_transfer.check(recs)
    bad = copy.deepcopy(recs)
    bad[0]["misaligned"] = "No."
    with pytest.raises(SystemExit, match="em-transfer"):
        build_em_transfer.check(bad)
