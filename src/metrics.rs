//! Prometheus metrics: one registry per server (an embedded cluster in one process keeps its
//! servers' metrics apart with a `worker` label), served as text on the admin listener's
//! `/metrics` (see [`crate::server::admin`]).
//!
//! Names follow Prometheus's conventions: an `hch_` prefix and the server's role
//! (`hch_coordinator_`, `hch_worker_`, `hch_trainer_`), base units (`_seconds`), and `_total` on
//! counters (added by the encoder). What is counted anyway (items sent to a worker, a batcher's
//! calls, the facts cache's hits) is read at scrape time by collectors rather than counted twice;
//! only distributions (histograms) and what has no counter yet are recorded as things happen.
//! The full list is in the README.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

pub use prometheus_client::registry::Registry as MetricsRegistry;

/// Buckets for latencies: 100 µs to about 26 s, doubling.
pub fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

/// Buckets for sizes (nodes, batch sizes): 1 to 65 536, doubling.
pub fn size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 17))
}

/// The registry in the OpenMetrics 1.0 text format (what Prometheus asks for first).
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry in the classic Prometheus text format 0.0.4, for clients that do not ask for
/// OpenMetrics (`curl`, `promtool check metrics`, older scrapers). The two differ, for what we
/// export, only in that a counter family's HELP and TYPE lines name its `_total` samples, and in
/// OpenMetrics' `# EOF` and `# UNIT` lines.
pub fn encode_classic(registry: &Registry) -> String {
    let openmetrics = encode(registry);
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some(pending) = help.replace(rest) {
                out.push_str("# HELP ");
                out.push_str(pending);
                out.push('\n');
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let counter = rest.ends_with(" counter");
            let suffix = if counter { "_total" } else { "" };
            if let Some(pending) = help.take() {
                let (name, text) = pending.split_once(' ').unwrap_or((pending, ""));
                out.push_str(&format!("# HELP {name}{suffix} {text}\n"));
            }
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The content type of [`encode_classic`]'s output.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A status code as a label value: `resource_exhausted`, `ok`, ...
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

/// Helpers for collectors: one metric family, written sample by sample.
pub struct Family<'a> {
    encoder: prometheus_client::encoding::MetricEncoder<'a>,
}

impl<'a> Family<'a> {
    pub fn counter(
        encoder: &'a mut DescriptorEncoder<'_>,
        name: &'a str,
        help: &str,
    ) -> Result<Self, std::fmt::Error> {
        Ok(Self {
            encoder: encoder.encode_descriptor(name, help, None, MetricType::Counter)?,
        })
    }

    pub fn gauge(
        encoder: &'a mut DescriptorEncoder<'_>,
        name: &'a str,
        help: &str,
    ) -> Result<Self, std::fmt::Error> {
        Ok(Self {
            encoder: encoder.encode_descriptor(name, help, None, MetricType::Gauge)?,
        })
    }

    /// A sample of a counter family.
    pub fn count(&mut self, labels: &[(&str, &str)], value: u64) -> Result<(), std::fmt::Error> {
        ConstCounter::new(value).encode(self.encoder.encode_family(&labels)?)
    }

    /// The one sample of a gauge without labels.
    pub fn only(self, value: i64) -> Result<(), std::fmt::Error> {
        ConstGauge::new(value).encode(self.encoder)
    }

    /// A sample of a gauge family.
    pub fn set(&mut self, labels: &[(&str, &str)], value: i64) -> Result<(), std::fmt::Error> {
        ConstGauge::new(value).encode(self.encoder.encode_family(&labels)?)
    }

    /// A sample of a gauge family with a fractional value.
    pub fn set_f64(&mut self, labels: &[(&str, &str)], value: f64) -> Result<(), std::fmt::Error> {
        ConstGauge::new(value).encode(self.encoder.encode_family(&labels)?)
    }
}

/// What the trainer exports: where the run is and how it is doing. Each value is set when a
/// round ends.
#[derive(Clone, Debug, Default)]
pub struct TrainerMetrics {
    pub round: Gauge,
    pub generation: Gauge,
    pub promoted_generation: Gauge,
    pub targets_committed: Gauge,
    pub steps: Gauge,
    pub agreement: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub gate_agreement: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub heldout_accuracy: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub loss: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl TrainerMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("hch_trainer");
        r.register("round", "Rounds completed", self.round.clone());
        r.register(
            "generation",
            "The newest generation trained",
            self.generation.clone(),
        );
        r.register(
            "promoted_generation",
            "The generation the workers serve (the registry's CURRENT)",
            self.promoted_generation.clone(),
        );
        r.register(
            "targets_committed",
            "Amplified targets in the store",
            self.targets_committed.clone(),
        );
        r.register("steps", "Optimiser steps taken", self.steps.clone());
        r.register(
            "agreement",
            "The amplifier's agreement with its own round's targets (decides the curriculum)",
            self.agreement.clone(),
        );
        r.register(
            "gate_agreement",
            "The new generation's agreement with Amplify(H, X) on held-out questions (decides promotion)",
            self.gate_agreement.clone(),
        );
        r.register(
            "heldout_accuracy",
            "Accuracy against the ground truth on held-out questions (reported only; decides nothing)",
            self.heldout_accuracy.clone(),
        );
        r.register(
            "loss",
            "The last round's mean distillation loss",
            self.loss.clone(),
        );
    }
}

#[cfg(feature = "model")]
impl TrainerMetrics {
    /// Sets every value from a published round.
    pub fn record(&self, r: &crate::train::RoundRecord) {
        self.round.set(r.round.map_or(0, |n| n as i64 + 1));
        self.generation.set(r.generation as i64);
        if r.promoted {
            self.promoted_generation.set(r.generation as i64);
        }
        self.targets_committed.set(r.targets_total as i64);
        self.steps.set(r.steps as i64);
        if let Some(a) = r.agreement {
            self.agreement.set(a);
        }
        if let Some(a) = r.gate_agreement {
            self.gate_agreement.set(a);
        }
        self.heldout_accuracy.set(r.accuracy);
        if let Some(loss) = r.loss {
            self.loss.set(loss);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_format_names_counters_by_their_samples() {
        let mut registry = Registry::default();
        let counter: prometheus_client::metrics::counter::Counter = Default::default();
        counter.inc_by(3);
        registry.register("hch_things", "Things counted", counter);
        let gauge: Gauge = Default::default();
        gauge.set(7);
        registry.register("hch_level", "A level", gauge);
        let classic = encode_classic(&registry);
        assert_eq!(
            classic,
            "# HELP hch_things_total Things counted.\n# TYPE hch_things_total counter\n\
             hch_things_total 3\n# HELP hch_level A level.\n# TYPE hch_level gauge\n\
             hch_level 7\n"
        );
        assert!(encode(&registry).ends_with("# EOF\n"));
    }
}
