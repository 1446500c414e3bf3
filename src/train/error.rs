//! What can go wrong in a run: each variant names the file or setting involved.

use std::path::PathBuf;

use super::store;
use crate::model::generation::GenerationError;
use crate::model::ModelError;
use crate::registry::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Generation(#[from] GenerationError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: {message}")]
    Run { path: PathBuf, message: String },
    #[error("producing targets: {0}")]
    Source(String),
}
