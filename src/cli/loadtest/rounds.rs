//! `hch loadtest --rounds N`: the raw phase and the tree phase paired N times in one run, each
//! tree phase held against the raw phase just before it, and the lowest ratio reported.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;

use super::load::{tree_phase, Load};
use super::LoadtestArgs;
use crate::server::Cluster;

/// What one round of `--rounds` measured.
pub(super) struct Round {
    /// Raw calls a second, and the CPU one took (`None` where this process holds only clients).
    pub raw: f64,
    pub raw_cpu_per_call: Option<f64>,
    pub subquestions: f64,
    /// Trees answered in full, and those degraded or failed.
    pub trees: u64,
    pub failed: u64,
    /// CPU seconds the tree phase took.
    pub tree_cpu: f64,
}

impl Round {
    pub fn ratio(&self) -> f64 {
        self.subquestions / self.raw.max(1e-9)
    }

    /// A tree's CPU in seconds, where this process holds the whole system.
    pub fn cpu_per_tree(&self) -> Option<f64> {
        self.raw_cpu_per_call?;
        (self.trees > 0).then(|| self.tree_cpu / self.trees as f64)
    }

    /// A tree's CPU in raw calls, where this process holds the whole system.
    pub fn cost(&self) -> Option<f64> {
        Some(self.cpu_per_tree()? / self.raw_cpu_per_call?.max(1e-12))
    }
}

/// What the rounds after the first share.
pub(super) struct Rounds<'a> {
    pub cluster: &'a Option<Cluster>,
    pub coordinator_addr: &'a str,
    /// The raw phases' connection count, the first round's best.
    pub connections: usize,
    pub period: Duration,
    pub load: Load,
    /// The trees' subquestion counter (see `run`).
    pub subquestions: &'a AtomicU64,
}

/// Rounds 2 to `--rounds`, each a raw phase then a tree phase on instances no earlier round
/// used, and the summary over all of them with `first`.
pub(super) async fn more<F, Fut>(
    args: &LoadtestArgs,
    first: Round,
    shared: Rounds<'_>,
    tree: F,
) -> Result<()>
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = (tonic::Code, bool)> + Send + 'static,
{
    let line = |n: u32, r: &Round| {
        println!(
            "round {n}:             {:>10.0} calls/s raw, {:.0} subquestions/s, {:.1}x{}, {} degraded or failed",
            r.raw,
            r.subquestions,
            r.ratio(),
            r.cost()
                .map_or(String::new(), |c| format!(", {c:.2} raw calls a tree")),
            r.failed
        )
    };
    line(1, &first);
    let mut rounds = vec![first];
    // Sequence numbers far past any earlier round's, so that every tree is on a fresh instance.
    const ROUND_STRIDE: u64 = 1 << 40;
    for n in 2..=args.rounds {
        let raw = super::raw::unary_phase(
            args,
            shared.cluster,
            shared.coordinator_addr,
            shared.connections,
            shared.period,
        )
        .await?;
        shared.subquestions.store(0, Ordering::Relaxed);
        let offset = u64::from(n - 1) * ROUND_STRIDE;
        let round_tree = {
            let tree = tree.clone();
            move |seq: u64| tree(offset + seq)
        };
        let trees = tree_phase(shared.load, shared.period, round_tree).await?;
        let round = Round {
            raw: raw.rate(),
            raw_cpu_per_call: shared.cluster.is_some().then(|| raw.cpu_per_call()),
            subquestions: shared.subquestions.load(Ordering::Relaxed) as f64 / trees.elapsed,
            trees: trees.samples.succeeded(),
            failed: trees.samples.failed(),
            tree_cpu: trees.cores * trees.elapsed,
        };
        line(n, &round);
        rounds.push(round);
    }
    let (low, high) = rounds
        .iter()
        .map(Round::ratio)
        .fold((f64::INFINITY, 0f64), |(l, h), r| (l.min(r), h.max(r)));
    println!(
        "rounds:               {low:>10.1}x the raw unary rate at the lowest of {} rounds, {high:.1}x at the highest",
        rounds.len()
    );
    Ok(())
}
