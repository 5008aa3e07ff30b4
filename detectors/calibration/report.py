"""Calibration reports a person can look at: ROC, precision-recall and score histograms per detector
(PNG), gathered with the numbers in ``docs/calibration/<detector>.md``."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from detectors.calibration.calibrate import DetectorReport
from detectors.spec import DetectorSpec


def plot_detector(report: DetectorReport, spec: DetectorSpec, path: Path) -> Path:
    """One figure with three panels: ROC (SAE detector and dense probe), precision-recall, histograms."""
    s, y = np.array(report.scores["test"]), np.array(report.scores["test_labels"])
    p = np.array(report.scores["probe_test"])
    benign = np.array(report.scores["benign_unseen"])
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.4))
    if len(np.unique(y)) == 2:
        for scores, name in ((s, f"SAE detector (AUROC {report.test['auroc']:.3f})"),
                             (p, f"dense probe (AUROC {report.probe['auroc']:.3f})")):
            fpr, tpr, _ = roc_curve(y, scores)
            ax[0].plot(fpr, tpr, label=name)
        fired = s >= spec.threshold
        ax[0].scatter([fired[y == 0].mean()], [fired[y == 1].mean()], color="red", zorder=5,
                      label=f"threshold (FPR {fired[y == 0].mean():.3f}, recall {fired[y == 1].mean():.3f})")
        prec, rec, _ = precision_recall_curve(y, s)
        ax[1].plot(rec, prec, label="SAE detector")
        prec, rec, _ = precision_recall_curve(y, p)
        ax[1].plot(rec, prec, label="dense probe")
    ax[0].plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax[0].set(xlabel="false-positive rate", ylabel="recall", title="ROC, test split")
    ax[0].legend(fontsize=8, loc="lower right")
    ax[1].set(xlabel="recall", ylabel="precision", title="precision-recall, test split")
    ax[1].legend(fontsize=8)
    bins = np.linspace(min(s.min(initial=0), benign.min(initial=0)), max(s.max(initial=1), benign.max(initial=1)), 50)
    ax[2].hist(s[y == 0], bins=bins, alpha=0.55, density=True, label="test negatives")
    ax[2].hist(s[y == 1], bins=bins, alpha=0.55, density=True, label="test positives")
    ax[2].hist(benign, bins=bins, alpha=0.45, density=True, histtype="step", lw=1.5, label="unseen benign traffic")
    ax[2].axvline(spec.threshold, color="red", label=f"threshold {spec.threshold:.2f}")
    ax[2].set(xlabel="detector score", ylabel="density", title="score histograms")
    ax[2].legend(fontsize=8)
    status = "" if spec.status == "enabled" else f"  [{spec.status}]"
    fig.suptitle(f"{spec.name}: {len(spec.latents)} latents, {spec.aggregation} over {spec.span} tokens{status}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _f(v) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def _ci(v) -> str:
    return f"[{v[0]:.3f}, {v[1]:.3f}]" if v and not any(x is None or np.isnan(x) for x in v) else ""


def _short(source: str) -> str:
    """``owner/repo:dir/file.jsonl`` -> ``file``: enough to tell a concept's sources apart in a table cell."""
    return source.rsplit("/", 1)[-1].rsplit(":", 1)[-1].removesuffix(".jsonl").removesuffix(".csv")


def _md(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def write_markdown(report: DetectorReport, spec: DetectorSpec, png: Path, path: Path, *, labels: dict) -> Path:
    """``docs/calibration/<detector>.md``: the numbers, the plot and the latents. ``labels``: latent id ->
    a label string, or a record with ``label`` and ``contexts`` (``monitor.toolkit.latent_labels``)."""
    t, b = report.test, report.benign_unseen
    lines = [
        f"# Detector `{spec.name}` ({spec.concept})",
        "",
        f"Status: **{spec.status}**" + (f": {spec.status_reason}" if spec.status_reason else ""),
        "",
        (f"SAE `{spec.sae_sha256[:16]}…`, {len(spec.latents)} latents, `{spec.aggregation}` over `{spec.span}` tokens, "
        f"threshold {spec.threshold:.4f} (target FPR {spec.calibration.target_fpr:g} with "
        f"{1 - spec.calibration.model_extra.get('delta', 0.05):.0%} confidence on {report.n_benign_calibration} benign "
        "calibration samples)."),
        "",
        f"![ROC, precision-recall and score histograms]({png.name})",
        "",
        "| set | n pos | n neg | AUROC [95% CI] | recall [CI] | FPR [CI] | dense probe AUROC |",
        "|---|---:|---:|---|---|---|---:|",
        (f"| test split | {t['n_pos']} | {t['n_neg']} | {t['auroc']:.3f} {_ci(t['auroc_ci'])} | "
        f"{t['recall']:.3f} {_ci(t['recall_ci'])} | {t['fpr']:.3f} {_ci(t['fpr_ci'])} | {report.probe['auroc']:.3f} |"),
    ]
    for src, m in report.test_by_source.items():
        pa = report.probe_test_by_source.get(src, {}).get("auroc", float("nan"))
        lines.append(f"| {src} | {m['n_pos']} | {m['n_neg']} | {_f(m['auroc'])} {_ci(m['auroc_ci'])} | "
                     f"{_f(m['recall'])} | {_f(m['fpr'])} | {_f(pa)} |")
    lines.append(f"| unseen benign traffic | 0 | {b['n_neg']} | – | – | {b['fpr']:.3f} {_ci(b['fpr_ci'])} | – |")
    for name, m in report.benign_unseen_by_slice.items():
        if m["n"]:
            lines.append(f"| unseen benign, {name.replace('_', ' ')} | 0 | {m['n']} | – | – | "
                         f"{m['fpr']:.3f} {_ci(m['fpr_ci'])} | – |")
    if report.calibration_by_slice:
        lines += ["", (f"Threshold per traffic slice (the largest binds: **{report.threshold_slice}**); a slice with "
                  "too few benign calibration samples for the guarantee is only reported:"), "",
                  "| slice | benign calibration samples | slice threshold | FPR bound |", "|---|---:|---:|---:|"]
        for name, m in report.calibration_by_slice.items():
            thr = "too few" if m["threshold"] is None else f"{m['threshold']:.4f}"
            bound = "–" if m["fpr_upper_bound"] is None else f"{m['fpr_upper_bound']:.4f}"
            lines.append(f"| {name.replace('_', ' ')} | {m['n']} | {thr} | {bound} |")
    if report.loso:
        lines += ["", "Leave one source out (fit without the source, scored on its calibration and test rows):", "",
                  "| held-out source | n | SAE detector AUROC [95% CI] | dense probe AUROC |", "|---|---:|---|---:|"]
        for src, m in report.loso.items():
            lines.append(f"| {src} | {m['n']} | {_f(m['auroc'])} {_ci(m.get('auroc_ci'))} | {_f(m['probe_auroc'])} |")
    if report.checks:
        lines += ["", "Check sets (scored, never fitted on):", "",
                  "| check source | n pos | n neg | AUROC [95% CI] | recall | FPR |", "|---|---:|---:|---|---:|---:|"]
        for src, m in report.checks.items():
            lines.append(f"| {src} | {m['n_pos']} | {m['n_neg']} | {_f(m['auroc'])} {_ci(m['auroc_ci'])} | "
                         f"{_f(m['recall'])} | {_f(m['fpr'])} |")
    unseen = report.unseen_source_auroc_by_choice
    if any(unseen.values()):
        balanced = spec.calibration.model_extra.get("latent_selection") == "source_balanced"
        cv = "grouped 5-fold CV AUROC (source-balanced: pooled and per source, averaged)" if balanced else \
            "grouped 5-fold CV AUROC"
        lines += ["", (f"Span and aggregation chosen by the mean of the {cv} on the train split, "
                  "the mean AUROC, on each source's train rows, of the fit made without that source, and the "
                  "recall on calibration positives at the per-slice threshold:"), "",
                  "| choice | CV AUROC | unseen-source AUROC | score |", "|---|---:|---|---:|"]
        score = spec.calibration.model_extra["span_choice_score"]  # what calibration chose by
        lines[-2:] = [("| choice | CV AUROC | unseen-source AUROC | calibration recall at the per-slice threshold | "
                      "score |"), "|---|---:|---|---:|---:|"]
        for k in sorted(score, key=lambda k: -score[k]):
            per = ", ".join(f"{_short(src)} {a:.3f}" for src, a in unseen[k].items())
            rec = report.calibration_recall_by_choice.get(k, float("nan"))
            lines.append(f"| {k} | {report.cv_auroc_by_choice[k]:.3f} | {per} | {_f(rec)} | {score[k]:.3f} |")
    else:
        lines += ["", "Span and aggregation chosen by grouped 5-fold CV AUROC on the train split:", "",
                  "| choice | CV AUROC |", "|---|---:|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in sorted(report.cv_auroc_by_choice.items(), key=lambda kv: -kv[1])]
    lines += ["", ("Latents (weight × aggregated activation adds to the score), with their label and three top "
              "contexts on held-out text (the peak token in [[ ]]):"), "",
              "| latent | weight | label | top contexts |", "|---:|---:|---|---|"]
    for lat, w in sorted(zip(spec.latents, spec.weights), key=lambda t: -abs(t[1])):
        rec = labels.get(lat)
        label = getattr(rec, "label", rec) or ""
        contexts = " · ".join(_md(c) for c in getattr(rec, "contexts", [])[:3])
        lines.append(f"| {lat} | {w:+.3f} | {_md(label)} | {contexts} |")
    if report.rejected_latents:
        lines += ["", "Strong latents kept out of the detector:", "", "| latent | AUROC | reason |", "|---:|---:|---|"]
        for r in report.rejected_latents:
            rec = labels.get(r["latent"])
            label = getattr(rec, "label", rec) or ""
            lines.append(f"| {r['latent']} {_md(label)} | {r['auroc']:.3f} | {_md(r['reason'])} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
