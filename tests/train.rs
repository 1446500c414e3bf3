//! The amplify-distill loop, end to end over real parts: an embedded coordinator and two workers on
//! loopback sockets serve the run's registry (hot-loading each promoted generation), amplified
//! trees go over gRPC, targets go to Parquet shards, and a tiny model really trains.

mod common;

use std::time::Duration;

use hch::coordinator::pool::PoolConfig;
use hch::domain::permutation::Permutation;
use hch::domain::Domain;
use hch::server::{Cluster, ClusterConfig};
use hch::train::{Progress, RemoteAmplifier, Run, StopAt};
use hch::worker::{Serving, WorkerConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amplification_alone_raises_held_out_accuracy() {
    let dir = std::env::temp_dir().join(format!("hch-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let domain = Permutation;
    let size = 6;
    let mut run = Run::open(domain, &dir, common::tiny_run(&domain, size, false)).unwrap();
    run.initialise(&mut |_| {}).unwrap();

    let cluster = Cluster::start(ClusterConfig {
        workers: 2,
        serving: Serving::Registry {
            registry: run.registry().root().to_path_buf(),
            domain: Permutation::KIND,
        },
        worker: WorkerConfig {
            reload_every: Duration::from_millis(20),
            ..WorkerConfig::default()
        },
        pool: PoolConfig {
            refresh_every: Duration::from_millis(20),
            ..PoolConfig::default()
        },
        ..ClusterConfig::default()
    })
    .await
    .unwrap();
    let source = RemoteAmplifier::connect(domain, &cluster.coordinator.addr.to_string(), None)
        .await
        .unwrap();

    let mut published = Vec::new();
    let records = run
        .train(
            &source,
            StopAt {
                rounds: Some(8),
                ..StopAt::default()
            },
            &mut |p| {
                if let Progress::Published(r) = p {
                    published.push(r.generation);
                }
            },
        )
        .await
        .unwrap();
    assert_eq!(records.len(), 8);
    assert_eq!(published, (1..=8).collect::<Vec<_>>());

    // Held-out accuracy rises well above the random generation and above chance (1/6: the
    // answers are uniform over the elements).
    let g0 = run.records().unwrap()[0].accuracy_target;
    let best = records
        .iter()
        .filter(|r| r.promoted)
        .map(|r| r.accuracy_target)
        .fold(0.0, f64::max);
    assert!(
        best >= g0 + 0.1 && best >= 1.0 / size as f64 + 0.1,
        "held-out accuracy went from {g0:.3} to at best {best:.3}"
    );

    // Every target records the generation that answered its subquestions: the one promoted when
    // its round ran, as the workers reported it. (Its node count may be 0: a memo hit.)
    let rows = run.store().all().unwrap();
    for r in &records {
        let round = r.round.unwrap();
        let mine: Vec<_> = rows.iter().filter(|row| row.round == round).collect();
        assert_eq!(mine.len() as u64, r.targets);
        for row in mine {
            assert!(
                row.answered_by_generation == r.amplified_by
                    && row.answerer == format!("model g{}", r.amplified_by.unwrap())
                    && !row.tree_id.is_empty(),
                "round {round}: {row:?}"
            );
        }
    }
    // Targets are unique per (round, index).
    let mut keys: Vec<_> = rows.iter().map(|r| (r.round, r.index)).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), rows.len());
    cluster.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The difficulty curriculum caps questions by the difficulty their text shows; where only a
/// solver knows it (a depth in the forest, a distance), the run is refused with the reason.
#[test]
fn the_difficulty_curriculum_needs_a_difficulty_visible_in_the_question() {
    use hch::domain::shortest_path::ShortestPath;
    use hch::domain::union_find::UnionFind;
    let dir = std::env::temp_dir().join(format!("hch-visible-{}", std::process::id()));
    let refused = |e: hch::train::TrainError| e.to_string();
    let config = hch::train::RunConfig {
        difficulty_curriculum: true,
        ..common::tiny_run(&UnionFind, 6, false)
    };
    let err = Run::open(UnionFind, dir.join("u"), config)
        .err()
        .map(refused);
    assert!(
        err.as_deref().is_some_and(|e| e.contains("solver")),
        "{err:?}"
    );
    let config = hch::train::RunConfig {
        difficulty_curriculum: true,
        ..common::tiny_run(&ShortestPath, 6, false)
    };
    assert!(Run::open(ShortestPath, dir.join("s"), config).is_err());
    let config = hch::train::RunConfig {
        difficulty_curriculum: true,
        ..common::tiny_run(&Permutation, 6, false)
    };
    assert!(Run::open(Permutation, dir.join("p"), config).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}
