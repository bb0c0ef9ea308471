"""Corpus-level passes: decisions that need the whole output, run as Ray jobs over stored columns
after the streaming pass (ARCHITECTURE.md, "Corpus-level passes").

    fingerprint.py  the `fingerprint` column measured while the run streams
    dedup.py        near-duplicate groups: band buckets, verified pairs, connected components
    moves.py        moving curated rows to rejected/ through the compaction journal (crash-safe)
    fences.py       speaking-rate fences over whole recordings or groups
    passes.py       the passes a run ends with, in order; per-group caps (`corpus.max_hours_per`)
"""
