"""``safety-monitor samples export|label|stats`` and ``safety-monitor calibrate --thresholds-from SAMPLES``: the
live-calibration loop's offline half (``detectors.calibration.traffic_samples``, ``detectors.calibration.recalibrate``).

    samples export   the sidecar's traffic-samples store -> portable JSON lines (labels joined in)
    samples label    confirm alerted requests as true positives (they leave the benign set)
    calibrate --thresholds-from SAMPLES
                     new thresholds and severity cut-offs for the detector specs, on those samples; with
                     --dry-run the proposed specs and a report go to --out and nothing is applied
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_REFUSED = 3
"""``calibrate --thresholds-from``: some detector was refused (too few samples); the others were written."""


def _sidecar_settings(path: str):
    """The sidecar's settings file, for its paths only (the tokens it needs are not: auth is switched off)."""
    from monitor.service.settings import load_settings

    return load_settings(path, auth={"disabled": True})


def _store_path(args: argparse.Namespace) -> Path:
    from monitor.cli.common import UsageError

    if args.store:
        return Path(args.store)
    if args.config:
        from monitor.service.sidecar import samples_path

        return samples_path(_sidecar_settings(args.config))
    raise UsageError("name the store: --store PATH, or --config SIDECAR_YAML (samples.path, else "
                     "traffic-samples.sqlite3 beside alerts.outbox.path)")


def cmd_samples_export(args: argparse.Namespace) -> int:
    from detectors.calibration.traffic_samples import SamplesError, export_samples
    from monitor.cli.common import UsageError

    try:
        info = export_samples(_store_path(args), args.out)
    except SamplesError as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps({"out": args.out, "samples": info["samples"], "detectors": len(info["detectors"]),
                      "recorded_total": info["recorded_total"], "dropped_total": info["dropped_total"]}))
    return 0


def cmd_samples_label(args: argparse.Namespace) -> int:
    from detectors.calibration.traffic_samples import SamplesError, TrafficSampleStore
    from monitor.cli.common import UsageError

    ids = list(args.request or [])
    if args.requests_file:
        ids += [line.strip() for line in Path(args.requests_file).read_text().splitlines() if line.strip()]
    if not ids:
        raise UsageError("name the confirmed requests: --request ID (repeatable) or --requests-file FILE")
    path = _store_path(args)
    if not path.is_file():
        raise UsageError(f"{path} does not exist (is samples.enabled on in the sidecar?)")
    store = TrafficSampleStore(path)
    try:
        done = store.label(ids, detector=args.detector)
    except SamplesError as exc:
        raise UsageError(str(exc)) from None
    finally:
        store.close()
    print(json.dumps({"labelled": done}))
    return 0


def cmd_samples_stats(args: argparse.Namespace) -> int:
    from detectors.calibration.traffic_samples import TrafficSampleStore
    from monitor.cli.common import UsageError

    path = _store_path(args)
    if not path.is_file():
        raise UsageError(f"{path} does not exist (is samples.enabled on in the sidecar?)")
    store = TrafficSampleStore(path)
    try:
        st = store.stats()
    finally:
        store.close()
    print(json.dumps({"store": str(path), "rows": st.rows, "recorded_total": st.recorded_total,
                      "dropped_total": st.dropped_total}))
    return 0


def _spec_files(directory: Path):
    from detectors.spec import DetectorSpec

    for path in sorted(directory.glob("*.json")):
        yield path, DetectorSpec.load(path)


def _copy(path: Path, directory: Path) -> None:
    import shutil

    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, directory / path.name)


def cmd_recalibrate(args: argparse.Namespace) -> int:
    """``calibrate --thresholds-from SAMPLES``."""
    from detectors.calibration.recalibrate import markdown_report, recalibrate
    from detectors.calibration.traffic_samples import SamplesError, read_samples
    from detectors.spec import SpecError
    from monitor.artifacts import default_sae_dir
    from monitor.cli.common import UsageError
    from monitor.cli.detector_jobs import default_detectors_dir

    if args.detectors:
        det_dir = Path(args.detectors)
    elif args.config:  # the directory the sidecar reads: detectors.dir, else beside its SAE
        from monitor.service.sidecar import SidecarStartError, resolve_detector_dir

        try:
            det_dir = resolve_detector_dir(_sidecar_settings(args.config))
        except SidecarStartError as exc:
            raise UsageError(str(exc)) from None
    else:
        det_dir = default_detectors_dir(Path(args.sae) if args.sae else default_sae_dir())
    if det_dir is None or not det_dir.is_dir():
        raise UsageError(f"no detector specs at {det_dir}; pass --detectors DIR (the sidecar's detectors.dir)")
    try:
        samples = read_samples(args.thresholds_from)
        specs = list(_spec_files(det_dir))
    except (SamplesError, SpecError) as exc:
        raise UsageError(str(exc)) from None
    wanted = set(args.concepts_or_names or ())
    results, written = [], []
    out = Path(args.out) if args.out else (Path("recalibration") if args.dry_run else det_dir)
    spec_out = out / "proposed" if args.dry_run else out
    complete = not args.dry_run and spec_out.resolve() != det_dir.resolve()
    for path, spec in specs:
        if spec.status != "enabled" or (wanted and spec.name not in wanted):
            if complete:  # OUT becomes a whole detector directory: the specs left as they were go along
                _copy(path, spec_out)
            continue
        r = recalibrate(spec, samples, target_fpr=args.target_fpr)
        results.append(r)
        if r.spec is None:
            if complete:
                _copy(path, spec_out)
            continue
        target = spec_out / path.name
        r.spec.save(target)
        report = {"detector": spec.name, "threshold": r.spec.threshold, "version": r.spec.version,
                  "recalibration": r.to_dict(), "scores": {"calibration_benign": r.benign_scores}}
        (spec_out / "reports").mkdir(parents=True, exist_ok=True)
        (spec_out / "reports" / f"{spec.name}.json").write_text(json.dumps(report, indent=1) + "\n")
        written.append(str(target))
    # The run's report goes under reports/, never beside the specs (every *.json there is read as a spec).
    reports = spec_out / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "recalibration.md").write_text(markdown_report(results, samples, dry_run=args.dry_run))
    summary = {"samples": samples.source, "samples_sha256": samples.sha256, "dry_run": args.dry_run,
               "written": written, "report": str(reports / "recalibration.md"),
               "detectors": [r.to_dict() for r in results]}
    (reports / "recalibration.json").write_text(json.dumps(summary, indent=1) + "\n")
    refused = [r for r in results if r.refused]
    for r in refused:
        print(f"safety-monitor: refused {r.detector}: {r.refused}", file=sys.stderr)
    print(json.dumps({k: summary[k] for k in ("dry_run", "written", "report")}
                     | {"refused": {r.detector: r.refused for r in refused}}))
    if not args.dry_run and written:
        print("the sidecar picks the new specs up with POST /v1/admin/reload (admin token)", file=sys.stderr)
    return EXIT_REFUSED if refused else 0


def register(sub) -> None:
    """Add ``samples`` and the ``--thresholds-from`` mode of ``calibrate`` (registered by ``detector_jobs``)."""
    samples = sub.add_parser("samples", help="traffic samples for recalibration: export, label, stats"
                             ).add_subparsers(dest="samples_command", required=True)

    def store_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", help="the sidecar's traffic-samples SQLite file")
        p.add_argument("--config", help="or: the sidecar's settings file (samples.path, else beside the outbox)")

    ex = samples.add_parser("export", help="write the samples store as JSON lines (labels joined in)")
    store_args(ex)
    ex.add_argument("--out", required=True, help="output file (.jsonl, or .jsonl.gz for gzip)")
    ex.set_defaults(func=cmd_samples_export)

    lb = samples.add_parser("label", help="confirm alerted requests as true positives (a person reviewed them)")
    store_args(lb)
    lb.add_argument("--request", action="append", help="request id of a confirmed alert (repeatable)")
    lb.add_argument("--requests-file", help="file with one confirmed request id per line")
    lb.add_argument("--detector", help="confirm only this detector's alert (default: every detector that alerted)")
    lb.set_defaults(func=cmd_samples_label)

    st = samples.add_parser("stats", help="rows in the store, recorded and dropped totals")
    store_args(st)
    st.set_defaults(func=cmd_samples_stats)

    cal = sub.choices["calibrate"]
    offline = cal.get_default("func")
    cal.add_argument("--thresholds-from", metavar="SAMPLES",
                     help="re-set the thresholds and severity cut-offs of the existing specs (--detectors) on traffic "
                          "samples (a store or an export), keeping latents and weights; no model is run")
    cal.add_argument("--detectors", help="with --thresholds-from: the spec directory (default: the one of --config, "
                                          "else <sae>/detectors)")
    cal.add_argument("--config", help="with --thresholds-from: the sidecar's settings file; its detector directory "
                                      "is used (detectors.dir, else beside the SAE)")
    cal.add_argument("--dry-run", action="store_true",
                     help="with --thresholds-from: write the proposed specs to OUT/proposed and the report to "
                          "OUT/proposed/reports/recalibration.md (default OUT: ./recalibration); apply nothing")
    cal.add_argument("--only", dest="concepts_or_names", type=lambda s: s.split(","),
                     help="with --thresholds-from: comma-separated detector names (default: every enabled spec)")
    cal.set_defaults(target_fpr=None)

    def dispatch(args: argparse.Namespace) -> int:
        from monitor.cli.common import UsageError

        if args.thresholds_from:
            return cmd_recalibrate(args)
        if args.dry_run or args.detectors or args.concepts_or_names or args.config:
            raise UsageError("--detectors, --config, --dry-run and --only belong to --thresholds-from")
        if args.target_fpr is None:
            args.target_fpr = 0.01
        return offline(args)

    cal.set_defaults(func=dispatch)
