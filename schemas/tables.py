"""Arrow schemas of what a scoring run writes: the scores table and the dead-letter table."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

# The four model scores, with their orientation: +1 means higher = more anomalous.
SCORE_ORIENTATION: dict[str, int] = {
    "vae_recon_logprob": -1,
    "vae_elbo": -1,
    "vae_log_px": -1,
    "dae_recon_error": +1,
}
SCORE_NAMES: tuple[str, ...] = tuple(SCORE_ORIENTATION)

# Reasons a record (or a whole file) goes to the dead-letter table.  A fixed list, so
# that reports and alerts can group on it.
DEAD_LETTER_REASONS: dict[str, str] = {
    "unreadable_file": "the file could not be opened or parsed at all",
    "truncated_file": "the file ended early or is corrupt; records before the fault were kept",
    "empty_file": "the file has no bytes",
    "unknown_format": "the file's name says no format, beside files that do; not read",
    "outside_root": "the file resolves outside the folder its glob names (symlink or '..'); not read",
    "missing_id": "the record has no id",
    "non_utf8_id": "the record id is not valid UTF-8",
    "record_too_large": "the record is over the byte cap",
    "undecodable_image": "the image bytes could not be decoded",
    "image_too_large": "the image header declares more pixels than the pixel cap",
    "wrong_shape": "the record's shape does not match the model's input",
    "wrong_channels": "the image's channel count cannot be converted to the model's",
    "non_finite_feature": "a feature is NaN or infinite",
    "non_numeric_feature": "a feature is not a number",
    "inference_failed": "the model raised on the batch holding this record",
    "non_finite_score": "the model produced a NaN or infinite score",
}

# Stages at which a record can be dead-lettered.
STAGES = ("read", "decode", "inference", "postprocess")

# What contributed most to a record's surprise: ``index`` into the flattened input, its
# ``contribution``, and where that is: the feature column's ``name`` (tables) or the
# pixel's ``position`` [row, column, channel] (images).
TOP_FEATURE = pa.struct([("index", pa.int64()), ("contribution", pa.float64()),
                         ("name", pa.string()), ("position", pa.list_(pa.int64()))])


def top_features(indices: np.ndarray, contributions: np.ndarray, feature_names: tuple[str, ...] = (),
                 input_shape: tuple[int, ...] = ()) -> pa.ListArray:
    """The ``top_features`` column of a batch: (rows, k) indices and contributions, each
    named by its column (tables, ``feature_names``) or its pixel position (images,
    ``input_shape``)."""
    rows, k = np.shape(indices)
    index = np.asarray(indices, np.int64).reshape(-1)
    name = pa.nulls(len(index), pa.string())
    position = pa.nulls(len(index), pa.list_(pa.int64()))
    if feature_names:
        name = pa.array(np.asarray(feature_names, dtype=object)[index], pa.string())
    elif input_shape:
        coords = np.stack(np.unravel_index(index, input_shape), axis=1).astype(np.int64).reshape(-1)
        position = pa.ListArray.from_arrays(np.arange(0, len(coords) + 1, len(input_shape), dtype=np.int32),
                                            coords)
    entries = pa.StructArray.from_arrays(
        [pa.array(index), pa.array(np.asarray(contributions, np.float64).reshape(-1)), name, position],
        fields=list(TOP_FEATURE))
    return pa.ListArray.from_arrays(np.arange(0, rows * k + 1, k, dtype=np.int32), entries)


def scores_schema(label_fields: list[pa.Field] | None = None,
                  metadata: dict[str, str] | None = None) -> pa.Schema:
    """The schema of ``scores/part-*.parquet``; label columns are carried through at the end."""
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
    for name in SCORE_NAMES:
        fields.append(pa.field(name, pa.float64(), nullable=False))
    for name in SCORE_NAMES:
        fields.append(pa.field(f"{name}_pvalue", pa.float64(), nullable=False))
    fields += [
        pa.field("anomaly_score", pa.float64(), nullable=False),
        pa.field("anomaly_pvalue", pa.float64(), nullable=False),
        pa.field("threshold", pa.float64(), nullable=False),
        pa.field("is_anomaly", pa.bool_(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("top_features", pa.list_(TOP_FEATURE), nullable=False),
    ]
    fields += list(label_fields or [])
    schema = pa.schema(fields)
    return schema.with_metadata(metadata) if metadata else schema


DEAD_LETTER_SCHEMA = pa.schema([
    pa.field("id", pa.string()),          # None when the id is missing or not UTF-8
    pa.field("id_hex", pa.string()),      # hex of the raw id bytes when not UTF-8
    pa.field("source", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("message", pa.string(), nullable=False),
])
