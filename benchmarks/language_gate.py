"""Speech in other languages reaching an English-only Whisper: how well its own confidence
(`avg_logprob`) tells them apart, and what a gate costs English.

    python benchmarks/language_gate.py [--fallback-min-avg-logprob -0.9]

English: the 18 real recordings (benchmarks/corpora.py) and 60 espeak-ng English clips of
Wikipedia sentences (the throughput benchmark's eval half). Other languages: espeak-ng Czech,
Dutch and German voices reading 12 sentences each (written for this benchmark, general
knowledge, no tuning against any threshold). Each clip through tiny.en (faster-whisper,
the default configuration); per threshold, the share of English kept and of the others
rejected. With `--fallback-min-avg-logprob G`, the transcriber skips Whisper's temperature
fallback on windows whose first pass scores below G (`asr.fallback_min_avg_logprob`): how much
faster foreign speech goes, and what it costs English at the gate. Writes
benchmarks/results/language_gate.json (language_gate_fallback_G.json with the option).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from corpora import dev_clips, real_speech, speak  # noqa: E402

from audiocurate.asr import make_transcriber  # noqa: E402
from audiocurate.audio import decode_audio  # noqa: E402
from audiocurate.config import FasterWhisperConfig  # noqa: E402

OTHER = {
    "cs": ["Praha je hlavní město České republiky a leží na řece Vltavě.",
           "Voda se při teplotě sto stupňů Celsia mění v páru.",
           "Rostliny potřebují ke svému růstu světlo, vodu a oxid uhličitý.",
           "Lidské srdce pumpuje krev do celého těla.",
           "Měsíc obíhá kolem Země přibližně za jeden měsíc.",
           "Včely přenášejí pyl z květu na květ.",
           "Trojúhelník má tři strany a tři úhly.",
           "Zítra bude pršet, tak si vezmi deštník.",
           "Ve škole jsme se učili o historii středověku.",
           "Měď dobře vede elektrický proud.",
           "Na horách napadlo v noci hodně sněhu.",
           "Kniha leží na stole vedle okna."],
    "nl": ["Amsterdam is de hoofdstad van Nederland en heeft veel grachten.",
           "Water kookt bij honderd graden Celsius.",
           "Planten hebben licht, water en koolstofdioxide nodig om te groeien.",
           "Het menselijk hart pompt bloed door het hele lichaam.",
           "De maan draait in ongeveer een maand om de aarde.",
           "Bijen brengen stuifmeel van bloem naar bloem.",
           "Een driehoek heeft drie zijden en drie hoeken.",
           "Morgen gaat het regenen, dus neem een paraplu mee.",
           "Op school leerden we over de geschiedenis van de middeleeuwen.",
           "Koper is een goede geleider van elektriciteit.",
           "In de bergen is vannacht veel sneeuw gevallen.",
           "Het boek ligt op de tafel naast het raam."],
    "de": ["Berlin ist die Hauptstadt von Deutschland und liegt an der Spree.",
           "Wasser kocht bei einhundert Grad Celsius.",
           "Pflanzen brauchen Licht, Wasser und Kohlendioxid zum Wachsen.",
           "Das menschliche Herz pumpt Blut durch den ganzen Körper.",
           "Der Mond umkreist die Erde in ungefähr einem Monat.",
           "Bienen tragen Blütenstaub von Blüte zu Blüte.",
           "Ein Dreieck hat drei Seiten und drei Winkel.",
           "Morgen wird es regnen, also nimm einen Regenschirm mit.",
           "In der Schule haben wir über die Geschichte des Mittelalters gelernt.",
           "Kupfer leitet elektrischen Strom sehr gut.",
           "In den Bergen ist heute Nacht viel Schnee gefallen.",
           "Das Buch liegt auf dem Tisch neben dem Fenster."],
}
VOICE = {"cs": "cs", "nl": "nl", "de": "de"}


def summarize(rows: list[dict]) -> dict:
    """Per threshold, the share of each kind of clip the gate keeps. A clip with nothing
    decoded (NaN) is rejected by `empty_transcript` before the gate; it counts as rejected."""
    kinds = ["en-real", "en-espeak", "cs", "nl", "de"]
    lp = {k: np.array([r["avg_logprob"] for r in rows if r["kind"] == k], dtype=float) for k in kinds}
    table = []
    for thr in (-0.6, -0.7, -0.8, -0.9, -1.0, -1.1, -1.2):
        table.append({"threshold": thr, **{f"{k}_kept": round(float(np.mean(np.nan_to_num(lp[k], nan=-99) >= thr)), 3)
                                           for k in kinds}})
    speed = {k: sum(r["audio_s"] for r in rows if r["kind"] == k) / sum(r["seconds"] for r in rows if r["kind"] == k)
             for k in kinds}
    return {"clips": {k: len(v) for k, v in lp.items()},
            "empty_transcripts": {k: int(np.isnan(v).sum()) for k, v in lp.items()},
            "avg_logprob_p10_p50_p90": {k: [round(float(x), 3) for x in np.nanpercentile(v, [10, 50, 90])]
                                        if np.isfinite(v).any() else None for k, v in lp.items()},
            "thresholds": table, "audio_s_per_s": speed, "rows": rows}


def main() -> None:
    gate = None
    if "--fallback-min-avg-logprob" in sys.argv:
        gate = float(sys.argv[sys.argv.index("--fallback-min-avg-logprob") + 1])
    asr = make_transcriber(FasterWhisperConfig(threads=2, fallback_min_avg_logprob=gate))
    clips: list[tuple[str, bytes]] = [("en-real", r["audio_bytes"]) for r in real_speech()]
    dev = pq.read_table(dev_clips()).to_pylist()
    clips += [("en-espeak", r["audio_bytes"]) for r in dev[1::2][:60]]
    for lang, texts in OTHER.items():
        clips += [(lang, speak(t, VOICE[lang], 16000)) for t in texts]
    rows = []
    for kind, data in clips:
        pcm = decode_audio(data, target_rate=16000).pcm
        t0 = time.perf_counter()
        tr = asr.transcribe_batch([pcm])[0]
        rows.append({"kind": kind, "avg_logprob": tr.avg_logprob, "seconds": time.perf_counter() - t0,
                     "audio_s": len(pcm) / 16000, "text": tr.text[:80]})
    result = summarize(rows)
    result["fallback_min_avg_logprob"] = gate
    name = "language_gate.json" if gate is None else f"language_gate_fallback_{gate}.json"
    (HERE / "results" / name).write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


def resummarize() -> None:
    """Recompute the summary from the saved rows (no transcription)."""
    path = HERE / "results" / "language_gate.json"
    result = summarize(json.loads(path.read_text())["rows"])
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    resummarize() if "--summary-only" in sys.argv else main()
