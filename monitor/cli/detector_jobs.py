"""``safety-monitor calibrate`` and ``safety-monitor eval``: the offline detector jobs, wired to the model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _sae_and_model(args):
    from monitor.cli.common import load_sae_arg
    from monitor.lm.loading import load_model

    sae = load_sae_arg(args.sae)
    lm = load_model(args.model)
    return sae, lm


def _cache(lm, args: argparse.Namespace):
    from detectors.calibration.activation_cache import ActivationCache
    from monitor.lm.loading import cache_root

    return ActivationCache(cache_root() / "detector-activations", lm.model_id, args.layer, args.context,
                           compute_dtype=args.compute_dtype)


def _runner(lm, cache):
    """What fills ``cache``: the model tapped at the cache's layer, context and precision."""
    return example_activations(lm, cache.layer, context=cache.context, compute_dtype=cache.compute_dtype)


def default_detectors_dir(sae_dir: Path | None) -> Path | None:
    return None if sae_dir is None else sae_dir / "detectors"


def cmd_calibrate(args: argparse.Namespace) -> int:
    import torch

    from detectors.calibration.calibrate import CalibrationConfig, calibrate_concept, write_report_json
    from detectors.calibration.data import (
        CHECK_FILES,
        CONCEPT_FILES,
        OWN_EMAIL_USER_TURNS,
        LabelledFile,
        benign_paths,
        for_kind,
        load_benign,
        load_chained_chats,
        load_checks,
        load_concept,
        load_file,
        load_format_negatives,
        load_long_documents,
        missing_benign,
        own_email_ordinary_turns,
        resolve,
        subsample,
    )
    from detectors.calibration.discover import DiscoveryConfig
    from detectors.calibration.report import plot_detector, write_markdown
    from monitor.artifacts import ARTIFACTS_DIR, default_sae_dir
    from monitor.cli.common import UsageError
    from monitor.defaults import hook_name
    from monitor.dictionary.corpus import default_data_dir
    from monitor.toolkit.latent_labels import LABELS_FILE, load_labels

    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    if args.data and len(args.concepts) != 1:
        raise UsageError("with --data, name exactly one --concept the files are labelled for")
    if args.data and args.extra_replies:
        raise UsageError("--extra-replies adds a source to a built-in concept's files; with --data, pass it as one "
                         "more --data")
    unknown = [c for c in args.concepts if c not in CONCEPT_FILES and not args.data]
    if unknown:
        raise UsageError(f"unknown concept(s) {unknown}; built-in: {', '.join(CONCEPT_FILES)} (or pass --data)")
    bad = [k for k in args.own_email_user_turns if k not in (*OWN_EMAIL_USER_TURNS, "ordinary")]
    if bad:
        raise UsageError(f"--own-email-user-turns: unknown {bad}; use {', '.join(OWN_EMAIL_USER_TURNS)} or ordinary")
    sae, lm = _sae_and_model(args)
    sae_dir = Path(args.sae) if args.sae else default_sae_dir()
    out = Path(args.out) if args.out else default_detectors_dir(sae_dir)
    docs = Path(args.docs)
    cache = _cache(lm, args)
    generated = ARTIFACTS_DIR / "data"
    labels = load_labels(sae_dir / LABELS_FILE, sae.sha256) if sae_dir is not None else {}
    if not labels:
        print("[calibrate] no latent_labels.json beside the SAE (`safety-monitor sae label`): formatting latents "
              "cannot be kept out and specs carry no labels", file=sys.stderr)
    excluded = {i for i, v in labels.items() if v.formatting}
    missing = missing_benign(data_dir, generated)
    if missing:
        print(f"[calibrate] benign files missing: {', '.join(missing)}", file=sys.stderr)
    cfg = CalibrationConfig(target_fpr=args.target_fpr, leave_one_source_out=not args.no_loso,
                            balance_sources=not args.pooled_selection,
                            balance_benign_slices=args.balance_benign_slices,
                            aggregations=args.aggregations or CalibrationConfig.aggregations)
    disc = DiscoveryConfig(max_latents=args.max_latents, candidates=args.candidates or DiscoveryConfig.candidates)
    summary = {}
    benign_by_kind = {}  # read once per kind, not once per concept and kind
    for kind in args.kinds:
        benign_by_kind[kind] = load_benign(data_dir, kind=kind, generated_dir=generated,
                                           max_per_file=args.max_benign_per_file)
        benign_by_kind[kind] += load_long_documents(data_dir, n=args.long_documents, kind=kind)
        benign_by_kind[kind] += load_chained_chats(data_dir, per_row=args.chained_chats, kind=kind)
        if args.benign:
            benign_by_kind[kind] += for_kind([e for p in args.benign for e in load_file(Path(p))], "both", kind)
    for concept in args.concepts:
        for kind in args.kinds:
            benign = benign_by_kind[kind] + load_format_negatives(concept, data_dir, kind=kind)
            if concept == "scam" and kind == "request" and "ordinary" in args.own_email_user_turns:
                benign += own_email_ordinary_turns(generated, max_per_file=args.max_per_file)
            checks = []
            if args.data:
                examples = for_kind([e for p in args.data for e in subsample(load_file(Path(p)), args.max_per_file, 0)],
                                    "both", kind)
                paths = [Path(p) for p in args.data]
            else:
                extra = () if concept != "scam" else tuple(
                    f for k in args.own_email_user_turns for f in OWN_EMAIL_USER_TURNS.get(k, ()))
                extra += tuple(LabelledFile(str(Path(p).resolve()), "response", whole=True)
                               for p in args.extra_replies or [])
                examples = load_concept(concept, data_dir, kind=kind, generated_dir=generated,
                                        max_per_file=args.max_per_file, extra=extra)
                checks = load_checks(concept, data_dir, kind=kind, max_per_file=args.max_per_file)
                paths = list(dict.fromkeys(resolve(f, data_dir, generated)
                                           for f in (*CONCEPT_FILES[concept], *extra, *CHECK_FILES.get(concept, ()))))
            if not examples:
                continue  # no file of this concept carries its label in this turn (sycophancy: replies only)
            paths += benign_paths(data_dir, generated)
            paths += [Path(p) for p in args.benign or []]
            name = f"{concept}_{kind}"
            print(f"[{name}] {len(examples)} examples, {len(benign)} benign; computing activations", file=sys.stderr)
            cache.ensure(examples + benign + checks, _runner(lm, cache))
            if args.activations_only:
                continue
            spec, report = calibrate_concept(concept, examples, benign, cache, sae, checks=checks, kind=kind,
                                             excluded=excluded, latent_labels={i: v.label for i, v in labels.items()},
                                             model_id=lm.model_id, hook=hook_name(args.layer), dataset_paths=paths,
                                             cfg=cfg, disc=disc)
            spec.save(out / f"{spec.name}.json")
            write_report_json(report, out / "reports" / f"{spec.name}.json")
            png = plot_detector(report, spec, docs / f"{spec.name}.png")
            write_markdown(report, spec, png, docs / f"{spec.name}.md", labels=labels)
            summary[spec.name] = {"status": spec.status, "auroc": report.test["auroc"], "recall": report.test["recall"],
                                  "fpr_unseen_benign": report.benign_unseen["fpr"], "probe_auroc": report.probe["auroc"],
                                  "aggregation": spec.aggregation, "threshold_slice": report.threshold_slice,
                                  "fpr_by_slice": {k: v["fpr"] for k, v in report.benign_unseen_by_slice.items()},
                                  "loso": {k: round(v["auroc"], 4) for k, v in report.loso.items()},
                                  "checks": {k: round(v["auroc"], 4) for k, v in report.checks.items()}}
            print(json.dumps({spec.name: summary[spec.name]}), file=sys.stderr)
    if args.activations_only:
        print(json.dumps({"activations": str(cache.dir), "examples": len(cache.index)}))
        return 0
    print(json.dumps({"detectors": summary, "out": str(out)}, indent=None if args.json else 2))
    return 0


def evaluate_specs(lm, sae, specs, examples, cache, *, layer: int) -> dict[str, dict]:
    """Score labelled ``examples`` with every spec: n_pos, n_neg, AUROC, recall and FPR at its threshold."""
    from detectors.calibration.span_features import latent_features, span_has_tokens
    from detectors.calibration.stats import auroc

    cache.ensure(examples, _runner(lm, cache))
    labels = np.array([e.label for e in examples])
    out = {}
    for spec in specs:
        f = latent_features(cache, sae, examples, span=spec.span, aggregations=(spec.aggregation,),
                            latents=spec.latents, window=spec.window, progress=False)[spec.aggregation]
        scored = span_has_tokens(cache, examples, spec.span)
        scores = np.where(scored, spec.score(f), -np.inf)  # nothing to read: never alerts, as live
        fired = scores >= spec.threshold
        pos, neg = labels == 1, labels == 0
        out[spec.name] = {
            "n_unscored": int((~scored).sum()),
            "auroc": auroc(scores, labels) if pos.any() and neg.any() else None,
            "recall": float(fired[pos].mean()) if pos.any() else None,
            "fpr": float(fired[neg].mean()) if neg.any() else None,
            "n_pos": int(pos.sum()), "n_neg": int(neg.sum()), "threshold": spec.threshold, "status": spec.status,
        }
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    from detectors.calibration.data import DataError, load_file
    from detectors.spec import load_specs
    from monitor.artifacts import default_sae_dir
    from monitor.cli.common import UsageError

    examples = []
    for p in args.data:
        path = Path(p)
        if not path.is_file():
            raise UsageError(f"{path} does not exist")
        try:
            examples += load_file(path)
        except DataError as exc:
            raise UsageError(str(exc)) from None
    sae, lm = _sae_and_model(args)
    det_dir = Path(args.detectors) if args.detectors else default_detectors_dir(Path(args.sae) if args.sae
                                                                                 else default_sae_dir())
    if det_dir is None or not det_dir.is_dir():
        raise UsageError(f"no detector specs at {det_dir}; pass --detectors DIR or run `safety-monitor calibrate`")
    specs = load_specs(det_dir, sae_sha256=sae.sha256, d_sae=sae.cfg.d_sae, force=True)
    results = evaluate_specs(lm, sae, specs, examples, _cache(lm, args), layer=args.layer)
    if args.json:
        print(json.dumps({"detectors": results}))
        return 0
    print(f"{'detector':<16}{'status':<11}{'n_pos':>7}{'n_neg':>7}{'AUROC':>8}{'recall':>8}{'FPR':>8}")
    for name, r in results.items():
        fmt = lambda v: "   –" if v is None else f"{v:8.3f}"
        print(f"{name:<16}{r['status']:<11}{r['n_pos']:>7}{r['n_neg']:>7}{fmt(r['auroc'])}{fmt(r['recall'])}"
              f"{fmt(r['fpr'])}")
    return 0


def _aggregations(value: str) -> tuple[str, ...]:
    from detectors.spec import AGGREGATIONS

    names = tuple(v for v in value.split(",") if v)
    bad = [v for v in names if v not in AGGREGATIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown aggregation(s) {bad}; use some of {', '.join(AGGREGATIONS)}")
    return names


def _add_compute_dtype(parser: argparse.ArgumentParser) -> None:
    from monitor.lm.runner import COMPUTE_DTYPES

    parser.add_argument("--compute-dtype", choices=COMPUTE_DTYPES, default="float32",
                        help="precision of the model's matrix products when computing activations; bfloat16 is "
                             "~2.5x faster on CPUs with AVX512-BF16, 2.6-5.5x slower on CPUs without (default: float32)")


def cmd_elicit(args: argparse.Namespace) -> int:
    """Generate the model's replies to scam-eliciting and matched ordinary requests (labelled data).

    Resumable and growable: replies already in ``--out`` (per request and sample) are kept, and only the
    missing ones are generated, appended a batch at a time."""
    import torch

    from monitor.lm.loading import load_model
    from monitor.toolkit.elicited_replies import (
        append_rows,
        generate_replies,
        samples_done,
        scam_email_requests,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    requests = scam_email_requests(args.pairs, seed=0)
    done = samples_done(out)
    todo = [(s, [r for r in requests if done[r.request] <= s]) for s in range(args.samples)]
    total, written, lm = sum(len(t) for _, t in todo), 0, None
    for sample, pending in todo:  # sample s is drawn with seed s
        for b in range(0, len(pending), args.batch_size):
            lm = lm or load_model(args.model)
            chunk = pending[b : b + args.batch_size]
            replies = generate_replies(lm, chunk, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                       seed=sample * 100_003 + b)
            written += append_rows(out, chunk, replies, sample=sample, model_id=lm.model_id)
            print(f"[elicit] sample {sample + 1}/{args.samples}: {b + len(chunk)}/{len(pending)} requests "
                  f"({written} rows written, {total} requests to do)", file=sys.stderr)
    print(json.dumps({"out": args.out, "rows_written": written, "requests_skipped": args.samples * len(requests) - total}))
    return 0


def register(sub) -> None:
    """Add ``calibrate``, ``eval``, ``elicit`` and ``causal-check`` to the CLI's sub-parsers."""
    from detectors.calibration.data import CONCEPT_FILES
    from monitor.defaults import DEFAULT_LAYER, DEFAULT_MODEL_ID

    cal = sub.add_parser("calibrate", help="discover latents, fit and calibrate detectors, write specs and reports")
    cal.add_argument("--concepts", type=lambda s: s.split(","), default=list(CONCEPT_FILES),
                     help="comma-separated concepts (default: all four)")
    cal.add_argument("--data", action="append", help="labelled JSONL for the single --concepts given (repeatable)")
    cal.add_argument("--benign", action="append", help="extra benign JSONL (label 0) for the threshold")
    cal.add_argument("--extra-replies", action="append",
                     help="labelled replies (JSONL with prompt, response, label) added as one more source of the "
                          "concept's reply detector, used whole (repeatable)")
    cal.add_argument("--data-dir", help="datasets folder (default: ../shared/data or $SAFETY_MONITOR_DATA)")
    cal.add_argument("--sae", help="SAE directory (default: the shipped one)")
    cal.add_argument("--out", help="where specs go (default: <sae>/detectors)")
    cal.add_argument("--docs", default="docs/calibration", help="where reports and plots go")
    cal.add_argument("--target-fpr", type=float, default=0.01)
    cal.add_argument("--max-latents", type=int, default=32)
    cal.add_argument("--candidates", type=int, default=None,
                     help="strongest single latents offered to the L1 selection (default: 1024)")
    cal.add_argument("--max-per-file", type=int, default=1000, help="examples sampled per labelled file")
    cal.add_argument("--max-benign-per-file", type=int, default=None,
                     help="benign rows sampled per benign file (default: all; more rows, lower thresholds)")
    cal.add_argument("--no-loso", action="store_true", help="skip leave-one-source-out fits (the span is then chosen by CV alone)")
    cal.add_argument("--pooled-selection", action="store_true",
                     help="rank and judge latents by the pooled AUROC over all sources (default: every source "
                          "counts once, the pooled AUROC and each source's own averaged)")
    cal.add_argument("--aggregations", type=_aggregations, default=None,
                     help="comma-separated aggregations tried (default: max,mean,window); e.g. window alone, "
                          "where a detector's traffic has replies too short for a mean to be trusted")
    cal.add_argument("--balance-benign-slices", action="store_true",
                     help="share the benign rows' training weight equally among traffic slices (single turn, "
                          "multi-turn, long) instead of among rows")
    cal.add_argument("--own-email-user-turns", type=lambda s: s.split(","), default=[],
                     help="also fit the scam request detector on the model's own e-mails' requests and/or the e-mails "
                          "as pasted user text (requests, emails, requests,emails), or on their ordinary halves as "
                          "benign traffic (ordinary)")
    cal.add_argument("--activations-only", action="store_true",
                     help="only compute and cache the examples' activations (e.g. while an SAE trains), then stop")
    cal.add_argument("--model", default=DEFAULT_MODEL_ID)
    cal.add_argument("--layer", type=int, default=DEFAULT_LAYER)
    cal.add_argument("--context", type=int, default=1280,
                     help="tokens per example kept (long conversations and documents are cut here)")
    cal.add_argument("--kinds", type=lambda s: s.split(","), default=["reply", "request"],
                     help="detector kinds: reply (the model's turn), request (the user's turn)")
    cal.add_argument("--long-documents", type=int, default=600,
                     help="long benign corpus documents (calibration and test only)")
    cal.add_argument("--chained-chats", type=float, default=1.0,
                     help="multi-turn benign conversations strung from single benign exchanges, per exchange "
                          "(within each split; 0: none)")
    _add_compute_dtype(cal)
    cal.add_argument("--threads", type=int, default=0)
    cal.add_argument("--json", action="store_true")
    cal.set_defaults(func=cmd_calibrate)

    el = sub.add_parser("elicit", help="labelled data of the model's own behaviour: its replies to scam-eliciting "
                                       "and matched ordinary e-mail requests")
    el.add_argument("--out", default="artifacts/data/scam/elicited_scam_email_replies.jsonl")
    el.add_argument("--pairs", type=int, default=640,
                    help="organisation x template pairs (two requests each; the first 240 are the first round's)")
    el.add_argument("--batch-size", type=int, default=16)
    el.add_argument("--max-new-tokens", type=int, default=96)
    el.add_argument("--samples", type=int, default=2, help="replies sampled per request (seeds 0, 1, ...)")
    el.add_argument("--model", default=DEFAULT_MODEL_ID)
    el.add_argument("--threads", type=int, default=0)
    el.set_defaults(func=cmd_elicit)

    ev = sub.add_parser("eval", help="score labelled JSONL with the shipped (or given) detectors")
    ev.add_argument("--data", action="append", required=True, help="labelled JSONL (text, label; repeatable)")
    ev.add_argument("--detectors", help="directory of detector specs (default: <sae>/detectors)")
    ev.add_argument("--sae", help="SAE directory (default: the shipped one)")
    ev.add_argument("--model", default=DEFAULT_MODEL_ID)
    ev.add_argument("--layer", type=int, default=DEFAULT_LAYER)
    ev.add_argument("--context", type=int, default=1280)
    _add_compute_dtype(ev)
    ev.add_argument("--json", action="store_true", help='one JSON object: {"detectors": {name: {...}}}')
    ev.set_defaults(func=cmd_eval)
    register_causal_check(sub)


def cmd_causal_check(args: argparse.Namespace) -> int:
    from detectors.spec import load_specs
    from monitor.artifacts import default_sae_dir
    from monitor.cli.common import UsageError
    from monitor.toolkit.causal_check import causal_check, markdown
    from monitor.toolkit.feature_index import INDEX_FILE, FeatureIndex

    sae, lm = _sae_and_model(args)
    sae_dir = Path(args.sae) if args.sae else default_sae_dir()
    det_dir = Path(args.detectors) if args.detectors else default_detectors_dir(sae_dir)
    if not (sae_dir / INDEX_FILE).is_file():
        raise UsageError(f"no feature index at {sae_dir / INDEX_FILE}; run `safety-monitor sae index` first")
    specs = load_specs(det_dir, sae_sha256=sae.sha256, d_sae=sae.cfg.d_sae, include_no_signal=True)
    trials = causal_check(lm, sae, specs, FeatureIndex.load(sae_dir / INDEX_FILE), layer=args.layer,
                          scale=args.scale, max_new_tokens=args.max_new_tokens)
    Path(args.out).write_text(markdown(trials, specs, scale=args.scale) + "\n")
    print(f"wrote {args.out}")
    return 0


def register_causal_check(sub) -> None:
    from monitor.defaults import DEFAULT_LAYER, DEFAULT_MODEL_ID

    cc = sub.add_parser("causal-check", help="steer each detector's top latent and score the generations")
    cc.add_argument("--detectors", help="directory of detector specs (default: <sae>/detectors)")
    cc.add_argument("--sae", help="SAE directory (default: the shipped one)")
    cc.add_argument("--model", default=DEFAULT_MODEL_ID)
    cc.add_argument("--layer", type=int, default=DEFAULT_LAYER)
    cc.add_argument("--scale", type=float, default=3.0,
                    help="target = scale x the median activation of the latent's top held-out contexts")
    cc.add_argument("--max-new-tokens", type=int, default=40)
    cc.add_argument("--out", default="docs/calibration/causal.md")
    cc.set_defaults(func=cmd_causal_check)


EXAMPLE_BATCH_TOKENS = 2048
"""Padded tokens per forward when computing detector activations: short examples still go 16 at a time,
1,280-token conversations one at a time (1.30x the tokens/s of 16 at a time; ``bench/bench_batch_tokens.py``)."""


def example_activations(lm, layer: int, *, context: int, batch_size: int = 16, compute_dtype: str = "float32"):
    """The model-running half of ``detectors.calibration.activation_cache.ActivationCache.ensure``: a function
    that renders each labelled example as the chat the sidecar would see (at most ``context`` tokens; a
    longer conversation keeps its latest turns, ``monitor.lm.chat.render_recent_turns``) and taps layer ``layer`` of ``lm`` (a ``monitor.lm.loading.LoadedModel``); shortest first, to pad less."""
    from detectors.calibration.activation_cache import TokenActivations
    from monitor.lm.chat import render_recent_turns
    from monitor.lm.runner import tap_sequences

    def compute(examples):
        rendered = [render_recent_turns(lm.tokenizer, e.message_dicts(), max_tokens=context, live_roles=True)
                    for e in examples]
        order = sorted(range(len(examples)), key=lambda i: len(rendered[i].input_ids))
        for results in tap_sequences(lm, layer, [r.input_ids for r in rendered], roles=[r.roles for r in rendered],
                                     batch_size=batch_size, order=order, compute_dtype=compute_dtype,
                                     max_batch_tokens=EXAMPLE_BATCH_TOKENS):
            for i, b in results:
                yield i, TokenActivations(b.activations.numpy(), b.token_ids.numpy(), b.roles.numpy(),
                                          b.positions.numpy())

    return compute
