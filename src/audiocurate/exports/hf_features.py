"""Hugging Face `datasets` feature metadata for our Parquet files.

`datasets` reads a Parquet file's features from its schema metadata (key `huggingface`,
`{"info": {"features": ...}}`, as `datasets` itself writes it); without it the `audio`
struct loads as a plain struct. Written into `curated/` shards and the `hf` export, so
`load_dataset("parquet", data_dir=...)` gives an `Audio` feature as it is. This module
imports nothing from `datasets` (it is not a dependency of the pipeline).
"""

from __future__ import annotations

import json
from typing import Any, Optional

import pyarrow as pa

from .. import contract as C

HF_METADATA_KEY = b"huggingface"

_VALUES = {pa.string(): "string", pa.large_string(): "large_string", pa.bool_(): "bool", pa.int8(): "int8",
           pa.int16(): "int16", pa.int32(): "int32", pa.int64(): "int64", pa.uint8(): "uint8",
           pa.uint16(): "uint16", pa.uint32(): "uint32", pa.uint64(): "uint64", pa.float16(): "float16",
           pa.float32(): "float32", pa.float64(): "float64", pa.binary(): "binary",
           pa.large_binary(): "large_binary", pa.null(): "null"}


def plain_feature(t: pa.DataType) -> Optional[dict[str, Any]]:
    """The `datasets` feature (as `Features.to_dict` writes it) of an Arrow type, or None for a
    type left to `datasets` to infer from the Arrow type itself (it does so column by column).
    A list of values is a `Sequence`, which every `datasets` from 2 to 5 reads as that list
    (`List`, the name 4 and later write, is unknown to 3 and fails the whole file there)."""
    if pa.types.is_list(t):
        inner = plain_feature(t.value_type)
        return {"feature": inner, "_type": "Sequence"} if inner and inner.get("_type") == "Value" else None
    if pa.types.is_struct(t):
        fields = {f.name: plain_feature(f.type) for f in t}
        return None if any(v is None for v in fields.values()) else fields
    return {"dtype": _VALUES[t], "_type": "Value"} if t in _VALUES else None


def is_audio_struct(t: pa.DataType) -> bool:
    """`datasets`' Audio storage: a struct of `bytes` (binary) and `path` (string)."""
    return t == C.AUDIO_TYPE


def hf_features(schema: pa.Schema, sampling_rate: Optional[int] = 16000) -> dict[str, Any]:
    """The features of `schema`'s columns: `audio` as `Audio` (decoded at `sampling_rate`;
    None: at each file's own rate, for `output.audio_format: original`), the others as plain
    features; columns of a type not mapped here are left out."""
    features: dict[str, Any] = {}
    for field in schema:
        if field.name == C.AUDIO and is_audio_struct(field.type):
            features[field.name] = {"sampling_rate": sampling_rate, "_type": "Audio"} if sampling_rate else {"_type": "Audio"}
        elif (f := plain_feature(field.type)) is not None:
            features[field.name] = f
    return features


def hf_feature_metadata(schema: pa.Schema, sampling_rate: Optional[int] = 16000) -> dict[bytes, bytes]:
    """The schema metadata entry that makes `datasets` load a file of `schema` with its `audio`
    column as `Audio(sampling_rate=...)`: merge it into the table's metadata before writing,
    `table.replace_schema_metadata({**(table.schema.metadata or {}), **hf_feature_metadata(table.schema)})`."""
    info = {"info": {"features": hf_features(schema, sampling_rate)}}
    return {HF_METADATA_KEY: json.dumps(info, separators=(",", ":")).encode()}
