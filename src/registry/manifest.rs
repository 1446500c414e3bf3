//! The manifest of a generation and its checks: what `manifest.json` holds, how a manifest read
//! from disk is validated (format first, then fields, then against its directory), and the
//! content of `CURRENT`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{RegistryError, MANIFEST_FORMAT};

/// The record of one generation, stored as `manifest.json` next to its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`] for manifests this build reads.
    pub format: u32,
    /// The task family the model was trained on (checked by the model module).
    pub domain: String,
    /// This generation's number; equals the number in its directory name.
    pub generation: u64,
    /// The generation it was trained from, if any.
    pub parent: Option<u64>,
    /// The model's architecture config; its schema belongs to the model module.
    pub config: serde_json::Value,
    /// File name of the weights inside the generation directory (a plain name, no path).
    pub weights_file: String,
    /// SHA-256 of the weights file, lowercase hex.
    pub weights_sha256: String,
    /// Size of the weights file in bytes.
    pub weights_bytes: u64,
    /// Optimiser steps behind this generation.
    pub training_steps: u64,
    /// What the publisher recorded about this generation (for a training run, its round's record:
    /// evaluation, curriculum stage, gate); its schema belongs to the publisher (the train module).
    pub record: serde_json::Value,
    /// When it was published, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Free text for humans.
    pub note: String,
}

/// What the caller supplies to [`Registry::publish`]; the registry fills in the rest of the
/// [`Manifest`] (number, weights hash and size, timestamp).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGeneration {
    pub domain: String,
    pub parent: Option<u64>,
    pub config: serde_json::Value,
    pub training_steps: u64,
    pub record: serde_json::Value,
    pub note: String,
}

/// A verified generation: its manifest, and the weights file whose hash and size matched it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedGeneration {
    pub manifest: Manifest,
    pub weights_path: PathBuf,
}

/// The content of `CURRENT`. The manifest hash ties the pointer to the exact generation that
/// was verified when it was promoted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CurrentPointer {
    pub(super) generation: u64,
    pub(super) manifest_sha256: String,
}

/// The directory name of a generation: `g` and at least six digits.
pub(super) fn generation_dir_name(generation: u64) -> String {
    format!("g{generation:06}")
}

/// The generation a directory name denotes, if it is one written by [`generation_dir_name`].
/// Non-canonical spellings (`g3`, `g0000003`) are not generations, so no number has two
/// directories.
pub(super) fn parse_generation_dir_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix('g')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    (generation_dir_name(n) == name).then_some(n)
}

pub(super) fn is_lower_hex_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Parses and validates a manifest read from `path` in the directory of `directory_generation`.
/// The format number is checked before the other fields, so that a manifest from a newer build
/// is reported as such rather than as an unknown field.
pub(super) fn parse_manifest(
    path: &Path,
    bytes: &[u8],
    directory_generation: u64,
) -> Result<Manifest, RegistryError> {
    let invalid = |reason: String| RegistryError::ManifestInvalid {
        path: path.to_path_buf(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    let format = value
        .get("format")
        .ok_or_else(|| invalid("missing field `format`".into()))?
        .as_u64()
        .ok_or_else(|| invalid("field `format` is not a non-negative integer".into()))?;
    if format != u64::from(MANIFEST_FORMAT) {
        return Err(RegistryError::UnsupportedFormat {
            path: path.to_path_buf(),
            found: format,
        });
    }
    let manifest: Manifest = serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
    if manifest.generation != directory_generation {
        return Err(RegistryError::GenerationMismatch {
            path: path.to_path_buf(),
            recorded: manifest.generation,
            directory: directory_generation,
        });
    }
    let wf = &manifest.weights_file;
    if wf.is_empty()
        || wf == "."
        || wf == ".."
        || wf.contains(['/', '\\'])
        || Path::new(wf).is_absolute()
    {
        return Err(invalid(format!(
            "weights_file {wf:?} must be a plain file name inside the generation directory"
        )));
    }
    if !is_lower_hex_sha256(&manifest.weights_sha256) {
        return Err(invalid(format!(
            "weights_sha256 {:?} is not 64 lowercase hex digits",
            manifest.weights_sha256
        )));
    }
    Ok(manifest)
}
