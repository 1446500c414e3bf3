//! In-process tree evaluation on full-size instances: nodes per second on one core.
//!
//! Each iteration evaluates a fixed set of trees (seeded instances and questions) on a
//! current-thread runtime. In the main configurations the trees run one after another, so each has
//! its instance's memo table to itself (an evaluator keeps a table while trees on the instance
//! run): the memo saves only repeats within a tree and costs its full price on every node. In
//! `memo+trace/shared` the trees about one instance run concurrently and share its table, as
//! concurrent questions about one instance do in the coordinator. Throughput is in tree nodes:
//! every node of the trace, memo hits included (with the memo off, every node is evaluated).
//! Modes: exact (well-founded domains) and amplified with the oracle.
//!
//! `wildcard/fan-out` is the coordinator's load-test tree without the network: 512 trees of
//! `******` at hch:5 (63 nodes, 32 leaves to the answerer) on fresh instances, each its own task,
//! with the answerer's reply arriving a scheduler turn later, as a worker's would. Between a tree's
//! two walks the other trees run, so its second walk reads cold memory, as in a loaded
//! coordinator, where one node costs several times what it does in the trees above.

use std::sync::Arc;

/// The allocator the `hch` binary uses (see src/main.rs), so that the bench measures the product's
/// path: with glibc's malloc the timings also follow the heap's layout from setup to setup.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use futures::future::BoxFuture;
use hch::answerer::{Answerer, AnswererId, Answers, Oracle, Query};
use hch::domain::wildcard::Wildcard;
use hch::domain::{Domain, DomainKind, Instance, FULL_SIZE};
use hch::eval::{Budget, EvalOptions, Evaluator, Mode};
use hch::rng::Rng;
use hch::with_domain;

const INSTANCES: u64 = 8;
const QUESTIONS: usize = 16;

struct Workload<D: Domain> {
    facts: Vec<D::Facts>,
    questions: Vec<Vec<D::Question>>,
}

fn workload<D: Domain>(domain: &D) -> Workload<D> {
    let facts: Vec<_> = (0..INSTANCES)
        .map(|s| domain.generate(FULL_SIZE, s).unwrap())
        .collect();
    let questions = facts
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut rng = Rng::new(i as u64);
            (0..QUESTIONS)
                .map(|_| domain.sample_question(f, &mut rng))
                .collect()
        })
        .collect();
    Workload { facts, questions }
}

async fn run_all<D: Domain>(
    evaluator: &Evaluator<D>,
    work: &Workload<D>,
    instances: &[Vec<Arc<Instance<D>>>],
    mode: Mode,
    concurrent: bool,
) -> u64 {
    let mut nodes = 0;
    for (per_tree, questions) in instances.iter().zip(&work.questions) {
        let trees =
            per_tree.iter().cycle().zip(questions).map(|(instance, q)| {
                evaluator.evaluate(instance, q.clone(), mode, Budget::default())
            });
        let results = if concurrent {
            futures::future::join_all(trees).await
        } else {
            let mut results = Vec::with_capacity(questions.len());
            for tree in trees {
                results.push(tree.await);
            }
            results
        };
        for r in results {
            let r = r.unwrap();
            nodes += r.stats.nodes + r.stats.memo_hits;
        }
    }
    nodes
}

fn bench_domain<D: Domain + Copy>(c: &mut Criterion, domain: D, mode: Mode) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let work = workload(&domain);
    let oracle: Option<Arc<dyn Answerer<D>>> = match mode {
        Mode::Exact => None,
        _ => Some(Arc::new(Oracle::new(domain))),
    };
    // One instance per tree, or one per group of trees about the same facts.
    let fresh = |shared: bool| -> Vec<Vec<Arc<Instance<D>>>> {
        work.facts
            .iter()
            .map(|f| {
                let copies = if shared { 1 } else { QUESTIONS };
                (0..copies)
                    .map(|_| Instance::new(&domain, f.clone()))
                    .collect()
            })
            .collect()
    };
    let mut group = c.benchmark_group(format!("{}/{mode}", D::KIND));
    for (label, memo, trace, shared) in [
        ("memo+trace", true, true, false),
        ("no-memo+trace", false, true, false),
        ("no-memo+no-trace", false, false, false),
        ("memo+trace/shared", true, true, true),
    ] {
        let evaluator = Evaluator::new(domain, oracle.clone(), EvalOptions { memo, trace });
        let nodes = rt.block_on(run_all(&evaluator, &work, &fresh(shared), mode, shared));
        group.throughput(Throughput::Elements(nodes));
        group.bench_function(label, |b| {
            b.iter_batched(
                || fresh(shared),
                |instances| rt.block_on(run_all(&evaluator, &work, &instances, mode, shared)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// The oracle, answering a scheduler turn after it is asked (as a remote answerer does).
struct Deferred<D: Domain>(Oracle<D>);

impl<D: Domain> Answerer<D> for Deferred<D> {
    fn id(&self) -> AnswererId {
        self.0.id()
    }

    fn answer(&self, batch: Vec<Query<D>>) -> BoxFuture<'_, Answers<D::Answer>> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            self.0.answer(batch).await
        })
    }
}

/// Trees in flight in `wildcard/fan-out`: the load test's clients.
const FAN_OUT_TREES: usize = 512;

fn fan_out(c: &mut Criterion) {
    if !selected().contains(&DomainKind::Wildcard) {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let d = Wildcard;
    let mode: Mode = "hch:5".parse().unwrap();
    let question = d.parse_question("******").unwrap();
    let evaluator = Arc::new(Evaluator::new(
        d,
        Some(Arc::new(Deferred(Oracle::new(d)))),
        EvalOptions::default(),
    ));
    let facts: Vec<_> = (0..FAN_OUT_TREES as u64)
        .map(|seed| d.generate(FULL_SIZE, seed).unwrap())
        .collect();
    let instances = || -> Vec<Arc<Instance<Wildcard>>> {
        facts.iter().map(|f| Instance::new(&d, f.clone())).collect()
    };
    let run = |instances: Vec<Arc<Instance<Wildcard>>>| {
        rt.block_on(async {
            let trees: Vec<_> = instances
                .into_iter()
                .map(|instance| {
                    let (evaluator, question) = (evaluator.clone(), question);
                    tokio::spawn(async move {
                        let r = evaluator
                            .evaluate(&instance, question, mode, Budget::default())
                            .await
                            .unwrap();
                        r.stats.nodes + r.stats.memo_hits
                    })
                })
                .collect();
            let mut nodes = 0;
            for tree in trees {
                nodes += tree.await.unwrap();
            }
            nodes
        })
    };
    let nodes = run(instances());
    assert_eq!(
        nodes,
        63 * FAN_OUT_TREES as u64,
        "the fan-out tree changed shape"
    );
    let mut group = c.benchmark_group("wildcard/fan-out");
    group.throughput(Throughput::Elements(nodes));
    group.bench_function("hch:5/512-in-flight", |b| {
        b.iter_batched(instances, run, BatchSize::SmallInput)
    });
    group.finish();
}

/// `HCH_BENCH_DOMAINS=wildcard,permutation` restricts the run to those domains.
fn selected() -> Vec<DomainKind> {
    match std::env::var("HCH_BENCH_DOMAINS") {
        Ok(list) => list
            .split(',')
            .map(|s| s.trim().parse().expect("HCH_BENCH_DOMAINS: unknown domain"))
            .collect(),
        Err(_) => DomainKind::ALL.to_vec(),
    }
}

fn trees(c: &mut Criterion) {
    for kind in selected() {
        with_domain!(kind, d => {
            if <_ as DomainWellFounded>::well_founded(&d) {
                bench_domain(c, d, Mode::Exact);
            }
            bench_domain(c, d, Mode::Amplified);
        });
    }
}

trait DomainWellFounded {
    fn well_founded(&self) -> bool;
}

impl<D: Domain> DomainWellFounded for D {
    fn well_founded(&self) -> bool {
        D::WELL_FOUNDED
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = trees, fan_out
}
criterion_main!(benches);
