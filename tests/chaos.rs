//! Faults, with every part in its own process: a coordinator and three oracle workers started
//! from the `hch` binary, as an operator would, while clients keep a steady stream of trees going.
//!
//! The faults, in order: one worker is killed (SIGKILL); another is frozen (SIGSTOP) for ten
//! seconds and resumed; the killed one is restarted on its port while the other is still frozen;
//! then the coordinator is killed and restarted on its port. Counted and asserted:
//!
//! - no wrong answer, ever (every answer is checked against the ground truth);
//! - trees fail or degrade only in the windows around the faults, and none because of a worker
//!   fault (a dead or frozen worker's calls are re-sent to another one); only the coordinator's
//!   own restart loses trees, those it held or that were sent while it was down;
//! - a tree held up by the frozen worker still finishes within the call timeout and one more
//!   round: the bound stated in the README, 5 s plus a normal tree;
//! - the restarted worker takes traffic again (the pool re-probes every 2 s);
//! - trees are answered right after every fault, including the last.
//!
//! The measured figures are printed (`cargo test --test chaos -- --nocapture`).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Process as Server;
use hch::rpc::pb;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Right,
    Wrong,
    /// Answered "?" (a budget or the answerer failed).
    Degraded,
    Failed(tonic::Code),
}

#[derive(Debug, Clone, Copy)]
struct Tree {
    start: f64,
    end: f64,
    outcome: Outcome,
}

/// Asks trees one after another until `stop`, recording each.
async fn client(
    id: u64,
    coordinator: String,
    t0: Instant,
    stop: Arc<AtomicBool>,
    trees: Arc<Mutex<Vec<Tree>>>,
) {
    let channel = hch::tls::lazy_channel(hch::tls::endpoint(&coordinator).unwrap(), None);
    let mut client = pb::coordinator_client::CoordinatorClient::new(channel);
    let mut seed = id * 1_000_000;
    while !stop.load(Ordering::Relaxed) {
        seed += 1;
        let (request, truth) = common::permutation_request(seed);
        let mut request = tonic::Request::new(request);
        request.set_timeout(Duration::from_secs(15));
        let start = t0.elapsed().as_secs_f64();
        let outcome = match client.ask(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                if !reply.known {
                    Outcome::Degraded
                } else if reply.answer == truth {
                    Outcome::Right
                } else {
                    Outcome::Wrong
                }
            }
            Err(status) => Outcome::Failed(status.code()),
        };
        let end = t0.elapsed().as_secs_f64();
        trees.lock().unwrap().push(Tree {
            start,
            end,
            outcome,
        });
        if matches!(outcome, Outcome::Failed(_)) {
            // The coordinator is down: try again shortly rather than spin on refused connects.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Items the coordinator has sent to the worker at `address`, from its Status.
async fn items_sent(coordinator: &str, address: &str) -> Option<u64> {
    let channel = hch::tls::connect(hch::tls::endpoint(coordinator).ok()?, None)
        .await
        .ok()?;
    let status = pb::coordinator_client::CoordinatorClient::new(channel)
        .status(pb::StatusRequest {})
        .await
        .ok()?
        .into_inner();
    status
        .workers
        .iter()
        .find(|w| w.address == address)
        .map(|w| w.items_sent)
}

/// Waits until `at` seconds after `t0` (the schedule of faults, not a synchronisation).
async fn at(t0: Instant, at: f64) {
    tokio::time::sleep_until(t0 + Duration::from_secs_f64(at)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_wrong_answer_through_killed_frozen_and_restarted_processes() {
    let mut workers: Vec<Option<Server>> = (0..3)
        .map(|_| Some(Server::worker("127.0.0.1:0")))
        .collect();
    let addresses: Vec<String> = workers
        .iter()
        .map(|w| w.as_ref().unwrap().addr.clone())
        .collect();
    let coordinator_args = |listen: &str| {
        vec![
            "coordinator".to_string(),
            "--listen".into(),
            listen.into(),
            "--workers".into(),
            addresses.join(","),
        ]
    };
    let start_coordinator = |listen: &str| {
        let args = coordinator_args(listen);
        Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let mut coordinator = start_coordinator("127.0.0.1:0");
    let coordinator_addr = coordinator.addr.clone();

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let trees = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..6)
        .map(|id| {
            tokio::spawn(client(
                id,
                coordinator_addr.clone(),
                t0,
                stop.clone(),
                trees.clone(),
            ))
        })
        .collect();

    // The schedule, in seconds from t0.
    at(t0, 2.0).await;
    let killed_at = t0.elapsed().as_secs_f64();
    workers[0].take().unwrap().kill();

    at(t0, 4.0).await;
    let frozen = workers[1].as_ref().unwrap();
    frozen.signal("-STOP");
    frozen.wait_state(true).await;
    let frozen_at = t0.elapsed().as_secs_f64();

    at(t0, 8.0).await;
    workers[0] = Some(Server::worker(&addresses[0]));
    let restarted_at = t0.elapsed().as_secs_f64();
    let sent_before = items_sent(&coordinator_addr, &addresses[0])
        .await
        .unwrap_or(0);
    // When the restarted worker takes traffic again (bounded by the 14 s resume below).
    let mut takes_traffic_after = None;
    while t0.elapsed() < Duration::from_secs(14) {
        if items_sent(&coordinator_addr, &addresses[0])
            .await
            .unwrap_or(0)
            > sent_before
        {
            takes_traffic_after = Some(t0.elapsed().as_secs_f64() - restarted_at);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    at(t0, 14.0).await;
    let frozen = workers[1].as_ref().unwrap();
    frozen.signal("-CONT");
    frozen.wait_state(false).await;
    let resumed_at = t0.elapsed().as_secs_f64();

    at(t0, 16.0).await;
    let coordinator_killed_at = t0.elapsed().as_secs_f64();
    coordinator.kill();
    coordinator = start_coordinator(&coordinator_addr);
    let coordinator_back_at = t0.elapsed().as_secs_f64();

    at(t0, 21.0).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    drop(coordinator);
    drop(workers);

    let trees = trees.lock().unwrap().clone();
    let count = |f: &dyn Fn(&Tree) -> bool| trees.iter().filter(|t| f(t)).count();
    let right = count(&|t| t.outcome == Outcome::Right);
    let wrong = count(&|t| t.outcome == Outcome::Wrong);
    let bad: Vec<&Tree> = trees
        .iter()
        .filter(|t| !matches!(t.outcome, Outcome::Right))
        .collect();
    // The longest tree that overlapped the freeze, and the longest outside every fault.
    let overlaps = |t: &Tree, from: f64, to: f64| t.end >= from && t.start <= to;
    let longest = |f: &dyn Fn(&Tree) -> bool| {
        trees
            .iter()
            .filter(|t| t.outcome == Outcome::Right && f(t))
            .map(|t| t.end - t.start)
            .fold(0.0, f64::max)
    };
    let frozen_longest = longest(&|t| overlaps(t, frozen_at, resumed_at));
    let calm_longest = longest(&|t| t.end < killed_at);
    let after_restart = count(&|t| t.outcome == Outcome::Right && t.start > coordinator_back_at);
    eprintln!(
        "chaos: {} trees, {right} right, {wrong} wrong, {} failed or degraded \
         (all between {:.1} s and {:.1} s; the coordinator was down {:.2} s from {:.1} s); \
         longest tree before the faults {:.3} s, during the freeze {:.2} s; the restarted worker \
         took traffic {:?} s after it started; {after_restart} trees right after the \
         coordinator's restart",
        trees.len(),
        bad.len(),
        bad.iter().map(|t| t.start).fold(f64::INFINITY, f64::min),
        bad.iter().map(|t| t.end).fold(0.0, f64::max),
        coordinator_back_at - coordinator_killed_at,
        coordinator_killed_at,
        calm_longest,
        frozen_longest,
        takes_traffic_after.map(|s| (s * 100.0).round() / 100.0),
    );

    assert_eq!(wrong, 0, "wrong answers");
    // Failures only around the coordinator's restart: worker faults cost no tree.
    for t in &bad {
        assert!(
            overlaps(t, coordinator_killed_at, coordinator_back_at + 2.0),
            "a tree failed or degraded outside the coordinator's restart: {t:?} \
             (killed worker at {killed_at:.1}, froze one at {frozen_at:.1}, restarted at \
             {restarted_at:.1}, resumed at {resumed_at:.1})"
        );
    }
    // A tree held by the frozen worker is re-sent after the 5 s call timeout.
    assert!(
        frozen_longest < 5.0 + 3.0,
        "a tree took {frozen_longest:.2} s during the freeze"
    );
    assert!(
        takes_traffic_after.is_some(),
        "the restarted worker took no traffic within {:.1} s",
        14.0 - restarted_at
    );
    assert!(right > 100, "only {right} trees answered right");
    assert!(
        after_restart > 0,
        "no tree was answered after the coordinator restarted"
    );
    // Every phase answered trees: throughput came back after each fault.
    for (from, to) in [
        (killed_at, frozen_at),
        (frozen_at, restarted_at),
        (restarted_at, resumed_at),
        (resumed_at, coordinator_killed_at),
    ] {
        assert!(
            count(&|t| t.outcome == Outcome::Right && t.start >= from && t.end <= to) > 0,
            "no tree answered between {from:.1} s and {to:.1} s"
        );
    }
}
