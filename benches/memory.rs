//! Heap held by trees in flight: bytes per pending tree and per pending node, in process.
//!
//! Many trees (the load test's: wildcard, hch:5, "******": 31 overseer nodes over 32 leaves, each
//! on a fresh full-size instance) are started against an answerer that never answers, so that
//! every node of every tree is pending at once, as in a coordinator whose workers are slow. Once
//! every leaf has been asked, the heap has grown by what the trees hold: their futures, memo
//! tables, trace records and leaf slots. Instances are made beforehand (a coordinator holds a
//! tree's instance too, once, whatever the tree's size; its size is printed apart).
//!
//! `cargo bench --bench memory` prints the figures; nothing is timed.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use hch::answerer::{Answerer, AnswererId, Answers, Query};
use hch::domain::wildcard::Wildcard;
use hch::domain::{Domain, Instance, FULL_SIZE};
use hch::eval::{Budget, EvalOptions, Evaluator, Mode};

/// mimalloc (as the `hch` binary uses), counting the bytes it holds for us.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);
static INNER: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        INNER.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        INNER.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        INNER.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        INNER.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Counts the questions it is asked and never answers them.
struct Stalled {
    asked: Arc<AtomicUsize>,
}

impl Answerer<Wildcard> for Stalled {
    fn id(&self) -> AnswererId {
        AnswererId::custom(1, "stalled")
    }

    fn answer(
        &self,
        batch: Vec<Query<Wildcard>>,
    ) -> BoxFuture<'_, Answers<<Wildcard as Domain>::Answer>> {
        self.asked.fetch_add(batch.len(), Ordering::Relaxed);
        Box::pin(async move {
            let _held = batch;
            std::future::pending().await
        })
    }
}

const TREES: usize = 2000;
const LEAVES: usize = 32;
const NODES: usize = 63;

fn measure(label: &str, options: EvalOptions) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let domain = Wildcard;
    let before_instances = HELD.load(Ordering::Relaxed);
    let instances: Vec<_> = (0..TREES as u64)
        .map(|s| Instance::generate(&domain, FULL_SIZE, s).unwrap())
        .collect();
    let per_instance = (HELD.load(Ordering::Relaxed) - before_instances) as f64 / TREES as f64;
    let asked = Arc::new(AtomicUsize::new(0));
    let answerer: Arc<dyn Answerer<Wildcard>> = Arc::new(Stalled {
        asked: asked.clone(),
    });
    let evaluator = Arc::new(Evaluator::new(domain, Some(answerer), options));
    let question = domain.parse_question("******").unwrap();
    let mode: Mode = "hch:5".parse().unwrap();
    let held = runtime.block_on(async {
        let before = HELD.load(Ordering::Relaxed);
        let trees: Vec<_> = instances
            .iter()
            .map(|instance| {
                let (evaluator, instance) = (evaluator.clone(), instance.clone());
                tokio::spawn(async move {
                    evaluator
                        .evaluate(&instance, question, mode, Budget::default())
                        .await
                })
            })
            .collect();
        // Every tree runs until its leaves are asked, then waits on them for good.
        while asked.load(Ordering::Relaxed) < TREES * LEAVES {
            tokio::task::yield_now().await;
        }
        let held = HELD.load(Ordering::Relaxed) - before;
        for tree in trees {
            tree.abort();
        }
        held
    });
    println!(
        "{label:<18} {:>8.0} bytes per pending tree, {:>6.0} per pending node ({TREES} trees of {NODES} nodes)",
        held as f64 / TREES as f64,
        held as f64 / (TREES * NODES) as f64,
    );
    if label == "memo+trace" {
        println!(
            "{:<18} {per_instance:>8.0} bytes per instance (full-size wildcard facts)",
            ""
        );
    }
}

fn main() {
    // `cargo bench` passes --bench; a filter argument selects nothing here: there is one figure.
    println!("memory held by trees in flight (wildcard hch:5 \"******\", every leaf pending):");
    for (label, memo, trace) in [
        ("memo+trace", true, true),
        ("no-memo+trace", false, true),
        ("no-memo+no-trace", false, false),
    ] {
        measure(label, EvalOptions { memo, trace });
    }
}
