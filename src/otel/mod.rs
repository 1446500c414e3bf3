//! Traces exported to OpenTelemetry: one trace per tree, across the coordinator and its workers.
//!
//! Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; then
//! spans go over OTLP/gRPC to that collector, configured the standard way ([`Settings::from_env`]):
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` (a ratio), `OTEL_EXPORTER_OTLP_HEADERS` / `_TIMEOUT` /
//! `_COMPRESSION`, and the batch processor's `OTEL_BSP_*`.
//!
//! The spans of a tree:
//!
//! ```text
//! client span (its traceparent, if it sent one)
//! └─ hch.tree                  coordinator: domain, mode, tree id, instance, nodes, memo hits …
//!    └─ hch.Worker/Answer      coordinator: one per call attempt (worker, items, trees, status)
//!       └─ hch.Worker/Answer   worker: the call served (items, queue, compute, generation)
//!          └─ hch.batch        worker: the forward pass (batch size, calls, queue time)
//! ```
//!
//! A call carries questions of many trees, and a batch answers many calls: each is a child of
//! its first sampled tree (or call) and *links* to the others, the OpenTelemetry way of drawing a
//! fan-in. The sampling decision is made once, at the tree (parent-based by default, so a client
//! that samples its own trace gets the tree's spans), and travels in `traceparent`'s flag: a
//! worker records what the coordinator records.
//!
//! Spans are made with the OpenTelemetry API directly at these four points rather than bridged
//! from every `tracing` span: with export off a span costs a branch and two ids; sampled out, one
//! sampler call; and fan-in links, which a `tracing` span tree cannot express, are explicit.
//!
//! The SDK's batch processor exports from its own thread, over a tonic channel that runs on the
//! tokio runtime: [`Otel::start`] must run inside that runtime (it checks), or every export would
//! fail while the server ran on. Failed exports are logged (the first, then at most once a
//! minute) with the count of spans lost, so a wrong endpoint never fails silently.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags,
    TraceId, TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

pub use opentelemetry::trace::SpanKind as Kind;
pub use opentelemetry::KeyValue;

use crate::rpc::telemetry::TraceContext;

pub mod sink;

/// At most this many links on one span (a call serving many trees, a batch many calls).
pub const MAX_LINKS: usize = 32;

/// How traces are sampled: the standard samplers `always_on`, `always_off`, `traceidratio`,
/// each optionally `parentbased_` (follow the parent's decision when there is a parent).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerSetting {
    pub parent_based: bool,
    /// The share of root traces recorded, 0 to 1.
    pub ratio: f64,
}

impl Default for SamplerSetting {
    /// `parentbased_always_on`, the OpenTelemetry default.
    fn default() -> Self {
        Self {
            parent_based: true,
            ratio: 1.0,
        }
    }
}

impl SamplerSetting {
    fn sampler(&self) -> Sampler {
        let root = if self.ratio >= 1.0 {
            Sampler::AlwaysOn
        } else if self.ratio <= 0.0 {
            Sampler::AlwaysOff
        } else {
            Sampler::TraceIdRatioBased(self.ratio)
        };
        if self.parent_based {
            Sampler::ParentBased(Box::new(root))
        } else {
            root
        }
    }
}

/// Where and how spans are exported.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The collector's OTLP/gRPC endpoint, `http://host:4317`.
    pub endpoint: String,
    /// The `service.name` to give; `None` when `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES`
    /// names the service (the SDK reads both).
    pub default_service: Option<String>,
    pub sampler: SamplerSetting,
}

impl Settings {
    /// The settings the process environment asks for, `None` when export is off; an error names
    /// the variable that is wrong.
    pub fn from_env(default_service: &str) -> Result<Option<Self>, String> {
        Self::from_vars(default_service, |name| std::env::var(name).ok())
    }

    /// [`Settings::from_env`] over any source of variables (tests).
    pub fn from_vars(
        default_service: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, String> {
        let set = |name: &str| {
            var(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match set("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(format!(
                    "OTEL_TRACES_EXPORTER={other:?}: hch exports traces over OTLP only (set it \
                     to otlp, or to none to turn export off)"
                ))
            }
        }
        let (name, endpoint) = match (
            set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            set("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(e), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", e),
            (None, Some(e)) => ("OTEL_EXPORTER_OTLP_ENDPOINT", e),
            (None, None) => return Ok(None),
        };
        check_endpoint(&endpoint).map_err(|e| format!("{name}={endpoint:?}: {e}"))?;
        for protocol in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(p) = set(protocol).filter(|p| p != "grpc") {
                return Err(format!(
                    "{protocol}={p:?}: hch exports over OTLP/gRPC only (grpc); point it at the \
                     collector's gRPC port (4317 by default)"
                ));
            }
        }
        let sampler = sampler_from(set("OTEL_TRACES_SAMPLER"), set("OTEL_TRACES_SAMPLER_ARG"))?;
        let named = set("OTEL_SERVICE_NAME").is_some()
            || set("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|v| {
                v.split(',')
                    .any(|kv| kv.trim().starts_with("service.name="))
            });
        Ok(Some(Settings {
            endpoint,
            default_service: (!named).then(|| default_service.to_string()),
            sampler,
        }))
    }
}

fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("not a URL ({e}); expected http://host:4317"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(
                "this build exports in plain gRPC only; use a collector (agent) \
                 reachable over http:// on the node or in the pod"
                    .to_string(),
            )
        }
        _ => return Err("expected http://host:port".to_string()),
    }
    if uri.authority().is_none() {
        return Err("no host; expected http://host:4317".to_string());
    }
    Ok(())
}

fn sampler_from(sampler: Option<String>, arg: Option<String>) -> Result<SamplerSetting, String> {
    let ratio = || -> Result<f64, String> {
        let Some(arg) = &arg else {
            return Ok(1.0);
        };
        arg.parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| {
                format!(
                    "OTEL_TRACES_SAMPLER_ARG={arg:?}: expected a ratio from 0 to 1 (0.01 records \
                     one trace in a hundred)"
                )
            })
    };
    let Some(sampler) = sampler else {
        // An argument alone is the common way to set a ratio: the default sampler with it.
        return Ok(SamplerSetting {
            parent_based: true,
            ratio: if arg.is_some() { ratio()? } else { 1.0 },
        });
    };
    let (parent_based, root) = match sampler.strip_prefix("parentbased_") {
        Some(root) => (true, root),
        None => (false, sampler.as_str()),
    };
    let ratio = match root {
        "always_on" => 1.0,
        "always_off" => 0.0,
        "traceidratio" => ratio()?,
        _ => {
            return Err(format!(
                "OTEL_TRACES_SAMPLER={sampler:?}: expected always_on, always_off, traceidratio, \
                 or one of them prefixed with parentbased_"
            ))
        }
    };
    Ok(SamplerSetting {
        parent_based,
        ratio,
    })
}

/// What the exporter has sent and lost, for logs and tests.
#[derive(Debug, Default)]
pub struct ExportStats {
    pub exported_spans: AtomicU64,
    pub failed_spans: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

/// The OTLP exporter, counting what it sends and saying when it fails.
#[derive(Debug)]
struct Counted {
    inner: opentelemetry_otlp::SpanExporter,
    endpoint: String,
    stats: Arc<ExportStats>,
}

impl SpanExporter for Counted {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        let stats = &self.stats;
        match &result {
            Ok(()) => {
                stats.exported_spans.fetch_add(spans, Ordering::Relaxed);
            }
            Err(error) => {
                let lost = stats.failed_spans.fetch_add(spans, Ordering::Relaxed) + spans;
                let mut last = stats.last_warning.lock().unwrap_or_else(|p| p.into_inner());
                if !matches!(*last, Some(t) if t.elapsed() < Duration::from_secs(60)) {
                    *last = Some(Instant::now());
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        "exporting spans failed: {error} ({lost} spans lost so far; is the \
                         collector up and listening for OTLP/gRPC there?)"
                    );
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A process's trace export: the provider that batches and exports, and the tracer servers use.
pub struct Otel {
    provider: SdkTracerProvider,
    tracer: Tracer,
    stats: Arc<ExportStats>,
    settings: Settings,
}

impl Otel {
    /// Export as the environment says, `None` when it says nothing ([`Settings::from_env`]).
    /// Must run inside the tokio runtime the servers run on.
    pub fn from_env(default_service: &str) -> Result<Option<Self>, String> {
        match Settings::from_env(default_service)? {
            Some(settings) => Self::start(&settings).map(Some),
            None => Ok(None),
        }
    }

    /// Starts exporting with `settings`. Must run inside a tokio runtime, which must outlive the
    /// export (the exporter's channel runs on it).
    pub fn start(settings: &Settings) -> Result<Self, String> {
        tokio::runtime::Handle::try_current().map_err(|_| {
            "trace export must start inside the tokio runtime (its gRPC channel runs there)"
                .to_string()
        })?;
        let inner = {
            use opentelemetry_otlp::WithExportConfig as _;
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(settings.endpoint.clone())
                .build()
                .map_err(|e| format!("the OTLP exporter for {}: {e}", settings.endpoint))?
        };
        let stats = Arc::new(ExportStats::default());
        let exporter = Counted {
            inner,
            endpoint: settings.endpoint.clone(),
            stats: stats.clone(),
        };
        let mut resource = Resource::builder();
        if let Some(name) = &settings.default_service {
            resource = resource.with_service_name(name.clone());
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(settings.sampler.sampler())
            .with_resource(resource.build())
            .build();
        let tracer = Tracer {
            inner: Some(provider.tracer("hch")),
        };
        tracing::info!(
            endpoint = %settings.endpoint,
            sampler = ?settings.sampler,
            "exporting traces over OTLP/gRPC"
        );
        Ok(Self {
            provider,
            tracer,
            stats,
            settings: settings.clone(),
        })
    }

    /// Where spans go and how they are sampled, in words.
    pub fn describe(&self) -> String {
        let s = &self.settings.sampler;
        format!(
            "to {}, {}{}% of traces",
            self.settings.endpoint,
            if s.parent_based { "parent-based, " } else { "" },
            s.ratio * 100.0
        )
    }

    pub fn tracer(&self) -> Tracer {
        self.tracer.clone()
    }

    pub fn stats(&self) -> &ExportStats {
        &self.stats
    }

    /// Exports what is still queued. Blocking work, done off the runtime's threads.
    pub async fn flush(&self) {
        let provider = self.provider.clone();
        let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
    }

    /// Exports what is still queued and stops.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

/// Makes spans, or with export off, only the trace context that still travels to workers (so
/// logs keep their trace ids). Cheap to clone.
#[derive(Clone, Default)]
pub struct Tracer {
    inner: Option<SdkTracer>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.inner.is_some() {
            "Tracer(exporting)"
        } else {
            "Tracer(off)"
        })
    }
}

/// Where a new span hangs.
#[derive(Clone, Copy, Debug)]
pub enum Parent {
    /// A new trace.
    Root,
    /// A span of this process.
    Local(TraceContext),
    /// A span of another process, from `traceparent`.
    Remote(TraceContext),
}

impl Parent {
    /// `Remote(context)` if a request carried one, else a new trace.
    pub fn remote(context: Option<TraceContext>) -> Self {
        context.map_or(Parent::Root, Parent::Remote)
    }
}

impl Tracer {
    /// No export: spans are not recorded.
    pub fn off() -> Self {
        Self::default()
    }

    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Starts a span. `attributes` is called only if the span is recorded.
    pub fn start(
        &self,
        name: &'static str,
        kind: SpanKind,
        parent: Parent,
        links: &[TraceContext],
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Span {
        let Some(tracer) = &self.inner else {
            let context = match parent {
                Parent::Root => TraceContext::fresh(),
                Parent::Local(p) | Parent::Remote(p) => TraceContext {
                    sampled: false,
                    ..p.child()
                },
            };
            return Span {
                inner: None,
                context,
            };
        };
        let cx = match parent {
            Parent::Root => Context::new(),
            Parent::Local(p) => Context::new().with_remote_span_context(span_context(&p, false)),
            Parent::Remote(p) => Context::new().with_remote_span_context(span_context(&p, true)),
        };
        let mut builder = tracer.span_builder(name).with_kind(kind);
        if !links.is_empty() {
            builder = builder.with_links(
                links
                    .iter()
                    .take(MAX_LINKS)
                    .map(|l| Link::with_context(span_context(l, false)))
                    .collect(),
            );
        }
        let span = builder.start_with_context(tracer, &cx);
        let sc = span.span_context();
        let context = TraceContext {
            trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
            sampled: sc.is_sampled(),
        };
        let mut span = Span {
            inner: span.is_recording().then_some(span),
            context,
        };
        if let Some(s) = &mut span.inner {
            s.set_attributes(attributes());
        }
        span
    }
}

fn span_context(c: &TraceContext, remote: bool) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(c.trace_id.to_be_bytes()),
        SpanId::from_bytes(c.span_id.to_be_bytes()),
        if c.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        remote,
        TraceState::NONE,
    )
}

/// A span being recorded (or, not sampled, only its context). Ends when dropped.
pub struct Span {
    inner: Option<opentelemetry_sdk::trace::Span>,
    context: TraceContext,
}

impl Span {
    /// What children and outgoing calls carry.
    pub fn context(&self) -> TraceContext {
        self.context
    }

    /// Whether attributes set on it go anywhere (build costly ones only then).
    pub fn is_recording(&self) -> bool {
        self.inner.is_some()
    }

    /// Sets attributes, made only if the span is recorded.
    pub fn set(&mut self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Some(s) = &mut self.inner {
            s.set_attributes(attributes());
        }
    }

    /// Marks the span failed with a gRPC status code and its message.
    pub fn fail(&mut self, code: tonic::Code, message: &str) {
        if let Some(s) = &mut self.inner {
            s.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
            s.set_status(Status::error(message.to_string()));
        }
    }

    /// Marks a gRPC span successful (status code 0).
    pub fn ok(&mut self) {
        if let Some(s) = &mut self.inner {
            s.set_attribute(KeyValue::new("rpc.grpc.status_code", 0i64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<Settings>, String> {
        Settings::from_vars("hch-test", |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn export_is_off_unless_an_endpoint_is_set() {
        assert_eq!(settings(&[]), Ok(None));
        assert_eq!(settings(&[("OTEL_TRACES_SAMPLER", "always_on")]), Ok(None));
        let on = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")])
            .unwrap()
            .unwrap();
        assert_eq!(on.endpoint, "http://collector:4317");
        assert_eq!(on.sampler, SamplerSetting::default());
        assert_eq!(on.default_service.as_deref(), Some("hch-test"));
        // A service named by the environment is left to the SDK.
        for named in [
            ("OTEL_SERVICE_NAME", "mine"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "k8s.pod.name=p, service.name=mine",
            ),
        ] {
            let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), named]);
            assert_eq!(s.unwrap().unwrap().default_service, None, "{named:?}");
        }
        // The traces-only variable wins; OTEL_SDK_DISABLED and exporter none turn it off.
        let both = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4317"),
        ]);
        assert_eq!(both.unwrap().unwrap().endpoint, "http://b:4317");
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert_eq!(
                settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"), off]),
                Ok(None)
            );
        }
    }

    #[test]
    fn samplers_are_read_the_standard_way() {
        let with = |sampler: Option<&str>, arg: Option<&str>| {
            sampler_from(sampler.map(String::from), arg.map(String::from))
        };
        let s = |parent_based, ratio| {
            Ok(SamplerSetting {
                parent_based,
                ratio,
            })
        };
        assert_eq!(with(None, None), s(true, 1.0));
        assert_eq!(with(None, Some("0.01")), s(true, 0.01));
        assert_eq!(with(Some("traceidratio"), Some("0.25")), s(false, 0.25));
        assert_eq!(
            with(Some("parentbased_traceidratio"), Some("0.5")),
            s(true, 0.5)
        );
        assert_eq!(with(Some("always_off"), None), s(false, 0.0));
        assert_eq!(with(Some("parentbased_always_on"), None), s(true, 1.0));
    }

    #[test]
    fn bad_settings_name_the_variable() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317");
        for (vars, names) in [
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "https://a:4317")],
                "plain gRPC",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http:// a")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                vec![endpoint, ("OTEL_TRACES_SAMPLER", "sometimes")],
                "OTEL_TRACES_SAMPLER",
            ),
            (
                vec![
                    endpoint,
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "2"),
                ],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (
                vec![endpoint, ("OTEL_TRACES_SAMPLER_ARG", "one in ten")],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (
                vec![endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
                "OTLP/gRPC only",
            ),
            (
                vec![endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")],
                "OTEL_TRACES_EXPORTER",
            ),
        ] {
            let error = settings(&vars).unwrap_err();
            assert!(error.contains(names), "{vars:?}: {error}");
        }
    }

    /// With export off, the context still travels: the trace continues, and nothing is sampled.
    #[test]
    fn an_off_tracer_still_propagates_the_trace() {
        let tracer = Tracer::off();
        let root = tracer.start("t", SpanKind::Server, Parent::Root, &[], || unreachable!());
        assert!(!root.is_recording() && !root.context().sampled);
        let parent = TraceContext {
            trace_id: 7,
            span_id: 9,
            sampled: true,
        };
        let child = tracer.start("c", SpanKind::Client, Parent::Remote(parent), &[], Vec::new);
        assert_eq!(child.context().trace_id, 7);
        assert_ne!(child.context().span_id, 9);
        assert!(!child.context().sampled);
    }
}
