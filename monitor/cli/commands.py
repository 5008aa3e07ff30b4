"""``safety-monitor``: the parser and the commands of the SAE, the sidecar and the demo. Each sub-command is a
thin shell over a module; the detector jobs and the feature toolkit register their own sub-commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from monitor.cli.common import UsageError, load_sae_arg
from monitor.dataclass_args import add_dataclass_args, dataclass_from_args
from monitor.defaults import DEFAULT_LAYER, DEFAULT_MODEL_ID


def cmd_encode(args: argparse.Namespace) -> int:
    from monitor.lm.loading import load_model
    from monitor.toolkit.encode_text import encode_text

    sae = load_sae_arg(args.sae)  # fail fast, before the model loads
    lm = load_model(args.model)
    if sae.cfg.d_in != lm.d_model:
        raise UsageError(f"the SAE reads d_in={sae.cfg.d_in} but {lm.model_id} has d_model={lm.d_model}")
    rows = encode_text(lm, sae, args.text, layer=args.layer, top=args.top, chat=args.chat)
    if args.json:
        print(json.dumps({"model": lm.model_id, "layer": args.layer, "sae_sha256": sae.sha256,
                          "tokens": [asdict(r) for r in rows]}))
        return 0
    print(f"model {lm.model_id}  layer {args.layer}  SAE {sae.sha256[:12]} ({sae.cfg.architecture}, "
          f"{sae.cfg.d_sae} latents)")
    for r in rows:
        lat = "  ".join(f"{i}:{v:.2f}" for i, v in r.latents) if r.latents else "(attention sink, not encoded)"
        print(f"{r.position:4d} {r.token!r:>16}  {lat}")
    return 0


# --------------------------------------------------------------------------- sae
def _collection_name(layer: int, split: str) -> str:
    """Folder name of an activation collection of the default model under the cache."""
    return f"{DEFAULT_MODEL_ID}-layer{layer}-{split}"


def _activations_dir(name: str) -> Path:
    from monitor.lm.loading import cache_root

    return cache_root() / "activations" / name


def cmd_sae_collect(args: argparse.Namespace) -> int:
    from monitor.dictionary.collect import CollectConfig, collect
    from monitor.dictionary.corpus import build_documents, default_data_dir
    from monitor.lm.loading import load_model
    from monitor.lm.runner import COMPUTE_DTYPES

    cfg = dataclass_from_args(CollectConfig, args)
    if cfg.compute_dtype not in COMPUTE_DTYPES:
        raise UsageError(f"--compute-dtype must be one of {', '.join(COMPUTE_DTYPES)}")
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    if not data_dir.is_dir():
        raise UsageError(f"data directory {data_dir} not found; pass --data-dir or set SAFETY_MONITOR_DATA")
    out = Path(args.out) if args.out else _activations_dir(_collection_name(cfg.layer, cfg.split))
    lm = load_model(args.model)
    print(f"building the token stream from {data_dir} ...", file=sys.stderr)
    docs = build_documents(lm.tokenizer, data_dir, context=args.context)
    manifest = collect(lm, docs, out, cfg)
    total = sum(s["n_tokens"] for s in manifest["shards"])
    print(json.dumps({"out": str(out), "tokens": total, "complete": manifest.get("complete", False)}))
    return 0


def cmd_sae_train(args: argparse.Namespace) -> int:
    import torch

    from monitor.dictionary.collect import open_activations
    from monitor.dictionary.train import ActivationStore, TrainConfig, train_sae

    cfg = dataclass_from_args(TrainConfig, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    acts_dir = Path(args.activations) if args.activations else _activations_dir(_collection_name(DEFAULT_LAYER, "train"))
    if not (acts_dir / "manifest.json").is_file():
        raise UsageError(f"no activation collection at {acts_dir}; run `safety-monitor sae collect` first")
    acts, _, manifest = open_activations(acts_dir)
    if args.max_tokens:
        acts = _first_tokens(acts, args.max_tokens)
    store = ActivationStore(acts, cfg.max_norm_ratio, cfg.seed)
    out = Path(args.out)
    print(f"training on {len(store):,} tokens from {acts_dir} -> {out}", file=sys.stderr)
    sae = train_sae(store, out, cfg, model_name=manifest["model"], hook_name=manifest["hook"],
                    device=args.device or None, dataset=f"{acts_dir.name}: corpus windows + chat-formatted labelled rows (train split)")
    print(json.dumps({"out": str(out / "final"), "sha256": sae.sha256}))
    return 0


def _first_tokens(shards, n: int):
    out, left = [], n
    for s in shards:
        if left <= 0:
            break
        out.append(s[:left])
        left -= len(out[-1])
    return out


def cmd_sae_eval(args: argparse.Namespace) -> int:
    import torch

    from monitor.dictionary.corpus import build_documents, default_data_dir, file_sequences
    from monitor.dictionary.evaluate import evaluate_sae
    from monitor.lm.loading import load_model

    sae = load_sae_arg(args.sae)
    lm = load_model(args.model)
    if args.data:
        try:
            seqs = file_sequences(lm.tokenizer, Path(args.data), context=args.context, limit=args.limit,
                                  fmt=args.format)
        except (FileNotFoundError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        source, extra = args.data, []
    else:
        docs = build_documents(lm.tokenizer, default_data_dir(), context=args.context)
        held_out = [d.input_ids for d in docs if d.split == "test"]
        seqs = held_out[: args.limit]
        extra, n = [], sum(len(s) - 1 for s in seqs)
        for s in held_out[args.limit :]:
            if n >= args.activation_tokens:
                break
            extra.append(s)
            n += len(s) - 1
        source = "held-out (test split) documents of the training token stream"
    if not seqs:
        raise UsageError("no sequences of at least 2 tokens to evaluate")
    if args.threads:
        torch.set_num_threads(args.threads)
    metrics = evaluate_sae(lm, sae, seqs, layer=args.layer, progress=not args.json,
                           activation_sequences=extra)
    result = {**metrics.to_dict(), "sae_sha256": sae.sha256, "data": source}
    if args.write_metrics:
        out = Path(args.sae or "") / "metrics.json" if args.sae else None
        from monitor.artifacts import default_sae_dir

        target = out or (default_sae_dir() / "metrics.json")
        target.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>18}  {v:.4f}" if isinstance(v, float) else f"{k:>18}  {v}")
    return 0


def cmd_sae_hash(args: argparse.Namespace) -> int:
    from monitor.sae import FrozenSAE

    sae = FrozenSAE.load(args.path)
    print(sae.sha256)
    return 0


# --------------------------------------------------------------------------- serve / model-server
def _pin_to_one_cpu(index: int | None, setting: str = "server.pin_cpu") -> int | None:
    """Restrict this thread, and every thread it starts from now on, to the ``index``-th CPU it may use
    (``setting``); returns that CPU's number, or None when ``index`` is None."""
    if index is None:
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if index >= len(allowed):
        raise UsageError(f"{setting}: {index}, but this process may use only {len(allowed)} CPU(s) "
                         f"({', '.join(map(str, allowed))}); use 0 to {len(allowed) - 1}")
    os.sched_setaffinity(0, {allowed[index]})
    return allowed[index]


def _settings_from_args(args: argparse.Namespace, section: str):
    from monitor.service.settings import SettingsError, load_settings

    listener = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    overrides: dict = {section: listener} if listener else {}
    if getattr(args, "sidecar_url", None):
        overrides.setdefault("model_server", {})["sidecar_url"] = args.sidecar_url
    try:
        return load_settings(args.config, **overrides)
    except SettingsError as exc:
        raise UsageError(str(exc)) from None


def _configure_logging(level: str) -> None:
    import logging

    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per shipped batch otherwise


def cmd_serve(args: argparse.Namespace) -> int:
    from monitor.service.sidecar import Sidecar, SidecarStartError

    settings = _settings_from_args(args, "server")
    _configure_logging(settings.server.log_level)
    pinned = _pin_to_one_cpu(settings.server.pin_cpu)  # before any thread starts: they inherit it
    try:
        sidecar = Sidecar.load(settings)
    except SidecarStartError as exc:
        raise UsageError(str(exc)) from None
    import uvicorn

    from monitor.service.app import create_app

    gen = sidecar.generation
    print(f"safety-monitor sidecar: SAE {sidecar.sae.sha256[:12]} ({sidecar.sae.cfg.architecture}, "
          f"{sidecar.sae.cfg.d_sae} latents), {len(gen.specs)} detectors, {len(gen.latents)} monitored latents, "
          f"listening on http://{settings.server.host}:{settings.server.port}"
          + ("" if pinned is None else f", pinned to CPU {pinned}"), file=sys.stderr, flush=True)
    uvicorn.run(create_app(sidecar), host=settings.server.host, port=settings.server.port,
                log_level=settings.server.log_level, access_log=settings.server.access_log,
                timeout_graceful_shutdown=int(settings.server.shutdown_drain_s) + 5)
    return 0


def cmd_model_server(args: argparse.Namespace) -> int:
    import torch

    from monitor.lm.loading import load_model
    from monitor.model_server import ModelServer, ModelServerStartError, create_model_server_app

    settings = _settings_from_args(args, "model_server")
    _configure_logging(settings.server.log_level)
    pinned = _pin_to_one_cpu(settings.model_server.pin_cpu, "model_server.pin_cpu")
    torch.set_num_threads(settings.model_server.torch_threads)
    lm = load_model(settings.model.id, dtype=getattr(torch, settings.model.dtype))
    try:
        server = ModelServer.from_settings(settings, lm)
    except ModelServerStartError as exc:
        raise UsageError(str(exc)) from None
    import uvicorn

    ms = settings.model_server
    target = ms.sidecar_url or "nowhere (model_server.sidecar_url is not set)"
    enc = server.encoding
    ships = (f"{len(enc.latents)} SAE latents of {len(enc.detectors)} detectors (raw share {ms.raw_share:g})"
             if enc is not None else "activations")
    print(f"safety-monitor model server: {lm.model_id}, tap on layer {settings.model.layer} ships {ships} -> "
          f"{target}, listening on http://{ms.host}:{ms.port}" + ("" if pinned is None else f", pinned to CPU {pinned}"),
          file=sys.stderr, flush=True)
    uvicorn.run(create_model_server_app(server), host=ms.host, port=ms.port, log_level=settings.server.log_level,
                access_log=settings.server.access_log)
    return 0


# --------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from monitor.demo import run_demo, summary, write_summary

    out = Path(args.out)
    print("safety-monitor demo: SmolLM2-135M-Instruct generates each reply live; the activation tap feeds the "
          "sidecar's scoring pipeline in-process; alerts go to a local outbox.\n", file=sys.stderr)
    results, specs = run_demo(out, max_new_tokens=args.max_new_tokens,
                              progress=(lambda s: None) if args.json else print)
    data = summary(results, specs)
    write_summary(out / "summary.json", data)
    if args.json:
        print(json.dumps(data, default=str))
    else:
        n_alerts = sum(len(r["alerts"]) for r in data["conversations"])
        print(f"\n{n_alerts} alerts; outbox: {out / 'outbox.sqlite3'}, JSONL: {out / 'alerts.jsonl'}, "
              f"summary: {out / 'summary.json'}")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from monitor.dictionary.collect import CollectConfig
    from monitor.dictionary.train import TrainConfig

    p = argparse.ArgumentParser(prog="safety-monitor", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    enc = sub.add_parser("encode", help="print the top SAE latents of each token of a text")
    enc.add_argument("text", help="text to run through the model")
    enc.add_argument("--sae", help="SAE directory (default: the shipped one, see artifacts/defaults.json)")
    enc.add_argument("--model", default=DEFAULT_MODEL_ID, help="model id or local HF directory")
    enc.add_argument("--layer", type=int, default=DEFAULT_LAYER, help="decoder layer to tap")
    enc.add_argument("--top", type=int, default=5, help="latents shown per token")
    enc.add_argument("--chat", action="store_true", help="wrap the text as a user turn of the chat template")
    enc.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    enc.set_defaults(func=cmd_encode)

    demo = sub.add_parser("demo", help="generate built-in conversations live and show the detectors firing")
    demo.add_argument("--out", default=".safety-monitor-demo", help="folder for the outbox, JSONL and summary")
    demo.add_argument("--max-new-tokens", type=int, default=40)
    demo.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    demo.set_defaults(func=cmd_demo)

    sae = sub.add_parser("sae", help="dictionary learning: collect activations, train, evaluate, hash").add_subparsers(
        dest="sae_command", required=True)
    col = sae.add_parser("collect", help="collect layer activations of the training token stream (resumable)")
    add_dataclass_args(col, CollectConfig)
    col.add_argument("--model", default=DEFAULT_MODEL_ID)
    col.add_argument("--context", type=int, default=256, help="tokens per document window")
    col.add_argument("--data-dir", help="datasets folder (default: ../shared/data or $SAFETY_MONITOR_DATA)")
    col.add_argument("--out", help="output folder (default: under the user cache)")
    col.set_defaults(func=cmd_sae_collect)

    tr = sae.add_parser("train", help="train a BatchTopK SAE on collected activations (resumable)")
    add_dataclass_args(tr, TrainConfig)
    tr.add_argument("--activations", help="collection folder (default: the layer-15 train collection)")
    tr.add_argument("--max-tokens", type=int, default=0, help="use only the first N collected tokens")
    tr.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    tr.add_argument("--device", help="torch device for the SAE, e.g. cpu or cuda:0 (default: CUDA when present)")
    tr.add_argument("--out", required=True, help="run folder: checkpoint.pt and final/ are written here")
    tr.set_defaults(func=cmd_sae_train)

    ev = sae.add_parser("eval", help="FVU, L0, dead latents, CE loss recovered and KL on held-out text")
    ev.add_argument("--sae", help="SAE directory (default: the shipped one)")
    ev.add_argument("--data", help=".jsonl or .txt file (default: held-out documents of the training stream)")
    ev.add_argument("--format", default="auto", choices=["auto", "text", "chat"],
                    help="how .jsonl rows become sequences (auto: chat when a row has turns)")
    ev.add_argument("--limit", type=int, default=400, help="sequences evaluated")
    ev.add_argument("--context", type=int, default=256, help="tokens per sequence")
    ev.add_argument("--activation-tokens", type=int, default=250_000,
                    help="held-out tokens for FVU, L0 and dead latents (read to layer L only; CE and KL use "
                         "--limit sequences); ignored with --data")
    ev.add_argument("--model", default=DEFAULT_MODEL_ID)
    ev.add_argument("--layer", type=int, default=DEFAULT_LAYER)
    ev.add_argument("--threads", type=int, default=0)
    ev.add_argument("--write-metrics", action="store_true", help="also write metrics.json beside the SAE")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.set_defaults(func=cmd_sae_eval)

    hs = sae.add_parser("hash", help="print the sha256 an SAE is pinned by")
    hs.add_argument("path")
    hs.set_defaults(func=cmd_sae_hash)

    srv = sub.add_parser("serve", help="run the sidecar: ingest activations, score detectors, raise alerts",
                         description="Settings come from --config, SAFETY_MONITOR_* variables and these flags "
                                     "(see docs/sidecar.md).")
    srv.add_argument("--config", help="YAML settings file")
    srv.add_argument("--host", help="interface to bind (server.host)")
    srv.add_argument("--port", type=int, help="TCP port (server.port)")
    srv.set_defaults(func=cmd_serve)

    ms = sub.add_parser("model-server", help="run the example chat model server with the tap shipping to a sidecar")
    ms.add_argument("--config", help="YAML settings file (the same file as the sidecar's)")
    ms.add_argument("--host", help="interface to bind (model_server.host)")
    ms.add_argument("--port", type=int, help="TCP port (model_server.port)")
    ms.add_argument("--sidecar-url", help="sidecar base URL (model_server.sidecar_url)")
    ms.set_defaults(func=cmd_model_server)

    try:
        from alerts.cli import register as register_alerts
    except ImportError:
        register_alerts = None
    if register_alerts is not None:
        register_alerts(sub)
    from monitor.cli.detector_jobs import register as register_detector_jobs

    register_detector_jobs(sub)
    from monitor.cli.samples_jobs import register as register_samples

    register_samples(sub)  # after detector_jobs: it adds --thresholds-from to its calibrate
    from monitor.cli.feature_toolkit import register as register_feature_toolkit

    register_feature_toolkit(sub, sae)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    from monitor.lm.loading import ModelLoadError
    from monitor.sae import SAELoadError
    from monitor.service.settings import SettingsError

    try:
        return int(args.func(args) or 0)
    except (UsageError, ModelLoadError, SAELoadError, SettingsError) as exc:
        print(f"safety-monitor: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
