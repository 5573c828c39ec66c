"""Bad feature files and records: each is named in a dead letter, the rest is scored.

One real run over a folder of Parquet, CSV and TFRecord files with every defect below;
each test checks one defect and the run invariant.  Policy (README "Input rules"):
records before a corruption point are kept and scored, and the file gets one
``truncated_file`` dead letter; duplicate ids are scored once per occurrence (the key is
(source, id)) and the report warns about them.
"""
from __future__ import annotations

import datetime
import gzip
import os
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests import helpers

MULTI_PROCESS = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]


def _features_tfrecord(path, x, prefix):
    return helpers.write_tfrecord(path, [helpers.example(f"{prefix}-{i}".encode(), features=list(row))
                                         for i, row in enumerate(x)])


def _record_offset(data: bytes, index: int) -> int:
    """Byte offset of record ``index``'s payload in a TFRecord file."""
    pos = 0
    for _ in range(index):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        pos += 12 + length + 4
    return pos + 12


def _garbled_pages(data: bytes) -> bytes:
    """A Parquet file whose column chunks are garbage and whose footer is intact."""
    footer_len = int.from_bytes(data[-8:-4], "little")
    body = bytearray(data)
    for i in range(4, len(data) - footer_len - 8):
        body[i] = (body[i] * 31 + 7) % 256
    return bytes(body)


@pytest.fixture(scope="module")
def bad_run(features_registry, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_tables")
    d = tmp / "in"
    x, y = features_registry["x"], features_registry["y"]
    cols = features_registry["columns"]
    files = helpers.table_shards(d, x[:200], y[:200], shards=2, prefix="good")
    # Values: NaN, +Inf, -Inf, no id, a non-UTF-8 id, values a float32 model overflows on,
    # and an extra column the model does not use.
    v = x[200:208].copy()
    v[0, 3], v[1, 4], v[2, 5] = np.nan, np.inf, -np.inf
    v[6, :] = 1e308
    ids = [b"nan", b"pinf", b"ninf", None, b"\xff\xfe-id", b"ok-1", b"overflow", b"ok-2"]
    pq.write_table(pa.table({"id": pa.array(ids, pa.binary()),
                             **{c: v[:, j] for j, c in enumerate(cols)},
                             "label": y[200:208], "notes": ["x"] * 8}), d / "values.parquet")
    # Retyped columns: numbers written as text (one is not a number), an int column.
    t = {"id": ["txt-ok", "txt-bad"], **{c: x[208:210, j] for j, c in enumerate(cols)}}
    t["f2"] = [str(x[208, 2]), "abc"]
    t["f4"] = np.round(x[208:210, 4]).astype(np.int64)
    pq.write_table(pa.table(t), d / "retyped.parquet")
    # The same ids as in another shard.
    pq.write_table(pq.read_table(files[0]).slice(0, 5), d / "dup.parquet")
    # A truncated footer; data pages overwritten behind an intact footer (its 100 rows are
    # known, so each is counted); 0-byte files of every tabular format.
    (d / "trunc-footer.parquet").write_bytes((d / "part-0.parquet").read_bytes()[:-20])
    (d / "bad-pages.parquet").write_bytes(_garbled_pages((d / "part-1.parquet").read_bytes()))
    for name in ("zero.parquet", "zero.csv", "zero.tfrecord"):
        (d / name).write_bytes(b"")
    # TFRecord features: a flipped bit in record 5, and a tail cut inside record 9.
    flip = _features_tfrecord(d / "flipped.tfrecord", x[210:220], "flip")
    data = bytearray(open(flip, "rb").read())
    data[_record_offset(bytes(data), 5) + 20] ^= 0x10
    open(flip, "wb").write(bytes(data))
    cut = _features_tfrecord(d / "cut.tfrecord", x[220:230], "cut")
    data = open(cut, "rb").read()
    open(cut, "wb").write(data[:-10])
    # A plain CSV.
    with open(d / "rows.csv", "w") as f:
        f.write(",".join(["id", *cols]) + "\n")
        for i in range(5):
            f.write(",".join([f"csv-{i}", *(repr(float(v)) for v in x[230 + i])]) + "\n")
    # The same rows gzipped, and a gzipped Parquet file (Parquet is not read gzipped).
    with gzip.open(d / "rows.csv.gz", "wt") as f:
        f.write((d / "rows.csv").read_text().replace("csv-", "gz-"))
    with gzip.open(d / "table.parquet.gz", "wb") as f:
        f.write((d / "dup.parquet").read_bytes())
    # A symlink that leads out of the input folder.
    outside = tmp / "outside.parquet"
    pq.write_table(pq.read_table(files[1]).slice(0, 3), outside)
    os.symlink(outside, d / "escape.parquet")
    out = tmp / "out"
    globs = [f"{d}/*.parquet", f"{d}/*.tfrecord", f"{d}/*.csv", f"{d}/*.gz"]
    res = helpers.score_cli(features_registry, globs, out, "--max-bad-fraction", "0.8",
                            "--allow-uncounted-files")
    assert res.exit_code == 0, res.output + repr(res.exception)
    inputs = sorted(str(p) for p in d.iterdir())
    scores, dead, manifest = helpers.read_run(f"{out}/run1")
    return {"run": f"{out}/run1", "inputs": inputs, "dir": str(d), "scores": scores,
            "dead": dead.to_pylist(), "manifest": manifest,
            "refused": (str(d / "escape.parquet"),)}


def _dead(run, source_name=None, record_id=None):
    return [r for r in run["dead"] if (source_name is None or r["source"].endswith("/" + source_name))
            and (record_id is None or r["id"] == record_id)]


def _check(run):
    helpers.check_invariant(run["run"], run["inputs"], refused=run["refused"])


def test_nan_and_infinite_features_are_dead_lettered(bad_run, features_registry):
    cols = features_registry["columns"]
    for rid, j, value in (("nan", 3, "nan"), ("pinf", 4, "inf"), ("ninf", 5, "-inf")):
        [d] = _dead(bad_run, "values.parquet", rid)
        assert d["reason"] == "non_finite_feature" and d["stage"] == "decode"
        assert d["message"] == f"feature {j} ('{cols[j]}') is {value}", d
    _check(bad_run)


def test_missing_and_non_utf8_ids(bad_run):
    reasons = {d["reason"]: d for d in _dead(bad_run, "values.parquet")}
    assert reasons["missing_id"]["id"] is None
    assert reasons["non_utf8_id"]["id_hex"] == b"\xff\xfe-id".hex()
    _check(bad_run)


def test_huge_finite_values_score_finitely(bad_run):
    # 1e308 in every feature: preprocessing squashes the tails, so the model's math stays
    # finite and the record gets real (very anomalous) scores.
    row = [r for r in bad_run["scores"].to_pylist() if r["id"] == "overflow"]
    assert row and row[0]["is_anomaly"]
    for name in ("vae_recon_logprob", "vae_elbo", "vae_log_px", "dae_recon_error", "anomaly_score"):
        assert np.isfinite(bad_run["scores"].column(name).to_numpy()).all()
    _check(bad_run)


def test_extra_columns_are_ignored_and_retyped_columns_parsed(bad_run):
    ids = set(bad_run["scores"].column("id").to_pylist())
    assert {"ok-1", "ok-2", "txt-ok"} <= ids
    [d] = _dead(bad_run, "retyped.parquet")
    assert d["id"] == "txt-bad" and d["reason"] == "non_numeric_feature" and "'f2'" in d["message"]
    _check(bad_run)


def test_duplicate_ids_across_shards_are_scored_per_occurrence(bad_run):
    s = bad_run["scores"]
    dup_ids = pq.read_table(f"{bad_run['dir']}/dup.parquet").column("id").to_pylist()
    for rid in dup_ids:
        sources = [src for src, i in zip(s.column("source").to_pylist(), s.column("id").to_pylist())
                   if i == rid]
        assert sorted(os.path.basename(x) for x in sources) == ["dup.parquet", "part-0.parquet"]
    _check(bad_run)


def test_a_file_with_a_footer_counts_every_record_it_held(bad_run):
    lost = _dead(bad_run, "bad-pages.parquet")
    assert len(lost) == 100 and {d["reason"] for d in lost} == {"truncated_file"}
    assert lost[0]["message"].startswith("record 1 of 100: ")
    [info] = [i for i in bad_run["manifest"]["inputs"] if i["uri"].endswith("/bad-pages.parquet")]
    assert (info["failed_records"], info["count_known"]) == (100, True)
    counts = bad_run["manifest"]["counts"]
    assert counts["read_is_lower_bound"] and counts["uncounted_files"] == 3   # footer, flip, cut
    _check(bad_run)


@pytest.mark.parametrize("runner", [[], MULTI_PROCESS], ids=["in-process", "multi-process"])
def test_files_whose_records_cannot_be_counted_stop_the_run_by_default(features_registry, tmp_path,
                                                                       runner):
    x, y = features_registry["x"], features_registry["y"]
    files = helpers.table_shards(tmp_path / "in", x[:100], y[:100], shards=2)
    cut = tmp_path / "in" / "cut.tfrecord"
    _features_tfrecord(cut, x[100:110], "cut")
    cut.write_bytes(cut.read_bytes()[:-10])
    inputs = [f"{tmp_path}/in/*.parquet", str(cut)]
    res = helpers.score_cli(features_registry, inputs, tmp_path / "out", *runner)
    assert res.exit_code == 3
    line = res.output.strip()
    assert "\n" not in line and f"{cut} failed before their records could be counted" in line
    assert not (tmp_path / "out" / "run1").exists()
    res = helpers.score_cli(features_registry, inputs, tmp_path / "out", "--allow-uncounted-files",
                            *runner)
    assert res.exit_code == 0, res.output
    helpers.check_invariant(str(tmp_path / "out" / "run1"), [*files, str(cut)])


@pytest.mark.parametrize("name,reason,kept", [
    ("trunc-footer.parquet", "unreadable_file", 0),
    ("zero.parquet", "empty_file", 0), ("zero.csv", "empty_file", 0),
    ("zero.tfrecord", "empty_file", 0),
    ("flipped.tfrecord", "truncated_file", 5),
    ("cut.tfrecord", "truncated_file", 9),
])
def test_damaged_files_are_named_and_the_rest_scored(bad_run, name, reason, kept):
    [d] = _dead(bad_run, name)
    assert d["reason"] == reason and d["stage"] == "read" and d["id"] is None
    [info] = [i for i in bad_run["manifest"]["inputs"] if i["uri"].endswith("/" + name)]
    assert not info["fully_read"] and info["failure"] == reason
    scored_here = [src for src in bad_run["scores"].column("source").to_pylist() if src.endswith("/" + name)]
    assert len(scored_here) == kept
    assert len(d["message"]) < 400
    _check(bad_run)


def test_a_gzipped_csv_scores_as_the_plain_one_and_gzipped_parquet_is_named(bad_run):
    scores = bad_run["scores"].to_pandas().set_index("id")
    for i in range(5):
        plain, gzipped = scores.loc[f"csv-{i}"], scores.loc[f"gz-{i}"]
        assert gzipped["source"].endswith("/rows.csv.gz")
        assert plain["anomaly_score"] == gzipped["anomaly_score"]
    [d] = _dead(bad_run, "table.parquet.gz")
    assert d["reason"] == "unknown_format" and ".csv.gz" in d["message"]
    _check(bad_run)


def test_gzipped_csv_is_checked_before_the_run_and_trains(features_registry, tmp_path):
    x = features_registry["x"][:60]
    cols = features_registry["columns"]
    lines = ["id," + ",".join(cols)] + [f"r{i}," + ",".join(repr(float(v)) for v in row)
                                        for i, row in enumerate(x)]
    with gzip.open(tmp_path / "rows.csv.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    with gzip.open(tmp_path / "renamed.csv.gz", "wt") as f:
        f.write("\n".join([lines[0].replace(",f7,", ",f7_renamed,"), *lines[1:]]) + "\n")
    res = helpers.score_cli(features_registry, [str(tmp_path / "renamed.csv.gz")], tmp_path / "out")
    assert res.exit_code == 2 and not (tmp_path / "out").exists()
    assert f"{tmp_path}/renamed.csv.gz: missing column 'f7'" in res.output
    from vigil.jobs.train import TrainJobConfig, load_training_data
    cfg = TrainJobConfig((str(tmp_path / "rows.csv.gz"),), str(tmp_path / "reg"), "t")
    arrays, ids, kind, columns, _, _ = load_training_data(cfg)
    assert (kind, columns, len(ids)) == ("features", cols, 60)
    np.testing.assert_allclose(arrays, x)
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "t.parquet.gz").write_bytes(gzip.compress(b"PAR1"))
    res = helpers.score_cli(features_registry, [str(tmp_path / "only" / "*.gz")], tmp_path / "out")
    assert res.exit_code == 2 and "only CSV and TFRecord files are read gzipped" in res.output


def test_symlink_out_of_the_input_folder_is_not_read(bad_run):
    [d] = _dead(bad_run, "escape.parquet")
    assert d["reason"] == "outside_root"
    assert not any(src.endswith("escape.parquet") for src in bad_run["scores"].column("source").to_pylist())
    _check(bad_run)


def test_the_manifest_counts_dead_letters_by_reason(bad_run):
    from collections import Counter
    reasons = bad_run["manifest"]["counts"]["dead_letter_reasons"]
    assert reasons == dict(Counter(d["reason"] for d in bad_run["dead"]))
    assert sum(reasons.values()) == bad_run["manifest"]["counts"]["dead_lettered"]


def test_dead_letters_hold_no_payload(bad_run):
    for d in bad_run["dead"]:
        assert set(d) == {"id", "id_hex", "source", "stage", "reason", "message"}
        assert "1e+308" not in d["message"] and "abc" not in d["message"]
    _check(bad_run)


def test_missing_renamed_column_stops_before_anything_is_written(features_registry, tmp_path):
    x = features_registry["x"][:5]
    cols = {c: x[:, j] for j, c in enumerate(features_registry["columns"])}
    cols["f7_renamed"] = cols.pop("f7")
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(5)], **cols}), tmp_path / "renamed.parquet")
    res = helpers.score_cli(features_registry, [str(tmp_path / "renamed.parquet")], tmp_path / "out")
    assert res.exit_code == 2
    assert f"{tmp_path}/renamed.parquet: missing column 'f7'" in res.output
    assert res.output.strip().count("\n") == 0 and not (tmp_path / "out").exists()


def test_a_column_of_vectors_where_the_model_reads_numbers_stops_the_run(features_registry, tmp_path):
    x = features_registry["x"][:5]
    cols = {c: x[:, j] for j, c in enumerate(features_registry["columns"])}
    cols["f3"] = pa.array([list(row[:4]) for row in x], pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(5)], **cols}), tmp_path / "vec.parquet")
    res = helpers.score_cli(features_registry, [str(tmp_path / "vec.parquet")], tmp_path / "out")
    assert res.exit_code == 2 and not (tmp_path / "out").exists()
    assert "column 'f3' holds list<" in res.output
    assert "the model reads it as one number per row" in res.output


def test_a_csv_separated_by_semicolons_is_named_as_such(features_registry, tmp_path):
    cols = features_registry["columns"]
    rows = [";".join(["id", *cols])] + [";".join([f"r{i}", *(repr(float(v)) for v in x)])
                                        for i, x in enumerate(features_registry["x"][:5])]
    (tmp_path / "semi.csv").write_text("\n".join(rows) + "\n")
    res = helpers.score_cli(features_registry, [str(tmp_path / "semi.csv")], tmp_path / "out")
    assert res.exit_code == 2 and not (tmp_path / "out").exists()
    assert "its values are separated by ';', and vigil reads comma-separated CSV" in res.output


def test_training_skips_a_file_whose_name_says_no_format(tmp_path):
    from vigil.jobs.train import TrainJobConfig, load_training_data
    x = np.random.default_rng(0).normal(size=(40, 3))
    helpers.table_shards(tmp_path / "train", x)
    (tmp_path / "train" / "README.md").write_text("exported nightly\n")
    cfg = TrainJobConfig((str(tmp_path / "train" / "*"),), str(tmp_path / "reg"), "t")
    arrays, ids, kind, columns, _, _ = load_training_data(cfg)
    assert (kind, columns, len(ids)) == ("features", ["f0", "f1", "f2"], 40)


@pytest.mark.parametrize("runner", [["--runner", "FnApiRunner"], MULTI_PROCESS],
                         ids=["in-process", "multi-process"])
def test_matches_that_are_not_files_are_listed_and_never_opened(features_registry, tmp_path, runner):
    """A pipe named like a shard would block a reader forever; a name that is not UTF-8
    would break every text sink.  The first kind is skipped and listed, the second read."""
    import json
    import socket
    import subprocess
    import sys
    x, y = features_registry["x"], features_registry["y"]
    d = tmp_path / "in"
    (good,) = helpers.table_shards(d, x[:40], y[:40], shards=1)
    odd = os.path.join(os.fsencode(str(d)), b"night-\xff.parquet")
    with open(odd, "wb") as f:
        f.write(open(good, "rb").read())
    os.mkfifo(d / "pipe.parquet")
    (d / "folder.parquet").mkdir()
    os.symlink(tmp_path / "nowhere", d / "dangling.parquet")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock.parquet"))
    try:
        done = subprocess.run(
            [sys.executable, "-c", "from vigil.jobs.cli import main; main()", "score", "--input",
             f"{d}/*.parquet", "--registry", features_registry["registry"], "--name", "cardio",
             "--output", str(tmp_path / "out"), "--run-id", "r", "--no-report", *runner],
            capture_output=True, text=True, timeout=300)
    finally:
        sock.close()
    assert done.returncode == 0, done.stdout + done.stderr
    for name, what in [("dangling", "a symbolic link to nothing"), ("folder", "a directory"),
                       ("pipe", "a named pipe"), ("sock", "a socket")]:
        assert f"skipped {d}/{name}.parquet: {what}, not read" in done.stdout, done.stdout
    scores, dead, manifest = helpers.read_run(str(tmp_path / "out" / "r"))
    assert [s["skipped"] for s in manifest["skipped"]] == ["a symbolic link to nothing", "a directory",
                                                           "a named pipe", "a socket"]
    printable = f"{d}/night-\\xff.parquet"
    assert sorted(i["uri"] for i in manifest["inputs"]) == sorted([good, printable])
    assert manifest["counts"]["read"] == manifest["counts"]["scored"] == scores.num_rows == 80
    assert dead.num_rows == 0
    assert sorted(set(scores.column("source").to_pylist())) == sorted([good, printable])
    json.dumps(manifest, allow_nan=False)


def test_metadata_files_of_a_spark_output_folder_are_listed_not_read(features_registry, tmp_path, caplog):
    """A job's output folder holds _SUCCESS, .crc checksums and, while it writes, _temporary/:
    a wildcard reads the data beside them and lists them as not read, as Spark's and Arrow's
    own readers skip them; a pattern that names the prefix reads such files."""
    x, y = features_registry["x"], features_registry["y"]
    d = tmp_path / "spark"
    (good,) = helpers.table_shards(d, x[:40], y[:40], shards=1)
    (d / "_SUCCESS").write_bytes(b"")
    (d / ".part-0.parquet.crc").write_bytes(b"crc")
    (d / "_temporary" / "0").mkdir(parents=True)
    (d / "_temporary" / "0" / "part-9.parquet").write_bytes(open(good, "rb").read())
    res = helpers.score_cli(features_registry, [f"{d}/*"], tmp_path / "out")
    assert res.exit_code == 0, res.output
    scores, dead, manifest = helpers.read_run(str(tmp_path / "out" / "run1"))
    assert [i["uri"] for i in manifest["inputs"]] == [good] and dead.num_rows == 0
    assert manifest["counts"]["read"] == scores.num_rows == 40
    assert {s["uri"]: s["skipped"] for s in manifest["skipped"]} == {
        f"{d}/.part-0.parquet.crc": "a metadata file (its name starts with '.')",
        f"{d}/_SUCCESS": "a metadata file (its name starts with '_')",
        f"{d}/_temporary": "a directory"}
    assert f"skipped {d}/_SUCCESS: a metadata file (its name starts with '_'), not read" in res.output
    only = helpers.score_cli(features_registry, [f"{d}/*/*/*.parquet"], tmp_path / "out", run_id="only")
    assert only.exit_code == 2 and (f"only 1 that are not read, e.g. {d}/_temporary/0/part-9.parquet: "
                                    "in a metadata folder (_temporary)") in only.output
    from vigil.jobs.train import TrainJobConfig, load_training_data
    caplog.set_level("INFO", logger="vigil.train")
    _, ids, _, _, _, _ = load_training_data(TrainJobConfig((f"{d}/*",), str(tmp_path / "reg"), "t"))
    assert len(ids) == 40
    assert f"skipped {d}/_SUCCESS: a metadata file (its name starts with '_'), not read" in caplog.messages
    named = helpers.score_cli(features_registry, [f"{d}/_temporary/*/*.parquet"], tmp_path / "out",
                              run_id="named")
    assert named.exit_code == 0, named.output
    assert helpers.read_run(str(tmp_path / "out" / "named"))[0].num_rows == 40


def test_a_double_star_matches_files_at_every_depth_including_none(tmp_path):
    """'data/**/*.parquet' holds data/x.parquet too, as in Python's and the shell's globs
    (Beam's own match needs a folder there, and left such files out without a word)."""
    from vigil.pipeline.preflight import match_inputs
    for rel in ("top.parquet", "a/mid.parquet", "a/b/deep.parquet", "a/b/note.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")

    def matched(pattern):
        found = match_inputs([f"{tmp_path}/{pattern}"], 10).files
        return [os.path.relpath(uri, tmp_path) for uri, _, _ in found]
    assert matched("**/*.parquet") == ["a/b/deep.parquet", "a/mid.parquet", "top.parquet"]
    assert matched("*/**/*.parquet") == ["a/b/deep.parquet", "a/mid.parquet"]
    assert matched("**/b/**/*.parquet") == ["a/b/deep.parquet"]
    (tmp_path / "a" / "_SUCCESS").write_bytes(b"")
    everything = match_inputs([f"{tmp_path}/**/*"], 10)       # folders are gone through, not listed
    assert [item["uri"] for item in everything.skipped] == [f"{tmp_path}/a/_SUCCESS"]
    assert len(everything.files) == 4


def test_carried_columns_of_different_types_are_unified(features_registry, tmp_path):
    """One shard's label is an integer, another's a float, a third's text: the run is
    published with the label as the type that holds all three."""
    x = features_registry["x"]
    cols = {f"f{j}": x[:30, j] for j in range(x.shape[1])}
    d = tmp_path / "in"
    d.mkdir()
    labels = {"a": pa.array([0] * 10, pa.int64()), "b": pa.array([1.5] * 10),
              "c": pa.array(["odd"] * 10)}
    for k, (name, label) in enumerate(labels.items()):
        part = {c: v[k * 10:(k + 1) * 10] for c, v in cols.items()}
        pq.write_table(pa.table({"id": [f"{name}{i}" for i in range(10)], **part, "label": label}),
                       d / f"{name}.parquet")
    res = helpers.score_cli(features_registry, [f"{d}/*.parquet"], tmp_path / "out")
    assert res.exit_code == 0, res.output
    run = str(tmp_path / "out" / "run1")
    helpers.check_invariant(run, sorted(str(p) for p in d.glob("*.parquet")))
    scores = helpers.read_run(run)[0]
    assert scores.schema.field("label").type == pa.string()
    assert sorted(set(scores.column("label").to_pylist())) == ["0", "1.5", "odd"]


def test_carried_columns_keep_their_type_or_become_json(features_registry, tmp_path):
    """A column of one type in every shard (a struct, a list, a timestamp, a dictionary)
    keeps it in the scores table; a list or struct whose type differs between shards
    becomes JSON text (not Python's repr)."""
    x = features_registry["x"]
    d = tmp_path / "in"
    d.mkdir()
    for k, n in enumerate((7, 8)):
        part = {f"f{j}": x[k * 10:(k + 1) * 10, j] for j in range(x.shape[1])}
        meta = pa.array([{"camera": "left", "frame": i} for i in range(10)])
        mixed = pa.array([{"a": 1}] * 10) if k == 0 else pa.array([[1, 2]] * 10)
        when = pa.array([datetime.datetime(2026, 12, 8, 1, k)] * 10, pa.timestamp("ms", tz="UTC"))
        site = pa.array(["north", "south"] * 5).dictionary_encode()
        pq.write_table(pa.table({"id": [f"{n}-{i}" for i in range(10)], **part, "meta": meta,
                                 "tags": pa.array([["x", "y"]] * 10), "mixed": mixed,
                                 "when": when, "site": site}), d / f"{n}.parquet")
    carried = [a for c in ("meta", "tags", "mixed", "when", "site") for a in ("--carry-column", c)]
    res = helpers.score_cli(features_registry, [f"{d}/*.parquet"], tmp_path / "out", *carried)
    assert res.exit_code == 0, res.output
    scores = helpers.read_run(str(tmp_path / "out" / "run1"))[0].sort_by("id")
    assert scores.schema.field("meta").type == pa.struct([("camera", pa.string()), ("frame", pa.int64())])
    assert scores.column("meta")[0].as_py() == {"camera": "left", "frame": 0}
    assert scores.column("tags")[0].as_py() == ["x", "y"]
    assert set(scores.column("mixed").to_pylist()) == {'{"a": 1}', "[1, 2]"}
    assert scores.schema.field("when").type == pa.timestamp("ms", tz="UTC")
    assert set(scores.column("site").to_pylist()) == {"north", "south"}


@pytest.mark.parametrize("column", ["source", "is_anomaly", "anomaly_score"])
def test_a_carried_column_named_like_an_output_column_is_refused(features_registry, tmp_path, column):
    x, y = features_registry["x"], features_registry["y"]
    helpers.table_shards(tmp_path / "in", x[:20], y[:20], shards=1)
    res = helpers.score_cli(features_registry, [f"{tmp_path}/in/*.parquet"], tmp_path / "out",
                            "--carry-column", column)
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line and f"--carry-column {column}: the scores table has its own" in line
    assert not (tmp_path / "out").exists()


def test_table_rows_checked_in_blocks_are_those_decode_passes_one_by_one(tmp_path):
    """The pipeline reads a table in blocks checked in numpy (``decode_rows``); training and
    reports read it row by row and ``decode`` each: the same good rows and the same dead
    letters either way, at any batch boundary."""
    from vigil.pipeline.decode import DecodeSpec, decode
    from vigil.pipeline.readers import ReadSpec, read_file
    from vigil.pipeline.records import DeadLetter, FileStats, RecordBlock, ScoringInput
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3))
    x[[5, 255, 256, 599], [0, 1, 2, 0]] = [np.nan, np.inf, -np.inf, np.nan]
    ids = [f"r{i}".encode() for i in range(600)]
    ids[300], ids[301], ids[302] = b"", b"\xff\xfe", None
    f1 = [str(v) for v in x[:, 1]]
    f1[400] = "abc"
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": pa.array(ids, pa.binary()), "f0": x[:, 0], "f1": f1, "f2": x[:, 2],
                             "label": np.arange(600)}), path)
    spec = ReadSpec("parquet", feature_columns=("f0", "f1", "f2"), carry_columns=("label",),
                    batch_rows=256)

    def read(blocks: bool):
        stats = FileStats(str(path))
        return stats, list(read_file(str(path), spec, stats, blocks=blocks))

    block_stats, block_items = read(True)
    row_stats, row_items = read(False)
    blocks = [i for i in block_items if isinstance(i, RecordBlock)]
    assert blocks and all(len(b) <= 256 for b in blocks)
    decoded = [decode(i, DecodeSpec("features", (3,), feature_names=spec.feature_columns))
               if not isinstance(i, DeadLetter) else i
               for i in row_items]
    records = [d for d in decoded if isinstance(d, ScoringInput)]
    assert [i for b in blocks for i in b.ids] == [r.id for r in records]
    assert np.array_equal(np.concatenate([b.x for b in blocks]), np.stack([r.x for r in records]))
    assert [v for b in blocks for v in b.labels["label"]] == [r.labels["label"] for r in records]
    dead = sorted((d.reason, d.id, d.id_hex, d.message) for d in block_items if isinstance(d, DeadLetter))
    assert dead == sorted((d.reason, d.id, d.id_hex, d.message) for d in decoded if isinstance(d, DeadLetter))
    assert [(reason, rid, hexed) for reason, rid, hexed, _ in dead] == sorted(
        [("non_finite_feature", f"r{i}", None) for i in (5, 255, 256, 599)]
        + [("missing_id", None, None), ("missing_id", None, None), ("non_utf8_id", None, "fffe"),
           ("non_numeric_feature", "r400", None)])
    assert block_stats.records == row_stats.records == 600 and block_stats.fully_read
    assert len(records) + len(dead) == 600


@pytest.mark.parametrize("cut_into", [3, 70, 99])
def test_a_tfrecord_cut_past_its_first_reads_keeps_every_record_before_the_cut(tmp_path, cut_into):
    """TFRecord files are read several records at a time; a damaged record loses its
    whole read, which is then read again record by record: the records before the cut
    are all kept, in lists of at most ``batch_rows`` when the pipeline reads in blocks."""
    from vigil.pipeline.readers import TFRECORD_CHUNK, ReadSpec, read_file
    from vigil.pipeline.records import DeadLetter, FileStats, RawRecord
    assert cut_into > TFRECORD_CHUNK or cut_into < TFRECORD_CHUNK
    x = np.random.default_rng(0).normal(size=(100, 3))
    path = str(_features_tfrecord(tmp_path / "cut.tfrecord", x, "c"))
    data = (tmp_path / "cut.tfrecord").read_bytes()
    (tmp_path / "cut.tfrecord").write_bytes(data[:_record_offset(data, cut_into) + 5])
    spec = ReadSpec("tfrecord-features", batch_rows=16)
    for blocks in (False, True):
        stats = FileStats(path)
        items = list(read_file(path, spec, stats, blocks=blocks))
        lists = [i for i in items if isinstance(i, list)]
        records = [r for i in items for r in (i if isinstance(i, list) else [i]) if isinstance(r, RawRecord)]
        assert [r.id for r in records] == [f"c-{i}" for i in range(cut_into)]
        assert np.allclose([r.value for r in records], x[:cut_into])
        assert bool(lists) == blocks and all(1 <= len(part) <= 16 for part in lists)
        [dead] = [i for i in items if isinstance(i, DeadLetter)]
        assert (dead.reason, stats.records, stats.fully_read) == ("truncated_file", cut_into, False)
        assert dead.message.startswith(f"read {cut_into} records, then: ")
