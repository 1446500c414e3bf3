//! The ground truth cannot steer training: the same seeded amplification run, once with the truth
//! and once with it poisoned (random answers and random difficulties from every
//! `Domain::truth` and `Domain::difficulty` call in the process, solvers included), makes the same
//! decisions, commits the same targets and publishes the same weights. Only what is reported
//! against the truth changes, which shows the poison took effect.
//!
//! This file holds a single test because the poison is process-wide. Both runs are reproducible
//! (every model query is a forward pass of its own), so that the only thing that differs between
//! them is the truth.

mod common;

use hch::domain::permutation::Permutation;
use hch::domain::union_find::UnionFind;
use hch::domain::Domain;
use hch::train::store::TargetRow;
use hch::train::{LocalAmplifier, RoundRecord, Run, RunConfig, StopAt};

/// What a run did: its records, its targets (without timings and node counts, which depend on
/// which concurrent tree computed a shared subquestion first) and its weights, per generation.
struct Outcome {
    records: Vec<RoundRecord>,
    targets: Vec<TargetRow>,
    weights: Vec<String>,
    current: Option<u64>,
}

async fn train<D: Domain + Copy>(domain: D, dir: &std::path::Path, config: RunConfig) -> Outcome {
    let mut run = Run::open(domain, dir, config).unwrap();
    let g0 = run.initialise(&mut |_| {}).unwrap();
    let source = LocalAmplifier::start(domain, run.registry().clone(), &g0, true).unwrap();
    let stop = StopAt {
        rounds: Some(4),
        ..StopAt::default()
    };
    run.train(&source, stop, &mut |_| {}).await.unwrap();
    let records = run.records().unwrap();
    let mut targets = run.store().all().unwrap();
    for t in &mut targets {
        t.time_us = 0;
        t.nodes = 0;
        t.tree_id.clear();
    }
    let weights = run
        .registry()
        .list()
        .unwrap()
        .into_iter()
        .map(|m| m.weights_sha256)
        .collect();
    Outcome {
        records,
        targets,
        weights,
        current: run.registry().current().unwrap(),
    }
}

/// The part of a record the loop decided, or decided by.
fn decisions(r: &RoundRecord) -> impl PartialEq + std::fmt::Debug {
    (
        (r.generation, r.size, r.next_size),
        (r.max_difficulty, r.next_max_difficulty),
        (r.targets, r.unknown, r.steps),
        (r.agreement, r.gate_agreement, r.gate_reference),
        r.promoted,
        r.loss,
    )
}

/// The part of a record measured against the truth.
fn reported(r: &RoundRecord) -> impl PartialEq + std::fmt::Debug {
    (r.accuracy, r.accuracy_target, r.by_difficulty.clone())
}

fn check(truthful: &Outcome, poisoned: &Outcome) {
    assert_eq!(truthful.records.len(), 5, "four rounds after generation 0");
    for (a, b) in truthful.records.iter().zip(&poisoned.records) {
        assert_eq!(decisions(a), decisions(b), "generation {}", a.generation);
    }
    assert!(
        truthful
            .records
            .iter()
            .any(|r| r.promoted && r.round.is_some()),
        "no round was promoted: the gate was never exercised"
    );
    assert_eq!(truthful.current, poisoned.current);
    assert!(!truthful.targets.is_empty());
    assert_eq!(truthful.targets.len(), poisoned.targets.len());
    for (a, b) in truthful.targets.iter().zip(&poisoned.targets) {
        assert_eq!(a, b, "target {} of round {}", a.index, a.round);
    }
    assert_eq!(truthful.weights, poisoned.weights);
    // The poison reached what is reported: the truth was consulted, and only there.
    let a: Vec<_> = truthful.records.iter().map(reported).collect();
    let b: Vec<_> = poisoned.records.iter().map(reported).collect();
    assert_ne!(
        a, b,
        "the poisoned truth changed nothing, not even the report"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_the_truth_poisoned_decides_trains_and_publishes_the_same() {
    // Bit for bit needs the CPU, even where a GPU is present.
    std::env::set_var("HCH_DEVICE", "cpu");
    let dir = std::env::temp_dir().join(format!("hch-poisoned-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    // Permutation: the difficulty curriculum, by the exponent's bit length in the question's text.
    let permutation = RunConfig {
        difficulty_curriculum: true,
        start_size: 6,
        target_size: 7,
        advance_at: 0.5,
        reproducible: true,
        ..common::tiny_run(&Permutation, 6, false)
    };
    // Union-find: whose difficulty (a depth in the forest) only a solver knows; sizes alone.
    let union_find = RunConfig {
        start_size: 6,
        target_size: 7,
        advance_at: 0.5,
        reproducible: true,
        ..common::tiny_run(&UnionFind, 6, false)
    };

    let truthful = (
        train(Permutation, &dir.join("p-truth"), permutation.clone()).await,
        train(UnionFind, &dir.join("u-truth"), union_find.clone()).await,
    );
    hch::domain::poison_truth(0x5eed);
    let poisoned = (
        train(Permutation, &dir.join("p-poison"), permutation).await,
        train(UnionFind, &dir.join("u-poison"), union_find).await,
    );
    hch::domain::poison_truth(0);

    check(&truthful.0, &poisoned.0);
    check(&truthful.1, &poisoned.1);
    std::fs::remove_dir_all(&dir).unwrap();
}
