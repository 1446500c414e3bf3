//! The load itself: closed-loop clients that each keep one call in flight, and the tree phase,
//! closed or open loop, with the CPU time the process spent meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::report;

/// What one phase measured.
pub(super) struct Phase {
    pub count: u64,
    pub elapsed: f64,
    pub cores: f64,
    pub latencies: Vec<Duration>,
    pub failed: u64,
}

impl Phase {
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.max(1e-9)
    }

    /// CPU seconds (of the whole process) per call that succeeded.
    pub fn cpu_per_call(&self) -> f64 {
        self.cores / self.rate().max(1e-9)
    }
}

/// Runs one load client per `make(i)` for `period`, each calling its closure in a loop, and counts
/// the calls that succeed (and their latencies) and those that do not.
pub(super) async fn phase<M, C, Fut>(clients: usize, period: Duration, make: M) -> Result<Phase>
where
    M: Fn(usize) -> C,
    C: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let start = Instant::now();
    let cpu_start = cpu_time();
    let calls = closed_loop(clients, start, period, |i| {
        let mut call = make(i);
        move || {
            let (t, call) = (Instant::now(), call());
            async move { call.await.then(|| t.elapsed()) }
        }
    })
    .await?;
    let elapsed = start.elapsed().as_secs_f64();
    let cores = (cpu_time() - cpu_start).as_secs_f64() / elapsed;
    let latencies: Vec<Duration> = calls.iter().flatten().copied().collect();
    Ok(Phase {
        count: latencies.len() as u64,
        elapsed,
        cores,
        failed: (calls.len() - latencies.len()) as u64,
        latencies,
    })
}

/// Runs one client per `make(i)` until `period` has passed since `start`, each calling its
/// closure in a loop, and returns what every call returned. Each client keeps its calls' results
/// until the phase is over: a result sent to a collector as each call ended would wake that task
/// across threads (a futex call and often an IPI per call, about 4% of a loaded tree's CPU), a
/// cost of the load generator, not of the system it loads.
async fn closed_loop<M, C, Fut, T>(
    clients: usize,
    start: Instant,
    period: Duration,
    make: M,
) -> Result<Vec<T>>
where
    M: Fn(usize) -> C,
    C: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let mut call = make(i);
            tokio::spawn(async move {
                let mut kept = Vec::new();
                while start.elapsed() < period {
                    kept.push(call().await);
                }
                kept
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("a load client panicked")?);
    }
    Ok(all)
}

/// How the tree phase loads the coordinator.
#[derive(Clone, Copy, Debug)]
pub(super) enum Load {
    /// This many clients, each with one tree in flight.
    Closed(usize),
    /// Trees started at this rate (a second) on a fixed schedule.
    Open(f64),
}

/// What the tree phase measured.
pub(super) struct TreePhase {
    pub samples: report::Samples,
    pub elapsed: f64,
    pub cores: f64,
}

/// Runs trees for `period` under `load`; `tree(seq)` asks the `seq`th and says how it went (its
/// status, and whether it was degraded). An open-loop tree's latency counts from when it was
/// due, so a stalled server shows up as latency rather than as trees never sent. The phase ends
/// when the last tree started within `period` has finished.
pub(super) async fn tree_phase<F, Fut>(load: Load, period: Duration, tree: F) -> Result<TreePhase>
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = (tonic::Code, bool)> + Send + 'static,
{
    let start = Instant::now();
    let cpu_start = cpu_time();
    let samples: Vec<report::Sample> = match load {
        Load::Closed(clients) => {
            let seq = Arc::new(AtomicU64::new(0));
            closed_loop(clients, start, period, |_| {
                let (tree, seq) = (tree.clone(), seq.clone());
                move || {
                    let sent = Instant::now();
                    let tree = tree(seq.fetch_add(1, Ordering::Relaxed));
                    async move {
                        let (code, degraded) = tree.await;
                        report::Sample {
                            latency: sent.elapsed(),
                            code,
                            degraded,
                        }
                    }
                }
            })
            .await?
        }
        Load::Open(rate) => {
            let mut tasks = Vec::new();
            for i in 0u64.. {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                if due >= start + period {
                    break;
                }
                tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                let tree = tree.clone();
                tasks.push(tokio::spawn(async move {
                    let (code, degraded) = tree(i).await;
                    report::Sample {
                        latency: due.elapsed(),
                        code,
                        degraded,
                    }
                }));
            }
            let mut samples = Vec::with_capacity(tasks.len());
            for t in tasks {
                samples.push(t.await.context("a load client panicked")?);
            }
            samples
        }
    };
    // The phase ends when its last tree has; tallying the samples is reporting, not load.
    let elapsed = start.elapsed().as_secs_f64();
    let cores = (cpu_time() - cpu_start).as_secs_f64() / elapsed;
    let mut tally = report::Samples::default();
    for sample in samples {
        tally.add(sample);
    }
    Ok(TreePhase {
        samples: tally,
        elapsed,
        cores,
    })
}

/// CPU time (user + system, all threads) this process has used so far, from /proc/self/stat
/// (Linux; zero elsewhere). The kernel reports it in USER_HZ ticks, 100 per second on Linux.
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // The command name (field 2) may contain spaces; the fields after its closing paren are plain.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the paren.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

pub(super) fn percentiles(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "no samples".to_string();
    }
    v.sort();
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    format!(
        "p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        at(0.5),
        at(0.9),
        at(0.99),
        v[v.len() - 1]
    )
}
