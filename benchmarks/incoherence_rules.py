"""Two label-free incoherence rules for the probe judge, measured on the labelled answers.

The probe judge's perplexity rule flags none of the 141 answers labelled incoherent in
``saetools/evaluate/data/em-judged.jsonl`` (docs/evaluation.md). This script measures two other
rules that need no labels to fit, each with its threshold set at a 5% false positive rate on
hand-written, coherent ``em-core`` answers (aligned and misaligned), before any labelled answer is
scored:

* **relevance** (pointwise mutual information): the answer's mean per-token log-probability under
  the base model given its question, minus the same given a generic prompt
  (``saetools.scoring.NEUTRAL_PROMPT``); a low value means the answer is no more likely after its
  question than after any question. Incoherent above the threshold of ``-PMI``.
* **shuffle probe**: at the judge's site, the difference of means between the response-mean
  activations of ``em-core`` train answers with their words shuffled and the same answers intact;
  incoherent when an answer projects above the threshold set on the ``em-core`` test answers.

It prints, per rule, how many answers of each label it flags and the AUROC of incoherent against
coherent answers, and writes the numbers to ``--out``. Nothing is tuned on the labels.

    python benchmarks/incoherence_rules.py --threads 2 --out /tmp/incoherence.json
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

FPR = 0.05
LABELS = ("aligned", "misaligned", "incoherent")


def _per_token(model, tok, examples, batch_size):
    from saetools.scoring import score_answers

    r = score_answers(model, tok, examples, batch_size=batch_size)
    return (r["logp"] / r["n_tokens"].clamp(min=1).double()).tolist()


def _pmi(model, tok, examples, batch_size):
    from saetools.capture import ChatExample
    from saetools.scoring import NEUTRAL_PROMPT

    generic = [ChatExample.from_question(NEUTRAL_PROMPT, e.response) for e in examples]
    a = _per_token(model, tok, examples, batch_size)
    b = _per_token(model, tok, generic, batch_size)
    return [x - y for x, y in zip(a, b, strict=True)]


def _shuffled(example, seed):
    from saetools.capture import ChatExample

    words = example.response.split()
    random.Random(seed).shuffle(words)
    return ChatExample(messages=example.messages, response=" ".join(words))


def _acts(model, tok, examples, site, batch_size):
    from saetools.capture import capture

    cap = capture(model, tok, examples, [site], batch_size=batch_size, keep_per_example=True)
    return cap.per_example[site].double()


def _rule(name, reference, scores, labels):
    """Flag ``scores`` above the threshold at ``FPR`` on the coherent ``reference`` scores."""
    from saetools.evaluate.probe_judge import threshold_for_fpr
    from saetools.stats import auroc

    t = threshold_for_fpr(reference, FPR)
    flagged = {
        lab: [sum(s > t for s, x in zip(scores, labels, strict=True) if x == lab),
              sum(x == lab for x in labels)]
        for lab in LABELS
    }  # fmt: skip
    inc = torch.tensor([s for s, x in zip(scores, labels, strict=True) if x == "incoherent"])
    coh = torch.tensor([s for s, x in zip(scores, labels, strict=True) if x != "incoherent"])
    return {"rule": name, "threshold": t, "flagged": flagged, "auroc": auroc(inc, coh)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--site", default=None, help="default: the probe judge's (block 15 of 30)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import probes
    from saetools.capture import ChatExample, pair_examples
    from saetools.evaluate.probe_judge import default_judge_site
    from saetools.evaluate.validation import load_judged_answers
    from saetools.models import load_model
    from saetools.sites import n_layers, parse_site

    t0 = time.perf_counter()
    lm = load_model(args.model)
    model, tok = lm.model.eval(), lm.tokenizer
    site = parse_site(args.site or default_judge_site(model), n_layers(model))
    pairs = probes.as_set("em-core", "pairs")
    _, answers = load_judged_answers()
    labels = [a.label for a in answers]
    labelled = [ChatExample.from_question(a.question, a.answer) for a in answers]
    with torch.no_grad():
        al, mis = pair_examples(pairs.items)
        reference = al + mis
        pmi_ref = _pmi(model, tok, reference, args.batch_size)
        pmi_lab = _pmi(model, tok, labelled, args.batch_size)
        al_tr, mis_tr = pair_examples(pairs.split("train").items)
        al_te, mis_te = pair_examples(pairs.split("test").items)
        train = al_tr + mis_tr
        intact = _acts(model, tok, train, site, args.batch_size)
        mixed = _acts(
            model, tok, [_shuffled(e, i) for i, e in enumerate(train)], site, args.batch_size
        )
        v = mixed.mean(0) - intact.mean(0)
        v = v / v.norm()
        coh_ref = (_acts(model, tok, al_te + mis_te, site, args.batch_size) @ v).tolist()
        coh_lab = (_acts(model, tok, labelled, site, args.batch_size) @ v).tolist()
    rules = [
        _rule("relevance (-PMI)", [-x for x in pmi_ref], [-x for x in pmi_lab], labels),
        _rule(f"shuffle probe ({site.name})", coh_ref, coh_lab, labels),
    ]
    counts = {lab: labels.count(lab) for lab in LABELS}
    print(f"labelled answers: {counts}; threshold at {FPR:.0%} false positives on em-core answers")
    print("| rule | aligned flagged | misaligned flagged | incoherent flagged | AUROC |")
    print("|---|---:|---:|---:|---:|")
    for r in rules:
        f = r["flagged"]
        cells = " | ".join(f"{f[lab][0]}/{f[lab][1]}" for lab in LABELS)
        print(f"| {r['rule']} | {cells} | {r['auroc']:.3f} |")
    seconds = time.perf_counter() - t0
    print(f"{seconds:.0f} s")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(
                {"fpr": FPR, "counts": counts, "rules": rules, "seconds": seconds}, fh, indent=1
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
