//! Generations of a model in the [`Registry`]: publishing a trained model, and loading one back
//! with every check a reader needs (the registry verifies the weights' hash and size; this module
//! checks that the manifest's domain and architecture fit the domain the caller expects and that
//! the weights fit the architecture).

use std::path::PathBuf;

use tch::Device;

use super::config::ModelConfig;
use super::{Model, ModelError};
use crate::answerer::AnswererId;
use crate::domain::Domain;
use crate::registry::{Manifest, NewGeneration, Registry, RegistryError, MANIFEST_FILE};

#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("generation {generation} ({manifest}) cannot be used for domain {domain}: {message}")]
    Mismatch {
        generation: u64,
        manifest: PathBuf,
        domain: &'static str,
        message: String,
    },
    #[error("generation {generation}: {source}")]
    Model {
        generation: u64,
        #[source]
        source: ModelError,
    },
    #[error("registry {0} has no current generation: train or promote one first")]
    NoCurrent(PathBuf),
}

/// A model loaded from the registry, with the manifest it was verified against.
pub struct LoadedModel<D: Domain> {
    pub model: Model<D>,
    pub manifest: Manifest,
}

impl<D: Domain> LoadedModel<D> {
    /// The answerer identity of these weights: derived from their hash, so two workers serving the
    /// same generation share memo entries, and any change of weights changes the key.
    pub fn answerer_id(&self) -> AnswererId {
        answerer_id(&self.manifest)
    }
}

/// See [`LoadedModel::answerer_id`].
pub fn answerer_id(manifest: &Manifest) -> AnswererId {
    AnswererId::model(manifest.generation, &manifest.weights_sha256)
}

/// Publishes `model` as a new generation (not yet promoted to current), with the publisher's
/// `record` of it (stored as given; see [`Manifest::record`]).
pub fn publish<D: Domain>(
    registry: &Registry,
    model: &Model<D>,
    parent: Option<u64>,
    training_steps: u64,
    record: serde_json::Value,
    note: impl Into<String>,
) -> Result<Manifest, GenerationError> {
    let config = serde_json::to_value(model.config()).expect("ModelConfig serialises");
    let manifest = registry.publish(
        NewGeneration {
            domain: D::KIND.name().to_string(),
            parent,
            config,
            training_steps,
            record,
            note: note.into(),
        },
        |path| model.save(path),
    )?;
    Ok(manifest)
}

/// Loads generation `generation` (the current one if `None`) for `domain`, verified.
pub fn load<D: Domain>(
    registry: &Registry,
    generation: Option<u64>,
    domain: D,
    device: Device,
) -> Result<LoadedModel<D>, GenerationError> {
    let loaded = match generation {
        Some(g) => registry.load(g)?,
        None => registry
            .load_current()?
            .ok_or_else(|| GenerationError::NoCurrent(registry.root().to_path_buf()))?,
    };
    let manifest = loaded.manifest;
    let generation = manifest.generation;
    let mismatch = |message: String| GenerationError::Mismatch {
        generation,
        manifest: registry.generation_dir(generation).join(MANIFEST_FILE),
        domain: D::KIND.name(),
        message,
    };
    if manifest.domain != D::KIND.name() {
        return Err(mismatch(format!(
            "it was trained for domain {:?}",
            manifest.domain
        )));
    }
    let config: ModelConfig = serde_json::from_value(manifest.config.clone())
        .map_err(|e| mismatch(format!("its model config is not valid: {e}")))?;
    config.check_for(&domain).map_err(mismatch)?;
    let model = Model::load(domain, config, device, &loaded.weights_path)
        .map_err(|source| GenerationError::Model { generation, source })?;
    Ok(LoadedModel { model, manifest })
}
