"""Make the demo dataset shipped with the package: espeak-ng speech in Common Voice's layout.

    python scripts/make_demo_dataset.py [OUT]   # default src/audiocurate/demo/demo.parquet

Texts are public domain: short passages from works published before 1929 (Faraday, Darwin,
Huxley, Austen, Lear, Hale, nursery rhymes), and plain sentences written for this project
and dedicated to the public domain (CC0). About half teach something (science, history,
geography), half do not (chit-chat, advertising, nonsense verse, fiction), so the demo shows
both outputs. Clips use several espeak-ng voices, speeds and Common Voice's sample rates
(mostly 48 kHz), FLAC in `audio_bytes` as in Ray's copy of Common Voice 11. Three rows are
broken on purpose (truncated FLAC, random bytes, empty) and one is digital silence.

Needs espeak-ng and sox. Output is deterministic for a given espeak-ng version.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

EDUCATIONAL = [
    "There is no better, there is no more open door by which you can enter into the study of natural philosophy than by considering the physical phenomena of a candle.",
    "A great chapter of the history of the world is written in the chalk.",
    "Water boils at one hundred degrees Celsius at sea level, and at a lower temperature high on a mountain, where the air pressure is lower.",
    "The heart is a muscle that pumps blood through the arteries to every part of the body. The veins carry the blood back to the heart.",
    "Plants make their own food by photosynthesis. They use the energy of sunlight to turn water and carbon dioxide into sugar and oxygen.",
    "The Earth takes about three hundred and sixty five days to travel once around the Sun, and this journey gives us our year.",
    "Volcanoes form where melted rock called magma rises through cracks in the crust of the Earth and erupts at the surface as lava.",
    "The Nile is the longest river in Africa. It flows north through eleven countries and empties into the Mediterranean Sea.",
    "Sound travels as a wave of pressure through the air, at about three hundred and forty meters every second.",
    "The Moon has no light of its own. It shines because it reflects the light of the Sun back toward the Earth.",
    "Bees carry pollen from flower to flower, and in this way they help plants to make seeds and fruit.",
    "The printing press, developed by Johannes Gutenberg around fourteen fifty, made books cheaper and helped spread reading across Europe.",
    "An atom has a small, heavy nucleus made of protons and neutrons, surrounded by much lighter electrons.",
    "Glaciers are large bodies of ice that move slowly downhill under their own weight, carving valleys as they go.",
    "The Roman Empire built roads, bridges and aqueducts, and many of them are still standing today.",
    "Mammals are warm blooded animals that breathe air, have hair, and feed their young with milk.",
    "Light from the Sun takes about eight minutes to reach the Earth, crossing one hundred and fifty million kilometers of space.",
    "Whilst this planet has gone cycling on according to the fixed law of gravity, from so simple a beginning endless forms most beautiful and most wonderful have been, and are being, evolved.",
    "The lungs take in oxygen from the air we breathe and pass it into the blood, which carries it to every cell of the body.",
    "Earthquakes happen when the large plates of rock that make up the surface of the Earth suddenly slip past one another.",
]
NOT_EDUCATIONAL = [
    "Hey, are you coming to the party tonight? Bring some snacks, we are out of chips again.",
    "Buy now and save fifty percent on all shoes this weekend only! Hurry, while stocks last.",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
    "Humpty Dumpty sat on a wall, Humpty Dumpty had a great fall.",
    "Hey diddle diddle, the cat and the fiddle, the cow jumped over the moon.",
    "There was an old man with a beard, who said, it is just as I feared! Two owls and a hen, four larks and a wren, have all built their nests in my beard.",
    "Mary had a little lamb, its fleece was white as snow, and everywhere that Mary went the lamb was sure to go.",
    "Honestly I was bored most of the time, but the popcorn was good and my friends liked it.",
    "Don't forget to call your mother back, she phoned twice this morning while you were out.",
    "I can't believe it's raining again. I guess we're staying in and watching television all day.",
    "Okay so, um, I think we should maybe order pizza, what do you all want on it?",
    "Wow, that new phone looks amazing! I really want one, it's so shiny and cool.",
    "Sing a song of sixpence, a pocket full of rye, four and twenty blackbirds baked in a pie.",
]
VOICES = ["en-us", "en", "en-us+f2", "en-gb-scotland", "en-029", "en+m3", "en-us+f4", "en-gb-x-rp"]
RATES = [48000] * 6 + [44100, 32000, 16000]
AGES = ["twenties", "thirties", "fourties", "fifties", ""]


def speak(text: str, voice: str, speed: int, rate: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        raw, out = os.path.join(tmp, "a.wav"), os.path.join(tmp, "b.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", raw, text], check=True)
        subprocess.run(["sox", "-V1", raw, "-r", str(rate), "-b", "16", out, "vol", "0.9", "rate", "-v"], check=True)
        audio, sr = sf.read(out, dtype="int16")
        assert sr == rate
        return audio


def flac(audio: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def main(out: Path) -> None:
    rng = random.Random(20261127)
    items = [(t, "educational") for t in EDUCATIONAL] + [(t, "not_educational") for t in NOT_EDUCATIONAL]
    rng.shuffle(items)
    rows = []
    for i, (text, label) in enumerate(items):
        voice = VOICES[i % len(VOICES)]
        rate = RATES[i % len(RATES)]
        speed = 150 + (i * 7) % 30
        audio = speak(text, voice, speed, rate)
        if i == 5:  # one stereo clip: the decoder must downmix
            audio = np.stack([audio, (audio * 0.8).astype(np.int16)], axis=1)
        rows.append(_row(i, flac(audio, rate), text, voice, label, rng))
    silence = np.zeros(48000 * 3, dtype=np.int16)
    rows.append(_row(len(rows), flac(silence, 48000), "", "none", "silence", rng))
    whole = rows[0]["audio_bytes"]
    broken = [
        (whole[: len(whole) // 2], "truncated FLAC"),
        (random.Random(7).randbytes(20000), "random bytes"),
        (b"", "empty"),
    ]
    for data, what in broken:
        rows.append(_row(len(rows), data, rows[0]["sentence"] if what.startswith("trunc") else "", "none", f"broken: {what}", rng))
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("id", pa.string()), ("audio_bytes", pa.binary()), ("sentence", pa.string()),
        ("client_id", pa.string()), ("path", pa.string()), ("up_votes", pa.int64()), ("down_votes", pa.int64()),
        ("age", pa.string()), ("gender", pa.string()), ("accent", pa.string()), ("locale", pa.string()),
        ("demo_label", pa.string()),
    ]))
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out, compression="zstd")
    print(f"wrote {out}: {table.num_rows} rows, {out.stat().st_size / 1e6:.1f} MB")


def _row(i: int, data: bytes, text: str, voice: str, label: str, rng: random.Random) -> dict:
    return {
        "id": f"demo_{i:04d}",
        "audio_bytes": data,
        "sentence": text,
        "client_id": hashlib.sha256(voice.encode()).hexdigest()[:32],
        "path": f"common_voice_en_demo_{i:04d}.flac",
        "up_votes": rng.randint(2, 9),
        "down_votes": rng.randint(0, 2),
        "age": rng.choice(AGES),
        "gender": "female" if "+f" in voice else ("male" if voice != "none" else ""),
        "accent": voice,
        "locale": "en",
        "demo_label": label,
    }


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "src/audiocurate/demo/demo.parquet")
