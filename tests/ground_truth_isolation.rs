//! Ground truth never reaches amplified training targets.
//!
//! `Domain::truth` is the only way to the ground truth, and every call is counted process-wide
//! (`hch::domain::truth_calls`). This file holds a single test so that nothing else in the process
//! moves the counter: the loop measures it around each round's target production, and for an
//! amplified run it must not move at all, while the supervised baseline (which is allowed the
//! truth) shows that the counter does see it.

mod common;

use hch::domain::permutation::Permutation;
use hch::train::store::TargetOrigin;
use hch::train::{GroundTruth, LocalAmplifier, Run, StopAt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amplified_targets_never_consult_the_ground_truth() {
    let dir = std::env::temp_dir().join(format!("hch-isolation-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let domain = Permutation;
    let stop = StopAt {
        rounds: Some(2),
        ..StopAt::default()
    };

    let mut run = Run::open(
        domain,
        dir.join("amplified"),
        common::tiny_run(&domain, 6, false),
    )
    .unwrap();
    let g0 = run.initialise(&mut |_| {}).unwrap();
    let source = LocalAmplifier::start(domain, run.registry().clone(), &g0, false).unwrap();
    let records = run.train(&source, stop, &mut |_| {}).await.unwrap();
    assert_eq!(records.len(), 2);
    for r in &records {
        assert!(r.targets > 0, "round {:?} produced no targets", r.round);
        assert_eq!(
            r.truth_calls_in_targets, 0,
            "round {:?} consulted the ground truth while producing targets",
            r.round
        );
    }
    let rows = run.store().all().unwrap();
    assert!(rows.iter().all(|r| r.source == TargetOrigin::Amplified
        && r.answerer.starts_with("model g")
        && r.answered_by_generation.is_some()));

    // The counter is live: the supervised baseline's targets are the truth, and it sees them.
    let mut baseline = Run::open(
        domain,
        dir.join("supervised"),
        common::tiny_run(&domain, 6, true),
    )
    .unwrap();
    let truth = GroundTruth::new(domain);
    let records = baseline.train(&truth, stop, &mut |_| {}).await.unwrap();
    assert!(records
        .iter()
        .all(|r| r.truth_calls_in_targets >= r.targets));
    // A run keeps its kind: an amplified run refuses the ground truth as its source.
    assert!(run.train(&truth, stop, &mut |_| {}).await.is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
