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
    // The tree's cost in raw calls is reported (its size is a figure for reported runs).
    assert!(figure(&report, "cost:") > 0.0, "{report}");
}

/// `--rounds`: each round's raw phase and trees are reported, then the lowest and highest ratio.
#[test]
fn loadtest_in_rounds() {
    let report = loadtest(&["--rounds", "3"]);
    check(&report);
    let ratios: Vec<f64> = (1..=3)
        .map(|n| {
            let label = format!("round {n}:");
            assert!(figure(&report, &label) > 0.0, "{report}");
            let line = report.lines().find(|l| l.starts_with(&label)).unwrap();
            assert!(line.ends_with(" 0 degraded or failed"), "{line}");
            assert!(line.contains("raw calls a tree"), "{line}");
            let ratio = line.split(", ").nth(2).unwrap();
            ratio.trim_end_matches('x').parse::<f64>().unwrap()
        })
        .collect();
    let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let summary = figure(&report, "rounds:");
    // Both printed to one decimal.
    assert!(
        (summary - lowest).abs() < 0.051,
        "{summary} vs {ratios:?}\n{report}"
    );
    assert!(report.contains("at the lowest of 3 rounds"), "{report}");

    let out = Command::new(env!("CARGO_BIN_EXE_hch"))
        .args(["loadtest", "--rounds", "0"])
        .output()
        .expect("hch runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--rounds must be at least 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    // This process holds only the clients: their CPU is not a tree's cost.
    assert!(!report.contains("cost:"), "{report}");
    cluster.stop().await;
}

/// The JSON report reads like ghz's, and the open loop keeps its schedule: about `rate` trees a
/// second were started, whatever their latency.
#[test]
fn the_json_report_is_ghz_shaped_in_both_loops() {
    let dir = std::env::temp_dir().join(format!("hch-loadtest-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, extra) in [("closed", vec![]), ("open", vec!["--rate", "200"])] {
        let path = dir.join(format!("{name}.json"));
        let path_text = path.to_string_lossy().into_owned();
        let mut args = vec!["--json", path_text.as_str()];
        args.extend(extra.iter().copied());
        let report = loadtest(&args);
        check(&report);
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let count = json["count"].as_u64().unwrap();
        assert!(count > 0, "{name}: {json}");
        let codes: u64 = json["statusCodeDistribution"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(codes, count, "{name}: every tree has a status");
        let latencies: Vec<u64> = json["latencyDistribution"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["latency"].as_u64().unwrap())
            .collect();
        assert_eq!(latencies.len(), 7, "{name}");
        assert!(
            latencies.windows(2).all(|w| w[0] <= w[1]),
            "{name}: {latencies:?}"
        );
        let histogram: u64 = json["histogram"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .sum();
        assert_eq!(histogram, count, "{name}");
        assert!(json["rps"].as_f64().unwrap() > 0.0);
        if name == "open" {
            // 200 a second for 0.3 s: the schedule starts 60 trees.
            assert_eq!(count, 60, "{json}");
            assert_eq!(json["options"]["rps"].as_f64(), Some(200.0));
        } else {
            assert_eq!(json["options"]["concurrency"].as_u64(), Some(8));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// With model workers (an untrained tiny model, published into a temporary registry), the load
/// test measures the model's raw rate in the same run and holds the trees against it, and says
/// where the time went.
#[cfg(feature = "model")]
#[test]
fn loadtest_with_model_workers() {
    let report = loadtest(&["--model", "tiny", "--size", "8"]);
    assert!(figure(&report, "raw model best:") > 0.0, "{report}");
    assert!(figure(&report, "subquestions:") > 0.0, "{report}");
    assert!(figure(&report, "ratio:") > 0.0, "{report}");
    assert!(report.contains(" 0 degraded or failed"), "{report}");
    assert!(
        report.contains("where the time goes:  model computing"),
        "{report}"
    );
    assert!(!report.contains("raw unary calls"), "{report}");
    // Each tree's instance is new: the worker encoded every one, and reused them within trees.
    assert!(report.contains("encodings reused"), "{report}");
}

/// A registry whose current generation is another domain's is refused before anything starts.
#[cfg(feature = "model")]
#[test]
fn loadtest_refuses_a_registry_of_another_domain() {
    let dir = std::env::temp_dir().join(format!("hch-loadtest-registry-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        use hch::domain::permutation::Permutation;
        use hch::model::config::{ModelConfig, Preset};
        let registry = hch::registry::Registry::open(&dir).unwrap();
        let model = hch::model::Model::new(
            Permutation,
            ModelConfig::preset(&Permutation, Preset::Tiny),
            tch::Device::Cpu,
            0,
        )
        .unwrap();
        let m = hch::model::generation::publish(
            &registry,
            &model,
            None,
            0,
            serde_json::json!({}),
            "test",
        )
        .unwrap();
        registry.promote(m.generation).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_hch"))
        .args(["loadtest", "--registry"])
        .arg(&dir)
        .args(["--domain", "wildcard"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("is a permutation model; --domain is wildcard"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// `hch model-bench` prints one table row per preset and batch size.
#[cfg(feature = "model")]
#[test]
fn model_bench_prints_its_table() {
    let out = Command::new(env!("CARGO_BIN_EXE_hch"))
        .args(["model-bench", "--presets", "tiny", "--batches", "1,8"])
        .args(["--size", "8", "--seconds", "0.05"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("| tiny |"))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let fresh: f64 = cells[4].parse().unwrap();
        let cached: f64 = cells[5].parse().unwrap();
        assert!(fresh > 0.0 && cached > 0.0, "{row}");
    }
}
