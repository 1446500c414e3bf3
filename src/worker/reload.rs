//! Serving a model from a registry: the worker loads the promoted generation, and hot-loads each
//! newer one as it is promoted (needs the `model` feature).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::answerer::batched::SharedAnswerer;
use crate::answerer::{AnswerError, Answerer, AnswererId, Answers, Query};
use crate::domain::Domain;
use crate::model::answerer::ModelAnswerer;
use crate::model::cache::CacheStats;
use crate::model::generation;
use crate::registry::Registry;
use crate::rpc::worker::WorkerInfo;

/// Stands in until the first generation is loaded.
pub(super) struct NotLoaded;

impl<D: Domain> Answerer<D> for NotLoaded {
    fn id(&self) -> AnswererId {
        AnswererId::not_loaded()
    }

    fn answer(&self, _: Vec<Query<D>>) -> BoxFuture<'_, Answers<D::Answer>> {
        Box::pin(std::future::ready(Err(AnswerError::Unavailable(
            "this worker has no model loaded yet".to_string(),
        ))))
    }
}

/// Loads the registry's current generation whenever it changes; batches in flight keep the
/// model they started with.
pub(super) async fn reload_loop<D: Domain + Copy>(
    domain: D,
    registry: PathBuf,
    shared: SharedAnswerer<D>,
    info: Arc<RwLock<WorkerInfo>>,
    every: Duration,
    encoding_cache: (usize, Arc<CacheStats>),
    ready: tokio::sync::watch::Sender<bool>,
) {
    let mut loaded: Option<u64> = None;
    loop {
        let registry_path = registry.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<Option<_>, String> {
            let registry = Registry::open(&registry_path).map_err(|e| e.to_string())?;
            let Some(current) = registry.current().map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            if Some(current) == loaded {
                return Ok(None);
            }
            let model = generation::load(
                &registry,
                Some(current),
                domain,
                crate::model::pick_device(),
            )
            .map_err(|e| e.to_string())?;
            Ok(Some(model))
        })
        .await;
        match result {
            Ok(Ok(Some(model))) => {
                let id = model.answerer_id();
                let generation = model.manifest.generation;
                let answerer: Arc<dyn Answerer<D>> = Arc::new(ModelAnswerer::with_cache(
                    model.model,
                    id.clone(),
                    encoding_cache.0,
                    encoding_cache.1.clone(),
                ));
                *shared.write().unwrap_or_else(|p| p.into_inner()) = answerer;
                info.write().unwrap_or_else(|p| p.into_inner()).answerer = id;
                loaded = Some(generation);
                tracing::info!(generation, "worker loaded generation");
                let _ = ready.send(true);
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "worker could not load the current generation")
            }
            Err(e) => tracing::error!(error = %e, "generation loading task failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = ready.closed() => return,
        }
    }
}
