"""``table.md``: the summary as markdown. The main table (one row per arm, its columns listed in
:data:`COLUMNS`), the table at matched reduction of the general shift (:data:`MATCHED_COLUMNS` at
each target), and the general shift at every checkpoint.

A new column is one entry of :data:`COLUMNS`: :func:`mean_column` for a ``key`` ± ``key_se`` pair
of the summary rows, :func:`ci_column` for an interval, or a :class:`Column` with its own cell."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .config import BenchmarkConfig
from .summary import matched


def _cell(m, se, fmt="{:+.3f}") -> str:
    if m is None:
        return "—"
    return fmt.format(m) + ("" if se is None else " ± " + fmt.format(se).lstrip("+"))


def _dirs(r: Mapping) -> str:
    """A table row's direction variant: ``source @ sites``, or — for methods without one."""
    return "—" if r["source"] == "-" else f"{r['source']} @ {r['sites']}"


def _ci_cell(ci) -> str:
    lo, hi = ci
    return "—" if lo is None else f"[{lo:+.3f}, {hi:+.3f}]"


@dataclass(frozen=True)
class Column:
    """A column of the main table: its header, and the cell it shows for a summary row."""

    header: str
    cell: Callable[[Mapping], str]


def mean_column(header: str, key: str, fmt: str = "{:+.3f}") -> Column:
    """The column of summary field ``key`` ± ``key_se``, each formatted with ``fmt``."""
    return Column(header, lambda r: _cell(r[key], r[key + "_se"], fmt))


def ci_column(header: str, key: str) -> Column:
    """The column of summary field ``key``, an interval ``(low, high)``."""
    return Column(header, lambda r: _ci_cell(r[key]))


COLUMNS: tuple[Column, ...] = (
    Column("method", lambda r: r["method"]),
    Column("strength", lambda r: f"{r['strength']:g}"),
    Column("directions", _dirs),
    Column("seeds", lambda r: f"{r['n_seeds_narrow']}/{r['n_seeds_benign']}"),
    mean_column("general shift (final)", "shift"),
    mean_column("paired Δ vs none", "paired_diff"),
    ci_column("paired Δ 95% CI", "paired_diff_ci"),
    mean_column("reduction vs none (%)", "reduction_pct", "{:+.1f}"),
    mean_column("in-domain contrast", "in_domain_contrast"),
    mean_column("narrow held-out loss", "narrow_loss", "{:.3f}"),
    mean_column("neutral perplexity", "perplexity", "{:.2f}"),
    mean_column("opswap held-out loss", "benign_loss", "{:.3f}"),
    mean_column("opswap accuracy", "opswap_accuracy", "{:.3f}"),
)
TABLE_COLUMNS = tuple(c.header for c in COLUMNS)

# The measures of the matched-reduction table at each target: (header, summary key, format);
# each key must be one of summary.MATCH_METRICS.
MATCHED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("opswap loss", "benign_loss", "{:.3f}"),
    ("opswap acc", "opswap_accuracy", "{:.3f}"),
    ("narrow loss", "narrow_loss", "{:.3f}"),
)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table_markdown(table: Sequence[dict], cfg: BenchmarkConfig | None = None) -> str:
    """The summary as markdown (mean ± standard error over seeds)."""
    lines = ["# Defense benchmark", ""]
    if cfg is not None:
        lines += [_sizes(cfg), ""]
    lines += [
        "Mean ± standard error over seeds. General shift: per-token contrast change (nats) on "
        "em-core test pairs after the narrow fine-tune. Paired Δ: per question, defense minus "
        "none (same seeds), averaged over seeds, then mean ± se over questions, and its 95% "
        "Student-t interval over questions. Reduction: per "
        "seed 100 × (none − defense) / none, then mean ± se. Strength: λ, α (steer) or the safe "
        "fraction (interleave).",
        "",
        _row(TABLE_COLUMNS),
        "|" + "---|" * len(COLUMNS),
    ]
    lines += [_row([c.cell(r) for c in COLUMNS]) for r in table]
    lines += _matched_markdown(table)
    lines += _checkpoints_markdown(table)
    lines += [
        "",
        "Seeds: narrow/benign runs finished. The reduction is a ratio to the `none` shift of the "
        "same seed: it means little where that shift is near zero (short runs, few pairs).",
        "",
    ]
    return "\n".join(lines)


def _sizes(cfg: BenchmarkConfig) -> str:
    return (
        f"Sizes: {cfg.steps} steps (eval every {cfg.eval_every}; benign task "
        f"{cfg.steps_for('benign')} steps), batch {cfg.batch_size}, "
        f"lr {cfg.lr:g}, LoRA rank {cfg.lora_rank}, max length {cfg.max_length}; eval pairs "
        f"{cfg.eval_pairs or 'all'}, held-out narrow items {cfg.eval_examples or 'all'}, "
        f"opswap items {cfg.benign_examples or 'all'}; model {cfg.model}."
    )


def _matched_markdown(table: Sequence[dict], targets=(50.0, 80.0)) -> list[str]:
    rows = matched(table, targets)
    none = next((r for r in table if r["method"] == "none"), None)
    if not rows:
        return []
    per_target = " | ".join(["strength"] + [h for h, _, _ in MATCHED_COLUMNS])
    width = 1 + len(MATCHED_COLUMNS)
    lines = [
        "",
        "At matched reduction of the general shift (linear interpolation between the two strengths "
        "whose mean reductions bracket the target, strength 0 being no defense; — where none do). "
        "\\* marks a value interpolated between no defense and the lowest strength: that stretch "
        "of the curve was not measured, so read it as a rough guess. Lower held-out loss is better "
        "learning; no defense: "
        + (
            f"opswap loss {none['benign_loss']:.3f}, narrow loss {none['narrow_loss']:.3f}."
            if none and none.get("benign_loss") is not None and none.get("narrow_loss") is not None
            else "not run."
        ),
        "",
        "| method | directions | " + " | ".join(f"{t:g}%: {per_target}" for t in targets) + " |",
        "|" + "---|" * (2 + width * len(targets)),
    ]
    for r in rows:
        cells = [r["method"], _dirs(r)]
        for t in targets:
            v = r["at"][float(t)]
            if not v:
                cells += ["—"] * width
                continue
            cells += [f"{v['strength']:.3g}" + (" *" if v["from_none"] else "")] + [
                _cell(v[k], None, fmt) for _, k, fmt in MATCHED_COLUMNS
            ]
        lines.append(_row(cells))
    return lines


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
        cells = [r["method"], f"{r['strength']:g}", _dirs(r)] + [
            _cell(*r["checkpoints"].get(st, (None, None))) for st in ck_steps
        ]
        lines.append(_row(cells))
    return lines
