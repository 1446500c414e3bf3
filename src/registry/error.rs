//! What can go wrong with a registry, each error naming the file involved and what did not match.

use std::io;
use std::path::{Path, PathBuf};

use super::{MANIFEST_FILE, MANIFEST_FORMAT};

/// Everything that can go wrong with a registry. Each message names the file involved and what
/// did not match, so that it can be acted on without a debugger.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("I/O error on {}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },

    #[error("manifest {} is not valid: {reason}", .path.display())]
    ManifestInvalid { path: PathBuf, reason: String },

    #[error(
        "unsupported manifest format {found} in {}; this build reads format {MANIFEST_FORMAT}",
        .path.display()
    )]
    UnsupportedFormat { path: PathBuf, found: u64 },

    #[error(
        "manifest {} records generation {recorded}, but its directory is generation {directory}",
        .path.display()
    )]
    GenerationMismatch {
        path: PathBuf,
        recorded: u64,
        directory: u64,
    },

    #[error(
        "weights file {} is corrupted: sha256 is {actual} but {MANIFEST_FILE} records {recorded}",
        .path.display()
    )]
    WeightsCorrupted {
        path: PathBuf,
        actual: String,
        recorded: String,
    },

    #[error(
        "weights file {} is {}: {actual} bytes, manifest records {recorded}",
        .path.display(),
        size_problem(*.actual, *.recorded)
    )]
    WeightsSize {
        path: PathBuf,
        actual: u64,
        recorded: u64,
    },

    #[error(
        "generation {generation} does not exist in registry {} ({})",
        .root.display(),
        describe_generations(.existing)
    )]
    NoSuchGeneration {
        generation: u64,
        root: PathBuf,
        existing: Vec<u64>,
    },

    #[error("CURRENT file {} is corrupted: {reason}", .path.display())]
    CurrentCorrupted { path: PathBuf, reason: String },

    #[error("writing weights file {} failed: {reason}", .path.display())]
    WeightsWriter { path: PathBuf, reason: String },

    #[error("cannot publish to registry {}: {reason}", .root.display())]
    InvalidNewGeneration { root: PathBuf, reason: String },

    #[error(
        "generation {generation} at {} differs from the copy being installed (another \
         registry's generation {generation})",
        .path.display()
    )]
    GenerationDiffers { path: PathBuf, generation: u64 },
}

pub(super) fn size_problem(actual: u64, recorded: u64) -> &'static str {
    if actual < recorded {
        "truncated"
    } else {
        "longer than recorded"
    }
}

pub(super) fn describe_generations(existing: &[u64]) -> String {
    if existing.is_empty() {
        "it has no generations".to_string()
    } else {
        let list: Vec<String> = existing.iter().map(u64::to_string).collect();
        format!("generations: {}", list.join(", "))
    }
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    }
}
