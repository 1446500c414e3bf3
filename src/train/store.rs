//! The training-target store: amplified answers (or, for the supervised baseline, true answers)
//! kept on disk as Parquet shards, so that a killed trainer loses nothing it committed, a resumed
//! one duplicates nothing, and anyone can read the targets with pandas or pyarrow.
//!
//! ```text
//! targets/
//!   manifest.json                 the committed shards: {"format":1,"domain":"wildcard","shards":[
//!                                   {"file":"r000003-p0001.parquet","round":3,"part":1,
//!                                    "rows":256,"bytes":21873,"sha256":"…"}, …]}
//!   r000003-p0001.parquet         the targets of round 3 (produced with generation X_3), part 1
//! ```
//!
//! # Commit protocol
//!
//! A shard is written atomically under its final name (temporary file, fsync, rename, directory
//! fsync: [`crate::fsutil`]), and then the manifest naming it, with its SHA-256 and row count, is
//! replaced atomically. **The manifest is the commit point**: a crash between the two leaves a
//! shard file that the manifest does not name, which [`TargetStore::open`] deletes; a crash
//! before either leaves nothing. A round's targets are split into numbered parts that are
//! deterministic functions of (run seed, round, part), so a resumed trainer skips exactly the
//! parts already committed.
//!
//! # Verification on read
//!
//! [`TargetStore::read_shard`] checks the file's SHA-256 and size against the manifest, the
//! Parquet schema against [`SCHEMA`], the row count, and that every row belongs to this store's
//! domain, naming the file in any error.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parquet::basic::{Compression, Encoding};
use parquet::data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::{Field, RowAccessor};
use parquet::schema::parser::parse_message_type;
use serde::{Deserialize, Serialize};

use crate::fsutil;

/// The manifest format this build writes and reads.
pub const STORE_FORMAT: u32 = 1;
/// File name of the manifest in the store directory (the same as a registry generation's).
pub const MANIFEST_FILE: &str = "manifest.json";
/// The manifest's name before it matched the registry's. A store that has only this one is
/// refused rather than opened empty, which would delete its shards as uncommitted.
const OLD_MANIFEST_FILE: &str = "MANIFEST.json";

/// The Parquet schema of every shard. Column order is part of the format.
pub const SCHEMA: &str = "message training_targets {
    REQUIRED BYTE_ARRAY domain (UTF8);
    REQUIRED INT32 size;
    REQUIRED INT64 instance_seed;
    REQUIRED BYTE_ARRAY instance_id (UTF8);
    REQUIRED BYTE_ARRAY facts (UTF8);
    REQUIRED BYTE_ARRAY question (UTF8);
    REQUIRED BYTE_ARRAY answer (UTF8);
    REQUIRED INT32 difficulty;
    REQUIRED BYTE_ARRAY source (UTF8);
    OPTIONAL INT64 answered_by_generation;
    REQUIRED BYTE_ARRAY answerer (UTF8);
    REQUIRED BYTE_ARRAY tree_id (UTF8);
    REQUIRED INT64 nodes;
    REQUIRED INT64 time_us;
    REQUIRED INT64 round;
    REQUIRED INT64 index;
}";

/// Column names in schema order (checked on read).
const COLUMNS: [&str; 16] = [
    "domain",
    "size",
    "instance_seed",
    "instance_id",
    "facts",
    "question",
    "answer",
    "difficulty",
    "source",
    "answered_by_generation",
    "answerer",
    "tree_id",
    "nodes",
    "time_us",
    "round",
    "index",
];

/// Where a stored target's answer came from, as its `source` column records it. (What produces
/// targets is a [`TargetSource`](super::amplify::TargetSource).)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetOrigin {
    /// Amplify(H, X): the overseer's answer with the model answering its subquestions.
    Amplified,
    /// The ground truth: only the explicit supervised baseline writes these.
    Truth,
}

impl TargetOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetOrigin::Amplified => "amplified",
            TargetOrigin::Truth => "truth",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "amplified" => Some(TargetOrigin::Amplified),
            "truth" => Some(TargetOrigin::Truth),
            _ => None,
        }
    }
}

/// One training target with its provenance. Text fields use the domain's syntax
/// (`docs/domains.md`), so rows are readable without this crate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetRow {
    pub domain: String,
    /// Instance size and the seed it was generated from.
    pub size: u32,
    pub instance_seed: u64,
    /// SHA-256 hex of the instance's canonical text.
    pub instance_id: String,
    pub facts: String,
    pub question: String,
    /// The target answer (never `?`: unknown amplified answers are not targets).
    pub answer: String,
    /// The difficulty the question's text shows (`Domain::visible_difficulty`: the number of `*`,
    /// the exponent's bit length); 0 in domains where only a solver could tell.
    pub difficulty: u32,
    /// Stored in the `source` column as `amplified` or `truth`.
    pub source: TargetOrigin,
    /// The generation that answered the subquestions (`None` for ground truth).
    pub answered_by_generation: Option<u64>,
    /// Who answered the subquestions, as the evaluator labels it ("model g3", "ground truth").
    pub answerer: String,
    /// The tree that produced the answer (empty for ground truth).
    pub tree_id: String,
    /// Nodes the tree evaluated and the time it took.
    pub nodes: u64,
    pub time_us: u64,
    /// The training round that produced this target (targets of round n train generation n+1).
    pub round: u64,
    /// Position within the round: (round, index) identifies a target across resumes.
    pub index: u64,
}

/// One committed shard, as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardInfo {
    pub file: String,
    pub round: u64,
    pub part: u32,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreManifest {
    format: u32,
    domain: String,
    shards: Vec<ShardInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is damaged or not a target shard of this store: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error(
        "target store {path} holds {found} targets, not {expected}: use another run directory"
    )]
    WrongDomain {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("invalid target row: {0}")]
    InvalidRow(String),
    #[error(
        "{path} was written by an older build (its manifest is named {OLD_MANIFEST_FILE}); \
         use another run directory"
    )]
    OldLayout { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A directory of committed target shards. See the module docs.
pub struct TargetStore {
    dir: PathBuf,
    manifest: StoreManifest,
}

impl TargetStore {
    /// Opens (creating if needed) the store in `dir` for `domain`. Shard files the manifest does
    /// not name (a commit cut short by a crash) and leftover temporary files are deleted.
    pub fn open(dir: impl AsRef<Path>, domain: &str) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let store = Self::open_read_only(dir, domain)?;
        store.remove_uncommitted()?;
        Ok(store)
    }

    /// Opens the store in `dir` to read what its manifest has committed, changing nothing: safe
    /// on a store that a running trainer is writing (a shard it has written but not yet named in
    /// the manifest is left alone). A missing store reads as empty.
    pub fn open_read_only(dir: impl AsRef<Path>, domain: &str) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest = match fs::read(&manifest_path) {
            Ok(bytes) => {
                let m: StoreManifest =
                    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                        path: manifest_path.clone(),
                        message: e.to_string(),
                    })?;
                if m.format != STORE_FORMAT {
                    return Err(StoreError::Corrupt {
                        path: manifest_path,
                        message: format!(
                            "format {} (this build reads format {STORE_FORMAT})",
                            m.format
                        ),
                    });
                }
                if m.domain != domain {
                    return Err(StoreError::WrongDomain {
                        path: dir,
                        found: m.domain,
                        expected: domain.to_string(),
                    });
                }
                m
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if dir.join(OLD_MANIFEST_FILE).is_file() {
                    return Err(StoreError::OldLayout { path: dir });
                }
                StoreManifest {
                    format: STORE_FORMAT,
                    domain: domain.to_string(),
                    shards: Vec::new(),
                }
            }
            Err(e) => return Err(io_err(&manifest_path)(e)),
        };
        for shard in &manifest.shards {
            if shard.file != shard_file_name(shard.round, shard.part) {
                return Err(StoreError::Corrupt {
                    path: manifest_path,
                    message: format!("unexpected shard file name {:?}", shard.file),
                });
            }
        }
        Ok(Self { dir, manifest })
    }

    fn remove_uncommitted(&self) -> Result<(), StoreError> {
        let entries = fs::read_dir(&self.dir).map_err(io_err(&self.dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale_shard =
                name.ends_with(".parquet") && !self.manifest.shards.iter().any(|s| s.file == name);
            let stale_tmp = name.starts_with('.') && name.contains(".tmp-");
            if stale_shard || stale_tmp {
                let path = entry.path();
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn domain(&self) -> &str {
        &self.manifest.domain
    }

    /// Committed shards, in commit order.
    pub fn shards(&self) -> &[ShardInfo] {
        &self.manifest.shards
    }

    /// Total committed rows.
    pub fn rows(&self) -> u64 {
        self.manifest.shards.iter().map(|s| s.rows).sum()
    }

    /// Whether part `part` of round `round` is committed.
    pub fn has_part(&self, round: u64, part: u32) -> bool {
        self.manifest
            .shards
            .iter()
            .any(|s| s.round == round && s.part == part)
    }

    /// Writes `rows` as part `part` of round `round` and commits it. Refuses a part that is
    /// already committed (which would duplicate targets) and rows of another domain or round.
    pub fn commit(
        &mut self,
        round: u64,
        part: u32,
        rows: &[TargetRow],
    ) -> Result<ShardInfo, StoreError> {
        if self.has_part(round, part) {
            return Err(StoreError::InvalidRow(format!(
                "round {round} part {part} is already committed"
            )));
        }
        for row in rows {
            if row.domain != self.manifest.domain || row.round != round {
                return Err(StoreError::InvalidRow(format!(
                    "a {} row of round {} cannot go into round {round} of a {} store",
                    row.domain, row.round, self.manifest.domain
                )));
            }
            if row.instance_seed > i64::MAX as u64 || row.index > i64::MAX as u64 {
                return Err(StoreError::InvalidRow(format!(
                    "instance seed {} or index {} exceeds 2^63 - 1",
                    row.instance_seed, row.index
                )));
            }
        }
        let file = shard_file_name(round, part);
        let path = self.dir.join(&file);
        let bytes = encode_shard(rows).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            message: format!("encoding failed: {e}"),
        })?;
        fsutil::write_atomic(&path, &bytes).map_err(io_err(&path))?;
        let info = ShardInfo {
            file,
            round,
            part,
            rows: rows.len() as u64,
            bytes: bytes.len() as u64,
            sha256: fsutil::sha256_bytes(&bytes),
        };
        let mut manifest = self.manifest.clone();
        manifest.shards.push(info.clone());
        let manifest_path = self.dir.join(MANIFEST_FILE);
        let json = serde_json::to_vec_pretty(&manifest).expect("the manifest serialises");
        fsutil::write_atomic(&manifest_path, &json).map_err(io_err(&manifest_path))?;
        self.manifest = manifest;
        Ok(info)
    }

    /// Reads one committed shard, verified (see the module docs).
    pub fn read_shard(&self, info: &ShardInfo) -> Result<Vec<TargetRow>, StoreError> {
        let path = self.dir.join(&info.file);
        let corrupt = |message: String| StoreError::Corrupt {
            path: path.clone(),
            message,
        };
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        if bytes.len() as u64 != info.bytes {
            return Err(corrupt(format!(
                "{} bytes, the manifest says {}",
                bytes.len(),
                info.bytes
            )));
        }
        let sha = fsutil::sha256_bytes(&bytes);
        if sha != info.sha256 {
            return Err(corrupt(format!(
                "SHA-256 {sha} does not match the manifest's {}",
                info.sha256
            )));
        }
        let rows = decode_shard(Bytes::from(bytes)).map_err(corrupt)?;
        if rows.len() as u64 != info.rows {
            return Err(corrupt(format!(
                "{} rows, the manifest says {}",
                rows.len(),
                info.rows
            )));
        }
        if let Some(r) = rows
            .iter()
            .find(|r| r.domain != self.manifest.domain || r.round != info.round)
        {
            return Err(corrupt(format!(
                "holds a {} row of round {} in a {} store's round {}",
                r.domain, r.round, self.manifest.domain, info.round
            )));
        }
        Ok(rows)
    }

    /// The newest committed rows, up to `limit`, oldest first: what the replay window holds.
    pub fn newest(&self, limit: usize) -> Result<Vec<TargetRow>, StoreError> {
        let mut chunks = Vec::new();
        let mut have = 0usize;
        for info in self.manifest.shards.iter().rev() {
            if have >= limit {
                break;
            }
            let rows = self.read_shard(info)?;
            have += rows.len();
            chunks.push(rows);
        }
        let mut out: Vec<TargetRow> = chunks.into_iter().rev().flatten().collect();
        if out.len() > limit {
            out.drain(..out.len() - limit);
        }
        Ok(out)
    }

    /// Every committed row, in commit order.
    pub fn all(&self) -> Result<Vec<TargetRow>, StoreError> {
        let mut out = Vec::with_capacity(self.rows() as usize);
        for info in &self.manifest.shards {
            out.extend(self.read_shard(info)?);
        }
        Ok(out)
    }
}

fn shard_file_name(round: u64, part: u32) -> String {
    format!("r{round:06}-p{part:04}.parquet")
}

/// How one column's values are read from a row.
enum Column {
    Text(fn(&TargetRow) -> &str),
    Small(fn(&TargetRow) -> u32),
    /// Values are below 2^63 ([`TargetStore::commit`] checks seeds and indices; counts are far
    /// smaller).
    Large(fn(&TargetRow) -> u64),
    Generation,
}

fn column_values(name: &str) -> Column {
    match name {
        "domain" => Column::Text(|r| &r.domain),
        "instance_id" => Column::Text(|r| &r.instance_id),
        "facts" => Column::Text(|r| &r.facts),
        "question" => Column::Text(|r| &r.question),
        "answer" => Column::Text(|r| &r.answer),
        "source" => Column::Text(|r| r.source.as_str()),
        "answerer" => Column::Text(|r| &r.answerer),
        "tree_id" => Column::Text(|r| &r.tree_id),
        "size" => Column::Small(|r| r.size),
        "difficulty" => Column::Small(|r| r.difficulty),
        "answered_by_generation" => Column::Generation,
        "instance_seed" => Column::Large(|r| r.instance_seed),
        "nodes" => Column::Large(|r| r.nodes.min(i64::MAX as u64)),
        "time_us" => Column::Large(|r| r.time_us.min(i64::MAX as u64)),
        "round" => Column::Large(|r| r.round),
        "index" => Column::Large(|r| r.index),
        other => unreachable!("column {other} is in the schema but has no values"),
    }
}

fn encode_shard(rows: &[TargetRow]) -> parquet::errors::Result<Vec<u8>> {
    let schema = Arc::new(parse_message_type(SCHEMA)?);
    let props = WriterProperties::builder()
        .set_compression(Compression::UNCOMPRESSED)
        .set_encoding(Encoding::PLAIN)
        .set_created_by(format!("hch {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            "hch.schema".to_string(),
            "training_targets/1".to_string(),
        )]))
        .build();
    let mut out = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut out, schema, Arc::new(props))?;
    let mut group = writer.next_row_group()?;
    let mut column = 0usize;
    while let Some(mut col) = group.next_column()? {
        match column_values(COLUMNS[column]) {
            Column::Text(get) => {
                let values: Vec<ByteArray> = rows.iter().map(|r| ByteArray::from(get(r))).collect();
                col.typed::<ByteArrayType>()
                    .write_batch(&values, None, None)?;
            }
            Column::Small(get) => {
                let values: Vec<i32> = rows.iter().map(|r| get(r) as i32).collect();
                col.typed::<Int32Type>().write_batch(&values, None, None)?;
            }
            Column::Large(get) => {
                let values: Vec<i64> = rows.iter().map(|r| get(r) as i64).collect();
                col.typed::<Int64Type>().write_batch(&values, None, None)?;
            }
            Column::Generation => {
                let values: Vec<i64> = rows
                    .iter()
                    .filter_map(|r| r.answered_by_generation.map(|g| g as i64))
                    .collect();
                let levels: Vec<i16> = rows
                    .iter()
                    .map(|r| r.answered_by_generation.is_some() as i16)
                    .collect();
                col.typed::<Int64Type>()
                    .write_batch(&values, Some(&levels), None)?;
            }
        }
        col.close()?;
        column += 1;
    }
    group.close()?;
    writer.close()?;
    Ok(out)
}

fn decode_shard(bytes: Bytes) -> Result<Vec<TargetRow>, String> {
    let reader = SerializedFileReader::new(bytes).map_err(|e| format!("not Parquet: {e}"))?;
    let names: Vec<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    if names != COLUMNS {
        return Err(format!(
            "columns {names:?}, expected the training-target schema {COLUMNS:?}"
        ));
    }
    let mut rows = Vec::new();
    let iter = reader
        .get_row_iter(None)
        .map_err(|e| format!("unreadable rows: {e}"))?;
    for (i, row) in iter.enumerate() {
        let row = row.map_err(|e| format!("row {i}: {e}"))?;
        let bad = |e: parquet::errors::ParquetError| format!("row {i}: {e}");
        let string = |c: usize| row.get_string(c).cloned().map_err(bad);
        let unsigned = |c: usize| -> Result<u64, String> {
            let v = row.get_long(c).map_err(bad)?;
            u64::try_from(v).map_err(|_| format!("row {i}: column {} is negative", COLUMNS[c]))
        };
        let small = |c: usize| -> Result<u32, String> {
            let v = row.get_int(c).map_err(bad)?;
            u32::try_from(v).map_err(|_| format!("row {i}: column {} is negative", COLUMNS[c]))
        };
        let source = string(8)?;
        let answered_by_generation = match row.get_column_iter().nth(9).map(|(_, f)| f) {
            Some(Field::Null) => None,
            Some(Field::Long(g)) if *g >= 0 => Some(*g as u64),
            other => return Err(format!("row {i}: answered_by_generation is {other:?}")),
        };
        rows.push(TargetRow {
            domain: string(0)?,
            size: small(1)?,
            instance_seed: unsigned(2)?,
            instance_id: string(3)?,
            facts: string(4)?,
            question: string(5)?,
            answer: string(6)?,
            difficulty: small(7)?,
            source: TargetOrigin::parse(&source)
                .ok_or_else(|| format!("row {i}: unknown source {source:?}"))?,
            answered_by_generation,
            answerer: string(10)?,
            tree_id: string(11)?,
            nodes: unsigned(12)?,
            time_us: unsigned(13)?,
            round: unsigned(14)?,
            index: unsigned(15)?,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::test_support::TestDir;

    fn row(round: u64, index: u64, answered_by: Option<u64>) -> TargetRow {
        TargetRow {
            domain: "wildcard".into(),
            size: 8,
            instance_seed: 1 << 40 | index,
            instance_id: "ab".repeat(32),
            facts: "000001:+1 110100:-1".into(),
            question: "*1**00".into(),
            answer: "-1".into(),
            difficulty: 3,
            source: if answered_by.is_some() {
                TargetOrigin::Amplified
            } else {
                TargetOrigin::Truth
            },
            answered_by_generation: answered_by,
            answerer: "model g2".into(),
            tree_id: format!("t{index}"),
            nodes: 3,
            time_us: 1234,
            round,
            index,
        }
    }

    #[test]
    fn committed_shards_read_back_identically_and_in_order() {
        let dir = TestDir::new("store-roundtrip");
        let mut store = TargetStore::open(&dir.0, "wildcard").unwrap();
        let a: Vec<_> = (0..5).map(|i| row(0, i, None)).collect();
        let b: Vec<_> = (0..3).map(|i| row(1, i, Some(1))).collect();
        store.commit(0, 0, &a).unwrap();
        store.commit(1, 0, &b).unwrap();
        assert!(store.has_part(1, 0) && !store.has_part(1, 1));

        let reopened = TargetStore::open(&dir.0, "wildcard").unwrap();
        assert_eq!(reopened.rows(), 8);
        assert_eq!(reopened.all().unwrap(), [a.clone(), b.clone()].concat());
        // The newest four rows: the last of round 0, then round 1.
        assert_eq!(
            reopened.newest(4).unwrap(),
            [a[4..].to_vec(), b.clone()].concat()
        );
        assert!(store.commit(1, 0, &b).is_err(), "a part commits once");
    }

    #[test]
    fn damaged_or_uncommitted_files_are_refused_or_removed() {
        let dir = TestDir::new("store-damage");
        let mut store = TargetStore::open(&dir.0, "wildcard").unwrap();
        let info = store.commit(0, 0, &[row(0, 0, Some(0))]).unwrap();
        // An uncommitted shard (crash between shard and manifest) disappears on open.
        let orphan = dir.0.join(shard_file_name(0, 1));
        fs::write(&orphan, b"partial").unwrap();
        let store = TargetStore::open(&dir.0, "wildcard").unwrap();
        assert!(!orphan.exists());
        // A flipped byte is caught by the checksum, and the error names the file.
        let path = dir.0.join(&info.file);
        let mut bytes = fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let err = store.read_shard(&info).unwrap_err().to_string();
        assert!(err.contains(&info.file) && err.contains("SHA-256"), "{err}");
        // Another domain's store is refused.
        let err = TargetStore::open(&dir.0, "permutation")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("wildcard"), "{err}");
    }

    #[test]
    fn a_store_with_the_old_manifest_name_is_refused_not_emptied() {
        let dir = TestDir::new("store-old-layout");
        let mut store = TargetStore::open(&dir.0, "wildcard").unwrap();
        let info = store.commit(0, 0, &[row(0, 0, None)]).unwrap();
        fs::rename(dir.0.join(MANIFEST_FILE), dir.0.join(OLD_MANIFEST_FILE)).unwrap();
        if dir.0.join(MANIFEST_FILE).exists() {
            return; // a case-insensitive file system: the two names are one file, which opens
        }
        let err = TargetStore::open(&dir.0, "wildcard").err().unwrap();
        assert!(matches!(err, StoreError::OldLayout { .. }), "{err}");
        assert!(dir.0.join(&info.file).exists(), "the shard was deleted");
    }

    #[test]
    fn origins_keep_their_column_values() {
        // Part of the shard format: readers outside this crate match on these strings.
        for (origin, text) in [
            (TargetOrigin::Amplified, "amplified"),
            (TargetOrigin::Truth, "truth"),
        ] {
            assert_eq!(origin.as_str(), text);
            assert_eq!(TargetOrigin::parse(text), Some(origin));
        }
        assert_eq!(TargetOrigin::parse("Amplified"), None);
    }

    #[test]
    fn rows_of_the_wrong_round_or_domain_are_refused() {
        let dir = TestDir::new("store-refuse");
        let mut store = TargetStore::open(&dir.0, "wildcard").unwrap();
        assert!(store.commit(2, 0, &[row(1, 0, None)]).is_err());
        let mut other = row(2, 0, None);
        other.domain = "permutation".into();
        assert!(store.commit(2, 0, &[other]).is_err());
        assert_eq!(store.rows(), 0);
    }
}
