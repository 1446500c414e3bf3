//! The worker's metrics (see [`crate::metrics`]), per domain: the batcher's queue (depth, time
//! waited), the batches it forms (size, compute time), its calls, the facts cache, and the
//! generation served. The distributions are recorded by the batcher as batches run; the counts it
//! and the cache keep anyway are read at scrape time.
//!
//! Several workers in one process (`hch up`) share one set of families, each worker's series
//! labelled `worker="N"`: a metric family may appear only once in an exposition.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, LabelSetEncoder,
};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::WorkerService;
use crate::answerer::batched::BatchHistograms;
use crate::domain::DomainKind;
use crate::metrics::{seconds_histogram, size_histogram};

/// A series' labels: the domain, and the worker where several share the families.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Labels {
    pub domain: &'static str,
    pub worker: Option<String>,
}

impl EncodeLabelSet for Labels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("domain", self.domain).encode(encoder.encode_label())?;
        if let Some(worker) = &self.worker {
            ("worker", worker.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// The batchers' distributions, one series per domain (and worker). Cloning shares them.
#[derive(Clone, Debug)]
pub struct WorkerHistograms {
    queue: Histograms,
    batch_size: Histograms,
    compute: Histograms,
    /// This worker's `worker` label, where several share the families.
    worker: Option<String>,
}

impl Default for WorkerHistograms {
    fn default() -> Self {
        Self {
            queue: Family::new_with_constructor(seconds_histogram),
            batch_size: Family::new_with_constructor(size_histogram),
            compute: Family::new_with_constructor(seconds_histogram),
            worker: None,
        }
    }
}

impl WorkerHistograms {
    /// The same families, for the worker labelled `worker`.
    pub fn for_worker(&self, worker: String) -> Self {
        Self {
            worker: Some(worker),
            ..self.clone()
        }
    }

    /// The histograms a domain's batcher records into.
    pub fn for_domain(&self, domain: DomainKind) -> BatchHistograms {
        let labels = Labels {
            domain: domain.name(),
            worker: self.worker.clone(),
        };
        BatchHistograms {
            queue_seconds: self.queue.get_or_create(&labels).clone(),
            batch_size: self.batch_size.get_or_create(&labels).clone(),
            compute_seconds: self.compute.get_or_create(&labels).clone(),
        }
    }
}

/// Registers the metrics of `workers`, which share their histogram families (one worker, or the
/// workers of one process, each labelled).
pub fn register(registry: &mut Registry, workers: &[Arc<WorkerService>]) {
    let Some(first) = workers.first() else {
        return;
    };
    let r = registry.sub_registry_with_prefix("hch_worker");
    let h = &first.histograms;
    r.register(
        "queue_seconds",
        "Time a call waited in the queue before its batch ran",
        h.queue.clone(),
    );
    r.register(
        "batch_size",
        "Questions per forward pass (or oracle batch)",
        h.batch_size.clone(),
    );
    r.register(
        "compute_seconds",
        "Time a batch took to answer (the forward pass)",
        h.compute.clone(),
    );
    r.register_collector(Box::new(WorkerCollector {
        workers: workers.iter().map(Arc::downgrade).collect(),
    }));
}

#[derive(Debug)]
struct WorkerCollector {
    workers: Vec<Weak<WorkerService>>,
}

impl Collector for WorkerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::metrics::Family as F;
        let workers: Vec<Arc<WorkerService>> =
            self.workers.iter().filter_map(Weak::upgrade).collect();
        // (labels, the domain's worker) for every series, in a stable order.
        let mut series = Vec::new();
        for service in &workers {
            let worker = service.histograms.worker.clone();
            let mut domains: Vec<_> = service.domains.iter().collect();
            domains.sort_by_key(|(kind, _)| kind.name());
            for (kind, domain) in domains {
                series.push((kind.name(), worker.clone(), domain.clone()));
            }
        }
        let labels =
            |domain: &'static str, worker: &Option<String>| -> Vec<(&'static str, String)> {
                let mut labels = vec![("domain", domain.to_string())];
                if let Some(w) = worker {
                    labels.push(("worker", w.clone()));
                }
                labels
            };
        let counters: [(&str, &str, ReadStats); 5] = [
            ("calls", "Calls received", |s| {
                s.calls.load(Ordering::Relaxed)
            }),
            ("batches", "Batches answered", |s| {
                s.batches.load(Ordering::Relaxed)
            }),
            ("questions", "Questions answered", |s| {
                s.questions.load(Ordering::Relaxed)
            }),
            (
                "cancelled_calls",
                "Calls dropped because their caller had gone before their batch ran",
                |s| s.cancelled_calls.load(Ordering::Relaxed),
            ),
            (
                "refused_calls",
                "Calls refused with RESOURCE_EXHAUSTED because the queue was full",
                |s| s.refused_calls.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, read) in counters {
            let mut family = F::counter(&mut encoder, name, help)?;
            for (domain, worker, d) in &series {
                family.count(&as_refs(&labels(domain, worker)), read(d.stats()))?;
            }
        }
        let mut depth = F::gauge(
            &mut encoder,
            "queue_depth",
            "Calls waiting for a batch to run",
        )?;
        for (domain, worker, d) in &series {
            depth.set(&as_refs(&labels(domain, worker)), d.queued() as i64)?;
        }
        let caches: [(&str, &str, ReadCache); 2] = [
            (
                "facts_cache_hits",
                "Lookups of an instance the worker held",
                |c| c.0,
            ),
            (
                "facts_cache_misses",
                "Lookups of an instance the worker did not hold (its facts are then resent)",
                |c| c.1,
            ),
        ];
        for (name, help, read) in caches {
            let mut family = F::counter(&mut encoder, name, help)?;
            for (domain, worker, d) in &series {
                family.count(&as_refs(&labels(domain, worker)), read(d.facts_cache()))?;
            }
        }
        let mut held = F::gauge(&mut encoder, "facts_cached", "Instances held")?;
        for (domain, worker, d) in &series {
            held.set(&as_refs(&labels(domain, worker)), d.facts_cache().2 as i64)?;
        }
        // The model's encoding cache (model workers only).
        let encodings: Vec<_> = series
            .iter()
            .filter_map(|(domain, worker, d)| Some((labels(domain, worker), d.encoding_cache()?)))
            .collect();
        if !encodings.is_empty() {
            let counters: [(&str, &str, ReadEncodings); 3] = [
                (
                    "encoding_cache_hits",
                    "Instances of a forward pass whose encoded facts the model held",
                    |c| c.0,
                ),
                (
                    "encoding_cache_misses",
                    "Instances of a forward pass whose facts the model encoded",
                    |c| c.1,
                ),
                (
                    "encoding_cache_evictions",
                    "Encoded instances dropped to stay within the cache's memory budget",
                    |c| c.2,
                ),
            ];
            for (name, help, read) in counters {
                let mut family = F::counter(&mut encoder, name, help)?;
                for (l, c) in &encodings {
                    family.count(&as_refs(l), read(*c))?;
                }
            }
            let mut bytes = F::gauge(
                &mut encoder,
                "encoding_cache_bytes",
                "Bytes of encoded facts held (on the model's device)",
            )?;
            for (l, c) in &encodings {
                bytes.set(&as_refs(l), c.3 as i64)?;
            }
        }
        // Per worker: unlabelled for a worker alone, labelled where several share the families.
        let per_worker: Vec<(OwnedLabels, i64, Option<u64>)> = workers
            .iter()
            .map(|service| {
                let info = service.info();
                let loaded = info.answerer.is_oracle() || info.answerer.generation().is_some();
                let labels = service
                    .histograms
                    .worker
                    .iter()
                    .map(|w| ("worker", w.clone()))
                    .collect();
                (labels, i64::from(loaded), info.answerer.generation())
            })
            .collect();
        let alone = per_worker.len() == 1 && per_worker[0].0.is_empty();
        let ready = F::gauge(
            &mut encoder,
            "ready",
            "1 once a model (or the oracle) is loaded and answering",
        )?;
        if alone {
            ready.only(per_worker[0].1)?;
        } else {
            let mut ready = ready;
            for (labels, loaded, _) in &per_worker {
                ready.set(&as_refs(labels), *loaded)?;
            }
        }
        let generations: Vec<_> = per_worker
            .iter()
            .filter_map(|(labels, _, g)| g.map(|g| (labels, g as i64)))
            .collect();
        if !generations.is_empty() {
            let generation = F::gauge(
                &mut encoder,
                "generation",
                "The model generation being served",
            )?;
            if alone {
                generation.only(generations[0].1)?;
            } else {
                let mut generation = generation;
                for (labels, g) in generations {
                    generation.set(&as_refs(labels), g)?;
                }
            }
        }
        Ok(())
    }
}

/// Reads one count out of the facts cache's (hits, misses, held).
type ReadEncodings = fn((u64, u64, u64, u64, u64)) -> u64;
type ReadCache = fn((u64, u64, usize)) -> u64;

/// A series' labels, owned.
type OwnedLabels = Vec<(&'static str, String)>;

/// Reads one count out of a batcher's stats.
type ReadStats = fn(&crate::answerer::batched::BatchStats) -> u64;

fn as_refs<'a>(labels: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    labels.iter().map(|(k, v)| (*k, v.as_str())).collect()
}
