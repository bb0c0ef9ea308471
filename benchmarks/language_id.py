"""Spoken language ID with the embedded multilingual Whisper base, and the English default's
language gate, on a dev set built here: synthetic speech in 8 languages and real recorded speech.

    python benchmarks/language_id.py [--switch]      # all of it (and a language switch)
    python benchmarks/language_id.py --real-only [--real-per-language 80]   # the real speech section only
    python benchmarks/language_id.py --wer           # then: whisper-base WER per language, held-out half
    python benchmarks/language_id.py --lid-min-s 10  # language ID on pieces padded to 10 s, not 30
    python benchmarks/language_id.py --rescore-below 0.8   # also: unsure clips rescored by decoding

Synthetic dev set: espeak-ng voices reading 12 sentences each in Czech, Dutch, German (those of
`language_gate.py`), French, Spanish, Italian and Polish (written for this benchmark, general
knowledge, no tuning against any threshold); English: the same 12 sentences in English read by
an American and a British voice, and the 18 real English recordings (`corpora.real_speech`).
Even-numbered clips of each kind are the dev half, odd-numbered the held-out half; both are
reported, and nothing here is fitted on either.

Per clip: whisper-base's language probabilities (`asr.faster_whisper.language_probabilities`,
int8, one thread) and tiny.en's transcript confidence (`avg_logprob`, the default transcriber with
`fallback_min_avg_logprob: -0.9`). Printed: LID accuracy per language and per duration bucket,
the English gate's figures for spoken LID (`allowed: [en]`) and for tiny.en's confidence gate
(`min_avg_logprob: -0.9`) and for the default profile's gate (`filters.language` in
profiles/default.yaml: `allowed: [en]`, `min_prob`), and the seconds each costs per clip (contended CPU: say so).

Real speech (`real_speech` in the results): Drascula's voiced dialogue from Debian's `drascula`
(English) and `drascula-spanish` packages (`corpora.drascula_speech`: acted game lines, 8-bit
11025 Hz, licence: Alcachofa Soft's freeware licence, DFSG-free), a seeded draw of up to 80 lines
per language spread over 1-3 s, 3-10 s and at least 10 s. Each line goes through the English
default exactly as the pipeline runs it: `asr.language_id_model` with
`asr.language_detection_segments` pieces, then the `language` filter built from
profiles/default.yaml. Printed: LID accuracy per language and per duration bucket, English kept
and Spanish curated by that gate, the same for other `min_prob` values (a measurement, not a
fit: nothing here changes the default), and the LID seconds per clip.

Rescoring (`asr.language_rescore_below`, the default's 0.8, or `--rescore-below T`): from the
same encoder pass, clips whose likeliest language has less than it are also weighed by decoding
in the `asr.language_rescore_candidates` likeliest languages (`asr.faster_whisper.rescored`).
`rescored` in the results: LID accuracy with the token alone and with rescoring replacing it
(the multilingual way), the English default's gate with the token alone and as shipped
(rescoring, on clips tiny.en half trusts, only confirms English), by half, and the seconds added.

`--wer` (after a run): whisper-base transcribes each held-out clip in its detected language
(`--profile multilingual`); WER per language against the sentences read, and tiny.en's WER on
the same English clips. `--switch`: a recording of 60 s of Czech then
60 s of English through `--profile multilingual` (30 s windows), the language of each window.
Writes benchmarks/results/language_id.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

# whisper-base's language probabilities move by up to 0.1 on short clips with the BLAS thread count
# (measured 2026-12-07); `language_probabilities` is called here outside the transcriber, which
# reads its features with one BLAS thread, so the benchmark has one too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from corpora import DURATION_BUCKETS, bucket_name, drascula_speech, real_speech, speak  # noqa: E402
from intervals import wilson  # noqa: E402
from language_gate import OTHER  # noqa: E402

from audiocurate.asr import make_transcriber  # noqa: E402
from audiocurate.asr.faster_whisper import (confirmed, detected_languages, encode_pieces,  # noqa: E402
                                             language_probabilities, rescored)
from audiocurate.audio import decode_audio  # noqa: E402
from audiocurate.config import FasterWhisperConfig, PipelineConfig  # noqa: E402
from audiocurate.filters.language import Language  # noqa: E402
from audiocurate.filters.text import corpus_wer  # noqa: E402

MORE = {
    "en": ["London is the capital of England and lies on the River Thames.",
           "Water boils at one hundred degrees Celsius.",
           "Plants need light, water and carbon dioxide to grow.",
           "The human heart pumps blood through the whole body.",
           "The Moon goes around the Earth in about a month.",
           "Bees carry pollen from flower to flower.",
           "A triangle has three sides and three angles.",
           "It will rain tomorrow, so take an umbrella.",
           "At school we learned about the history of the Middle Ages.",
           "Copper conducts electricity very well.",
           "A lot of snow fell in the mountains last night.",
           "The book is on the table next to the window."],
    "fr": ["Paris est la capitale de la France et se trouve sur la Seine.",
           "L'eau bout à cent degrés Celsius.",
           "Les plantes ont besoin de lumière, d'eau et de dioxyde de carbone pour pousser.",
           "Le cœur humain pompe le sang dans tout le corps.",
           "La Lune tourne autour de la Terre en un mois environ.",
           "Les abeilles transportent le pollen de fleur en fleur.",
           "Un triangle a trois côtés et trois angles.",
           "Demain il va pleuvoir, alors prends un parapluie.",
           "À l'école, nous avons étudié l'histoire du Moyen Âge.",
           "Le cuivre conduit très bien l'électricité.",
           "Il est tombé beaucoup de neige cette nuit dans les montagnes.",
           "Le livre est sur la table à côté de la fenêtre."],
    "es": ["Madrid es la capital de España y está en el centro del país.",
           "El agua hierve a cien grados centígrados.",
           "Las plantas necesitan luz, agua y dióxido de carbono para crecer.",
           "El corazón humano bombea sangre a todo el cuerpo.",
           "La Luna gira alrededor de la Tierra en aproximadamente un mes.",
           "Las abejas llevan el polen de flor en flor.",
           "Un triángulo tiene tres lados y tres ángulos.",
           "Mañana va a llover, así que lleva un paraguas.",
           "En la escuela aprendimos la historia de la Edad Media.",
           "El cobre conduce muy bien la electricidad.",
           "Anoche cayó mucha nieve en las montañas.",
           "El libro está sobre la mesa junto a la ventana."],
    "it": ["Roma è la capitale d'Italia ed è attraversata dal Tevere.",
           "L'acqua bolle a cento gradi centigradi.",
           "Le piante hanno bisogno di luce, acqua e anidride carbonica per crescere.",
           "Il cuore umano pompa il sangue in tutto il corpo.",
           "La Luna gira intorno alla Terra in circa un mese.",
           "Le api portano il polline da un fiore all'altro.",
           "Un triangolo ha tre lati e tre angoli.",
           "Domani pioverà, quindi prendi un ombrello.",
           "A scuola abbiamo studiato la storia del Medioevo.",
           "Il rame conduce molto bene l'elettricità.",
           "Stanotte è caduta molta neve in montagna.",
           "Il libro è sul tavolo accanto alla finestra."],
    "pl": ["Warszawa jest stolicą Polski i leży nad Wisłą.",
           "Woda wrze w temperaturze stu stopni Celsjusza.",
           "Rośliny potrzebują światła, wody i dwutlenku węgla, aby rosnąć.",
           "Ludzkie serce pompuje krew do całego ciała.",
           "Księżyc okrąża Ziemię mniej więcej w ciągu miesiąca.",
           "Pszczoły przenoszą pyłek z kwiatu na kwiat.",
           "Trójkąt ma trzy boki i trzy kąty.",
           "Jutro będzie padać, więc weź parasol.",
           "W szkole uczyliśmy się historii średniowiecza.",
           "Miedź bardzo dobrze przewodzi prąd elektryczny.",
           "W nocy w górach spadło dużo śniegu.",
           "Książka leży na stole obok okna."],
}
SENTENCES = {**OTHER, **MORE}
# `--lid-min-s S`: language ID pads each piece to S seconds instead of Whisper's 30
# (`asr.language_detection_min_s`); results go to their own file.
LID_MIN_S = float(sys.argv[sys.argv.index("--lid-min-s") + 1]) if "--lid-min-s" in sys.argv else None
RESCORE_FLAG = float(sys.argv[sys.argv.index("--rescore-below") + 1]) if "--rescore-below" in sys.argv else None
RESULTS = HERE / "results" / ("language_id" + ("" if LID_MIN_S is None else f"_lid_min_{LID_MIN_S:g}s")
                              + ("" if RESCORE_FLAG is None else f"_rescore_below_{RESCORE_FLAG:g}") + ".json")
DEFAULT = PipelineConfig.load(profile="default", overrides=[] if LID_MIN_S is None
                              else [f"asr.language_detection_min_s={LID_MIN_S}"])
# Unsure clips are also rescored by decoding below this (the flag, else the default's setting).
RESCORE_BELOW = RESCORE_FLAG if RESCORE_FLAG is not None else DEFAULT.asr.language_rescore_below
DEFAULT_GATE = Language.configured(DEFAULT, {"id", "audio_bytes"})
REAL_ORDER: dict[str, int] = {}
BUCKETS = [(0, 3), (3, 6), (6, 10), (10, 1e9)]


def build_dev_set() -> list[dict]:
    """[{kind, language, text, pcm, half}]: `half` alternates dev/held-out within each kind."""
    items = [("en-real", "en", r["sentence"], r["audio_bytes"]) for r in real_speech()]
    for lang, texts in SENTENCES.items():
        if lang == "en":  # two English voices: the gate must keep accents as well
            items += [("en-espeak", "en", t, speak(t, voice, 16000)) for t in texts for voice in ("en-us", "en-gb-x-rp")]
        else:
            items += [(lang, lang, t, speak(t, lang, 16000)) for t in texts]
    out, seen = [], {}
    for kind, lang, text, data in items:
        k = seen[kind] = seen.get(kind, -1) + 1
        out.append({"kind": kind, "language": lang, "text": text, "half": "dev" if k % 2 == 0 else "held_out",
                    "pcm": decode_audio(data, target_rate=16000).pcm})
    return out


def share(xs: list[bool]) -> float | None:
    return round(float(np.mean(xs)), 3) if xs else None


def interval(xs: list[bool]) -> dict | None:
    """A share with its count and Wilson 95% interval."""
    return {"share": share(xs), "k": int(sum(xs)), "n": len(xs), "ci95": wilson(sum(xs), len(xs))} if xs else None


def default_gate(row: dict, avg_logprob: float, rescore: bool = True) -> str | None:
    """The English default's `language` filter on a clip as the pipeline routes it: language ID
    is skipped when tiny.en is confident (`asr.skip_language_id_above_avg_logprob`), and then
    the clip has no `language_prob`; `rescore=False`: the language token alone."""
    skipped = lid_skipped(avg_logprob)
    language, prob = default_heard(row, avg_logprob) if rescore else (row["detected"], row["prob"])
    return DEFAULT_GATE.reason({"language": "en" if skipped else language,
                                "language_prob": None if skipped else prob, "avg_logprob": avg_logprob})


def rescores(row: dict, avg_logprob: float) -> bool:
    """Whether the English default's transcriber decodes this clip again to check its language."""
    below = DEFAULT.asr.rescore_below_for(avg_logprob)
    return "rescored" in row and below is not None and not lid_skipped(avg_logprob) and row["prob"] < below


def default_heard(row: dict, avg_logprob: float) -> tuple[str, float]:
    """The language and probability the English default's transcriber gives a clip it sends to
    language ID: the token's, or the rescored ones where it rescores (`asr.language_rescore_below`,
    `asr.language_rescore_above_avg_logprob`) and they make English likelier (`confirm`)."""
    token = {"en": row["p_en"]}  # the rows keep P(en) of both, all the confirmation compares
    if rescores(row, avg_logprob):
        # rows saved before `rescored_p_en`: the rescored P(en) is known where English came first
        again = {"en": row.get("rescored_p_en", row["rescored_prob"] if row["rescored"] == "en" else 0.0)}
        if confirmed(token, again, DEFAULT.asr.language) is again:
            return row["rescored"], row["rescored_prob"]
    return row["detected"], row["prob"]


def lid_skipped(avg_logprob: float) -> bool:
    above = DEFAULT.asr.skip_language_id_above_avg_logprob
    return above is not None and avg_logprob >= above


def heard(model, audio: np.ndarray) -> dict:
    """Language ID on one clip as the English default runs it, and with `--rescore-below` the
    same clip rescored from the same encoder pass (`asr.faster_whisper.language_probabilities`)."""
    asr = DEFAULT.asr
    t0 = time.perf_counter()
    encoded = encode_pieces(model, audio, asr.language_detection_segments, asr.language_detection_min_s)
    probs = detected_languages(model, encoded)
    t1 = time.perf_counter()
    detected = max(probs, key=probs.__getitem__)
    out = {"detected": detected, "prob": probs[detected], "p_en": probs.get("en", 0.0), "lid_s": t1 - t0}
    if RESCORE_BELOW is not None:
        again = rescored(model, encoded, probs, asr.language_rescore_candidates) if probs[detected] < RESCORE_BELOW else probs
        best = max(again, key=again.__getitem__)
        out |= {"rescored": best, "rescored_prob": again[best], "rescored_p_en": again.get("en", 0.0),
                "rescore_s": time.perf_counter() - t1}
    return out


def rescoring_summary(rows: list[dict], seconds: str, half=lambda r: r["half"]) -> dict | None:
    """LID accuracy without and with `--rescore-below`, on the same clips (`seconds`: the duration key)."""
    if not rows or "rescored" not in rows[0]:
        return None
    langs = sorted({r["language"] for r in rows})
    long = [r for r in rows if r[seconds] >= 3]

    def kept(r: dict, rescore: bool) -> bool:  # through the English default's gate, token alone or as shipped
        return default_gate(r, r["tiny_en_avg_logprob"], rescore) is None

    def gate(rs: list[dict]) -> dict:  # English kept and others passed, [token alone, as shipped]
        en, other = [r for r in rs if r["language"] == "en"], [r for r in rs if r["language"] != "en"]
        return {"english_kept": [share([kept(r, k) for r in en]) for k in (False, True)],
                "non_english_passed": [share([kept(r, k) for r in other]) for k in (False, True)]}

    def replaced(r: dict) -> bool:  # the gate had rescoring replaced the token's probabilities on every unsure clip
        heard_as = {"detected": r["rescored"], "prob": r["rescored_prob"]}
        return default_gate(heard_as, r["tiny_en_avg_logprob"], rescore=False) is None

    return {"rescore_below": RESCORE_BELOW, "candidates": DEFAULT.asr.language_rescore_candidates,
            "clips_rescored": share([r["prob"] < RESCORE_BELOW for r in rows]),
            "lid_accuracy": {lang: [share([r[k] == lang for r in rows if r["language"] == lang])
                                    for k in ("detected", "rescored")] for lang in langs},
            "lid_accuracy_all": [share([r[k] == r["language"] for r in rows]) for k in ("detected", "rescored")],
            "lid_accuracy_at_least_3s": [interval([r[k] == r["language"] for r in long]) for k in ("detected", "rescored")],
            "by_half_at_least_3s": {h: [share([r[k] == r["language"] for r in long if half(r) == h])
                                        for k in ("detected", "rescored")] for h in ("dev", "held_out")},
            "english_default_gate": {  # [the token alone, as shipped (rescoring only confirms English)]
                **gate(rows),
                "by_half": {h: gate([r for r in rows if half(r) == h]) for h in ("dev", "held_out")},
                "clips_rescored": share([rescores(r, r["tiny_en_avg_logprob"]) for r in rows]),
                "rescoring_replacing_the_token": {  # the multilingual way, measured only
                    "english_kept": share([replaced(r) for r in rows if r["language"] == "en"]),
                    "non_english_passed": share([replaced(r) for r in rows if r["language"] != "en"])}},
            "rescore_seconds_per_clip": round(sum(r["rescore_s"] for r in rows) / len(rows), 3),
            "lid_seconds_per_clip": round(sum(r["lid_s"] for r in rows) / len(rows), 3)}


def summarize(rows: list[dict]) -> dict:
    gate = PipelineConfig.load(profile="default").filters.language  # the English default's language gate
    out = {}
    for half in ("dev", "held_out", "all"):
        rs = [r for r in rows if half == "all" or r["half"] == half]
        langs = sorted({r["language"] for r in rs})
        en = [r for r in rs if r["language"] == "en"]
        other = [r for r in rs if r["language"] != "en"]
        out[half] = {
            "clips": len(rs),
            "lid_accuracy": {lang: share([r["detected"] == lang for r in rs if r["language"] == lang]) for lang in langs},
            "lid_accuracy_by_seconds": {f"{lo}-{hi if hi < 1e9 else 'inf'}": share(
                [r["detected"] == r["language"] for r in rs if lo <= r["audio_s"] < hi]) for lo, hi in BUCKETS},
            "lid_accuracy_at_least_3s": share([r["detected"] == r["language"] for r in rs if r["audio_s"] >= 3]),
            "english_gate": {
                "spoken_lid_allowed_en": {"english_kept": share([r["detected"] == "en" for r in en]),
                                          "other_passed": share([r["detected"] == "en" for r in other])},
                "tiny_en_min_avg_logprob_-0.9": {
                    "english_kept": share([r["tiny_en_avg_logprob"] >= -0.9 for r in en]),
                    "other_passed": share([r["tiny_en_avg_logprob"] >= -0.9 for r in other])},
                f"spoken_lid_allowed_en_min_prob_{gate.min_prob}": {
                    "english_kept": share([r["detected"] == "en" and r["prob"] >= gate.min_prob for r in en]),
                    "other_passed": share([r["detected"] == "en" and r["prob"] >= gate.min_prob for r in other])},
                "default_profile": {  # the cascade: tiny.en's confidence first, language ID for the rest
                    "english_kept": share([default_gate(r, r["tiny_en_avg_logprob"]) is None for r in en]),
                    "other_passed": share([default_gate(r, r["tiny_en_avg_logprob"]) is None for r in other]),
                    "english_lid_skipped": share([lid_skipped(r["tiny_en_avg_logprob"]) for r in en])},
            },
            "intervals": {  # the issue's figures: their counts and 95% intervals
                "lid_accuracy_at_least_3s": interval([r["detected"] == r["language"] for r in rs if r["audio_s"] >= 3]),
                "default_english_kept": interval([default_gate(r, r["tiny_en_avg_logprob"]) is None for r in en]),
                "default_other_passed": interval([default_gate(r, r["tiny_en_avg_logprob"]) is None for r in other]),
            },
        }
    n = len(rows)
    if rescoring := rescoring_summary(rows, "audio_s"):
        out["rescored"] = rescoring
    out["seconds_per_clip"] = {"whisper_base_lid": round(sum(r["lid_s"] for r in rows) / n, 3),
                               "tiny_en_transcribe": round(sum(r["tiny_en_s"] for r in rows) / n, 3),
                               "mean_clip_s": round(sum(r["audio_s"] for r in rows) / n, 2)}
    done = [r for r in rows if "base_text" in r]
    if done:
        out["wer_whisper_base"] = {lang: round(corpus_wer([r["text"] for r in done if r["language"] == lang],
                                                          [r["base_text"] for r in done if r["language"] == lang]), 3)
                                   for lang in sorted({r["language"] for r in done})}
        out["wer_whisper_base"]["clips"] = len(done)
        en = [r for r in done if r["language"] == "en"]
        out["wer_tiny_en_on_the_same_english"] = round(corpus_wer([r["text"] for r in en],
                                                                  [r["tiny_en_text"] for r in en]), 3)
        out["seconds_per_clip"]["whisper_base_detect_and_transcribe"] = round(
            sum(r["base_s"] for r in done) / len(done), 3)
    return out


def real_speech_rows(per_language: int) -> list[dict]:
    """Drascula's lines through the English default's language ID and `language` filter, built
    from profiles/default.yaml as the pipeline builds them."""
    config = DEFAULT
    lid = make_transcriber(FasterWhisperConfig(model=config.asr.language_id_model, language=None,
                                               threads=config.asr.threads)).model
    tiny = make_transcriber(config.asr.model_copy(update={"language_id_model": None}))  # the default's transcriber
    clips = drascula_speech(per_language)
    rows = []
    for c in clips:
        audio = decode_audio(c["audio_bytes"], target_rate=16000).pcm.astype(np.float32) / 32768.0
        heard_as = heard(lid, audio)
        detected = heard_as["detected"]
        t1 = time.perf_counter()
        tr = tiny.transcribe_batch([(audio * 32768.0).astype(np.int16)])[0]
        row = {k: c[k] for k in ("id", "language", "bucket", "duration_s")} | heard_as | {
            "tiny_en_avg_logprob": tr.avg_logprob if np.isfinite(tr.avg_logprob) else -99.0,
            "tiny_en_s": time.perf_counter() - t1}
        rows.append(row | {"default_gate": default_gate(row, row["tiny_en_avg_logprob"])})
        print(f"real {len(rows)}/{len(clips)} {c['id']} {c['duration_s']:.1f}s: {detected} {row['prob']:.2f}",
              file=sys.stderr)
    return rows


def summarize_real(rows: list[dict]) -> dict:
    """The real speech section: LID accuracy, the default gate, and the gate at other `min_prob`."""
    default = DEFAULT.filters.language.min_prob
    for r in rows:  # the rule as it is now, also on saved rows
        r["default_gate"] = default_gate(r, r["tiny_en_avg_logprob"])
    for lang in {r["language"] for r in rows}:
        for i, r in enumerate(r for r in rows if r["language"] == lang):
            REAL_ORDER[r["id"]] = i
    langs = sorted({r["language"] for r in rows})
    en = [r for r in rows if r["language"] == "en"]
    other = [r for r in rows if r["language"] != "en"]

    def passes(r: dict, min_prob: float) -> bool:  # the English default's rule at another threshold
        return r["detected"] == "en" and r["prob"] >= min_prob

    buckets = [b for b in map(bucket_name, DURATION_BUCKETS) if any(r["bucket"] == b for r in rows)]
    return {
        "clips": {lang: {b: sum(r["language"] == lang and r["bucket"] == b for r in rows) for b in buckets}
                  for lang in langs},
        "lid_accuracy": {lang: share([r["detected"] == lang for r in rows if r["language"] == lang]) for lang in langs},
        "lid_accuracy_by_bucket": {lang: {b: share([r["detected"] == lang for r in rows
                                                    if r["language"] == lang and r["bucket"] == b]) for b in buckets}
                                   for lang in langs},
        "lid_accuracy_at_least_3s": share([r["detected"] == r["language"] for r in rows if r["duration_s"] >= 3]),
        "intervals": {  # the issue's figures: their counts and 95% intervals
            "lid_accuracy_at_least_3s": interval([r["detected"] == r["language"] for r in rows if r["duration_s"] >= 3]),
            "english_kept": interval([r["default_gate"] is None for r in en]),
            "non_english_curated": interval([r["default_gate"] is None for r in other]),
        },
        "heard_as": {lang: dict(sorted(Counter(r["detected"] for r in rows if r["language"] == lang).items(),
                                       key=lambda kv: -kv[1])) for lang in langs},
        "default_gate": {  # the English default as it routes: tiny.en's confidence, then language ID
            "english_kept": share([r["default_gate"] is None for r in en]),
            "by_half": {half: {"english_kept": share([r["default_gate"] is None for r in en if half_of(r) == half]),
                               "non_english_curated": share([r["default_gate"] is None for r in other
                                                             if half_of(r) == half])}
                        for half in ("dev", "held_out")},
            "english_kept_by_bucket": {b: share([r["default_gate"] is None for r in en if r["bucket"] == b])
                                       for b in buckets},
            "non_english_curated": share([r["default_gate"] is None for r in other]),
            "non_english_curated_by_bucket": {b: share([r["default_gate"] is None for r in other if r["bucket"] == b])
                                              for b in buckets}},
        "gate_at_min_prob": [{"min_prob": t, "english_kept": share([passes(r, t) for r in en]),
                              "non_english_curated": share([passes(r, t) for r in other])}
                             for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)],
        # Another rule, measured only: keep a clip while P(en) >= t, whichever language is most likely.
        "p_en_at_least": [{"p_en": t, "english_kept": share([r["p_en"] >= t for r in en]),
                           "non_english_curated": share([r["p_en"] >= t for r in other])}
                          for t in (0.1, 0.2, 0.3, 0.4, 0.5)],
        "english_p_en_p5_p10_p50": [round(float(x), 3) for x in np.percentile([r["p_en"] for r in en], [5, 10, 50])]
        if en else None,
        "lid_seconds_per_clip": round(sum(r["lid_s"] for r in rows) / len(rows), 3),
        "lid_skipped_by_tiny_en_confidence": {"english": share([lid_skipped(r["tiny_en_avg_logprob"]) for r in en]),
                                              "non_english": share([lid_skipped(r["tiny_en_avg_logprob"]) for r in other])},
        "lid_seconds_per_clip_with_the_skip": round(sum(r["lid_s"] for r in rows if not lid_skipped(
            r["tiny_en_avg_logprob"])) / len(rows), 3),
        "tiny_en_seconds_per_clip": round(sum(r["tiny_en_s"] for r in rows) / len(rows), 3),
        "skip_at_avg_logprob": [{"above": t, "english_kept": share([r["tiny_en_avg_logprob"] >= t or passes(r, default)
                                                                    for r in en]),
                                 "non_english_curated": share([r["tiny_en_avg_logprob"] >= t or passes(r, default)
                                                               for r in other])}
                                for t in (-0.4, -0.5, -0.6, -0.7, -0.8)],
        "audio_s_per_lid_s": round(sum(r["duration_s"] for r in rows) / sum(r["lid_s"] for r in rows), 1),
    }


def half_of(row: dict) -> str:
    """Dev or held-out, alternating over each language's lines in the order drawn (the skip
    threshold was set on the dev half)."""
    return "dev" if REAL_ORDER[row["id"]] % 2 == 0 else "held_out"


def real_speech_section(per_language: int) -> dict:
    rows = real_speech_rows(per_language)
    return {**with_rescoring(summarize_real(rows), rows), "rows": rows}


def with_rescoring(summary: dict, rows: list[dict]) -> dict:
    """The real speech section's summary and, with `--rescore-below`, its rescoring figures."""
    rescoring = rescoring_summary(rows, "duration_s", half_of)
    return summary | ({"rescored": rescoring} if rescoring else {})


def switch_recording(clips: list[dict]) -> dict:
    """60 s of Czech, then 60 s of English (clips joined with 0.5 s pauses) through the
    multilingual profile's transcriber: each 30 s window's language against the truth."""

    def join(kind: str, seconds: float) -> np.ndarray:
        parts, total = [], 0.0
        for c in (c for c in clips if c["kind"] == kind):
            if total >= seconds:
                break
            parts += [c["pcm"], np.zeros(8000, np.int16)]
            total += len(c["pcm"]) / 16000 + 0.5
        return np.concatenate(parts)

    first, second = join("cs", 60), join("en-real", 60)
    pcm = np.concatenate([first, second])
    switch_s = len(first) / 16000
    asr = PipelineConfig.load(profile="multilingual").asr
    model = make_transcriber(asr)
    from audiocurate.asr.windows import plan_windows

    windows = []
    for start, end in plan_windows(len(pcm), 16000, asr.chunk_s, pcm):
        probs = language_probabilities(model.model, pcm[start:end].astype(np.float32) / 32768.0,
                                       asr.language_detection_segments)
        lang = max(probs, key=probs.__getitem__)
        truth_cs = max(0.0, min(end / 16000, switch_s) - start / 16000)
        windows.append({"start_s": round(start / 16000, 1), "end_s": round(end / 16000, 1), "detected": lang,
                        "prob": round(probs[lang], 3), "czech_s": round(truth_cs, 1)})
    mislabelled = sum((w["end_s"] - w["start_s"] - w["czech_s"]) if w["detected"] == "cs" else
                      w["czech_s"] if w["detected"] == "en" else (w["end_s"] - w["start_s"]) for w in windows)
    t0 = time.perf_counter()
    tr = model.transcribe_batch([pcm])[0]
    return {"seconds": round(len(pcm) / 16000, 1), "switch_s": round(switch_s, 1), "windows": windows,
            "seconds_in_a_window_of_the_other_language": round(mislabelled, 1),
            "clip_language": tr.language, "clip_language_prob": round(tr.language_prob, 3),
            "transcribe_s": round(time.perf_counter() - t0, 1),
            "text_around_switch": " ".join(s.text.strip() for s in tr.segments
                                           if abs(s.start_s - switch_s) < 15)[:400]}


def main() -> None:
    clips = build_dev_set()
    base = make_transcriber(FasterWhisperConfig(model="embedded:whisper-base", language=None))
    tiny = make_transcriber(FasterWhisperConfig(fallback_min_avg_logprob=-0.9))
    rows = []
    for c in clips:
        audio = c["pcm"].astype(np.float32) / 32768.0
        lid = heard(base.model, audio)
        t1 = time.perf_counter()
        tr = tiny.transcribe_batch([c["pcm"]])[0]
        row = {k: c[k] for k in ("kind", "language", "text", "half")} | lid
        row.update(audio_s=len(audio) / 16000, tiny_en_s=time.perf_counter() - t1, tiny_en_text=tr.text,
                   tiny_en_avg_logprob=tr.avg_logprob if np.isfinite(tr.avg_logprob) else -99.0)
        rows.append(row)
        print(f"{len(rows)}/{len(clips)} {row['kind']}: {lid['detected']} {row['prob']:.2f}", file=sys.stderr)
    result = summarize(rows)
    if "--switch" in sys.argv:
        result["switch"] = switch_recording(clips)
    result["real_speech"] = real_speech_section(real_per_language())
    result["rows"] = rows
    RESULTS.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print_summary(result)


def real_per_language() -> int:
    return int(sys.argv[sys.argv.index("--real-per-language") + 1]) if "--real-per-language" in sys.argv else 80


def print_summary(result: dict) -> None:
    shown = {k: v for k, v in result.items() if k != "rows"}
    if "real_speech" in shown:
        shown["real_speech"] = {k: v for k, v in shown["real_speech"].items() if k != "rows"}
    print(json.dumps(shown, indent=1, ensure_ascii=False))


def real_only() -> None:
    """The real speech section alone, written into the saved results beside the synthetic ones."""
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    saved["real_speech"] = real_speech_section(real_per_language())
    RESULTS.write_text(json.dumps(saved, indent=1, ensure_ascii=False))
    print_summary({"real_speech": saved["real_speech"]})


def add_wer(half: str = "held_out") -> None:
    """WER per language of whisper-base transcribing each clip of `half` in the language it
    detects (`--profile multilingual`'s transcriber), added to the saved rows."""
    path = RESULTS
    saved = json.loads(path.read_text())
    base = make_transcriber(PipelineConfig.load(profile="multilingual").asr)
    for c, row in zip(build_dev_set(), saved["rows"]):
        assert (c["kind"], c["text"]) == (row["kind"], row["text"])
        if c["half"] != half:
            continue
        t0 = time.perf_counter()
        tr = base.transcribe_batch([c["pcm"]])[0]
        row.update(base_text=tr.text, base_language=tr.language, base_s=time.perf_counter() - t0)
        print(f"{row['kind']}: {tr.language} {tr.text[:60]}", file=sys.stderr)
    path.write_text(json.dumps(saved, indent=1, ensure_ascii=False))
    resummarize()


def resummarize() -> None:
    """Recompute the summaries from the saved rows (no model runs); the switch test is kept."""
    saved = json.loads(RESULTS.read_text())
    result = {**summarize(saved["rows"]), **({"switch": saved["switch"]} if "switch" in saved else {})}
    if "real_speech" in saved:
        rows = saved["real_speech"]["rows"]
        result["real_speech"] = {**with_rescoring(summarize_real(rows), rows), "rows": rows}
    result["rows"] = saved["rows"]
    RESULTS.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print_summary(result)


if __name__ == "__main__":
    if "--summary-only" in sys.argv:
        resummarize()
    elif "--real-only" in sys.argv:
        real_only()
    elif "--wer" in sys.argv:
        add_wer()
    else:
        main()
