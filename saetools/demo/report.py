"""What the demo shows: ``index.html`` (:func:`write_index`, one section per stage and a list of
every file), the comparison figure ``eval/compare.html`` (:func:`compare_figure`) and the summary
printed at the end (:func:`print_summary`)."""

from __future__ import annotations

import html
from pathlib import Path

from .settings import TRAIN_DATA

__all__ = ["compare_figure", "print_summary", "write_index"]


def compare_figure(train_s: dict, eval_s: dict):
    """Bars of the headline metrics per model, and the general shift at each checkpoint."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(eval_s)
    panels = [
        ("em_core_contrast_per_token", "em-core contrast (nats/token)"),
        ("neutral_perplexity", "neutral perplexity"),
        ("held_out_loss", f"held-out loss {TRAIN_DATA}"),
        ("in_domain_contrast_per_token", "in-domain contrast bad - good"),
    ]
    fig = make_subplots(
        rows=2,
        cols=3,
        specs=[[{}, {}, {}], [{}, {"colspan": 2}, None]],
        subplot_titles=[p[1] for p in panels] + ["general shift during training (em-core test)"],
    )
    pos = [(1, 1), (1, 2), (1, 3), (2, 1)]
    for (key, _), (r, c) in zip(panels, pos, strict=True):
        fig.add_trace(
            go.Bar(x=names, y=[eval_s[n].get(key) for n in names], showlegend=False), r, c
        )
    for name, s in train_s.items():
        ck = s["checkpoints"]
        fig.add_trace(
            go.Scatter(
                x=[r["step"] for r in ck],
                y=[r["shift"] for r in ck],
                error_y=dict(type="data", array=[r.get("shift_se") or 0 for r in ck]),
                mode="lines+markers",
                name=name,
            ),
            2,
            2,
        )
    fig.update_xaxes(title_text="step", row=2, col=2)
    fig.update_layout(
        title="saetools demo: base vs fine-tunes", template="plotly_white", height=800
    )
    return fig


def _fmt(x, fmt="{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def write_index(summary: dict, out: Path) -> Path:
    """``index.html``: headline numbers and a link to every artefact of the demo."""
    steps = summary["steps"]
    parts = _index_head(summary)
    links: list[tuple[str, str]] = []
    sections = (
        ("extract", _extract_section),
        ("steer", _steer_section),
        ("train", _train_section),
        ("eval", _eval_section),
    )
    for key, section in sections:
        if steps.get(key):
            section_parts, section_links = section(steps[key])
            parts += section_parts
            links += section_links
    links.append(("summary.json", "summary.json (everything above, for scripts)"))
    parts += _files_section(links)
    path = out / "index.html"
    tmp = out / ".index.html.tmp"
    tmp.write_text("\n".join(parts))
    tmp.replace(path)
    return path


def _index_head(summary: dict) -> list[str]:
    """The page's head, style and title, with the model and the run's mode and wall time."""
    e = html.escape
    return [
        "<!doctype html><html><head><meta charset='utf-8'><title>saetools demo</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;"
        "text-align:right}th:first-child,td:first-child{text-align:left}</style></head><body>",
        "<h1>saetools demo</h1>",
        f"<p>Model: {e(summary['model']['id'])} (fingerprint <code>"
        f"{e(str(summary['model']['fingerprint'])[:16])}</code>). Mode: "
        f"{'quick (toy sizes)' if summary['quick'] else 'full'}. Wall time: "
        f"{summary['seconds']} s.</p>",
    ]


_Section = tuple[list[str], list[tuple[str, str]]]  # (HTML parts, (href, label) links)


def _extract_section(ex: dict) -> _Section:
    """1. The directions: the best site's separation, the direction file and the layer report."""
    e = html.escape
    parts = [
        "<h2>1. Directions (em-core, difference of means)</h2>",
        f"<p>Best site {e(ex['best_site'])}: held-out AUROC {ex['best_auroc']:.3f}, "
        f"Cohen's d {ex['best_cohens_d']:.2f} ({ex['seconds']} s).</p>",
    ]
    links = [
        (ex["direction_file"], "direction file (safetensors + JSON metadata)"),
        (ex["layer_report"], "layer report: AUROC, Cohen's d and norm by block"),
    ]
    return parts, links


def _steer_section(st: dict) -> _Section:
    """2. Steering: the em-core contrast at each alpha."""
    parts = [
        f"<h2>2. Steering at {html.escape(st['site'])}</h2>",
        "<table><tr><th>alpha</th>"
        + "".join(f"<th>{a:+g}</th>" for a in st["alphas"])
        + "</tr><tr><td>em-core logprob contrast (nats)</td>"
        + "".join(f"<td>{c:.2f}</td>" for c in st["contrast"])
        + "</tr></table>",
    ]
    links = [
        (st["figure"], "steering sweep figure"),
        (st["json"], "steering sweep numbers (JSON)"),
        (st["answers"], "steered answers (JSON)"),
    ]
    return parts, links


def _train_section(tr: dict) -> _Section:
    """3. Fine-tuning: the general shift and held-out loss of each run at each evaluation step."""
    e = html.escape
    ck_steps = [r["step"] for r in next(iter(tr.values()))["checkpoints"]]
    parts = [
        f"<h2>3. Fine-tuning on {TRAIN_DATA} (LoRA r8)</h2>",
        "<p>General shift on em-core test pairs (per-token contrast now minus the base "
        "model's, paired; mean ± standard error) and held-out task loss, at each "
        "evaluation step.</p><table><tr><th>run</th>"
        + "".join(f"<th>shift @ {s}</th>" for s in ck_steps)
        + "<th>held-out loss</th><th>seconds</th></tr>",
    ]
    links: list[tuple[str, str]] = []
    for name, s in tr.items():
        ck = s["checkpoints"]
        parts.append(
            f"<tr><td>{e(name)}</td>"
            + "".join(f"<td>{r['shift']:+.3f} ± {_fmt(r.get('shift_se'))}</td>" for r in ck)
            + "<td>"
            + " → ".join(_fmt(r.get("eval_task_loss"), "{:.2f}") for r in ck)
            + f"</td><td>{s['seconds']}</td></tr>"
        )
        links += [
            (s["curves"], f"training curves: {name}"),
            (s["metrics"], f"training metrics (JSONL): {name}"),
            (s["checkpoint"] + "/adapter_config.json", f"final adapter: {name}"),
        ]
    parts.append("</table>")
    return parts, links


def _eval_section(ev: dict) -> _Section:
    """4. Evaluation: one row of offline (and judged) metrics per model, with its report."""
    e = html.escape
    rows = ev["models"]
    judged = any("misaligned_rate" in r for r in rows.values())
    first = next(iter(rows.values()))
    parts = [
        "<h2>4. Evaluation (offline metrics)</h2>",
        f"<p>em-core contrast on the first {first['em_core_pairs']} test pairs; general "
        "shift = contrast minus the base model's; neutral perplexity; held-out loss and "
        f"in-domain contrast (bad - good, nats/token) on the first {first['narrow_items']} "
        f"test items. Projection of the model's own answers at {e(first['projection_site'])}."
        "</p><table><tr><th>model</th><th>em-core contrast / token</th>"
        "<th>general shift</th><th>neutral perplexity</th><th>held-out loss</th>"
        "<th>in-domain contrast</th><th>projection</th>"
        + ("<th>misaligned rate (judge)</th>" if judged else "")
        + "<th>report</th></tr>",
    ]
    links = [(ev["compare"], "comparison figure")]
    for name, r in rows.items():
        parts.append(
            f"<tr><td>{e(name)}</td><td>{_fmt(r['em_core_contrast_per_token'], '{:+.4f}')}"
            f"</td><td>{_fmt(r.get('general_shift_per_token'), '{:+.4f}')} ± "
            f"{_fmt(r.get('general_shift_se'), '{:.4f}')}</td>"
            f"<td>{_fmt(r['neutral_perplexity'], '{:.2f}')}</td>"
            f"<td>{_fmt(r['held_out_loss'])}</td>"
            f"<td>{_fmt(r['in_domain_contrast_per_token'], '{:+.4f}')}</td>"
            f"<td>{_fmt(r['projection_mean'], '{:+.3f}')}</td>"
            + (f"<td>{_fmt(r.get('misaligned_rate'))}</td>" if judged else "")
            + f"<td><a href='{e(r['report'])}'>report</a></td></tr>"
        )
        links += [
            (r["report"], f"evaluation report: {name}"),
            (r["json"], f"evaluation numbers (JSON): {name}"),
            (r["samples"], f"sampled answers (JSONL): {name}"),
        ]
    parts.append("</table>")
    if not judged:
        parts.append(
            "<p>No judge was given (<code>--judge-url</code>), so judged misalignment rates "
            "are not measured.</p>"
        )
    return parts, links


def _files_section(links: list[tuple[str, str]]) -> list[str]:
    """The list of every file, and the page's end."""
    e = html.escape
    parts = ["<h2>Files</h2><ul>"]
    for href, label in links:
        parts.append(f"<li><a href='{e(href)}'>{e(label)}</a> <code>{e(href)}</code></li>")
    parts.append("</ul></body></html>")
    return parts


def print_summary(summary: dict, out: Path, index: Path) -> None:
    """The headline numbers of each stage on stdout, with where the files are."""
    s = summary["steps"]
    ex = s["extract"]
    print()
    print(
        f"best site: {ex['best_site']}  held-out AUROC {ex['best_auroc']:.3f}  "
        f"Cohen's d {ex['best_cohens_d']:.2f}"
    )
    print(f"direction file: {out / ex['direction_file']}")
    print(f"layer report:   {out / ex['layer_report']}")
    if "steer" in s:
        st = s["steer"]
        print(
            f"steering {st['site']}: logprob contrast (misaligned - aligned, nats) by alpha: "
            + ", ".join(
                f"{a:+g}: {c:.2f}" for a, c in zip(st["alphas"], st["contrast"], strict=True)
            )
        )
        print(f"sweep figure:   {out / st['figure']}")
    if "train" in s:
        for name, r in s["train"].items():
            ck = r["checkpoints"][-1]
            print(
                f"fine-tune {name:15s} step {ck['step']}: general shift {ck['shift']:+.3f} ± "
                f"{_fmt(ck.get('shift_se'))} nats/token, held-out loss "
                f"{_fmt(ck.get('eval_task_loss'), '{:.2f}')}  ({out / r['curves']})"
            )
    if "eval" in s:
        for name, r in s["eval"]["models"].items():
            print(
                f"eval {name:15s} em-core contrast/token {r['em_core_contrast_per_token']:+.4f}"
                f"  shift {_fmt(r.get('general_shift_per_token'), '{:+.4f}')} ± "
                f"{_fmt(r.get('general_shift_se'), '{:.4f}')}"
                f"  neutral ppl {r['neutral_perplexity']:.2f}  held-out loss "
                f"{r['held_out_loss']:.3f}"
            )
    print(f"done in {summary['seconds']}s; summary in {out / 'summary.json'}")
    print(f"report: {index}")
