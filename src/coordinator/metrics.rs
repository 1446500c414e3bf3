//! The coordinator's metrics (see [`crate::metrics`]): trees by outcome with their latency and
//! size, the memo, and every call to a worker by worker and status with its latency and retries.
//! Per-worker counts the pool keeps anyway (subquestions sent, calls in flight, up or not) and the
//! trees in flight are read at scrape time.

use std::sync::{Arc, OnceLock, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::pool::Pool;
use crate::domain::DomainKind;
use crate::metrics::{seconds_histogram, size_histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TreeLabels {
    pub domain: String,
    pub mode: String,
    /// `answered`, `unknown` (degraded by a budget or a failed answerer), or the status code of
    /// a refused or failed tree (`resource_exhausted`, `deadline_exceeded`, ...).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DomainLabels {
    pub domain: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub worker: String,
    /// `ok`, `missing_facts` (the worker asked for facts it had dropped), or a status code.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub worker: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// What trees record as they end.
#[derive(Clone, Debug)]
pub struct TreeMetrics {
    pub trees: Family<TreeLabels, Counter>,
    pub duration: Histograms<DomainLabels>,
    pub nodes: Histograms<DomainLabels>,
    pub nodes_evaluated: Family<DomainLabels, Counter>,
    pub memo_hits: Family<DomainLabels, Counter>,
    pub answerer_queries: Family<DomainLabels, Counter>,
    /// Trees refused because their client was over its rate.
    pub rate_limited: Counter,
    /// Each domain's series of the families above, looked up once (see [`TreeMetrics::of`]).
    by_domain: Arc<[OnceLock<DomainTreeMetrics>; DomainKind::ALL.len()]>,
}

/// One domain's series of the per-domain tree metrics. A tree records five of them as it ends:
/// looked up in their families for every tree, that was five label strings made and hashed and
/// five shared locks taken; these handles share the series' counts.
#[derive(Clone, Debug)]
pub struct DomainTreeMetrics {
    pub duration: Histogram,
    pub nodes: Histogram,
    pub nodes_evaluated: Counter,
    pub memo_hits: Counter,
    pub answerer_queries: Counter,
}

impl Default for TreeMetrics {
    fn default() -> Self {
        Self {
            trees: Family::default(),
            duration: Family::new_with_constructor(seconds_histogram),
            nodes: Family::new_with_constructor(size_histogram),
            nodes_evaluated: Family::default(),
            memo_hits: Family::default(),
            answerer_queries: Family::default(),
            rate_limited: Counter::default(),
            by_domain: Arc::default(),
        }
    }
}

impl TreeMetrics {
    /// `domain`'s series, made in their families when its first tree ends (a scrape shows only
    /// the domains that have had trees, as before).
    pub fn of(&self, domain: DomainKind) -> &DomainTreeMetrics {
        let i = DomainKind::ALL
            .iter()
            .position(|&d| d == domain)
            .expect("DomainKind::ALL lists every domain");
        self.by_domain[i].get_or_init(|| {
            let labels = DomainLabels {
                domain: domain.name().to_string(),
            };
            DomainTreeMetrics {
                duration: self.duration.get_or_create(&labels).clone(),
                nodes: self.nodes.get_or_create(&labels).clone(),
                nodes_evaluated: self.nodes_evaluated.get_or_create(&labels).clone(),
                memo_hits: self.memo_hits.get_or_create(&labels).clone(),
                answerer_queries: self.answerer_queries.get_or_create(&labels).clone(),
            }
        })
    }
}

/// What calls to workers record.
#[derive(Clone, Debug)]
pub struct CallMetrics {
    pub calls: Family<CallLabels, Counter>,
    pub duration: Histograms<WorkerLabels>,
    pub retries: Counter,
}

impl Default for CallMetrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            duration: Family::new_with_constructor(seconds_histogram),
            retries: Counter::default(),
        }
    }
}

impl CallMetrics {
    /// Records one call to `worker` that ended with `status` after `seconds`.
    pub fn observe(&self, worker: &str, status: &str, seconds: f64) {
        self.calls
            .get_or_create(&CallLabels {
                worker: worker.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.duration
            .get_or_create(&WorkerLabels {
                worker: worker.to_string(),
            })
            .observe(seconds);
    }
}

/// Registers the coordinator's metrics: the trees', the pool's calls, and a collector for what
/// is read at scrape time (`in_flight` reads the trees in flight and the tree slots).
pub fn register(
    registry: &mut Registry,
    trees: &TreeMetrics,
    pool: &Arc<Pool>,
    in_flight: Arc<dyn Fn() -> (usize, usize) + Send + Sync>,
) {
    let r = registry.sub_registry_with_prefix("hch_coordinator");
    r.register(
        "trees",
        "Trees by domain, mode and outcome",
        trees.trees.clone(),
    );
    r.register(
        "tree_duration_seconds",
        "Time from a tree's admission to its answer",
        trees.duration.clone(),
    );
    r.register(
        "tree_nodes",
        "Nodes evaluated per tree (memo hits excluded)",
        trees.nodes.clone(),
    );
    r.register(
        "nodes_evaluated",
        "Nodes evaluated (H runs, answerer leaves, degraded nodes)",
        trees.nodes_evaluated.clone(),
    );
    r.register(
        "memo_hits",
        "Nodes answered by the memo (a miss is a node evaluated)",
        trees.memo_hits.clone(),
    );
    r.register(
        "answerer_queries",
        "Questions trees sent to the answerer",
        trees.answerer_queries.clone(),
    );
    r.register(
        "rate_limited",
        "Trees refused because their client was over its rate",
        trees.rate_limited.clone(),
    );
    let calls = pool.metrics();
    r.register(
        "worker_calls",
        "Calls to workers by worker and status",
        calls.calls.clone(),
    );
    r.register(
        "worker_call_duration_seconds",
        "Latency of calls to workers",
        calls.duration.clone(),
    );
    r.register(
        "worker_call_retries",
        "Batches re-sent after a worker failed or timed out",
        calls.retries.clone(),
    );
    r.register_collector(Box::new(PoolCollector {
        pool: Arc::downgrade(pool),
        in_flight,
    }));
}

/// Reads the pool's per-worker counts and the trees in flight at scrape time.
struct PoolCollector {
    pool: Weak<Pool>,
    in_flight: Arc<dyn Fn() -> (usize, usize) + Send + Sync>,
}

impl std::fmt::Debug for PoolCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolCollector").finish_non_exhaustive()
    }
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::metrics::Family as F;
        let (trees, max_trees) = (self.in_flight)();
        F::gauge(&mut encoder, "trees_in_flight", "Trees being evaluated")?.only(trees as i64)?;
        F::gauge(
            &mut encoder,
            "max_trees",
            "Trees that may be evaluated at once",
        )?
        .only(max_trees as i64)?;
        let Some(pool) = self.pool.upgrade() else {
            return Ok(());
        };
        let workers = pool.workers();
        let mut sent = F::counter(
            &mut encoder,
            "subquestions_sent",
            "Subquestions answered by each worker",
        )?;
        for w in &workers {
            sent.count(
                &[("worker", &w.address)],
                w.items_sent.load(std::sync::atomic::Ordering::Relaxed),
            )?;
        }
        let mut up = F::gauge(
            &mut encoder,
            "worker_up",
            "1 if the worker is routed to, 0 if it is avoided (failed or not answering)",
        )?;
        for w in &workers {
            up.set(&[("worker", &w.address)], i64::from(w.is_up()))?;
        }
        let mut calls = F::gauge(
            &mut encoder,
            "worker_calls_in_flight",
            "Calls in flight to each worker",
        )?;
        for w in &workers {
            calls.set(&[("worker", &w.address)], w.in_flight() as i64)?;
        }
        Ok(())
    }
}
