"""``safety-monitor sae index``, ``features top|neighbors|search`` and ``steer``: the feature toolkit's CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _sae_dir(args) -> Path:
    from monitor.artifacts import default_sae_dir
    from monitor.cli.common import UsageError

    d = Path(args.sae) if args.sae else default_sae_dir()
    if d is None:
        raise UsageError("no SAE: pass --sae DIR")
    return d


def _index(args):
    from monitor.cli.common import UsageError
    from monitor.toolkit.feature_index import INDEX_FILE, FeatureIndex

    path = _sae_dir(args) / INDEX_FILE
    if not path.is_file():
        raise UsageError(f"no feature index at {path}; build it with `safety-monitor sae index`")
    return FeatureIndex.load(path)


def cmd_sae_index(args: argparse.Namespace) -> int:
    import torch

    from monitor.cli.common import load_sae_arg
    from monitor.dictionary.corpus import build_documents, default_data_dir
    from monitor.lm.loading import load_model
    from monitor.lm.runner import tap_sequences
    from monitor.toolkit.feature_index import INDEX_FILE, build_index

    if args.threads:
        torch.set_num_threads(args.threads)
    sae = load_sae_arg(args.sae)
    lm = load_model(args.model)
    docs = [d for d in build_documents(lm.tokenizer, default_data_dir(), context=args.context) if d.split == "test"]
    docs = docs[: args.docs]
    acts: list[np.ndarray] = [np.zeros(0)] * len(docs)
    from tqdm import tqdm

    with tqdm(total=len(docs), desc="held-out documents", unit="doc") as bar:
        for results in tap_sequences(lm, args.layer, [d.input_ids for d in docs], batch_size=16):
            for i, batch in results:
                acts[i] = batch.activations.numpy()
            bar.update(len(results))
    index = build_index(sae, [d.input_ids.numpy() for d in docs], acts, top_k=args.top_k)
    out = index.save(_sae_dir(args) / INDEX_FILE)
    labels = _write_labels(index, lm, sae.sha256, _sae_dir(args))
    print(json.dumps({"index": str(out), "bytes": out.stat().st_size, "tokens": index.n_tokens,
                      "dead_fraction": float((index.max_activation <= 0).mean()), **labels}))
    return 0


def _write_labels(index, lm, sha256: str, sae_dir: Path) -> dict:
    from monitor.toolkit.latent_labels import LABELS_FILE, label_latents, save_labels

    labels = label_latents(index, lambda ids: lm.tokenizer.decode(ids))
    path = save_labels(sae_dir / LABELS_FILE, labels, sha256)
    return {"labels": str(path), "labelled": len(labels), "formatting": sum(v.formatting for v in labels.values())}


def cmd_sae_label(args: argparse.Namespace) -> int:
    """Labels from an existing feature index (no model run; the tokenizer decodes the contexts)."""
    from monitor.lm.loading import load_model

    index = _index(args)
    print(json.dumps(_write_labels(index, load_model(args.model), index.sae_sha256, _sae_dir(args))))
    return 0


def _labels(args, sha256: str) -> dict:
    """The SAE's latent labels (``latent_labels.json``; empty when not built yet)."""
    from monitor.toolkit.latent_labels import LABELS_FILE, load_labels

    return load_labels(_sae_dir(args) / LABELS_FILE, sha256)


def cmd_features_top(args: argparse.Namespace) -> int:
    from monitor.cli.common import UsageError, load_sae_arg
    from monitor.lm.loading import load_model
    from monitor.toolkit.feature_index import latent_contexts, neighbors, render_html, render_terminal

    sae = load_sae_arg(args.sae)
    if not 0 <= args.latent < sae.cfg.d_sae:
        raise UsageError(f"latent must be in [0, {sae.cfg.d_sae})")
    index = _index(args)
    lm = load_model(args.model)
    ctxs = latent_contexts(index, sae, lm, args.latent, n=args.n, layer=args.layer)
    vmax = float(index.max_activation[args.latent])
    if args.html:
        Path(args.html).write_text(render_html(args.latent, ctxs, vmax, neighbors=neighbors(sae, args.latent, 8),
                                               density=float(index.density[args.latent])))
        print(f"wrote {args.html}")
        return 0
    label = _labels(args, sae.sha256).get(args.latent)
    print(f"latent {args.latent}: max {vmax:.2f}, fires on {index.density[args.latent]:.3%} of "
          f"{index.n_tokens:,} held-out tokens" + (f"; label {label.label}" if label else ""))
    if not ctxs:
        print("  (never active on the held-out documents)")
    for c in ctxs:
        print(f"{c.value:7.2f}  {render_terminal(c, vmax)}")
    return 0


def cmd_features_neighbors(args: argparse.Namespace) -> int:
    from monitor.cli.common import load_sae_arg
    from monitor.toolkit.feature_index import neighbors

    sae = load_sae_arg(args.sae)
    rows = neighbors(sae, args.latent, args.n)
    if args.json:
        print(json.dumps([{"latent": i, "cosine": s} for i, s in rows]))
    else:
        for i, s in rows:
            print(f"{i:6d}  {s:+.3f}")
    return 0


def cmd_features_search(args: argparse.Namespace) -> int:
    from monitor.cli.common import load_sae_arg
    from monitor.lm.loading import load_model
    from monitor.toolkit.feature_index import search

    sae = load_sae_arg(args.sae)
    lm = load_model(args.model)
    rows = search(sae, lm, args.text, layer=args.layer, n=args.n)
    labels = _labels(args, sae.sha256)
    if args.json:
        print(json.dumps([{"latent": i, "activation": v, "token": t,
                           "label": labels[i].label if i in labels else None} for i, v, t in rows]))
    else:
        for i, v, t in rows:
            print(f"{i:6d}  {v:7.2f}  peak on {t!r}  {labels[i].label if i in labels else ''}")
    return 0


def cmd_steer(args: argparse.Namespace) -> int:
    from monitor.cli.common import UsageError, load_sae_arg
    from monitor.lm.loading import load_model
    from monitor.toolkit.steering import steer

    sae = load_sae_arg(args.sae)
    if (args.scale is None) == (args.value is None):
        raise UsageError("give exactly one of --scale X (times the latent's max activation) or --value V")
    target = args.value
    if target is None:
        target = args.scale * float(_index(args).max_activation[args.latent])
    lm = load_model(args.model)
    r = steer(lm, sae, args.prompt, latent=args.latent, target=target, layer=args.layer,
              max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps(r.__dict__))
    else:
        print(f"prompt: {r.prompt}\n\n--- unsteered\n{r.unsteered}\n\n--- latent {r.latent} clamped to {r.target:.2f}\n"
              f"{r.steered}")
    return 0


def register(sub, sae_sub) -> None:
    """Add the toolkit commands: ``sae index`` under ``sae``, and ``features`` and ``steer`` at top level."""
    from monitor.defaults import DEFAULT_LAYER, DEFAULT_MODEL_ID

    def common(p):
        p.add_argument("--sae", help="SAE directory (default: the shipped one)")
        p.add_argument("--model", default=DEFAULT_MODEL_ID)
        p.add_argument("--layer", type=int, default=DEFAULT_LAYER)

    ix = sae_sub.add_parser("index", help="precompute the feature index (top contexts, density) beside the SAE")
    common(ix)
    ix.add_argument("--docs", type=int, default=2000, help="held-out documents indexed")
    ix.add_argument("--top-k", type=int, default=16, help="contexts kept per latent")
    ix.add_argument("--context", type=int, default=256)
    ix.add_argument("--threads", type=int, default=0)
    ix.set_defaults(func=cmd_sae_index)
    lb = sae_sub.add_parser("label", help="label every latent from the feature index (top tokens and contexts; "
                                           "formatting latents marked) into latent_labels.json beside the SAE")
    lb.add_argument("--sae", help="SAE directory (default: the shipped one)")
    lb.add_argument("--model", default=DEFAULT_MODEL_ID)
    lb.set_defaults(func=cmd_sae_label)

    feat = sub.add_parser("features", help="inspect latents: top contexts, neighbours, search").add_subparsers(
        dest="features_command", required=True)
    top = feat.add_parser("top", help="top-activating held-out contexts of a latent, highlighted")
    top.add_argument("latent", type=int)
    top.add_argument("-n", type=int, default=8)
    top.add_argument("--html", help="write an HTML page instead")
    common(top)
    top.set_defaults(func=cmd_features_top)
    nb = feat.add_parser("neighbors", help="nearest latents by decoder cosine similarity")
    nb.add_argument("latent", type=int)
    nb.add_argument("-n", type=int, default=10)
    nb.add_argument("--json", action="store_true")
    common(nb)
    nb.set_defaults(func=cmd_features_neighbors)
    se = feat.add_parser("search", help="latents most active on a text")
    se.add_argument("text")
    se.add_argument("-n", type=int, default=10)
    se.add_argument("--json", action="store_true")
    common(se)
    se.set_defaults(func=cmd_features_search)

    st = sub.add_parser("steer", help="generate with a latent clamped, beside the unsteered generation")
    st.add_argument("prompt")
    st.add_argument("--latent", type=int, required=True)
    st.add_argument("--scale", type=float, help="target = scale x the latent's max held-out activation")
    st.add_argument("--value", type=float, help="target activation value")
    st.add_argument("--max-new-tokens", type=int, default=48)
    st.add_argument("--json", action="store_true")
    common(st)
    st.set_defaults(func=cmd_steer)
