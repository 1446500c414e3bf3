//! The generation registry: the versions of a model kept on disk.
//!
//! Iterated amplification trains a sequence of models X₀, X₁, …; each is a *generation*: its
//! weights (a safetensors file written by the model code, opaque here) plus a JSON [`Manifest`]
//! recording where it came from (domain, parent generation, architecture config, training steps,
//! the publisher's record of it) and the SHA-256 and size of the weights. Layout under the registry
//! root:
//!
//! ```text
//! root/
//!   generations/
//!     g000000/                 one directory per generation, named g + six or more digits
//!       weights.safetensors
//!       manifest.json
//!     g000001/
//!       ...
//!     .staging-{pid}-{n}-{t}/  a publish in progress (or abandoned by a crash); never read
//!   CURRENT                    which generation is in use:
//!                              {"generation": 1, "manifest_sha256": "<hex>"}
//! ```
//!
//! # What a reader can trust
//!
//! - A directory `gNNNNNN` is complete: publishing assembles the weights and manifest inside a
//!   hidden staging directory, syncs them to disk, and only then *renames the directory into
//!   place*. A rename is atomic, so after a crash at any point a generation either does not exist
//!   or exists with both files fully written. Staging directories are skipped by readers, and
//!   [`Registry::open`] removes those whose publishing process is gone.
//! - Generations are never modified after publishing. [`Registry::load`] nevertheless re-hashes
//!   the weights against the manifest and refuses any mismatch, so a bit flip, a truncated copy
//!   or a hand-edited file is reported (naming the file) instead of being run.
//! - `CURRENT` is replaced atomically (see [`crate::fsutil`]) and only after the generation it
//!   names has been verified. It records the SHA-256 of that generation's manifest, so a
//!   generation directory replaced behind the registry's back is detected too.
//! - Generation numbers are allocated by the rename: it fails when `gNNNNNN` already exists,
//!   and the publisher then takes the next number. Two publishers (threads or processes)
//!   therefore never claim the same number.
//!
//! Whether a generation fits the model being built (domain, architecture) is the model module's
//! decision: this module only exposes the manifest.

mod error;
mod manifest;
pub mod service;

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::fsutil;

pub use error::RegistryError;
use error::{describe_generations, io_err};
use manifest::{generation_dir_name, parse_generation_dir_name, parse_manifest, CurrentPointer};
pub use manifest::{LoadedGeneration, Manifest, NewGeneration};

/// The manifest format this build writes and reads.
pub const MANIFEST_FORMAT: u32 = 2;
/// File name of the weights inside a generation directory.
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// File name of the manifest inside a generation directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the pointer to the generation in use, in the registry root.
pub const CURRENT_FILE: &str = "CURRENT";
/// Directory holding the generations, in the registry root.
pub const GENERATIONS_DIR: &str = "generations";
/// Prefix of staging directories inside [`GENERATIONS_DIR`]; the rest is `{pid}-{n}-{t}`.
const STAGING_PREFIX: &str = ".staging-";

/// The largest `CURRENT` or manifest read (both are well under a kilobyte, a manifest's record a
/// few kilobytes): anything bigger is not ours.
const MAX_SMALL_FILE_BYTES: u64 = 1 << 20;

/// Makes staging directory names unique within a process.
static STAGING_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Whether a leftover named with process id `pid` may still be in use by that process. Our own
/// process counts as alive (another `Registry` in this process may be publishing). Liveness is
/// read from `/proc` on Linux; elsewhere every other process is assumed gone, i.e. there a
/// registry must not be opened while another process publishes to it. (Likewise across PID
/// namespaces, e.g. containers sharing the directory.)
fn process_may_be_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        false
    }
}

/// The process id embedded in a leftover's name after `prefix` (`{pid}-...`), if any.
fn leftover_pid(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Removes a staging directory when dropped, unless disarmed: a failed or panicking publish
/// leaves nothing behind.
struct StagingGuard {
    path: PathBuf,
    armed: bool,
}

/// Checks that the weights file at `path` has the manifest's size and SHA-256, naming the file
/// and what differs.
fn verify_weights(path: &Path, manifest: &Manifest) -> Result<(), RegistryError> {
    // Size first: cheap, and a truncated file deserves that name rather than "corrupted".
    let len = fs::metadata(path).map_err(io_err(path))?.len();
    let size = |actual| RegistryError::WeightsSize {
        path: path.to_path_buf(),
        actual,
        recorded: manifest.weights_bytes,
    };
    if len != manifest.weights_bytes {
        return Err(size(len));
    }
    let (sha, hashed) = fsutil::sha256_file(path).map_err(io_err(path))?;
    if hashed != manifest.weights_bytes {
        return Err(size(hashed));
    }
    if sha != manifest.weights_sha256 {
        return Err(RegistryError::WeightsCorrupted {
            path: path.to_path_buf(),
            actual: sha,
            recorded: manifest.weights_sha256.clone(),
        });
    }
    Ok(())
}

/// A staging directory for [`Registry::install_staged`]: write the weights file into
/// [`Staging::path`] (as the manifest names it). Removed if dropped before it is installed, and
/// by [`Registry::open`] after a crash.
pub struct Staging(StagingGuard);

impl Staging {
    pub fn path(&self) -> &Path {
        &self.0.path
    }
}

impl Drop for StagingGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A registry of model generations rooted at one directory. Cheap to clone; holds no open
/// files or locks, so any number of readers and publishers may share a root.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

impl Registry {
    /// Opens the registry at `root`, creating `root/generations/` if missing, and removes
    /// leftovers of crashed writers (staging directories and temporary `CURRENT` files whose
    /// process is gone). Nothing a reader could see is touched.
    pub fn open(root: impl Into<PathBuf>) -> Result<Registry, RegistryError> {
        let root = root.into();
        let reg = Registry { root };
        let gens = reg.generations_dir();
        fs::create_dir_all(&gens).map_err(io_err(&gens))?;
        fsutil::sync_dir(&reg.root).map_err(io_err(&reg.root))?;
        reg.remove_leftovers(&gens, STAGING_PREFIX, true)?;
        let current_tmp = fsutil::tmp_prefix(CURRENT_FILE);
        reg.remove_leftovers(&reg.root, &current_tmp, false)?;
        Ok(reg)
    }

    /// Removes entries of `dir` named `{prefix}{pid}-...` whose process is gone (or whose name
    /// carries no process id, which no writer of ours produces).
    fn remove_leftovers(&self, dir: &Path, prefix: &str, dirs: bool) -> Result<(), RegistryError> {
        let entries = fs::read_dir(dir).map_err(io_err(dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with(prefix) {
                continue;
            }
            if leftover_pid(name, prefix).is_some_and(process_may_be_alive) {
                continue;
            }
            let path = entry.path();
            let removed = if dirs {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match removed {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed leftover of a crashed writer")
                }
                // Someone else cleaned it first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Ok(())
    }

    /// The registry's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn generations_dir(&self) -> PathBuf {
        self.root.join(GENERATIONS_DIR)
    }

    /// The directory of a generation (whether or not it exists).
    pub fn generation_dir(&self, generation: u64) -> PathBuf {
        self.generations_dir().join(generation_dir_name(generation))
    }

    fn current_path(&self) -> PathBuf {
        self.root.join(CURRENT_FILE)
    }

    /// The numbers of all published generations, ascending. Reads directory names only.
    pub fn generation_numbers(&self) -> Result<Vec<u64>, RegistryError> {
        let gens = self.generations_dir();
        let mut numbers = Vec::new();
        for entry in fs::read_dir(&gens).map_err(io_err(&gens))? {
            let entry = entry.map_err(io_err(&gens))?;
            // Staging directories start with '.', so they never parse as generations.
            if let Some(n) = entry
                .file_name()
                .to_str()
                .and_then(parse_generation_dir_name)
            {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        Ok(numbers)
    }

    fn no_such_generation(&self, generation: u64) -> RegistryError {
        RegistryError::NoSuchGeneration {
            generation,
            root: self.root.clone(),
            existing: self.generation_numbers().unwrap_or_default(),
        }
    }

    /// Reads and validates a generation's manifest (format, generation number, field shapes),
    /// returning it with its raw bytes. Does not look at the weights.
    fn read_manifest(&self, generation: u64) -> Result<(Manifest, Vec<u8>), RegistryError> {
        let dir = self.generation_dir(generation);
        if !dir.is_dir() {
            return Err(self.no_such_generation(generation));
        }
        let path = dir.join(MANIFEST_FILE);
        let bytes = fsutil::read_small(&path, MAX_SMALL_FILE_BYTES).map_err(io_err(&path))?;
        let manifest = parse_manifest(&path, &bytes, generation)?;
        Ok((manifest, bytes))
    }

    /// All generations' manifests, sorted by generation. Manifests are validated but weights are
    /// not hashed (use [`Registry::load`] for that); staging directories are skipped. A
    /// manifest that does not parse is an error naming it.
    pub fn list(&self) -> Result<Vec<Manifest>, RegistryError> {
        self.generation_numbers()?
            .into_iter()
            .map(|g| self.read_manifest(g).map(|(m, _)| m))
            .collect()
    }

    /// Loads a generation after verifying it: the manifest must parse, have this build's format
    /// and its own generation number, and the weights file must have exactly the recorded size
    /// and SHA-256. Any mismatch is refused with an error naming the file.
    pub fn load(&self, generation: u64) -> Result<LoadedGeneration, RegistryError> {
        self.load_verified(generation).map(|(loaded, _)| loaded)
    }

    /// [`Registry::load`], also returning the manifest's bytes as read (for `CURRENT`).
    fn load_verified(&self, generation: u64) -> Result<(LoadedGeneration, Vec<u8>), RegistryError> {
        let (manifest, manifest_bytes) = self.read_manifest(generation)?;
        let weights_path = self.generation_dir(generation).join(&manifest.weights_file);
        verify_weights(&weights_path, &manifest)?;
        Ok((
            LoadedGeneration {
                manifest,
                weights_path,
            },
            manifest_bytes,
        ))
    }

    /// Loads (and verifies) the generation `CURRENT` points to; `None` if nothing was promoted.
    pub fn load_current(&self) -> Result<Option<LoadedGeneration>, RegistryError> {
        match self.current()? {
            Some(g) => self.load(g).map(Some),
            None => Ok(None),
        }
    }

    /// The generation in use: `None` if `CURRENT` does not exist yet. `CURRENT` must parse, name
    /// an existing generation, and record that generation's manifest hash; anything else is a
    /// [`RegistryError::CurrentCorrupted`] naming the file. The weights are not hashed here.
    pub fn current(&self) -> Result<Option<u64>, RegistryError> {
        Ok(self.current_pointer()?.map(|(generation, _)| generation))
    }

    /// `CURRENT` as recorded and verified (see [`Registry::current`]): the generation in use and
    /// the SHA-256 of its manifest, which a copy elsewhere checks the manifest it receives by.
    pub fn current_pointer(&self) -> Result<Option<(u64, String)>, RegistryError> {
        let path = self.current_path();
        let bytes = match fsutil::read_small(&path, MAX_SMALL_FILE_BYTES) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let corrupted = |reason: String| RegistryError::CurrentCorrupted {
            path: path.clone(),
            reason,
        };
        let pointer: CurrentPointer = serde_json::from_slice(&bytes).map_err(|e| {
            corrupted(format!(
                "{e} (expected {{\"generation\": N, \"manifest_sha256\": \"<hex>\"}})"
            ))
        })?;
        let manifest_path = self.generation_dir(pointer.generation).join(MANIFEST_FILE);
        if !self.generation_dir(pointer.generation).is_dir() {
            let existing = self.generation_numbers()?;
            return Err(corrupted(format!(
                "it names generation {}, which does not exist ({})",
                pointer.generation,
                describe_generations(&existing)
            )));
        }
        let manifest_bytes = fsutil::read_small(&manifest_path, MAX_SMALL_FILE_BYTES)
            .map_err(io_err(&manifest_path))?;
        let actual = fsutil::sha256_bytes(&manifest_bytes);
        if actual != pointer.manifest_sha256 {
            return Err(corrupted(format!(
                "it records manifest sha256 {} for generation {}, but {} has sha256 {actual}",
                pointer.manifest_sha256,
                pointer.generation,
                manifest_path.display()
            )));
        }
        Ok(Some((pointer.generation, pointer.manifest_sha256)))
    }

    /// A generation's manifest, validated, and its bytes as stored (what `CURRENT`'s hash
    /// covers, and what a copy must store to match).
    pub fn manifest(&self, generation: u64) -> Result<(Manifest, Vec<u8>), RegistryError> {
        self.read_manifest(generation)
    }

    /// Removes a generation, for a copy whose source replaced it (a trainer whose run started
    /// over numbers its generations from 0 again). Moved aside under a staging name first, so no
    /// reader sees it half removed, and a crash leaves only what [`Registry::open`] cleans up.
    /// Never use it on a registry a trainer publishes to: generations are immutable there.
    pub fn discard(&self, generation: u64) -> Result<(), RegistryError> {
        let target = self.generation_dir(generation);
        if !target.is_dir() {
            return Ok(());
        }
        let staging = self.create_staging_dir()?;
        // The empty staging directory is replaced by the generation (rename onto an empty
        // directory succeeds on Linux).
        fs::rename(&target, &staging).map_err(io_err(&target))?;
        fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
        tracing::info!(generation, registry = %self.root.display(), "discarded generation");
        Ok(())
    }

    /// Validates the manifest of a generation received from another registry.
    pub fn received_manifest(
        &self,
        generation: u64,
        manifest_bytes: &[u8],
    ) -> Result<Manifest, RegistryError> {
        let received = self.generation_dir(generation).join(MANIFEST_FILE);
        parse_manifest(&received, manifest_bytes, generation)
    }

    /// A fresh staging directory, to receive a generation's weights before
    /// [`Registry::install_staged`].
    pub fn stage(&self) -> Result<Staging, RegistryError> {
        let path = self.create_staging_dir()?;
        Ok(Staging(StagingGuard { path, armed: true }))
    }

    /// Installs a generation copied from another registry, under its own number: its manifest
    /// as the source stored it (`manifest_bytes`), and its weights, already written into
    /// `staging` (from [`Registry::stage`]) under the manifest's file name. The weights must
    /// have the manifest's size and SHA-256, or nothing is installed and the error names what
    /// differs; as with [`Registry::publish`], a crash leaves either no generation or a complete
    /// one. A generation already here is verified and kept if it is the same (the same manifest
    /// bytes), and is [`RegistryError::GenerationDiffers`] otherwise. Returns the manifest.
    pub fn install_staged(
        &self,
        staging: Staging,
        generation: u64,
        manifest_bytes: &[u8],
    ) -> Result<Manifest, RegistryError> {
        let manifest = self.received_manifest(generation, manifest_bytes)?;
        let target = self.generation_dir(generation);
        if target.is_dir() {
            let (_, stored) = self.load_verified(generation)?;
            if stored != manifest_bytes {
                return Err(RegistryError::GenerationDiffers {
                    path: target,
                    generation,
                });
            }
            return Ok(manifest);
        }
        let Staging(mut guard) = staging;
        let staging = guard.path.clone();
        let weights_path = staging.join(&manifest.weights_file);
        fsutil::sync_file(&weights_path).map_err(io_err(&weights_path))?;
        verify_weights(&weights_path, &manifest)?;
        let manifest_path = staging.join(MANIFEST_FILE);
        fsutil::write_atomic(&manifest_path, manifest_bytes).map_err(io_err(&manifest_path))?;
        match fs::rename(&staging, &target) {
            Ok(()) => {
                guard.armed = false;
                let gens = self.generations_dir();
                fsutil::sync_dir(&gens).map_err(io_err(&gens))?;
                tracing::info!(
                    generation,
                    registry = %self.root.display(),
                    bytes = manifest.weights_bytes,
                    "installed generation"
                );
                Ok(manifest)
            }
            // Another installer got there first: theirs must be the same.
            Err(_) if target.is_dir() => {
                drop(guard);
                let (_, stored) = self.load_verified(generation)?;
                if stored != manifest_bytes {
                    return Err(RegistryError::GenerationDiffers {
                        path: target,
                        generation,
                    });
                }
                Ok(manifest)
            }
            Err(e) => Err(io_err(&target)(e)),
        }
    }

    /// Makes `generation` the one in use: verifies it fully (as [`Registry::load`]), then
    /// replaces `CURRENT` atomically, so a crash leaves the old pointer or the new one.
    pub fn promote(&self, generation: u64) -> Result<(), RegistryError> {
        let (_, manifest_bytes) = self.load_verified(generation)?;
        let pointer = CurrentPointer {
            generation,
            manifest_sha256: fsutil::sha256_bytes(&manifest_bytes),
        };
        let mut json = serde_json::to_vec_pretty(&pointer).expect("CurrentPointer serializes");
        json.push(b'\n');
        let path = self.current_path();
        fsutil::write_atomic(&path, &json).map_err(io_err(&path))?;
        tracing::info!(generation, registry = %self.root.display(), "promoted generation");
        Ok(())
    }

    /// Publishes a new generation and returns its manifest.
    ///
    /// `write_weights` is given a path inside a fresh staging directory and must write the
    /// complete weights file there (it need not sync it). The registry then syncs and hashes the
    /// file, writes the manifest, and renames the staging directory to `generations/gNNNNNN`,
    /// numbered one past the highest existing generation (the next free one if another
    /// publisher got there first). A crash at any point leaves either no new generation or a
    /// complete one; on any error, including `write_weights` failing, the staging directory is
    /// removed and nothing appears.
    ///
    /// `new.parent`, if set, must be an existing generation.
    pub fn publish<E, F>(
        &self,
        new: NewGeneration,
        write_weights: F,
    ) -> Result<Manifest, RegistryError>
    where
        E: fmt::Display,
        F: FnOnce(&Path) -> Result<(), E>,
    {
        let invalid = |reason: String| RegistryError::InvalidNewGeneration {
            root: self.root.clone(),
            reason,
        };
        if let Some(parent) = new.parent {
            if !self.generation_dir(parent).is_dir() {
                let existing = self.generation_numbers()?;
                return Err(invalid(format!(
                    "parent generation {parent} does not exist ({})",
                    describe_generations(&existing)
                )));
            }
        }

        let staging = self.create_staging_dir()?;
        let mut guard = StagingGuard {
            path: staging.clone(),
            armed: true,
        };

        let weights_path = staging.join(WEIGHTS_FILE);
        write_weights(&weights_path).map_err(|e| RegistryError::WeightsWriter {
            path: weights_path.clone(),
            reason: e.to_string(),
        })?;
        match fs::metadata(&weights_path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(RegistryError::WeightsWriter {
                    path: weights_path,
                    reason: "the writer produced something other than a regular file".into(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RegistryError::WeightsWriter {
                    path: weights_path,
                    reason: "the writer reported success but created no file".into(),
                })
            }
            Err(e) => return Err(io_err(&weights_path)(e)),
        }
        fsutil::sync_file(&weights_path).map_err(io_err(&weights_path))?;
        let (weights_sha256, weights_bytes) =
            fsutil::sha256_file(&weights_path).map_err(io_err(&weights_path))?;

        let mut manifest = Manifest {
            format: MANIFEST_FORMAT,
            domain: new.domain,
            generation: 0,
            parent: new.parent,
            config: new.config,
            weights_file: WEIGHTS_FILE.to_string(),
            weights_sha256,
            weights_bytes,
            training_steps: new.training_steps,
            record: new.record,
            created_unix_ms: now_unix_ms(),
            note: new.note,
        };

        let gens = self.generations_dir();
        let manifest_path = staging.join(MANIFEST_FILE);
        let mut candidate = self.generation_numbers()?.last().map_or(0, |g| g + 1);
        // Each failed attempt means another publisher took the number, so this terminates in
        // practice; the bound only guards against a file system that misbehaves.
        for _ in 0..10_000 {
            manifest.generation = candidate;
            let mut json = serde_json::to_vec_pretty(&manifest).expect("Manifest serializes");
            json.push(b'\n');
            // Atomic even inside staging: on a retry the manifest is rewritten in place.
            fsutil::write_atomic(&manifest_path, &json).map_err(io_err(&manifest_path))?;

            let target = self.generation_dir(candidate);
            match fs::rename(&staging, &target) {
                Ok(()) => {
                    guard.armed = false;
                    fsutil::sync_dir(&gens).map_err(io_err(&gens))?;
                    tracing::info!(
                        generation = candidate,
                        registry = %self.root.display(),
                        bytes = manifest.weights_bytes,
                        "published generation"
                    );
                    return Ok(manifest);
                }
                // Renaming a directory onto an existing (non-empty) one fails: someone else
                // published this number between our scan and our rename. Take the next one.
                Err(_) if target.exists() => {
                    let highest = self
                        .generation_numbers()?
                        .last()
                        .copied()
                        .unwrap_or(candidate);
                    candidate = highest.max(candidate) + 1;
                }
                Err(e) => return Err(io_err(&target)(e)),
            }
        }
        Err(invalid(format!(
            "could not allocate a generation number (last tried {candidate})"
        )))
    }

    /// Creates a fresh, uniquely named staging directory in `generations/`.
    fn create_staging_dir(&self) -> Result<PathBuf, RegistryError> {
        let gens = self.generations_dir();
        loop {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let path = gens.join(format!(
                "{STAGING_PREFIX}{}-{}-{nanos}",
                std::process::id(),
                STAGING_COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            // `create_dir`, not `create_dir_all`: it fails if the name is taken, so no two
            // publishers ever share a staging directory.
            match fs::create_dir(&path) {
                Ok(()) => return Ok(path),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::fsutil::test_support::TestDir;

    fn new_gen(parent: Option<u64>, steps: u64) -> NewGeneration {
        NewGeneration {
            domain: "permutation".into(),
            parent,
            config: json!({"d_model": 64, "layers": 2}),
            training_steps: steps,
            record: json!({"accuracy": 0.5, "round": null}),
            note: format!("after {steps} steps"),
        }
    }

    fn publish_bytes(reg: &Registry, parent: Option<u64>, bytes: &[u8]) -> Manifest {
        reg.publish(new_gen(parent, 100), |p| fs::write(p, bytes))
            .unwrap()
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn publish_list_promote_current_load() {
        let dir = TestDir::new("roundtrip");
        let reg = Registry::open(dir.0.join("reg")).unwrap();
        assert!(reg.list().unwrap().is_empty());
        assert_eq!(reg.current().unwrap(), None);
        assert!(reg.load_current().unwrap().is_none());

        let m0 = publish_bytes(&reg, None, b"weights of generation zero");
        let m1 = publish_bytes(&reg, Some(0), b"weights of generation one, longer");
        assert_eq!((m0.generation, m1.generation), (0, 1));
        assert_eq!(m0.format, MANIFEST_FORMAT);
        assert_eq!(m0.weights_file, WEIGHTS_FILE);
        assert_eq!(m0.weights_bytes, 26);
        assert_eq!(
            m0.weights_sha256,
            fsutil::sha256_bytes(b"weights of generation zero")
        );
        assert_eq!(m0.config, json!({"d_model": 64, "layers": 2}));
        assert_eq!(m0.record, json!({"accuracy": 0.5, "round": null}));
        assert_eq!(m1.parent, Some(0));

        let listed = reg.list().unwrap();
        assert_eq!(listed, vec![m0.clone(), m1.clone()]);
        assert_eq!(reg.generation_numbers().unwrap(), vec![0, 1]);

        reg.promote(1).unwrap();
        assert_eq!(reg.current().unwrap(), Some(1));
        let loaded = reg.load_current().unwrap().unwrap();
        assert_eq!(loaded.manifest, m1);
        assert_eq!(
            fs::read(&loaded.weights_path).unwrap(),
            b"weights of generation one, longer"
        );
        assert_eq!(
            loaded.weights_path,
            reg.generation_dir(1).join(WEIGHTS_FILE)
        );

        reg.promote(0).unwrap();
        assert_eq!(reg.current().unwrap(), Some(0));
        assert_eq!(reg.load(0).unwrap().manifest, m0);

        // Reopening sees the same state, and nothing but the expected files exist.
        let reg = Registry::open(dir.0.join("reg")).unwrap();
        assert_eq!(reg.current().unwrap(), Some(0));
        assert_eq!(names_in(reg.root()), vec![CURRENT_FILE, GENERATIONS_DIR]);
        assert_eq!(names_in(&reg.generations_dir()), vec!["g000000", "g000001"]);
        assert_eq!(
            names_in(&reg.generation_dir(1)),
            vec![MANIFEST_FILE, WEIGHTS_FILE]
        );
    }

    #[test]
    fn numbers_increase_and_parent_is_recorded() {
        let dir = TestDir::new("numbers");
        let reg = Registry::open(&dir.0).unwrap();
        let mut parent = None;
        for expected in 0..4u64 {
            let m = publish_bytes(&reg, parent, &[expected as u8; 8]);
            assert_eq!(m.generation, expected);
            assert_eq!(m.parent, parent);
            parent = Some(m.generation);
        }
        // Numbers continue from the highest one, also in a fresh handle.
        let reg2 = Registry::open(&dir.0).unwrap();
        assert_eq!(publish_bytes(&reg2, Some(1), b"x").generation, 4);
        assert_eq!(reg2.load(4).unwrap().manifest.parent, Some(1));
    }

    #[test]
    fn concurrent_publishers_get_distinct_numbers() {
        let dir = TestDir::new("concurrent");
        let reg = Registry::open(&dir.0).unwrap();
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                let reg = reg.clone();
                std::thread::spawn(move || {
                    (0..3u8)
                        .map(|i| publish_bytes(&reg, None, &[t, i]).generation)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..12).collect::<Vec<_>>());
        for g in 0..12 {
            reg.load(g).unwrap();
        }
    }

    #[test]
    fn flipped_byte_is_refused_as_corrupted() {
        let dir = TestDir::new("flip");
        let reg = Registry::open(&dir.0).unwrap();
        publish_bytes(&reg, None, b"0123456789abcdef");
        let weights = reg.generation_dir(0).join(WEIGHTS_FILE);
        let mut bytes = fs::read(&weights).unwrap();
        bytes[5] ^= 0x01;
        fs::write(&weights, &bytes).unwrap();

        let err = reg.load(0).unwrap_err();
        assert!(
            matches!(err, RegistryError::WeightsCorrupted { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("corrupted"), "{msg}");
        assert!(msg.contains(&weights.display().to_string()), "{msg}");
        assert!(
            msg.contains(&fsutil::sha256_bytes(b"0123456789abcdef")),
            "{msg}"
        );
        // A corrupted generation cannot be promoted either.
        assert!(matches!(
            reg.promote(0).unwrap_err(),
            RegistryError::WeightsCorrupted { .. }
        ));
        assert_eq!(reg.current().unwrap(), None);
    }

    #[test]
    fn truncated_weights_are_refused() {
        let dir = TestDir::new("truncate");
        let reg = Registry::open(&dir.0).unwrap();
        publish_bytes(&reg, None, &[7u8; 4096]);
        reg.promote(0).unwrap();
        let weights = reg.generation_dir(0).join(WEIGHTS_FILE);
        fs::write(&weights, [7u8; 1200]).unwrap();

        let err = reg.load_current().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("truncated"), "{msg}");
        assert!(msg.contains("1200 bytes, manifest records 4096"), "{msg}");
        assert!(msg.contains(&weights.display().to_string()), "{msg}");

        fs::write(&weights, [7u8; 5000]).unwrap();
        let msg = reg.load(0).unwrap_err().to_string();
        assert!(msg.contains("longer than recorded"), "{msg}");
    }

    #[test]
    fn missing_weights_file_is_an_io_error_naming_it() {
        let dir = TestDir::new("missing-weights");
        let reg = Registry::open(&dir.0).unwrap();
        publish_bytes(&reg, None, b"w");
        let weights = reg.generation_dir(0).join(WEIGHTS_FILE);
        fs::remove_file(&weights).unwrap();
        let err = reg.load(0).unwrap_err();
        assert!(matches!(err, RegistryError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains(&weights.display().to_string()));
    }

    #[test]
    fn invalid_manifest_json_is_an_error_naming_manifest() {
        let dir = TestDir::new("bad-json");
        let reg = Registry::open(&dir.0).unwrap();
        publish_bytes(&reg, None, b"w0");
        publish_bytes(&reg, Some(0), b"w1");
        let manifest = reg.generation_dir(1).join(MANIFEST_FILE);
        fs::write(&manifest, b"{\"format\": 2, \"domain\": ").unwrap();

        for err in [reg.load(1).unwrap_err(), reg.list().unwrap_err()] {
            assert!(
                matches!(err, RegistryError::ManifestInvalid { .. }),
                "{err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains("manifest.json"), "{msg}");
            assert!(msg.contains(&manifest.display().to_string()), "{msg}");
            assert!(msg.contains("is not valid"), "{msg}");
        }
        // The other generation is unaffected.
        reg.load(0).unwrap();
    }

    #[test]
    fn manifest_with_wrong_generation_is_refused() {
        let dir = TestDir::new("wrong-gen");
        let reg = Registry::open(&dir.0).unwrap();
        publish_bytes(&reg, None, b"w0");
        let path = reg.generation_dir(0).join(MANIFEST_FILE);
        let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        m["generation"] = json!(5);
        fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();

        let err = reg.load(0).unwrap_err();
        assert!(
            matches!(
                err,
                RegistryError::GenerationMismatch {
                    recorded: 5,
                    directory: 0,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains(&path.display().to_string()));
        assert!(reg.list().is_err());
    }

    #[test]
    fn unknown_format_and_unknown_fields_are_refused() {
        let dir = TestDir::new("format");
        let reg = Registry::open(&dir.0).unwrap();
        publish_bytes(&reg, None, b"w0");
        let path = reg.generation_dir(0).join(MANIFEST_FILE);
        let original: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();

        // A newer format with fields this build does not know: reported as a format problem.
        let mut m = original.clone();
        m["format"] = json!(9);
        m["quantization"] = json!("int8");
        fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
        let msg = reg.load(0).unwrap_err().to_string();
        assert!(
            msg.contains("unsupported manifest format 9") && msg.contains("reads format 2"),
            "{msg}"
        );

        // The previous format (flat `metrics` instead of `record`): reported as a format problem.
        let mut m = original.clone();
        m["format"] = json!(1);
        m["metrics"] = json!({"accuracy": 0.5});
        m.as_object_mut().unwrap().remove("record");
        fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
        let msg = reg.load(0).unwrap_err().to_string();
        assert!(msg.contains("unsupported manifest format 1"), "{msg}");

        let mut m = original.clone();
        m["surprise"] = json!(true);
        fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
        let msg = reg.load(0).unwrap_err().to_string();
        assert!(msg.contains("surprise"), "{msg}");

        let mut m = original;
        m["weights_file"] = json!("../../elsewhere");
        fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
        let msg = reg.load(0).unwrap_err().to_string();
        assert!(msg.contains("plain file name"), "{msg}");
    }

    #[test]
    fn leftover_staging_dir_is_ignored_by_readers_and_removed_by_open() {
        let dir = TestDir::new("staging");
        let reg = Registry::open(&dir.0).unwrap();
        publish_bytes(&reg, None, b"w0");

        // A publisher that crashed mid-publish: u32::MAX is above any Linux pid_max.
        let dead = reg
            .generations_dir()
            .join(format!("{STAGING_PREFIX}{}-0-0", u32::MAX));
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join(WEIGHTS_FILE), b"half-written").unwrap();
        // A staging directory of this (live) process: must survive `open`.
        let live = reg
            .generations_dir()
            .join(format!("{STAGING_PREFIX}{}-999999-0", std::process::id()));
        fs::create_dir(&live).unwrap();
        // A crashed CURRENT writer's temporary file.
        let tmp_current = dir.0.join(format!(
            "{}{}-3",
            fsutil::tmp_prefix(CURRENT_FILE),
            u32::MAX
        ));
        fs::write(&tmp_current, b"{").unwrap();

        assert_eq!(reg.generation_numbers().unwrap(), vec![0]);
        assert_eq!(reg.list().unwrap().len(), 1);
        assert_eq!(reg.current().unwrap(), None);
        // The next publish is unaffected.
        assert_eq!(publish_bytes(&reg, Some(0), b"w1").generation, 1);

        let reg = Registry::open(&dir.0).unwrap();
        assert!(!dead.exists());
        assert!(!tmp_current.exists());
        assert!(live.exists());
        assert_eq!(reg.generation_numbers().unwrap(), vec![0, 1]);
        fs::remove_dir(&live).unwrap();
    }

    #[test]
    fn corrupted_current_is_a_clear_error() {
        let dir = TestDir::new("current");
        let reg = Registry::open(&dir.0).unwrap();
        publish_bytes(&reg, None, b"w0");
        let current = dir.0.join(CURRENT_FILE);

        fs::write(&current, b"not json at all").unwrap();
        let err = reg.current().unwrap_err();
        assert!(
            matches!(err, RegistryError::CurrentCorrupted { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.starts_with("CURRENT file "), "{msg}");
        assert!(msg.contains(&current.display().to_string()), "{msg}");
        assert!(msg.contains("is corrupted"), "{msg}");
        assert!(reg.load_current().is_err());

        fs::write(&current, b"").unwrap();
        assert!(matches!(
            reg.current().unwrap_err(),
            RegistryError::CurrentCorrupted { .. }
        ));

        // Points at a generation that does not exist.
        let sha = "0".repeat(64);
        fs::write(
            &current,
            format!("{{\"generation\": 3, \"manifest_sha256\": \"{sha}\"}}"),
        )
        .unwrap();
        let msg = reg.current().unwrap_err().to_string();
        assert!(
            msg.contains("generation 3") && msg.contains("generations: 0"),
            "{msg}"
        );

        // Points at generation 0 but with another manifest's hash.
        fs::write(
            &current,
            format!("{{\"generation\": 0, \"manifest_sha256\": \"{sha}\"}}"),
        )
        .unwrap();
        let msg = reg.current().unwrap_err().to_string();
        assert!(msg.contains("manifest sha256"), "{msg}");

        // Promoting repairs it.
        reg.promote(0).unwrap();
        assert_eq!(reg.current().unwrap(), Some(0));
    }

    #[test]
    fn promote_of_missing_generation_lists_existing_ones() {
        let dir = TestDir::new("promote-missing");
        let reg = Registry::open(&dir.0).unwrap();
        let msg = reg.promote(0).unwrap_err().to_string();
        assert!(msg.contains("it has no generations"), "{msg}");
        for i in 0..3u8 {
            publish_bytes(&reg, None, &[i]);
        }
        let err = reg.promote(7).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "generation 7 does not exist in registry {} (generations: 0, 1, 2)",
                dir.0.display()
            )
        );
        assert!(matches!(
            reg.load(7).unwrap_err(),
            RegistryError::NoSuchGeneration { generation: 7, .. }
        ));
        assert_eq!(reg.current().unwrap(), None);
    }

    #[test]
    fn failing_weights_writer_leaves_no_generation() {
        let dir = TestDir::new("writer-fails");
        let reg = Registry::open(&dir.0).unwrap();
        publish_bytes(&reg, None, b"w0");

        let err = reg
            .publish(new_gen(Some(0), 5), |p| {
                fs::write(p, b"partial")?;
                Err::<(), _>(io::Error::other("out of GPU memory while saving"))
            })
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::WeightsWriter { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("out of GPU memory while saving"));

        // A writer that reports success without writing anything.
        let err = reg
            .publish(new_gen(None, 5), |_| Ok::<(), String>(()))
            .unwrap_err();
        assert!(err.to_string().contains("created no file"), "{err}");

        // A writer that panics.
        let reg2 = reg.clone();
        let panicked = std::thread::spawn(move || {
            let _ = reg2.publish(new_gen(None, 5), |p| -> Result<(), String> {
                fs::write(p, b"partial").unwrap();
                panic!("writer panicked");
            });
        })
        .join();
        assert!(panicked.is_err());

        assert_eq!(reg.generation_numbers().unwrap(), vec![0]);
        assert_eq!(names_in(&reg.generations_dir()), vec!["g000000"]);
        // The number was not consumed.
        assert_eq!(publish_bytes(&reg, Some(0), b"w1").generation, 1);
    }

    #[test]
    fn invalid_new_generations_are_rejected_before_writing() {
        let dir = TestDir::new("invalid-new");
        let reg = Registry::open(&dir.0).unwrap();
        let called = std::cell::Cell::new(false);
        let err = reg
            .publish(new_gen(Some(4), 1), |p| {
                called.set(true);
                fs::write(p, b"w")
            })
            .unwrap_err();
        assert!(err.to_string().contains("parent generation 4"), "{err}");
        assert!(!called.get());
        assert!(names_in(&reg.generations_dir()).is_empty());
    }

    #[test]
    fn generation_dir_names_are_canonical() {
        assert_eq!(generation_dir_name(3), "g000003");
        assert_eq!(generation_dir_name(1_234_567), "g1234567");
        assert_eq!(parse_generation_dir_name("g000003"), Some(3));
        assert_eq!(parse_generation_dir_name("g1234567"), Some(1_234_567));
        assert_eq!(parse_generation_dir_name("g3"), None);
        assert_eq!(parse_generation_dir_name("g0000003"), None);
        assert_eq!(parse_generation_dir_name("g+00003"), None);
        assert_eq!(parse_generation_dir_name(".staging-1-2-3"), None);
        assert_eq!(parse_generation_dir_name("g"), None);
    }
}
