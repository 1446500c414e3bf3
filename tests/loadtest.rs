//! `hch loadtest` runs end to end, on its embedded cluster and against a running coordinator, and
//! reports what it measured. No figure is asserted (timing belongs in benches and reported runs):
//! only that trees were answered, none failed, and the report is complete.

mod common;

use std::process::Command;

/// Runs `hch loadtest` with short phases and returns its standard output.
fn loadtest(extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hch"))
        .args(["loadtest", "--seconds", "0.3", "--clients", "8"])
        .args(extra)
        .output()
        .expect("hch runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "loadtest failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The first number after `label` on its line.
fn figure(report: &str, label: &str) -> f64 {
    let line = report
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{report}"));
    line[label.len()..]
        .split_whitespace()
        .next()
        .and_then(|w| w.trim_end_matches('x').parse().ok())
        .unwrap_or_else(|| panic!("no figure on {line:?}"))
}

fn check(report: &str) {
    assert!(figure(report, "raw baseline:") > 0.0, "{report}");
    assert!(figure(report, "subquestions:") > 0.0, "{report}");
    assert!(figure(report, "ratio:") > 0.0, "{report}");
    assert!(report.contains(" 0 degraded or failed"), "{report}");
    assert!(report.contains("tree latency:         p50"), "{report}");
}

#[test]
fn loadtest_on_its_embedded_cluster() {
    let report = loadtest(&[]);
    check(&report);
    assert!(figure(&report, "batching:") > 0.0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_against_a_running_coordinator() {
    let cluster = common::oracle_cluster(2).await;
    let coordinator = cluster.coordinator.addr.to_string();
    let worker = cluster.workers[0].0.addr.to_string();
    let report = tokio::task::spawn_blocking(move || {
        loadtest(&["--coordinator", &coordinator, "--worker", &worker])
    })
    .await
    .unwrap();
    check(&report);
    assert!(
        report.contains("target: the coordinator at http://"),
        "{report}"
    );
    cluster.stop().await;
}
