//! Coordinator replicas behind one Service. A tree's trace is kept by the replica that evaluated
//! it, and a client's later GetTrace may be balanced to another one. With `--peers-dns` (a
//! headless Service that resolves to every replica), a replica that does not hold the trace asks
//! the others, concurrently. It forwards the client's token, so that ownership is checked where
//! the trace is, and marks the call forwarded, so that it is never forwarded again.
//!
//! Asking every replica costs one call per replica, for a call that is rare (a client asks for a
//! trace it did not take with its answer). The alternative, routing by an owner encoded in the
//! tree id, would put the replicas' addresses in every id a client sees.

use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::{AsciiMetadataValue, MetadataMap};

use super::auth::AUTHORIZATION;
use super::pool::WorkerSource;
use crate::rpc::{pb, ServiceError};
use crate::tls::ClientTls;

/// The metadata key that marks a GetTrace forwarded by a replica.
pub const FORWARDED: &str = "hch-forwarded";

/// How to find and reach the other replicas.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// The replicas (this one may be among them): a list of `host:port`, or one `host:port`
    /// resolving to all of them.
    pub source: WorkerSource,
    /// TLS to the replicas' client port, if they serve TLS.
    pub tls: Option<Arc<ClientTls>>,
    /// How long a replica may take to answer.
    pub timeout: Duration,
}

impl PeerConfig {
    pub fn new(source: WorkerSource, tls: Option<Arc<ClientTls>>) -> Self {
        Self {
            source,
            tls,
            timeout: Duration::from_secs(2),
        }
    }

    /// The stored trace of `tree_id` from whichever replica holds it, asked with the caller's
    /// token (from `metadata`). NOT_FOUND when none does.
    pub async fn find_trace(
        &self,
        tree_id: &str,
        metadata: &MetadataMap,
    ) -> Result<pb::Trace, ServiceError> {
        let names = match &self.source {
            WorkerSource::Static(list) => list.clone(),
            WorkerSource::Dns(name) => vec![name.clone()],
        };
        let mut addresses = Vec::new();
        for name in &names {
            let found = tokio::net::lookup_host(name.as_str()).await.map_err(|e| {
                ServiceError::Unavailable(format!(
                    "no trace for tree {tree_id:?} here, and the other replicas ({name}) could \
                     not be found: {e}"
                ))
            })?;
            addresses.extend(found);
        }
        let token = metadata.get(AUTHORIZATION).cloned();
        let asked = addresses.len();
        let calls = addresses
            .into_iter()
            .map(|addr| Box::pin(self.ask(addr, tree_id, token.clone())));
        // The first replica that has it answers; the others are dropped (cancelled).
        let mut pending: Vec<_> = calls.collect();
        let mut failures = Vec::new();
        while !pending.is_empty() {
            let (result, _, rest) = futures::future::select_all(pending).await;
            match result {
                Ok(trace) => return Ok(trace),
                Err(e) => failures.push(e),
            }
            pending = rest;
        }
        let unreachable: Vec<String> = failures
            .iter()
            .filter(|e| !matches!(e, ServiceError::NotFound(_)))
            .map(ToString::to_string)
            .collect();
        Err(ServiceError::NotFound(format!(
            "no replica of the {asked} at {} holds a trace for tree {tree_id:?}{}",
            names.join(","),
            if unreachable.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} could not be asked: {})",
                    unreachable.len(),
                    unreachable.join("; ")
                )
            }
        )))
    }

    async fn ask(
        &self,
        addr: std::net::SocketAddr,
        tree_id: &str,
        token: Option<AsciiMetadataValue>,
    ) -> Result<pb::Trace, ServiceError> {
        let endpoint = crate::tls::endpoint(&addr.to_string())
            .map_err(ServiceError::Internal)?
            .connect_timeout(self.timeout)
            .timeout(self.timeout);
        let channel = crate::tls::connect(endpoint, self.tls.clone())
            .await
            .map_err(|e| ServiceError::Unavailable(format!("replica {addr}: {e}")))?;
        let mut client = pb::coordinator_client::CoordinatorClient::new(channel);
        let mut request = tonic::Request::new(pb::GetTraceRequest {
            tree_id: tree_id.to_string(),
        });
        let md = request.metadata_mut();
        md.insert(FORWARDED, AsciiMetadataValue::from_static("1"));
        if let Some(token) = token {
            md.insert(AUTHORIZATION, token);
        }
        client
            .get_trace(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(ServiceError::from)
    }
}
