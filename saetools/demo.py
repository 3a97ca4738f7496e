"""The main job: the whole saetools loop on the embedded model, written into one folder."""

from __future__ import annotations

import json
import time
from pathlib import Path


def run_demo(
    out: str | Path = "saetools-demo", *, device: str = "cpu", quick: bool = False
) -> dict:
    """Run the demo and return its summary (also written to ``out/summary.json``)."""
    import probes

    from .extract.diffmeans import extract_diffmeans
    from .models import load_model
    from .plots import layer_report, write_html

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary: dict = {"steps": {}}

    print("[1/2] preparing the embedded model (SmolLM2-135M-Instruct)")
    lm = load_model("default", device=device)
    summary["model"] = {"id": lm.model_id, "fingerprint": lm.fingerprint}

    print("[2/2] extracting em-core difference-of-means directions at every block")
    ps = probes.load("em-core")
    t = time.perf_counter()
    sites = "blocks.8-17.hook_resid_post" if quick else "all"
    ds = extract_diffmeans(lm.model, lm.tokenizer, ps, sites, model_id=lm.model_id)
    dpath = ds.save(out / "em.safetensors")
    rpath = write_html(layer_report(ds), out / "em-layers.html")
    best = ds.best_site()
    summary["steps"]["extract"] = {
        "seconds": round(time.perf_counter() - t, 1),
        "direction_file": dpath.name,
        "layer_report": rpath.name,
        "best_site": best,
        "best_auroc": ds.stats(best)["auroc"],
        "best_cohens_d": ds.stats(best)["cohens_d"],
    }
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print()
    print(
        f"best site: {best}  held-out AUROC {ds.stats(best)['auroc']:.3f}  Cohen's d {ds.stats(best)['cohens_d']:.2f}"
    )
    print(f"direction file: {dpath}")
    print(f"layer report:   {rpath}")
    print(f"done in {summary['seconds']}s; summary in {out / 'summary.json'}")
    return summary
