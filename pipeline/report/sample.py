"""Bounded reads of a published run: a sample, exact counts and the top anomalies.

Memory stays bounded whatever the run's size: Parquet files are read one at a time,
column subsets only, and everything kept is either fixed-size (the sample, the top-N) or
8 bytes per row (the id hashes used to count duplicates).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vigil.pipeline.commit import _open, parquet_files
from vigil.pipeline.readers import ReadSpec, read_file
from vigil.pipeline.records import FileStats, RawRecord


def sample_scores(run_dir: str, columns: list[str], cap: int, seed: int = 0) -> pa.Table:
    """A uniform sample of at most ``cap`` rows of the scores (Bernoulli per row group)."""
    files = parquet_files(f"{run_dir}/scores")
    total = 0
    for path in files:
        with _open(path) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    keep = min(1.0, cap / max(total, 1))
    rng = np.random.default_rng(seed)
    parts = []
    for path in files:
        with _open(path) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=65536, columns=columns):
                mask = rng.random(batch.num_rows) < keep
                parts.append(pa.Table.from_batches([batch]).filter(pa.array(mask)))
    if not parts:
        return pa.table({c: [] for c in columns})
    return pa.concat_tables(parts).slice(0, cap)


def duplicate_ids(run_dir: str) -> int:
    """Rows whose id appeared before, from 8-byte hashes of every id."""
    hashes = []
    for path in parquet_files(f"{run_dir}/scores"):
        with _open(path) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=65536, columns=["id"]):
                hashes.append(np.fromiter(
                    (int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little")
                     for i in batch.column(0).to_pylist()), dtype=np.uint64, count=batch.num_rows))
    if not hashes:
        return 0
    all_hashes = np.concatenate(hashes)
    return int(len(all_hashes) - len(np.unique(all_hashes)))


def top_anomalies(run_dir: str, n: int) -> pa.Table:
    """The n rows with the highest anomaly_score."""
    best = None
    cols = ["id", "source", "anomaly_score", "is_anomaly", "top_features"]
    for path in parquet_files(f"{run_dir}/scores"):
        with _open(path) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=65536, columns=cols):
                t = pa.Table.from_batches([batch])
                best = t if best is None else pa.concat_tables([best, t])
                if best.num_rows > n:
                    order = np.argsort(-best.column("anomaly_score").to_numpy())[:n]
                    best = best.take(pa.array(order))
    if best is None:
        return pa.table({c: [] for c in cols})
    order = np.argsort(-best.column("anomaly_score").to_numpy())
    return best.take(pa.array(order))


def sample_inputs(inputs: list[dict], spec: ReadSpec, cap: int) -> list[RawRecord]:
    """Up to ``cap`` raw records, spread over the input files (first rows of each)."""
    per_file = max(1, cap // max(len(inputs), 1))
    out: list[RawRecord] = []
    for item in inputs:
        fmt = item.get("format") or spec.format
        file_spec = ReadSpec(fmt, spec.id_column, spec.feature_columns, (), item.get("root", ""))
        taken = 0
        for rec in read_file(item["uri"], file_spec, FileStats(item["uri"])):
            if isinstance(rec, RawRecord):
                out.append(rec)
                taken += 1
                if taken >= per_file or len(out) >= cap:
                    break
        if len(out) >= cap:
            break
    return out


def find_records(inputs: list[dict], spec: ReadSpec, ids: set[str]) -> dict[str, RawRecord]:
    """The raw records with these ids (scans input files until all are found)."""
    found: dict[str, RawRecord] = {}
    for item in inputs:
        fmt = item.get("format") or spec.format
        file_spec = ReadSpec(fmt, spec.id_column, spec.feature_columns, (), item.get("root", ""))
        for rec in read_file(item["uri"], file_spec, FileStats(item["uri"])):
            if isinstance(rec, RawRecord) and rec.id in ids:
                found[rec.id] = rec
                if len(found) == len(ids):
                    return found
    return found
