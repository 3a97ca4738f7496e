"""``table.md``: the summary as markdown. The main table (one row per arm, its columns listed in
:data:`COLUMNS`), the table at matched reduction of the general shift (:data:`MATCHED_COLUMNS` at
each target), the comparison with ``steer`` at matched reduction, the transfer table (direction
source × pair set the shift is measured on), and the general shift at every checkpoint.

A new column is one entry of :data:`COLUMNS`: :func:`mean_column` for a ``key`` ± ``key_se`` pair
of the summary rows, :func:`ci_column` for an interval, or a :class:`Column` with its own cell.
Headers may name the data sets: ``{benign}`` (the benign task), ``{pairs}`` and ``{transfer}``
(the two pair sets of the general shift) are filled in from the config (:func:`data_names`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import BenchmarkConfig
from .matching import matched, versus


def _cell(m, se, fmt="{:+.3f}") -> str:
    if m is None:
        return "—"
    return fmt.format(m) + ("" if se is None else " ± " + fmt.format(se).lstrip("+"))


def _dirs(r: Mapping) -> str:
    """A table row's direction variant: ``source @ sites``, or — for methods without one."""
    return "—" if r["source"] == "-" else f"{r['source']} @ {r['sites']}"


def method_label(r: Mapping) -> str:
    """A row's method with its term variant: ``directional-kl [one-sided]`` (plain: the name)."""
    v = r.get("variant", "-")
    return r["method"] if v == "-" else f"{r['method']} [{v}]"


def _ci_cell(ci, fmt: str = "{:+.3f}") -> str:
    lo, hi = ci if ci is not None else (None, None)
    return "—" if lo is None else f"[{fmt.format(lo)}, {fmt.format(hi)}]"


def _count_cell(r: Mapping, k: str, n: str) -> str:
    return "—" if r.get(n) in (None, 0) or r.get(k) is None else f"{r[k]}/{r[n]}"


def _judged_cell(r: Mapping) -> str:
    """The pooled misaligned-answer rate with its count: ``0.125 (4/32)``."""
    if r.get("judged_rate") is None:
        return "—"
    return f"{r['judged_rate']:.3f} ({r['judged_misaligned']}/{r['judged_coherent']})"


def data_label(name: str | None) -> str:
    """A data set's name for headers: the set's name, or a file's stem for a path."""
    if not name:
        return "—"
    text = str(name)
    return Path(text).stem if ("/" in text or text.endswith(".jsonl")) else text


def data_names(cfg: BenchmarkConfig | None) -> dict[str, str]:
    """The names the headers use: ``benign``, ``pairs`` and ``transfer``."""
    cfg = cfg or BenchmarkConfig()
    return {
        "benign": data_label(cfg.benign_data),
        "pairs": data_label(cfg.pairs),
        "transfer": data_label(cfg.transfer_pairs) if cfg.transfer_pairs else "transfer set",
    }


@dataclass(frozen=True)
class Column:
    """A column of the main table: its header, and the cell it shows for a summary row."""

    header: str
    cell: Callable[[Mapping], str]


def mean_column(header: str, key: str, fmt: str = "{:+.3f}") -> Column:
    """The column of summary field ``key`` ± ``key_se``, each formatted with ``fmt``."""
    return Column(header, lambda r: _cell(r.get(key), r.get(key + "_se"), fmt))


def ci_column(header: str, key: str, fmt: str = "{:+.3f}") -> Column:
    """The column of summary field ``key``, an interval ``(low, high)``."""
    return Column(header, lambda r: _ci_cell(r.get(key), fmt))


COLUMNS: tuple[Column, ...] = (
    Column("method", method_label),
    Column("strength", lambda r: f"{r['strength']:g}"),
    Column("directions", _dirs),
    Column("seeds", lambda r: f"{r['n_seeds_narrow']}/{r['n_seeds_benign']}"),
    mean_column("general shift (final)", "shift"),
    mean_column("paired Δ vs none", "paired_diff"),
    ci_column("paired Δ 95% CI", "paired_diff_ci"),
    mean_column("reduction vs none (%)", "reduction_pct", "{:+.1f}"),
    ci_column("reduction 95% CI", "reduction_pct_ci", "{:+.1f}"),
    mean_column("shift on {transfer}", "shift_transfer"),
    mean_column("reduction on {transfer} (%)", "reduction_transfer_pct", "{:+.1f}"),
    ci_column("reduction on {transfer} 95% CI", "reduction_transfer_pct_ci", "{:+.1f}"),
    mean_column("in-domain contrast", "in_domain_contrast"),
    mean_column("narrow held-out loss", "narrow_loss", "{:.3f}"),
    mean_column("neutral perplexity", "perplexity", "{:.2f}"),
    mean_column("{benign} held-out loss", "benign_loss", "{:.3f}"),
    mean_column("{benign} accuracy", "benign_accuracy", "{:.3f}"),
    ci_column("{benign} accuracy 95% CI", "benign_accuracy_ci", "{:.3f}"),
    Column("misaligned-answer rate (probe judge)", lambda r: _judged_cell(r)),
    ci_column("misaligned-answer rate 95% Wilson CI", "judged_rate_ci", "{:.3f}"),
    Column("incoherent answers", lambda r: _count_cell(r, "judged_incoherent", "judged_n")),
)


def table_columns(cfg: BenchmarkConfig | None = None) -> tuple[str, ...]:
    """The main table's headers with the data sets' names of ``cfg`` filled in."""
    names = data_names(cfg)
    return tuple(c.header.format(**names) for c in COLUMNS)


TABLE_COLUMNS = table_columns()

# The measures of the matched-reduction table at each target: (header, summary key, format,
# whether to show its 95% interval over seeds); each key must be one of matching.MATCH_METRICS.
MATCHED_COLUMNS: tuple[tuple[str, str, str, bool], ...] = (
    ("{benign} acc [95% CI]", "benign_accuracy", "{:.3f}", True),
    ("narrow loss [95% CI]", "narrow_loss", "{:.3f}", True),
    ("{benign} loss", "benign_loss", "{:.3f}", False),
    ("reduction on {transfer} (%)", "reduction_transfer_pct", "{:+.1f}", False),
)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table_markdown(table: Sequence[dict], cfg: BenchmarkConfig | None = None) -> str:
    """The summary as markdown (mean ± standard error over seeds)."""
    names = data_names(cfg)
    lines = ["# Defense benchmark", ""]
    if cfg is not None:
        lines += [_sizes(cfg), ""]
    lines += [
        f"Mean ± standard error over seeds. General shift: per-token contrast change (nats) on "
        f"{names['pairs']} test pairs after the narrow fine-tune (also on {names['transfer']} "
        "test pairs: the shift on a set the directions were not made from). Paired Δ: per "
        "question, defense minus none (same seeds), averaged over seeds, then mean ± se over "
        "questions, and its 95% Student-t interval over questions. Reduction: per seed 100 × "
        "(none − defense) / none, then mean ± se and the 95% t interval over seeds. "
        f"{names['benign']} accuracy: exact match on its test items (greedy); the 95% interval "
        "is the t interval over seeds (with one seed: the Wilson interval over the items). "
        "Misaligned-answer rate: answers sampled at temperature 1 to the judge's questions at the "
        "end of each narrow run, read by the probe judge on the base model; misaligned / coherent "
        "answers pooled over seeds (count in brackets), with the 95% Wilson interval over those "
        "answers (not over seeds); incoherent answers (base-model perplexity above the judge's "
        "limit, or empty) are counted apart. "
        "Strength: λ, α (steer) or the safe fraction (interleave); [variant]: the term's variant.",
        "",
        _row(table_columns(cfg)),
        "|" + "---|" * len(COLUMNS),
    ]
    lines += [_row([c.cell(r) for c in COLUMNS]) for r in table]
    lines += _matched_markdown(table, names)
    lines += _transfer_markdown(table, names)
    lines += _checkpoints_markdown(table)
    lines += [
        "",
        "Seeds: narrow/benign runs finished. The reduction is a ratio to the `none` shift of the "
        "same seed: it means little where that shift is near zero (short runs, few pairs).",
        "",
    ]
    return "\n".join(lines)


def _sizes(cfg: BenchmarkConfig) -> str:
    names = data_names(cfg)
    return (
        f"Sizes: {cfg.steps} steps (eval every {cfg.eval_every}; benign task "
        f"{names['benign']}, {cfg.steps_for('benign')} steps), batch {cfg.batch_size}, "
        f"lr {cfg.lr:g}, LoRA rank {cfg.lora_rank}, max length {cfg.max_length}; eval pairs "
        f"{cfg.eval_pairs or 'all'} per set ({names['pairs']}, {names['transfer']}), held-out "
        f"narrow items {cfg.eval_examples or 'all'}, {names['benign']} items "
        f"{cfg.benign_examples or 'all'}; model {cfg.model}."
        + (
            f" Probe judge: {cfg.judge_samples} answer(s) per {data_label(cfg.judge_questions)} "
            f"question, up to {cfg.judge_max_new_tokens} new tokens."
            if cfg.judged_rate
            else " Judged rate: off."
        )
    )


def _matched_markdown(table: Sequence[dict], names: Mapping[str, str], targets=(50.0, 80.0)):
    rows = matched(table, targets)
    none = next((r for r in table if r["method"] == "none"), None)
    if not rows:
        return []
    heads = [h.format(**names) for h, _, _, _ in MATCHED_COLUMNS]
    per_target = " | ".join(["strength"] + heads)
    width = 1 + len(MATCHED_COLUMNS)
    lines = [
        "",
        "At matched reduction of the general shift (linear interpolation between the two strengths "
        "whose mean reductions bracket the target, strength 0 being no defense; — where none do; "
        "the 95% interval is the t interval over seeds of the same interpolation done seed by "
        "seed). \\* marks a value interpolated between no defense and the lowest strength: that "
        "stretch of the curve was not measured, so read it as a rough guess. Lower held-out loss "
        "is better learning; no defense: " + _none_line(none, names),
        "",
        "| method | directions | " + " | ".join(f"{t:g}%: {per_target}" for t in targets) + " |",
        "|" + "---|" * (2 + width * len(targets)),
    ]
    for r in rows:
        cells = [method_label(r), _dirs(r)]
        for t in targets:
            v = r["at"][float(t)]
            if not v:
                cells += ["—"] * width
                continue
            cells += [f"{v['strength']:.3g}" + (" *" if v["from_none"] else "")]
            for _, k, fmt, ci in MATCHED_COLUMNS:
                shown = ci and v[k] is not None
                cells.append(
                    _cell(v[k], None, fmt) + (" " + _ci_cell(v[k + "_ci"], fmt) if shown else "")
                )
        lines.append(_row(cells))
    return lines + _versus_markdown(rows, names, targets)


def _none_line(none: Mapping | None, names: Mapping[str, str]) -> str:
    if not none or none.get("narrow_loss") is None:
        return "not run."
    parts = [f"narrow loss {none['narrow_loss']:.3f}"]
    if none.get("benign_loss") is not None:
        parts.append(f"{names['benign']} loss {none['benign_loss']:.3f}")
    if none.get("benign_accuracy") is not None:
        parts.append(f"{names['benign']} accuracy {none['benign_accuracy']:.3f}")
    return ", ".join(parts) + "."


def _versus_markdown(rows: Sequence[dict], names: Mapping[str, str], targets) -> list[str]:
    """Every arm against ``steer`` at matched reduction (:func:`~.matching.versus`)."""
    ref, comp = versus(rows, targets=targets)
    if ref is None or not comp:
        return []
    keys = (
        ("benign_accuracy", "Δ {benign} acc", "{:+.3f}"),
        ("narrow_loss", "Δ narrow loss", "{:+.3f}"),
    )
    heads = " | ".join(h.format(**names) + " [95% CI]" for _, h, _ in keys) + " | seeds"
    lines = [
        "",
        f"Against {method_label(ref)} ({_dirs(ref)}) at matched reduction: per seed, the arm "
        "minus the reference (each interpolated at the target on its own curve, as above), then "
        "the mean over the seeds both ran and its 95% t interval. Accuracy: above 0 is better "
        "than the reference; narrow loss: below 0 is better (the narrow task learned more).",
        "",
        "| method | directions | " + " | ".join(f"{t:g}%: {heads}" for t in targets) + " |",
        "|" + "---|" * (2 + 3 * len(targets)),
    ]
    for r in comp:
        cells = [method_label(r), _dirs(r)]
        for t in targets:
            v = r["at"].get(float(t))
            for k, _, fmt in keys:
                d = v.get(k) if v else None
                cells.append("—" if not d else f"{fmt.format(d['diff'])} {_ci_cell(d['ci'], fmt)}")
            n = [v[k]["n"] for k, _, _ in keys if v and v.get(k)]
            cells.append(str(min(n)) if n else "—")
        lines.append(_row(cells))
    return lines


def _transfer_markdown(table: Sequence[dict], names: Mapping[str, str]) -> list[str]:
    """The direction methods' reductions on both pair sets, sources side by side."""
    rows = [r for r in table if r["source"] != "-" and r.get("reduction_pct") is not None]
    if not rows or all(r.get("reduction_transfer_pct") is None for r in rows):
        return []
    rows = sorted(
        rows,
        key=lambda r: (r["method"], r["sites"], r.get("variant", "-"), r["strength"], r["source"]),
    )
    lines = [
        "",
        f"Transfer: the reduction of the general shift measured on each pair set, by the source "
        f"of the direction (mean over seeds [95% t interval]). {names['pairs']} directions come "
        f"from {names['pairs']} train pairs, {names['transfer']} directions from "
        f"{names['transfer']} train pairs, modeldiff from the twin fine-tunes; every shift is "
        "measured on test pairs.",
        "",
        f"| method | strength | sites | direction from | reduction on {names['pairs']} (%) | "
        f"reduction on {names['transfer']} (%) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        red = [_with_ci(r, k, "{:+.1f}") for k in ("reduction_pct", "reduction_transfer_pct")]
        lines.append(_row([method_label(r), f"{r['strength']:g}", r["sites"], r["source"], *red]))
    return lines


def _with_ci(r: Mapping, key: str, fmt: str) -> str:
    """``mean [low, high]``, or the mean alone where the interval is unknown (one seed)."""
    ci = r.get(key + "_ci")
    known = ci is not None and ci[0] is not None
    return _cell(r.get(key), None, fmt) + (" " + _ci_cell(ci, fmt) if known else "")


def _checkpoints_markdown(table: Sequence[dict]) -> list[str]:
    """The general shift of each arm at every checkpoint step (none when no checkpoints)."""
    ck_steps = sorted({st for r in table for st in r["checkpoints"]})
    if not ck_steps:
        return []
    lines = [
        "",
        "General shift at each checkpoint (mean ± se over seeds, nats per token):",
        "",
        "| method | strength | directions | " + " | ".join(f"step {st}" for st in ck_steps) + " |",
        "|" + "---|" * (3 + len(ck_steps)),
    ]
    for r in table:
        if not r["checkpoints"]:
            continue
        cells = [method_label(r), f"{r['strength']:g}", _dirs(r)] + [
            _cell(*r["checkpoints"].get(st, (None, None))) for st in ck_steps
        ]
        lines.append(_row(cells))
    return lines
