"""How well a judge separates educational text from the rest, per language and per length.

    python benchmarks/judge_eval.py                       # the default judge on reference texts
    python benchmarks/judge_eval.py --judge-profile gemma3-270m-edu
    python benchmarks/judge_eval.py --speech --asr-model embedded:whisper-base   # on pipeline transcripts
    python benchmarks/judge_eval.py --profile gpu         # the GPU profile's judge (vLLM), on a GPU node
    python benchmarks/judge_eval.py --profile gpu --set judge.backend=transformers --set judge.model=PATH

Dev set, built in code from Debian packages (`apt-get install fortunes fortunes-de fortunes-es
fortunes-it debian-reference-en debian-reference-de debian-reference-es debian-reference-it
wordnet-base dict-foldoc`), labelled by source alone, never by reading a text:

* educational (label 1): definitions and explanations written to teach:
  - English: WordNet noun glosses ("river: a large natural stream of water"), FOLDOC
    (the Free On-line Dictionary of Computing) entries, and the Debian Reference;
  - German, Spanish, Italian: the Debian Reference's translations (a system administration
    guide: teaching text, but about one subject; other languages' dictionaries that Debian ships
    are word-for-word translation tables, not prose).
* not educational (label 0): fortune-cookie files in the same language (sayings, quotes, jokes,
  anecdotes, proverbs). Fortune files whose name says they hold something else are left out,
  decided by the file name before any text was scored (`FORTUNE_FILES_LEFT_OUT`): recipes, ASCII
  art, quizzes and "did you know" facts, tips, name lists, translation notes.

Texts are cut into units of one to three whole sentences and put into three length buckets by
characters (`BUCKETS`: short < 60, most of Common Voice; medium 60-150; long 150-400). The set
draws the same number of texts per (language, label, bucket), so length says nothing about the
label. Each text's half is fixed by its own SHA-256 (`split_of`), not by the sample: `eval`
texts are held out from every calibration (`--fit` fits on `fit` only), whatever the sizes asked.

Reported per language, per bucket and in all: ROC AUC of edu_score_mean, precision and recall of
`edu_score >= --min-score` (the pipeline's default 3) for the educational class, the kept
fraction; and rows/s per judge thread (wall time of `score_batch` over the set in blocks of 8,
divided by the judge's threads; the CPU is named). `--speech` speaks each text with espeak-ng
in its language and judges the pipeline's transcript instead (Whisper tiny.en, the default
model, transcribes English only: pass `--asr-model embedded:whisper-base` for the others), and
also reports by each transcript's WER against its text (`wer<0.25`, `wer 0.25-0.5`, `wer>=0.5`),
which tells the judge's misses from the ASR's.

Calibration: `--fit` fits a map on the `fit` half and reports the held-out half with it;
`--length` adds the log length as a second regressor (`Calibration.length_slope`: small judges
score long texts higher whatever they say); `--target-recall R` moves the map so that the
default threshold keeps R of the fit half's educational rows; `--write` stores it in the
shipped profile with the model, weights type and engine version it was fitted with;
`--refit-from RESULTS.json` refits on an earlier run's per-row scores without judging again.
The shipped Gemma maps: `--fit --length --target-recall 0.8` (0.75, the issue's figure, plus a
margin; 0.8 was picked among 0.5-logistic, 0.8 and 0.85 after seeing all three on the held-out
half, so its held-out figures are slightly optimistic).

Measuring your own GPU judge: on a node with vLLM and the model's weights, `--profile gpu`
(plus `--set judge.model=...`, `--set judge.profile=your.yaml`) runs the judge through the same
`ray.data.llm` processor a run uses and reports the same figures; `--split eval` keeps to the
held-out half. Results go to benchmarks/results/judge_eval_<name>.json (`--out`).
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import html
import json
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from intervals import wilson  # benchmarks/, beside this file

RESULTS = Path(__file__).resolve().parent / "results"
FORTUNES = Path("/usr/share/games/fortunes")
DEBIAN_REFERENCE = Path("/usr/share/debian-reference")
WORDNET_NOUNS = Path("/usr/share/wordnet/data.noun")
FOLDOC = Path("/usr/share/dictd/foldoc.dict.dz")
APT_PACKAGES = ("fortunes fortunes-de fortunes-es fortunes-it debian-reference-en debian-reference-de "
                "debian-reference-es debian-reference-it wordnet-base dict-foldoc")
LANGUAGES = ("en", "de", "es", "it")
LANGUAGE_NAMES = {"en": "English", "de": "German", "es": "Spanish", "it": "Italian"}
VOICES = {"en": "en-us", "de": "de", "es": "es", "it": "it"}
BUCKETS = (("short", 20, 60), ("medium", 60, 150), ("long", 150, 400))
# With --speech: how far each transcript is from its text (WER), so a miss can be told apart from the ASR's.
WER_BUCKETS = (("wer<0.25", 0.0, 0.25), ("wer 0.25-0.5", 0.25, 0.5), ("wer>=0.5", 0.5, float("inf")))
# English fortune files (package `fortunes`, `fortunes-min`); the root folder also holds Italian ones.
ENGLISH_FORTUNE_FILES = (
    "art computers cookie debian definitions disclaimer drugs education ethnic food fortunes goedel "
    "humorists kids knghtbrd law linux linuxcookie literature love magic medicine men-women miscellaneous "
    "news paradoxum people perl pets platitudes politics pratchett riddles science songs-poems sports "
    "startrek tao wisdom work zippy").split()
FORTUNE_FILES_LEFT_OUT = {
    "ascii-art": "ASCII art", "banner": "ASCII art", "asciiart": "ASCII art",
    "beilagen": "recipes", "brot": "recipes", "dessert": "recipes", "hauptgericht": "recipes",
    "kalt": "recipes", "kuchen": "recipes", "plaetzchen": "recipes", "salat": "recipes",
    "sauce": "recipes", "suppe": "recipes", "vorspeise": "recipes",
    "quiz": "quiz questions", "wusstensie": "'did you know' facts", "tips": "tips",
    "sicherheitshinweise": "safety notes", "woerterbuch": "a glossary", "namen": "name lists",
    "vornamen": "name lists", "translations": "translation notes", "translate-me": "translation notes",
    "infodrom": "site notices", "linuxtag": "event notices", "channel-debian.fortunes": "chat logs",
    "varios.fortunes-pre": "a draft file",
}


# ---- sources ---------------------------------------------------------------------------------
def split_of(text: str) -> str:
    """`fit` or `eval`, fixed by the text itself: no sample size or seed moves a text across."""
    return "fit" if hashlib.sha256(text.encode()).digest()[0] % 2 == 0 else "eval"


def _flat(text: str) -> str:
    return " ".join(text.split())


def _speakable(text: str) -> bool:
    """Prose a voice can read: no markup, paths or code, mostly letters."""
    if re.search(r"[{}|<>\[\]=_*#@/\\$`~^]", text) or re.search(r"\w\.\w", text):
        return False
    letters = sum(c.isalpha() for c in text)
    return letters >= 0.75 * len(text.replace(" ", "")) and not re.search(r"(.)\1{4,}", text)


def _units(paragraph: str) -> list[str]:
    """Runs of one to three whole sentences of a paragraph."""
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-ZÄÖÜÁÉÍÓÚÑ¿¡])", _flat(paragraph)) if s.strip()]
    out = []
    for n in (1, 2, 3):
        out += [" ".join(sentences[i:i + n]) for i in range(0, len(sentences) - n + 1, n)]
    return out


def fortunes(language: str) -> dict[str, list[str]]:
    """{file name: cookies} of one language's fortune files; attributions ("-- Author") dropped."""
    folder = FORTUNES if language == "en" else FORTUNES / language
    names = ENGLISH_FORTUNE_FILES if language == "en" else sorted(
        p.name for p in folder.iterdir() if p.is_file() and not p.name.endswith((".dat", ".u8")))
    out = {}
    for name in names:
        if name in FORTUNE_FILES_LEFT_OUT or name == "off":
            continue
        path = folder / (f"{name}.u8" if (folder / f"{name}.u8").exists() else name)
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        cookies = []
        for cookie in re.split(r"^%\s*$", text, flags=re.M):
            lines = [ln for ln in cookie.splitlines() if not re.match(r"^\s*(--|—|~~)", ln)]
            cookies.append(_flat("\n".join(lines)))
        out[f"fortunes/{name}"] = [c for c in cookies if c]
    return out


def debian_reference(language: str) -> list[str]:
    """Paragraphs of the Debian Reference in `language`, markup stripped."""
    out = []
    for page in sorted(DEBIAN_REFERENCE.glob(f"*.{language}.html")):
        for p in re.findall(r"<p>(.*?)</p>", page.read_text(encoding="utf-8"), flags=re.S):
            out.append(_flat(html.unescape(re.sub(r"<[^>]+>", "", p))))
    return out


def wordnet_glosses() -> list[str]:
    """'word: definition' for WordNet noun synsets (the gloss before its quoted examples)."""
    out = []
    for line in WORDNET_NOUNS.read_text(encoding="latin-1").splitlines():
        if line.startswith(" ") or "|" not in line:
            continue
        head, gloss = line.split("|", 1)
        word = head.split()[4].replace("_", " ")
        definition = gloss.split(";")[0].split('"')[0].strip()
        definition = re.sub(r"\s*\([^)]*\)", "", definition)
        if definition:
            out.append(f"{word}: {definition}.")
    return out


def foldoc_paragraphs() -> list[str]:
    """Paragraphs of FOLDOC's entries: cross-reference braces, subject tags and dates removed."""
    text = gzip.decompress(FOLDOC.read_bytes()).decode("utf-8", "replace")
    out = []
    for block in re.split(r"\n\s*\n", text):
        if not block.startswith("   ") or re.match(r"\s*\(\d{4}-\d\d-\d\d\)", block):
            continue
        block = re.sub(r"<[^>]+>\s*", "", block).replace("{", "").replace("}", "")
        out.append(_flat(re.sub(r"\([A-Z]{2,}\)\s*", "", block)))
    return out


@functools.lru_cache(maxsize=None)
def sources(language: str) -> dict[int, dict[str, list[str]]]:
    """{label: {source name: candidate texts}} for one language."""
    missing = [p for p in (FORTUNES, DEBIAN_REFERENCE, WORDNET_NOUNS, FOLDOC) if not p.exists()]
    if missing:
        raise SystemExit(f"missing {', '.join(map(str, missing))}: apt-get install {APT_PACKAGES}")
    edu = {f"debian-reference/{language}": [u for p in debian_reference(language) for u in _units(p)]}
    if language == "en":
        edu["wordnet"] = wordnet_glosses()
        edu["foldoc"] = [u for p in foldoc_paragraphs() for u in _units(p)]
    return {1: edu, 0: fortunes(language)}


@functools.lru_cache(maxsize=None)
def candidates(language: str) -> dict[int, dict[str, list[tuple[str, str]]]]:
    """{label: {source: [(text, half)]}}: the speakable texts of 4 words or more that fit a bucket, sorted."""
    lo, hi = BUCKETS[0][1], BUCKETS[-1][2]
    return {label: {name: [(t, split_of(t)) for t in sorted(set(texts))
                           if lo <= len(t) < hi and len(t.split()) >= 4 and _speakable(t)]
                    for name, texts in sorted(by_source.items())}
            for label, by_source in sources(language).items()}


def bucket_of(text: str) -> str:
    n = len(text)
    return next((name for name, lo, hi in BUCKETS if lo <= n < hi), "long" if n >= 400 else "short")


def dev_set(per_cell: dict[str, int], seed: int = 0) -> list[dict[str, Any]]:
    """`per_cell[language]` texts per (label, length bucket, half), drawn at random (seeded) and in
    turn from the label's sources, so no one source fills a cell."""
    rng = random.Random(seed)
    items = []
    for language, n in per_cell.items():
        for label, by_source in candidates(language).items():
            for bucket, lo, hi in BUCKETS:
                for split in ("fit", "eval"):
                    pools = {name: [t for t, t_split in texts if lo <= len(t) < hi and t_split == split]
                             for name, texts in by_source.items()}
                    pools = {k: v for k, v in pools.items() if v}
                    for pool in pools.values():
                        rng.shuffle(pool)
                    names = sorted(pools)
                    rng.shuffle(names)
                    taken = 0
                    while taken < n and any(pools.values()):
                        for name in names:
                            if taken < n and pools[name]:
                                items.append({"text": pools[name].pop(), "label": label, "language": language,
                                              "source": name, "bucket": bucket, "split": split})
                                taken += 1
    for i, it in enumerate(items):
        it["id"] = f"{it['language']}_{hashlib.sha256(it['text'].encode()).hexdigest()[:12]}"
    return items


# ---- metrics ---------------------------------------------------------------------------------
def metrics(means: np.ndarray, scores: np.ndarray, labels: np.ndarray, min_score: int = 3) -> dict[str, float]:
    """ROC AUC of the expected score; precision, recall and kept fraction of `score >= min_score`."""
    from sklearn.metrics import roc_auc_score

    keep = scores >= min_score
    tp = int(np.sum(keep & (labels == 1)))
    out = {"n": int(len(labels)), "precision": tp / max(int(keep.sum()), 1),
           "recall": tp / max(int((labels == 1).sum()), 1), "kept_fraction": float(keep.mean()) if len(keep) else 0.0}
    out["roc_auc"] = float(roc_auc_score(labels, means)) if len(set(labels.tolist())) == 2 else float("nan")
    out["precision_ci95"], out["recall_ci95"] = wilson(tp, int(keep.sum())), wilson(tp, int((labels == 1).sum()))
    return out


def precision_at_recall(means: np.ndarray, labels: np.ndarray, recall: float = 0.75) -> float:
    """The best precision of any threshold on the expected score that keeps >= `recall` of the educational rows."""
    order = np.argsort(-means)
    tp = np.cumsum(labels[order] == 1)
    kept = np.arange(1, len(order) + 1)
    ok = tp / max(int((labels == 1).sum()), 1) >= recall
    return float((tp / kept)[ok].max()) if ok.any() else 0.0


def report(items: list[dict[str, Any]], means: np.ndarray, scores: np.ndarray, min_score: int) -> dict[str, Any]:
    """Figures over everything, per language, per bucket and per (language, bucket); per transcript WER
    bucket when the items carry `wer` (--speech)."""
    labels = np.array([it["label"] for it in items])
    groups: dict[str, np.ndarray] = {"all": np.ones(len(items), bool)}
    for key in ("language", "bucket"):
        for value in sorted({it[key] for it in items}):
            groups[f"{key}={value}"] = np.array([it[key] == value for it in items])
    if all("wer" in it for it in items):
        for name, lo, hi in WER_BUCKETS:
            groups[name] = np.array([lo <= it["wer"] < hi for it in items])
    for language in sorted({it["language"] for it in items}):
        for bucket, _, _ in BUCKETS:
            groups[f"language={language},bucket={bucket}"] = np.array(
                [it["language"] == language and it["bucket"] == bucket for it in items])
    out = {}
    for name, mask in groups.items():
        if mask.sum():
            m = metrics(means[mask], scores[mask], labels[mask], min_score)
            m["precision_at_recall_0.75"] = precision_at_recall(means[mask], labels[mask])
            out[name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"unknown CPU, {os.cpu_count()} cores"


# ---- judging ---------------------------------------------------------------------------------
def judge_texts(config: Any, texts: list[str], languages: list[Optional[str]]) -> tuple[list[Any], float]:
    """(JudgeScores, seconds) from the configured judge: in process for actor judges, through
    the run's own `ray.data.llm` processor for vLLM and HTTP judges."""
    from audiocurate.judge import make_judge
    from audiocurate.judge.backends import judge_backend

    if judge_backend(config.judge.backend).runs_as == "actor":
        judge = make_judge(config.judge)
        t0 = time.perf_counter()
        scores = []
        for i in range(0, len(texts), 8):  # the blocks a pipeline actor gets
            scores += judge.score_batch(texts[i:i + 8], languages[i:i + 8])
        return scores, time.perf_counter() - t0
    return _judge_with_processor(config, texts, languages)


def _judge_with_processor(config: Any, texts: list[str], languages: list[Optional[str]]) -> tuple[list[Any], float]:
    import pyarrow as pa
    import ray

    from audiocurate import contract as C
    from audiocurate.judge import JudgeScore
    from audiocurate.plan import judge_steps
    from audiocurate.runtime import apply_steps

    table = pa.table({"id": [str(i) for i in range(len(texts))], "transcript": texts, "language": languages,
                      **{col: pa.nulls(len(texts), typ) for col, typ in C.STATUS_COLUMNS.items()}})
    if not ray.is_initialized():
        from audiocurate.runtime import init_ray

        init_ray(config.ray)
    t0 = time.perf_counter()
    rows = apply_steps(ray.data.from_arrow(table), judge_steps(config, 1)).take_all()
    seconds = time.perf_counter() - t0
    by_id = {r["id"]: r for r in rows}
    out = []
    for i in range(len(texts)):
        r = by_id[str(i)]
        out.append(JudgeScore(r.get("edu_score"), float(r.get("edu_score_mean") or np.nan), list(r.get("edu_probs") or []))
                   if r.get(C.ERROR_STAGE) is None else JudgeScore.failed(str(r.get(C.ERROR))))
    return out, seconds


def transcribe(items: list[dict[str, Any]], asr_model: Optional[str]) -> list[str]:
    """The pipeline's transcript of each text spoken by espeak-ng in its language (cached)."""
    import corpora

    from audiocurate.asr import make_transcriber
    from audiocurate.audio import decode_audio
    from audiocurate.config import FasterWhisperConfig

    key = hashlib.sha256(json.dumps([[it["id"], it["language"]] for it in items] + [asr_model]).encode()).hexdigest()[:12]
    cache = corpora.CACHE / f"judge_eval_transcripts_{key}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    asr = make_transcriber(FasterWhisperConfig(**({"model": asr_model} if asr_model else {})))
    out = []
    for i, it in enumerate(items):
        audio = corpora.speak(it["text"], VOICES[it["language"]], 16000, 150 + (i * 11) % 40)
        out.append(asr.transcribe(decode_audio(audio).pcm).text)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out))
    return out


def fit_length_calibration(means: np.ndarray, chars: np.ndarray, labels: np.ndarray,
                           reference: float = 100.0) -> tuple[list[float], list[float], float]:
    """(x, y, length_slope): logistic regression of the label on the expected score and the log
    length; the knots hold at `reference` characters and the slope moves other lengths onto them
    (`Calibration.length_slope`)."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=100.0).fit(np.c_[means, np.log(chars / reference)], labels)
    a, b = lr.coef_[0]
    if a <= 0:
        raise RuntimeError("the judge's expected score does not increase with the label; no monotone map")
    slope = float(b / a)
    adjusted = means + slope * np.log(chars / reference)
    x = np.linspace(adjusted.min() - 0.25, adjusted.max() + 0.25, 41)
    y = 1 + 4 / (1 + np.exp(-(a * x + lr.intercept_[0])))
    return [float(v) for v in x], [float(v) for v in np.maximum.accumulate(y)], slope


def operating_point(x: list[float], y: list[float], scores: np.ndarray, labels: np.ndarray, recall: float,
                    min_score: int) -> list[float]:
    """The knots moved along the score so that `edu_score >= min_score` keeps `recall` of the fit
    half's educational rows: the map's crossing of `min_score` goes to the highest score that still
    keeps that many (the issue's figure is precision at recall >= 0.75; a margin above it holds on
    new data). The map's shape is kept; its y is then no longer 1 + 4 * P(educational)."""
    edu = np.sort(scores[labels == 1])[::-1]
    threshold = float(edu[int(np.ceil(recall * len(edu))) - 1]) - 1e-6
    crossing = float(np.interp(min_score, y, x))
    return [float(v + threshold - crossing) for v in x]


def fit_calibration(means: np.ndarray, labels: np.ndarray) -> tuple[list[float], list[float]]:
    """Knots of mean -> 1 + 4 * P(educational | mean) (logistic; see calibrate_judge.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from calibrate_judge import fit_calibration as fit

    return fit(means, labels)


def engine_version(backend: str) -> str:
    """The judge engine's package and version, as pinned in constraints.txt."""
    from importlib.metadata import version

    package = {"llama_cpp": "llama-cpp-python", "transformers": "transformers", "vllm": "vllm"}.get(backend)
    return f"{package}=={version(package)}" if package else backend


def write_calibration(config: Any, judge_profile: str, result: dict[str, Any], n_fit: int, texts: str) -> None:
    """The map fitted on the fit half, into the profile's YAML, with what it was fitted with."""
    import yaml

    from audiocurate.judge import load_judge_profile
    from audiocurate.judge.profile import EngineRecord

    profile = load_judge_profile(judge_profile)
    name = profile.name
    path = Path(judge_profile)  # a profile of your own, else the shipped one of that name
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = Path(__file__).resolve().parents[1] / "src/audiocurate/judge/profiles" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    held_out = result["held_out_eval_with_fitted_map"]
    fitted = result["calibration_fitted_on_fit_half"]
    languages = ", ".join(sorted(k.split("=")[1] for k in held_out if k.startswith("language=") and "," not in k))
    how = "map = 1 + 4 * P(educational | mean)"
    if fitted["length_slope"]:
        how = (f"the expected score moved by {fitted['length_slope']} * ln(chars / 100) first (a second "
               f"regressor, the log length); " + how)
    if fitted.get("target_recall"):
        how += (f", then moved along the score so that edu_score >= 3 keeps {fitted['target_recall']} of the fit "
                f"half's educational rows")
    data["calibration"] = {
        "method": "logistic",
        "x": fitted["x"], "y": fitted["y"],
        **({"length_slope": fitted["length_slope"], "length_reference_chars": 100.0} if fitted["length_slope"] else {}),
        "fitted_on": (f"benchmarks/judge_eval.py --fit: logistic regression of the educational label on "
                      f"edu_score_mean over the fit half ({n_fit} {texts}: WordNet and FOLDOC definitions and the "
                      f"Debian Reference vs fortune files, in {languages}); {how}. Metrics: the held-out eval "
                      f"half, all languages (`eval_`) and English (`eval_en_`)."),
        "fitted_with": EngineRecord.of(profile, config.judge.model, getattr(config.judge, "weights", "stored"),
                                       engine_version(config.judge.backend)).model_dump(),
        "metrics": {**{f"eval_{k}": v for k, v in held_out["all"].items() if isinstance(v, (int, float))},
                    **{f"eval_en_{k}": v for k, v in held_out.get("language=en", {}).items()
                       if isinstance(v, (int, float))}},  # a profile's metrics are numbers; intervals stay in the results
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False, width=100, allow_unicode=True))
    print(f"wrote the calibration to {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=None, help="pipeline profile(s) whose judge is measured (default: default)")
    ap.add_argument("--judge-profile", default=None, help="judge profile (judge.profile), a shipped name or YAML path")
    ap.add_argument("--set", action="append", default=[], help="configuration override KEY=VALUE (repeatable)")
    ap.add_argument("--per-cell", type=int, default=30, help="English texts per (label, bucket, half)")
    ap.add_argument("--per-cell-other", type=int, default=12, help="texts per (label, bucket, half), other languages")
    ap.add_argument("--languages", default=",".join(LANGUAGES))
    ap.add_argument("--split", choices=["eval", "fit", "both"], default="both",
                    help="which half to judge; figures are always reported for the held-out eval half")
    ap.add_argument("--speech", action="store_true", help="judge pipeline transcripts of espeak-ng speech")
    ap.add_argument("--asr-model", default=None, help="with --speech: asr.model (default: the pipeline's)")
    ap.add_argument("--no-language", action="store_true", help="do not give the judge the rows' language")
    ap.add_argument("--uncalibrated", action="store_true", help="score with the profile's calibration removed")
    ap.add_argument("--fit", action="store_true", help="fit a calibration on the fit half; report eval with it")
    ap.add_argument("--length", action="store_true", help="with --fit: a map that also reads the transcript's "
                    "length (Calibration.length_slope)")
    ap.add_argument("--target-recall", type=float, default=None, help="with --fit: move the map so that the "
                    "default threshold keeps this share of the fit half's educational rows")
    ap.add_argument("--refit-from", default=None, help="a results JSON of an earlier run: refit on its rows' "
                    "scores (per_row) without judging again")
    ap.add_argument("--write", action="store_true", help="with --fit: store the map, with the model, weights "
                    "type and engine it was fitted with, in the shipped judge profile")
    ap.add_argument("--min-score", type=int, default=3)
    ap.add_argument("--out", default=None, help="results file name (default: judge_eval_<judge profile>.json)")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from audiocurate.config import PipelineConfig

    overrides = list(args.set) + ([f"judge.profile={args.judge_profile}"] if args.judge_profile else [])
    config = PipelineConfig.load(profile=args.profile, overrides=overrides)
    judge_profile = config.judge.profile
    if args.uncalibrated or args.fit:
        from audiocurate.judge import load_judge_profile

        uncal = load_judge_profile(config.judge.profile).model_copy(update={"calibration": None})
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"judge_eval_{uncal.name}_uncalibrated.yaml"
        import yaml

        path.write_text(yaml.safe_dump(uncal.model_dump(mode="json"), sort_keys=False))
        config = PipelineConfig.load(profile=args.profile, overrides=overrides + [f"judge.profile={path}"])
    if args.refit_from:
        # The rows of an earlier run: refit and report without judging again.
        earlier = json.loads(Path(args.refit_from).read_text())
        items, means = earlier["per_row"], np.array([r["mean"] for r in earlier["per_row"]])
        chars_of = [r["chars"] for r in items]
        edu = np.array([0] * len(items))
        seconds = earlier["seconds"]
    else:
        langs = [x for x in args.languages.split(",") if x]
        items = dev_set({lang: args.per_cell if lang == "en" else args.per_cell_other for lang in langs})
        if args.split != "both":
            items = [it for it in items if it["split"] == args.split]
        texts = transcribe(items, args.asr_model) if args.speech else [it["text"] for it in items]
        if args.speech:
            from audiocurate.filters.text import word_error_rate

            for it, text in zip(items, texts):
                it["bucket"], it["wer"] = bucket_of(text), word_error_rate(it["text"], text)
        languages = [None if args.no_language else LANGUAGE_NAMES[it["language"]] for it in items]
        scores, seconds = judge_texts(config, texts, languages)
        failed = [s.error for s in scores if s.error]
        if failed:
            raise SystemExit(f"{len(failed)} rows failed in the judge, e.g. {failed[0]}")
        means = np.array([s.mean for s in scores])
        edu = np.array([s.score for s in scores])
        chars_of = [len(" ".join(t.split())) for t in texts]
    labels = np.array([it["label"] for it in items])
    ev = np.array([it["split"] == "eval" for it in items])
    # AUC and precision-at-recall rank rows by what the profile's map reads: a length-aware map moves
    # the expected score by the transcript's length before its knots, so rank by that.
    ranked, ranked_by = means, "edu_score_mean"
    if not (args.uncalibrated or args.fit):
        from audiocurate.judge import load_judge_profile

        cal = load_judge_profile(config.judge.profile).calibration
        if cal is not None and cal.length_slope:
            ranked = np.array([cal.reads(m, n) for m, n in zip(means, chars_of)])
            ranked_by = f"edu_score_mean + {cal.length_slope} * ln(chars / {cal.length_reference_chars:g}) (the map's input)"
    result: dict[str, Any] = {
        "judge": {"backend": config.judge.backend, "profile": judge_profile,
                  "model": config.judge.model, "threads": getattr(config.judge, "threads", None),
                  "weights": getattr(config.judge, "weights", None), "language_given": not args.no_language,
                  "calibrated": not (args.uncalibrated or args.fit)},
        "texts": "pipeline transcripts of espeak-ng speech" if args.speech else "reference texts",
        "asr_model": args.asr_model if args.speech else None,
        "refit_from": args.refit_from,
        "machine": cpu_model(), "rows": len(items), "seconds": round(seconds, 2),
        "rows_per_s_per_thread": round(len(items) / seconds / (getattr(config.judge, "threads", None) or 1), 3),
        "held_out_eval": report([it for it, e in zip(items, ev) if e], ranked[ev], edu[ev], args.min_score),
        "auc_ranks_by": ranked_by,
        "per_row": [{"id": it["id"], "language": it["language"], "bucket": it["bucket"], "split": it["split"],
                     "label": it["label"], "chars": n, "mean": round(float(m), 5),
                     **({"wer": round(it["wer"], 4)} if "wer" in it else {})}
                    for it, n, m in zip(items, chars_of, means)],
    }
    if args.refit_from:
        result["texts"], result["asr_model"] = earlier["texts"], earlier.get("asr_model")
    if args.fit:
        from audiocurate.judge.profile import Calibration

        chars = np.maximum(np.array(chars_of, dtype=float), 1)
        if args.length:
            x, y, slope = fit_length_calibration(means[~ev], chars[~ev], labels[~ev])
        else:
            (x, y), slope = fit_calibration(means[~ev], labels[~ev]), 0.0
        adjusted = means + slope * np.log(chars / 100.0)  # what the map reads (Calibration.apply)
        if args.target_recall:
            x = operating_point(x, y, adjusted[~ev], labels[~ev], args.target_recall, args.min_score)
        cal = Calibration(x=x, y=y, length_slope=slope, fitted_on="judge_eval --fit")
        fitted = np.array([int(np.clip(np.floor(cal.apply(m, int(n)) + 1e-9), 1, 5)) for m, n in zip(means, chars)])
        result["calibration_fitted_on_fit_half"] = {"x": [round(v, 5) for v in x], "y": [round(v, 5) for v in y],
                                                    "length_slope": round(slope, 5), "target_recall": args.target_recall}
        # AUC and precision-at-recall of what the map reads: the expected score moved by length
        result["held_out_eval_with_fitted_map"] = report([it for it, e in zip(items, ev) if e], adjusted[ev],
                                                        fitted[ev], args.min_score)
    if args.fit and args.write:
        write_calibration(config, judge_profile, result, int((~ev).sum()), result["texts"])
    name = args.out or f"judge_eval_{Path(judge_profile).stem}{'_speech' if args.speech else ''}.json"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / name).write_text(json.dumps(result, indent=1))
    table = result.get("held_out_eval_with_fitted_map", result["held_out_eval"])
    print(f"{judge_profile}: {len(items)} rows in {seconds:.1f} s ({result['rows_per_s_per_thread']} rows/s "
          f"per thread, {result['machine']})")
    for group, m in table.items():
        print(f"  {group:32s} n={m['n']:4d} auc={m['roc_auc']:.3f} precision={m['precision']:.3f} "
              f"recall={m['recall']:.3f} p@r.75={m['precision_at_recall_0.75']:.3f}")
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()
