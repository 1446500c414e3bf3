//! The registry over the network: a registry's generations served over gRPC
//! ([`RegistryService`], `hch registry serve` or `hch train --serve-registry`), and copied into a
//! local registry by [`mirror_once`] and [`mirror_loop`] (a worker's cache), so that workers on
//! other nodes get every promoted generation without a shared filesystem.
//!
//! Trust stays where it was: the local copy is a registry like any other, written with the same
//! staging-and-rename discipline and verified the same way. A copy is kept only if its manifest
//! has the hash the source's `CURRENT` records and its weights have the manifest's size and
//! SHA-256; the local `CURRENT` then moves to it, and the worker hot-loads it from disk as it
//! always has (verifying once more).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::{Registry, RegistryError};
use crate::fsutil;
use crate::rpc::pb;

/// Bytes of weights per streamed message (well under gRPC's default 4 MiB message limit).
pub const CHUNK_BYTES: usize = 1 << 20;

/// Serves the registry at `root`. Opened afresh for each call, so a trainer promoting into it
/// (another process) is seen at once.
pub struct RegistryService {
    root: PathBuf,
}

impl RegistryService {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The gRPC server for this service.
    pub fn server(self) -> pb::registry_server::RegistryServer<RegistryService> {
        pb::registry_server::RegistryServer::new(self)
    }

    fn open(&self) -> Result<Registry, Status> {
        Registry::open(&self.root).map_err(status)
    }
}

/// A registry error as the caller sees it: a generation that does not exist is NOT_FOUND, a
/// registry that cannot be read is the server's problem (INTERNAL), named.
fn status(error: RegistryError) -> Status {
    match error {
        RegistryError::NoSuchGeneration { .. } => Status::not_found(error.to_string()),
        other => Status::internal(format!("the registry cannot serve this: {other}")),
    }
}

fn blocking_failed(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("the registry's reader failed: {e}"))
}

type FetchStream = tokio_stream::wrappers::ReceiverStream<Result<pb::FetchChunk, Status>>;

#[tonic::async_trait]
impl pb::registry_server::Registry for RegistryService {
    async fn current(
        &self,
        _: Request<pb::CurrentRequest>,
    ) -> Result<Response<pb::CurrentResponse>, Status> {
        let registry = self.open()?;
        let pointer = tokio::task::spawn_blocking(move || registry.current_pointer())
            .await
            .map_err(blocking_failed)?
            .map_err(status)?;
        Ok(Response::new(match pointer {
            Some((generation, manifest_sha256)) => pb::CurrentResponse {
                generation: Some(generation),
                manifest_sha256,
            },
            None => pb::CurrentResponse::default(),
        }))
    }

    type FetchStream = FetchStream;

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<FetchStream>, Status> {
        let generation = request.into_inner().generation;
        let registry = self.open()?;
        // The manifest and the open weights file, or the error, before the stream starts.
        let (manifest_bytes, file) = tokio::task::spawn_blocking(move || {
            let (manifest, bytes) = registry.manifest(generation)?;
            let path = registry
                .generation_dir(generation)
                .join(&manifest.weights_file);
            let file = std::fs::File::open(&path).map_err(super::error::io_err(&path))?;
            Ok::<_, RegistryError>((bytes, file))
        })
        .await
        .map_err(blocking_failed)?
        .map_err(status)?;
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            use pb::fetch_chunk::Part;
            let send = |part| tx.blocking_send(Ok(pb::FetchChunk { part: Some(part) }));
            if send(Part::Manifest(manifest_bytes)).is_err() {
                return;
            }
            let mut file = file;
            let mut buffer = vec![0u8; CHUNK_BYTES];
            loop {
                match file.read(&mut buffer) {
                    Ok(0) => return,
                    Ok(n) => {
                        // The receiver hung up: stop reading.
                        if send(Part::Weights(buffer[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Status::internal(format!(
                            "reading generation {generation}'s weights: {e}"
                        ))));
                        return;
                    }
                }
            }
        });
        Ok(Response::new(FetchStream::new(rx)))
    }
}

/// Why a copy was not made.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("the registry service at {url} failed: {status}")]
    Call { url: String, status: Status },
    #[error("the registry service at {url} sent a bad generation {generation}: {reason}")]
    Bad {
        url: String,
        generation: u64,
        reason: String,
    },
    #[error(transparent)]
    Local(#[from] RegistryError),
    #[error("writing the local copy at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Makes the local registry's `CURRENT` the source's: copies the promoted generation (unless it
/// is already here), verifies it, and promotes it locally. Returns the generation now current
/// here, `None` while the source has promoted none.
pub async fn mirror_once(
    client: &mut pb::registry_client::RegistryClient<tonic::transport::Channel>,
    url: &str,
    local: &Path,
) -> Result<Option<u64>, MirrorError> {
    let current = client
        .current(pb::CurrentRequest {})
        .await
        .map_err(|status| MirrorError::Call {
            url: url.to_string(),
            status,
        })?
        .into_inner();
    let Some(generation) = current.generation else {
        return Ok(None);
    };
    let registry = {
        let local = local.to_path_buf();
        Arc::new(blocking(move || Registry::open(&local)).await?)
    };
    let here = {
        let registry = registry.clone();
        blocking(move || registry.current_pointer()).await?
    };
    if here.as_ref() == Some(&(generation, current.manifest_sha256.clone())) {
        return Ok(Some(generation));
    }
    // A copy of that number with another manifest came from a source that has since started
    // over (a new run numbers from 0 again): it is not this generation, so it goes.
    let stale = {
        let (registry, want) = (registry.clone(), current.manifest_sha256.clone());
        blocking(move || match registry.manifest(generation) {
            Ok((_, bytes)) => Ok(fsutil::sha256_bytes(&bytes) != want),
            Err(RegistryError::NoSuchGeneration { .. }) => Ok(false),
            // A copy that cannot be read is replaced too: this registry is only a cache.
            Err(_) => Ok(true),
        })
        .await?
    };
    if stale {
        tracing::warn!(
            generation,
            %url,
            "the local copy of this generation differs from the source's: replacing it"
        );
        let registry = registry.clone();
        blocking(move || registry.discard(generation)).await?;
    }
    if !registry.generation_dir(generation).is_dir() {
        fetch_into(client, &registry, generation, &current.manifest_sha256, url).await?;
    }
    // Verified once more as a whole, then made current: the worker's reload loop takes it.
    let registry2 = registry.clone();
    blocking(move || registry2.promote(generation)).await?;
    Ok(Some(generation))
}

/// Streams generation `generation` into a staging directory of `registry` and installs it.
async fn fetch_into(
    client: &mut pb::registry_client::RegistryClient<tonic::transport::Channel>,
    registry: &Arc<Registry>,
    generation: u64,
    manifest_sha256: &str,
    url: &str,
) -> Result<(), MirrorError> {
    use pb::fetch_chunk::Part;
    let call = |status| MirrorError::Call {
        url: url.to_string(),
        status,
    };
    let bad = |reason: String| MirrorError::Bad {
        url: url.to_string(),
        generation,
        reason,
    };
    let mut stream = client
        .fetch(pb::FetchRequest { generation })
        .await
        .map_err(call)?
        .into_inner();
    let manifest_bytes = match stream.message().await.map_err(call)? {
        Some(pb::FetchChunk {
            part: Some(Part::Manifest(bytes)),
        }) => bytes,
        other => {
            return Err(bad(format!(
                "the stream did not start with the manifest (got {other:?})"
            )))
        }
    };
    let actual = fsutil::sha256_bytes(&manifest_bytes);
    if actual != manifest_sha256 {
        return Err(bad(format!(
            "its manifest has sha256 {actual}, but the source's CURRENT records {manifest_sha256}"
        )));
    }
    let manifest = registry.received_manifest(generation, &manifest_bytes)?;
    let staging = {
        let registry = registry.clone();
        blocking(move || registry.stage()).await?
    };
    // The file is written by one blocking task, fed the chunks as they arrive.
    let path = staging.path().join(&manifest.weights_file);
    let (chunks, mut rx) = mpsc::channel::<Vec<u8>>(4);
    let writer = tokio::task::spawn_blocking({
        let path = path.clone();
        move || -> std::io::Result<()> {
            let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
            while let Some(bytes) = rx.blocking_recv() {
                file.write_all(&bytes)?;
            }
            file.flush()
        }
    });
    let mut received: u64 = 0;
    let streamed = async {
        while let Some(chunk) = stream.message().await.map_err(call)? {
            let Some(Part::Weights(bytes)) = chunk.part else {
                return Err(bad(
                    "a second manifest (or an empty message) in the weights".to_string(),
                ));
            };
            received += bytes.len() as u64;
            if received > manifest.weights_bytes {
                return Err(bad(format!(
                    "more weights than the manifest's {} bytes",
                    manifest.weights_bytes
                )));
            }
            if chunks.send(bytes).await.is_err() {
                break; // the writer failed: its error is reported below
            }
        }
        Ok(())
    }
    .await;
    drop(chunks);
    let written = writer
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
    streamed?;
    written.map_err(|source| MirrorError::Io { path, source })?;
    tracing::info!(generation, %url, bytes = received, "received generation");
    let registry = registry.clone();
    blocking(move || registry.install_staged(staging, generation, &manifest_bytes)).await?;
    Ok(())
}

/// Runs `f` on the blocking pool (file system work).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, MirrorError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| MirrorError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(MirrorError::Local)
}

/// Keeps the local registry at `local` a copy of the source's current generation, checking
/// every `every`. A failure is logged when it changes (not every round) and retried.
pub async fn mirror_loop(
    channel: tonic::transport::Channel,
    url: String,
    local: PathBuf,
    every: Duration,
) {
    let mut client = pb::registry_client::RegistryClient::new(channel)
        .max_decoding_message_size(2 * CHUNK_BYTES);
    let mut last: Option<Result<Option<u64>, String>> = None;
    loop {
        let now = mirror_once(&mut client, &url, &local)
            .await
            .map_err(|e| e.to_string());
        if last.as_ref() != Some(&now) {
            match &now {
                Ok(Some(generation)) => {
                    tracing::info!(generation, %url, "the local registry copy is current")
                }
                Ok(None) => tracing::info!(%url, "the registry has promoted no generation yet"),
                Err(error) => tracing::warn!(%error, "copying the current generation failed"),
            }
            last = Some(now);
        }
        tokio::time::sleep(every).await;
    }
}
