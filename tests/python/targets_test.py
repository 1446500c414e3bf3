"""The training-target store is plain Parquet: pyarrow reads every shard a run committed, and the
rows agree with the store's manifest (file hashes, row counts, schema, provenance).

Usage: targets_test.py HCH_BINARY
"""

import hashlib
import json
import pathlib
import subprocess
import sys
import tempfile

import pyarrow.parquet as pq

COLUMNS = [
    "domain", "size", "instance_seed", "instance_id", "facts", "question", "answer",
    "difficulty", "source", "answered_by_generation", "answerer", "tree_id", "nodes",
    "time_us", "round", "index",
]


def main(hch):
    with tempfile.TemporaryDirectory() as tmp:
        run = pathlib.Path(tmp) / "run"
        subprocess.run(
            [hch, "train", "--local", "-d", "wildcard", "--size", "6", "--start-size", "6",
             "--roots", "48", "--roots-per-part", "16", "--steps", "5", "--heldout", "16",
             "--rounds", "2", "--run", str(run)],
            check=True, stdout=subprocess.DEVNULL,
        )
        manifest = json.loads((run / "targets" / "manifest.json").read_text())
        assert manifest["domain"] == "wildcard"
        assert len(manifest["shards"]) == 6, manifest
        total = 0
        for shard in manifest["shards"]:
            path = run / "targets" / shard["file"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"], path
            table = pq.read_table(path)
            assert table.column_names == COLUMNS, table.column_names
            assert table.num_rows == shard["rows"], (path, table.num_rows)
            rows = table.to_pylist()
            for row in rows:
                assert row["domain"] == "wildcard" and row["source"] == "amplified"
                assert row["round"] == shard["round"]
                assert row["answerer"] == f"model g{row['answered_by_generation']}"
                assert row["answer"] != "?"
            total += len(rows)
        print(f"pyarrow read {total} targets from {len(manifest['shards'])} shards")


if __name__ == "__main__":
    main(sys.argv[1])
