//! A small OTLP/gRPC trace receiver: `hch otlp-sink` (is my server exporting? what does it
//! send?) and what the tests point servers at to prove their spans arrive. It keeps spans in
//! memory, decoded to what a test checks, or only counts them under load.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use tokio::sync::watch;

/// A span as received, with what a person (or a test) checks.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedSpan {
    /// The `service.name` of the process that sent it.
    pub service: String,
    pub name: String,
    pub trace_id: u128,
    pub span_id: u64,
    /// `None` for a root span.
    pub parent_span_id: Option<u64>,
    /// OTLP's span kind: 1 internal, 2 server, 3 client.
    pub kind: i32,
    /// Attribute values as text (`"3"`, `"true"`, `"permutation"`).
    pub attributes: BTreeMap<String, String>,
    /// (trace id, span id) of each link.
    pub links: Vec<(u128, u64)>,
    /// OTLP's status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub duration: Duration,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

struct Inner {
    keep: bool,
    spans: Mutex<Vec<ReceivedSpan>>,
    received: AtomicU64,
    /// Bumped on every export, so waiters wake.
    exports: watch::Sender<u64>,
}

/// The receiver's state; clones share it.
#[derive(Clone)]
pub struct Sink {
    inner: Arc<Inner>,
}

impl Sink {
    /// Keeps every span it receives (tests, `hch otlp-sink --print`).
    pub fn keeping() -> Self {
        Self::new(true)
    }

    /// Only counts spans (load tests: memory stays flat).
    pub fn counting() -> Self {
        Self::new(false)
    }

    fn new(keep: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                keep,
                spans: Mutex::new(Vec::new()),
                received: AtomicU64::new(0),
                exports: watch::Sender::new(0),
            }),
        }
    }

    /// The gRPC service to serve.
    pub fn service(&self) -> TraceServiceServer<Sink> {
        TraceServiceServer::new(self.clone())
            .max_decoding_message_size(crate::rpc::limits::MAX_MESSAGE_BYTES)
    }

    /// Serves OTLP/gRPC on `listener` until `shutdown` resolves.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_service(self.service())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown,
            )
            .await
    }

    /// Binds `addr` and serves in the background; returns the bound address.
    pub async fn spawn(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let sink = self.clone();
        tokio::spawn(async move { sink.serve(listener, std::future::pending()).await });
        Ok(bound)
    }

    /// Spans received so far.
    pub fn received(&self) -> u64 {
        self.inner.received.load(Ordering::Relaxed)
    }

    /// The spans kept so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.inner
            .spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes the spans kept so far, leaving none (a printer that must not grow without end).
    pub fn take_spans(&self) -> Vec<ReceivedSpan> {
        std::mem::take(&mut *self.inner.spans.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Waits until the spans kept satisfy `done`, or `timeout` passes (then `Err` with what did
    /// arrive, for the failure message).
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Result<Vec<ReceivedSpan>, Vec<ReceivedSpan>> {
        // Subscribed before the first look, so no export between a look and the wait is missed.
        let mut exports = self.inner.exports.subscribe();
        let wait = async {
            loop {
                let spans = self.spans();
                if done(&spans) {
                    return spans;
                }
                // The sender lives as long as `self`: this only returns on a new export.
                let _ = exports.changed().await;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| self.spans())
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let mut received = Vec::new();
        let mut count = 0u64;
        for resource_spans in &request.resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .map(text)
                .unwrap_or_default();
            for scope in &resource_spans.scope_spans {
                count += scope.spans.len() as u64;
                if !self.inner.keep {
                    continue;
                }
                for s in &scope.spans {
                    received.push(ReceivedSpan {
                        service: service.clone(),
                        name: s.name.clone(),
                        trace_id: id128(&s.trace_id),
                        span_id: id64(&s.span_id),
                        parent_span_id: Some(id64(&s.parent_span_id)).filter(|&p| p != 0),
                        kind: s.kind,
                        attributes: s
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text(kv)))
                            .collect(),
                        links: s
                            .links
                            .iter()
                            .map(|l| (id128(&l.trace_id), id64(&l.span_id)))
                            .collect(),
                        status_code: s.status.as_ref().map_or(0, |st| st.code),
                        duration: Duration::from_nanos(
                            s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano),
                        ),
                    });
                }
            }
        }
        if !received.is_empty() {
            self.inner
                .spans
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(received);
        }
        self.inner.received.fetch_add(count, Ordering::Relaxed);
        self.inner.exports.send_modify(|n| *n += 1);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// An id from its big-endian bytes (0 when malformed: OTLP ids are 16 and 8 bytes).
fn id128(bytes: &[u8]) -> u128 {
    <[u8; 16]>::try_from(bytes).map_or(0, u128::from_be_bytes)
}

fn id64(bytes: &[u8]) -> u64 {
    <[u8; 8]>::try_from(bytes).map_or(0, u64::from_be_bytes)
}

/// An attribute's value as text.
fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
