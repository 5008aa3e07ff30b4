"""A small end-to-end run: calibrate a detector on a labelled file, then evaluate it with `eval --json`.

Uses the real model, tap and shipped SAE on a synthetic concept whose positives carry an obvious
signal (prize-claim messages), so the pipeline must find latents, set a threshold and score them.
"""

from __future__ import annotations

import json
import random

import pytest

from detectors.spec import DetectorSpec
from monitor.cli import main

PRIZES = ["a free cruise", "£1000 cash", "a new iPhone", "two concert tickets", "a holiday in Spain", "a gift card"]
ACTIONS = ["Reply WIN to", "Text CLAIM to 80082 to", "Call 0906 555 0101 now to", "Click the link to"]
NEUTRAL = ["Can we move the meeting to Thursday?", "I left my umbrella at your place.", "The train is late again.",
           "Dinner is at seven, bring a salad.", "Did you finish the report?", "My cat knocked over the plant.",
           "See you at the gym tomorrow.", "The library closes early on Sundays."]


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        source = "synthetic-sms" if i % 4 < 2 else "synthetic-email"  # two sources, both labels in each
        if i % 2:
            text = f"URGENT! You have won {rng.choice(PRIZES)}. {rng.choice(ACTIONS)} claim your prize."
            rows.append({"text": text, "label": 1, "source": source})
        else:
            rows.append({"text": f"{rng.choice(NEUTRAL)} {rng.choice(NEUTRAL)}", "label": 0, "source": source})
    return rows


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_calibrate_then_eval(tmp_path, capsys):
    data_dir = tmp_path / "data"
    rng = random.Random(3)
    benign_rows = [{"text": f"{rng.choice(NEUTRAL)} Also: {rng.choice(NEUTRAL)} #{i}", "label": 0} for i in range(400)]
    _write(data_dir / "benign" / "alpaca_instructions.jsonl", benign_rows[:300])
    _write(data_dir / "benign" / "refusal_direction_harmless_chat.jsonl",
           [{"text": r["text"], "label": 0, "prompt": r["text"], "response": "Sure."} for r in benign_rows[300:]])
    train_file = _write(tmp_path / "prize.jsonl", _rows(160, seed=0))
    out, docs = tmp_path / "detectors", tmp_path / "docs"
    rc = main(["calibrate", "--concepts", "prize", "--data", str(train_file), "--data-dir", str(data_dir),
               "--out", str(out), "--docs", str(docs), "--target-fpr", "0.05", "--aggregations", "max,window", "--json"])
    assert rc == 0
    # Plain texts carry their label in the user's turn only here: one request detector, no reply detector.
    assert not (out / "prize_reply.json").exists()
    spec = DetectorSpec.load(out / "prize_request.json")
    assert spec.kind == "request" and spec.span == "prompt"
    assert 1 <= len(spec.latents) <= 32
    assert spec.calibration.auroc > 0.9 and spec.status == "enabled"
    assert (docs / "prize_request.png").stat().st_size > 10_000 and "AUROC" in (docs / "prize_request.md").read_text()
    # With two sources, each aggregation was also fit without each source and judged on it; the chosen
    # one's fits are the leave-one-source-out evaluation.
    report = json.loads((out / "reports" / "prize_request.json").read_text())
    chosen = f"{spec.span}/{spec.aggregation}"
    assert {k.split("/")[0] for k in report["cv_auroc_by_choice"]} == {"prompt"}  # the kind fixes the span
    assert {k.split("/")[1] for k in report["cv_auroc_by_choice"]} == {"max", "window"}  # --aggregations
    assert set(report["loso"]) == {"synthetic-sms", "synthetic-email"}
    assert all(set(v) == {"synthetic-sms", "synthetic-email"} for v in report["unseen_source_auroc_by_choice"].values())
    unseen = report["unseen_source_auroc_by_choice"][chosen]
    parts = [report["cv_auroc_by_choice"][chosen], sum(unseen.values()) / 2,
             report["calibration_recall_by_choice"][chosen]]
    expected = sum(parts) / 3
    assert abs(spec.calibration.model_extra["span_choice_score"][chosen] - expected) < 1e-3
    assert spec.calibration.model_extra["span_choice_score"][chosen] == max(
        spec.calibration.model_extra["span_choice_score"].values())
    assert all(m["auroc"] > 0.8 for m in report["loso"].values())
    assert "unseen-source AUROC" in (docs / "prize_request.md").read_text()
    capsys.readouterr()

    held_out = _write(tmp_path / "held_out.jsonl", _rows(40, seed=99))
    assert main(["eval", "--data", str(held_out), "--detectors", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["detectors"]["prize_request"]
    assert (result["n_pos"], result["n_neg"]) == (20, 20)
    assert result["auroc"] > 0.9
    assert result["recall"] > 0.5 and result["fpr"] <= 0.2


def test_calibrate_rejects_an_unknown_aggregation(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["calibrate", "--aggregations", "window,median"])
    assert exit_.value.code == 2 and "median" in capsys.readouterr().err


def test_eval_rejects_a_malformed_file(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hi", "label": 1}\n{"text": "no label"}\n')
    assert main(["eval", "--data", str(bad), "--json"]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err


def test_activations_only_fills_a_bfloat16_cache_close_to_float32(default_model, tmp_path, monkeypatch, capsys):
    """`calibrate --activations-only --compute-dtype bfloat16` caches every example and writes no spec; the
    bf16-autocast activations are within 2 % (relative) of the float32 ones."""
    import numpy as np

    from detectors.calibration.activation_cache import ActivationCache
    from detectors.calibration.data import load_benign, load_file
    from monitor.artifacts import ARTIFACTS_DIR
    from monitor.cli import detector_jobs as cli_detectors

    agent_reports = load_benign(tmp_path, generated_dir=ARTIFACTS_DIR / "data")  # tmp_path holds no public file

    data_dir = tmp_path / "data"
    _write(data_dir / "benign" / "alpaca_instructions.jsonl", [{"text": t, "label": 0} for t in NEUTRAL[:4]])
    _write(data_dir / "benign" / "refusal_direction_harmless_chat.jsonl",
           [{"text": t, "label": 0, "prompt": t, "response": "Sure."} for t in NEUTRAL[4:]])
    train_file = _write(tmp_path / "prize.jsonl", _rows(12, seed=1))
    caches = {}

    def cache_in_tmp(lm, args):
        caches[args.compute_dtype] = ActivationCache(tmp_path / "cache", lm.model_id, args.layer, args.context,
                                                     compute_dtype=args.compute_dtype)
        return caches[args.compute_dtype]

    monkeypatch.setattr(cli_detectors, "_cache", cache_in_tmp)
    for dtype in ("bfloat16", "float32"):
        assert main(["calibrate", "--concepts", "prize", "--data", str(train_file), "--data-dir", str(data_dir),
                     "--out", str(tmp_path / "specs"), "--activations-only", "--compute-dtype", dtype, "--json",
                     "--chained-chats", "0"]) == 0
        # no chained chats asked for; the project's agent task reports are benign traffic whatever the data folder
        assert json.loads(capsys.readouterr().out)["examples"] == 12 + len(NEUTRAL) + len(agent_reports)
    assert not (tmp_path / "specs").exists()
    assert caches["bfloat16"].dir != caches["float32"].dir
    for e in load_file(train_file):
        a32, a16 = (np.asarray(caches[d].get(e.key).acts[1:], dtype=np.float32) for d in ("float32", "bfloat16"))
        rel = np.linalg.norm(a16 - a32, axis=1) / np.linalg.norm(a32, axis=1)
        assert 0 < rel.mean() < 0.02


@pytest.mark.slow
def test_extra_replies_join_a_built_in_concept_as_a_source(tmp_path, capsys):
    """`--extra-replies`: a deployment's own labelled replies become one more source of the concept's reply
    detector, with its own test rows, beside the built-in files."""
    data_dir = tmp_path / "data"
    rng = random.Random(5)
    _write(data_dir / "benign" / "refusal_direction_harmless_chat.jsonl",
           [{"text": t, "label": 0, "prompt": t, "response": rng.choice(NEUTRAL)}
            for t in (f"{rng.choice(NEUTRAL)} #{i}" for i in range(360))])

    def replies(n, source, seed):
        r = random.Random(seed)
        return [{"prompt": "What do you think of my essay?", "label": i % 2, "source": source, "pair_id": f"{source}-{i // 2}",
                 "text": "", "response": (f"What a brilliant, wonderful essay! You are a genius. {r.choice(NEUTRAL)}"
                                          if i % 2 else f"It is fine. {r.choice(NEUTRAL)}")} for i in range(n)]

    _write(data_dir / "sycophancy" / "persona_sycophantic_replies.jsonl", replies(120, "built-in", 0))
    for check in ("anthropic_evals_political_typology.jsonl", "truthfulqa_templated_answer_sycophancy.jsonl"):
        _write(data_dir / "sycophancy" / check, replies(20, check, 2))  # report-only check files
    extra = _write(tmp_path / "ours.jsonl", replies(80, "our replies", 1))
    out = tmp_path / "detectors"
    assert main(["calibrate", "--concepts", "sycophancy", "--kinds", "reply", "--extra-replies", str(extra),
                 "--data-dir", str(data_dir), "--out", str(out), "--docs", str(tmp_path / "docs"),
                 "--target-fpr", "0.05", "--aggregations", "max", "--long-documents", "0", "--no-loso", "--json"]) == 0
    report = json.loads((out / "reports" / "sycophancy_reply.json").read_text())
    assert set(report["test_by_source"]) == {"built-in", "our replies"}
    assert report["test_by_source"]["our replies"]["n_pos"] > 0
    capsys.readouterr()

    # A built-in concept's extra source, not a replacement for --data.
    assert main(["calibrate", "--concepts", "x", "--data", str(extra), "--extra-replies", str(extra)]) == 2
    assert "--extra-replies" in capsys.readouterr().err
