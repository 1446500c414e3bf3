//! Metrics as an operator sees them: a real Prometheus (Debian's `prometheus` package, which
//! `make test` installs) scrapes a running `hch up --admin-listen` while trees run, and its HTTP
//! query API must return the counts this test caused; `promtool check metrics` must find nothing
//! to complain about; and the admin port answers grpc.health.v1 like the gRPC port.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hch::rpc::pb;
use tonic_health::pb::health_check_response::ServingStatus;

mod common;

/// A child process, killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of the sample `name{labels}` (labels as written, sorted as the encoder writes them).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// grpc.health.v1's answer for `service` at `addr`.
async fn health(addr: &str, service: &str) -> ServingStatus {
    let channel = hch::tls::connect(hch::tls::endpoint(addr).unwrap(), None)
        .await
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

fn start_up() -> (Process, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hch"))
        .args([
            "up",
            "--oracle",
            "--workers",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("hch up starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut address = |what: &str| {
        let line = lines.next().unwrap().unwrap();
        line.strip_prefix(&format!("{what} listening on "))
            .unwrap_or_else(|| panic!("expected the {what}'s address, got {line:?}"))
            .to_string()
    };
    let coordinator = address("coordinator");
    let admin = address("admin");
    (Process(child), coordinator, admin)
}

/// Runs `n` permutation trees at hch:3 (all answered right) through the coordinator.
async fn run_trees(coordinator: &str, n: u64) {
    let channel = hch::tls::connect(hch::tls::endpoint(coordinator).unwrap(), None)
        .await
        .unwrap();
    let mut client = pb::coordinator_client::CoordinatorClient::new(channel);
    for seed in 0..n {
        let (request, truth) = common::permutation_request(seed);
        let reply = client.ask(request).await.unwrap().into_inner();
        assert_eq!(reply.answer, truth);
    }
}

#[tokio::test]
async fn the_admin_port_serves_metrics_and_health_that_count_what_happened() {
    let (_up, coordinator, admin) = start_up();
    run_trees(&coordinator, 12).await;
    let metrics = common::http_get(&admin, "/metrics").unwrap();
    let answered =
        r#"hch_coordinator_trees_total{domain="permutation",mode="hch:3",outcome="answered"}"#;
    assert_eq!(sample(&metrics, answered), Some(12.0), "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            r#"hch_coordinator_tree_duration_seconds_count{domain="permutation"}"#
        ),
        Some(12.0)
    );
    // Every question a tree sent to the answerer reached a worker and was answered there.
    let queries = sample(
        &metrics,
        r#"hch_coordinator_answerer_queries_total{domain="permutation"}"#,
    )
    .unwrap();
    let answered_by_workers: f64 = (0..2)
        .filter_map(|w| {
            sample(
                &metrics,
                &format!(r#"hch_worker_questions_total{{domain="permutation",worker="{w}"}}"#),
            )
        })
        .sum();
    assert!(queries > 0.0);
    assert!(
        answered_by_workers >= queries,
        "{queries} queries, {answered_by_workers} answered:\n{metrics}"
    );
    assert_eq!(
        sample(&metrics, "hch_coordinator_trees_in_flight"),
        Some(0.0)
    );
    // Health on the admin port, over gRPC.
    assert_eq!(health(&admin, "").await, ServingStatus::Serving);
    // Nothing else on the admin port: no tree contents, not the coordinator's service.
    for path in [
        "/traces",
        "/hch.v1.Coordinator/GetTrace",
        "/hch.v1.Coordinator/Status",
    ] {
        let refused = common::http_get(&admin, path).unwrap_err();
        assert!(refused.contains("404"), "{path}: {refused}");
    }
    let channel = hch::tls::connect(hch::tls::endpoint(&admin).unwrap(), None)
        .await
        .unwrap();
    let status = pb::coordinator_client::CoordinatorClient::new(channel)
        .status(pb::StatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
}

fn tool(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let path = format!("{dir}/{name}");
        if std::path::Path::new(&path).exists() {
            return path;
        }
    }
    panic!("{name} is not installed: `make test` installs Debian's prometheus package")
}

#[test]
fn promtool_finds_nothing_to_complain_about() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_up, coordinator, admin) = start_up();
    runtime.block_on(run_trees(&coordinator, 3));
    let metrics = common::http_get(&admin, "/metrics").unwrap();
    let mut promtool = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "promtool check metrics:\n{complaints}\n---\n{metrics}"
    );
}

#[test]
fn a_real_prometheus_scrapes_the_counts_this_test_caused() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_up, coordinator, admin) = start_up();
    let dir = std::env::temp_dir().join(format!("hch-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: hch\n    \
             static_configs:\n      - targets: ['{admin}']\n"
        ),
    )
    .unwrap();
    // A free port for Prometheus's own API.
    let web = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let _prometheus = Process(
        Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    runtime.block_on(run_trees(&coordinator, 20));
    // Prometheus scrapes every second: wait (bounded) for a scrape that saw all 20 trees.
    let query = "sum(hch_coordinator_trees_total{outcome=\"answered\"})";
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        let path = format!("/api/v1/query?query={}", url_encode(query));
        if let Ok(body) = common::http_get(&web, &path) {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            let value = json["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok());
            if value == Some(20.0) {
                break;
            }
            last = body;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never reported the 20 trees: {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The target is up, as Prometheus sees it.
    let up = common::http_get(&web, &format!("/api/v1/query?query={}", url_encode("up"))).unwrap();
    assert!(
        up.contains(r#""value":["#) && up.contains(r#""1"]"#),
        "{up}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn a_worker_without_a_model_is_not_serving_on_its_admin_port_either() {
    let registry = std::env::temp_dir().join(format!("hch-empty-registry-{}", std::process::id()));
    std::fs::create_dir_all(&registry).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hch"))
        .args([
            "worker",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--registry")
        .arg(&registry)
        .args(["--domain", "wildcard"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("hch worker starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let _grpc = lines.next().unwrap().unwrap();
    let admin_line = lines.next().unwrap().unwrap();
    let _worker = Process(child);
    let admin = admin_line
        .strip_prefix("admin listening on ")
        .unwrap_or_else(|| panic!("unexpected line {admin_line:?}"))
        .to_string();
    assert_eq!(
        health(&admin, "hch.v1.Worker").await,
        ServingStatus::NotServing
    );
    assert_eq!(health(&admin, "").await, ServingStatus::NotServing);
    // Alive all the same: a liveness probe must not restart a worker waiting for its model.
    assert_eq!(
        health(&admin, hch::server::LIVENESS).await,
        ServingStatus::Serving
    );
    let metrics = common::http_get(&admin, "/metrics").unwrap();
    assert_eq!(sample(&metrics, "hch_worker_ready"), Some(0.0), "{metrics}");
    assert_eq!(
        sample(&metrics, r#"hch_worker_calls_total{domain="wildcard"}"#),
        Some(0.0)
    );
    let _ = std::fs::remove_dir_all(&registry);
}
