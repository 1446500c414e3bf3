//! The multi-host rehearsal: the deployment of `deploy/` played with real containers, each its
//! own host on a private Docker network, with the images `scripts/images.sh` builds and the
//! arguments the manifests give them (read from the rendered cpu overlay). Run by
//! `make rehearsal`, which builds the images first; CI runs it after `make test`.
//!
//! The cast, all over TLS as in the manifests, found by Docker's DNS under the Services' names
//! (a name with several containers resolves to all of them, as a headless Service does):
//!
//! - two coordinators (`hch-coordinator.hch.svc...`), each finding the others for GetTrace;
//! - oracle workers under the workers' name, answering the steady stream of trees (a model's
//!   answers cannot be checked against the truth; the oracle's can, and every one is);
//! - two model workers with the manifests' arguments, getting generations from the registry
//!   service over the network into their own caches;
//! - the registry service (`hch registry serve`) over a registry this test publishes and
//!   promotes into, as the trainer does.
//!
//! While clients ask trees without pause, through both coordinators: the oracle workers are
//! scaled from 1 to 3, one is killed, one is cut off the network for 10 s and reconnected, they
//! are scaled back to 2; and generation 1 is promoted, which both model workers hot-load over
//! the network. Asserted: no wrong answer, no failed call outside the window of a fault, new
//! workers take traffic, cut-off ones stop getting it, both model workers serve generation 1.
//! The figures are printed (`--nocapture`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hch::domain::wildcard::Wildcard;
use hch::model::config::{ModelConfig, Preset};
use hch::model::{generation, Model};
use hch::registry::Registry;
use hch::rpc::pb;
use tokio::time::Instant;

const TAG: &str = env!("CARGO_PKG_VERSION");
const WORKERS: &str = "hch-worker.hch.svc.cluster.local";
const COORDINATORS: [&str; 2] = [
    "hch-coordinator.hch.svc.cluster.local",
    "hch-coordinator-peers.hch.svc.cluster.local",
];
const REGISTRY: &str = "hch-registry.hch.svc.cluster.local";

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A container, removed when dropped.
struct Container {
    name: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

impl Container {
    fn ip(&self, network: &str) -> String {
        docker(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
            &self.name,
        ])
    }
}

struct Network(String);

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["network", "rm", &self.0])
            .output();
    }
}

/// The rehearsal's files: certificates per component, the token file, the registry.
struct Stage {
    dir: PathBuf,
    network: String,
    prefix: String,
}

impl Stage {
    /// Runs `image` with `args` as a container named `name`, reachable as `aliases`, locked down
    /// as the manifests' security context does, with its certificate (`cert`, from
    /// dev-certs.sh), the CA, and any extra `docker run` options.
    fn run(
        &self,
        name: &str,
        image: &str,
        aliases: &[&str],
        cert: &str,
        extra: &[&str],
        args: &[String],
    ) -> Container {
        let name = format!("{}-{name}", self.prefix);
        let dir = self.dir.display();
        let mut run: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--name".into(),
            name.clone(),
            "--network".into(),
            self.network.clone(),
            "--read-only".into(),
            "--tmpfs".into(),
            "/tmp:mode=1777".into(),
            "--cap-drop".into(),
            "ALL".into(),
            "--security-opt".into(),
            "no-new-privileges".into(),
            "-e".into(),
            "RUST_LOG=info".into(),
            "-v".into(),
            format!("{dir}/ca:/etc/hch/ca:ro"),
            "-v".into(),
            format!("{dir}/tls-{cert}:/etc/hch/tls:ro"),
        ];
        for alias in aliases {
            run.extend(["--network-alias".into(), alias.to_string()]);
        }
        run.extend(extra.iter().map(|s| s.to_string()));
        run.push(format!("{image}:{TAG}"));
        run.extend(args.iter().cloned());
        docker(&run.iter().map(String::as_str).collect::<Vec<_>>());
        Container { name }
    }
}

/// The manifests' arguments of each component (`DEPLOY_ARGS_JSON`, written by
/// scripts/validate-deploy.sh from the rendered cpu overlay).
fn manifest_args() -> serde_json::Map<String, serde_json::Value> {
    let path = std::env::var("HCH_DEPLOY_ARGS")
        .expect("HCH_DEPLOY_ARGS names the manifests' arguments: run `make rehearsal`");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str::<serde_json::Value>(&text)
        .unwrap()
        .as_object()
        .unwrap()
        .clone()
}

fn args_of(all: &serde_json::Map<String, serde_json::Value>, component: &str) -> Vec<String> {
    all[component]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// Copies a dev-certs.sh certificate pair where a container reads it (as a TLS Secret mounts).
fn secret(dir: &Path, certs: &Path, component: &str) {
    let to = dir.join(format!("tls-{component}"));
    std::fs::create_dir_all(&to).unwrap();
    std::fs::copy(certs.join(format!("{component}.crt")), to.join("tls.crt")).unwrap();
    std::fs::copy(certs.join(format!("{component}.key")), to.join("tls.key")).unwrap();
}

fn chmod_readable(path: &Path) {
    let status = Command::new("chmod")
        .args(["-R", "a+rwX", &path.display().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[derive(Default)]
struct Tally {
    right: AtomicU64,
    wrong: AtomicU64,
    degraded: AtomicU64,
    /// (seconds since the start, status) of each failed call.
    failed: Mutex<Vec<(f64, String)>>,
}

type Client = pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>;

/// One coordinator's view of its workers: address -> (healthy, items sent, generation served).
type View = std::collections::HashMap<String, (bool, u64, Option<u64>)>;

/// Whether every coordinator routes to the worker at `ip` and sees it serving `generation`.
fn serving(views: &[View], ip: &str, generation: Option<u64>) -> bool {
    views.iter().all(|view| {
        view.iter()
            .any(|(a, (h, _, g))| a.starts_with(&format!("{ip}:")) && *h && *g == generation)
    })
}

/// A client of the coordinator published at `addr`, over TLS as a user outside the cluster.
async fn connect(addr: &str, ca: &Path) -> Result<Client, tonic::transport::Error> {
    let tls = hch::tls::ClientTls::load(hch::tls::ClientTlsFiles {
        ca: ca.to_path_buf(),
        identity: None,
        server_name: Some("hch-coordinator.hch.svc".into()),
    })
    .unwrap();
    let channel = hch::tls::connect(hch::tls::endpoint(addr).unwrap(), Some(tls)).await?;
    Ok(pb::coordinator_client::CoordinatorClient::new(channel))
}

/// Each coordinator's view of its workers: address -> (healthy, items sent, generation).
async fn workers(clients: &mut [Client], token: &str) -> Vec<View> {
    let mut views = Vec::new();
    for client in clients.iter_mut() {
        let mut request = tonic::Request::new(pb::StatusRequest {});
        hch::coordinator::auth::attach(&mut request, Some(token));
        let status = client.status(request).await.unwrap().into_inner();
        views.push(
            status
                .workers
                .into_iter()
                .map(|w| (w.address, (w.healthy, w.items_sent, w.generation)))
                .collect(),
        );
    }
    views
}

/// Waits (polling both coordinators' Status every 50 ms, for at most `limit`) until `done`
/// holds; returns how long it took.
async fn until(
    clients: &mut [Client],
    token: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(&[View]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let views = workers(clients, token).await;
        if done(&views) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Items sent to the worker at `ip` by both coordinators.
fn sent(views: &[View], ip: &str) -> u64 {
    views
        .iter()
        .flat_map(|v| v.iter())
        .filter(|(addr, _)| addr.starts_with(&format!("{ip}:")))
        .map(|(_, (_, items, _))| items)
        .sum()
}

/// Whether any coordinator still routes to the worker at `ip` (listed and healthy).
fn routed(views: &[View], ip: &str) -> bool {
    views.iter().any(|v| {
        v.iter()
            .any(|(addr, (healthy, _, _))| addr.starts_with(&format!("{ip}:")) && *healthy)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the images: run `make rehearsal`"]
async fn the_deployment_rehearsed_with_containers() {
    let args = manifest_args();
    let prefix = format!("hch-rehearsal-{}", std::process::id());
    let dir = std::env::temp_dir().join(&prefix);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let certs = dir.join("certs");
    let made = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dev-certs.sh"))
        .args([certs.to_str().unwrap(), "2"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    std::fs::create_dir_all(dir.join("ca")).unwrap();
    std::fs::copy(certs.join("cluster-ca.crt"), dir.join("ca/ca.crt")).unwrap();
    for component in ["coordinator", "worker", "registry"] {
        secret(&dir, &certs, component);
    }
    let (token, entry) =
        hch::coordinator::auth::new_token("rehearsal", &["ask", "status"]).unwrap();
    std::fs::create_dir_all(dir.join("tokens")).unwrap();
    std::fs::write(
        dir.join("tokens/tokens.json"),
        format!("{{\"clients\": [{entry}]}}"),
    )
    .unwrap();

    // Generation 0 of a tiny wildcard model, promoted before anything starts.
    let registry_dir = dir.join("registry");
    let registry = Registry::open(&registry_dir).unwrap();
    let d = Wildcard;
    let model = |seed| {
        Model::new(
            d,
            ModelConfig::preset(&d, Preset::Tiny),
            tch::Device::Cpu,
            seed,
        )
    };
    let g0 = generation::publish(
        &registry,
        &model(1).unwrap(),
        None,
        0,
        Default::default(),
        "g0",
    )
    .unwrap();
    registry.promote(g0.generation).unwrap();
    chmod_readable(&dir);

    let _network = Network(docker(&["network", "create", &prefix]));
    let stage = Stage {
        dir: dir.clone(),
        network: prefix.clone(),
        prefix: prefix.clone(),
    };
    let dir_s = dir.display().to_string();
    let _registry = stage.run(
        "registry",
        "hch-coordinator",
        &[REGISTRY],
        "registry",
        &["-v", &format!("{dir_s}/registry:/data/registry")],
        &[
            "registry",
            "serve",
            "--registry=/data/registry",
            "--listen=0.0.0.0:50060",
            "--tls-cert=/etc/hch/tls/tls.crt",
            "--tls-key=/etc/hch/tls/tls.key",
            "--tls-client-ca=/etc/hch/ca/ca.crt",
        ]
        .map(String::from),
    );
    // Model workers: the manifests' arguments, their cache on a tmpfs (the emptyDir).
    let model_args = args_of(&args, "hch-worker");
    let model_workers: Vec<Container> = (0..2)
        .map(|i| {
            stage.run(
                &format!("model-{i}"),
                "hch-worker-cpu",
                &[WORKERS],
                "worker",
                &[
                    "--tmpfs",
                    "/var/cache/hch:mode=1777",
                    "-e",
                    "HCH_DOMAIN=wildcard",
                ],
                &model_args,
            )
        })
        .collect();
    // Oracle workers: the manifests' arguments with the registry's replaced by --oracle.
    let oracle_args: Vec<String> = model_args
        .iter()
        .filter(|a| !a.starts_with("--registry") && !a.starts_with("--domain"))
        .cloned()
        .chain(["--oracle".to_string()])
        .collect();
    let oracle = |i: usize| {
        stage.run(
            &format!("oracle-{i}"),
            "hch-worker-cpu",
            &[WORKERS],
            "worker",
            &[],
            &oracle_args,
        )
    };
    let mut oracles: Vec<Option<Container>> = vec![Some(oracle(0))];
    let coordinator_args = args_of(&args, "hch-coordinator");
    let coordinators: Vec<Container> = (0..2)
        .map(|i| {
            stage.run(
                &format!("coordinator-{i}"),
                "hch-coordinator",
                &COORDINATORS,
                "coordinator",
                &[
                    "-p",
                    "127.0.0.1::50050",
                    "-v",
                    &format!("{dir_s}/tokens:/etc/hch/tokens:ro"),
                ],
                &coordinator_args,
            )
        })
        .collect();
    let addresses: Vec<String> = coordinators
        .iter()
        .map(|c| {
            docker(&["port", &c.name, "50050/tcp"])
                .lines()
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    let ca = dir.join("ca/ca.crt");
    // The coordinators accept connections once their process is up.
    let mut clients = Vec::new();
    for addr in &addresses {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match connect(addr, &ca).await {
                Ok(client) => {
                    clients.push(client);
                    break;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "coordinator {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    let oracle_ip = |c: &Container| c.ip(&stage.network);
    let first_oracle = oracle_ip(oracles[0].as_ref().unwrap());
    until(
        &mut clients,
        &token,
        Duration::from_secs(60),
        "both coordinators route to the first oracle worker",
        |v| serving(v, &first_oracle, None),
    )
    .await;
    let model_ips: Vec<String> = model_workers.iter().map(|c| c.ip(&stage.network)).collect();
    let loaded_g0 = until(
        &mut clients,
        &token,
        Duration::from_secs(60),
        "both model workers serve generation 0",
        |v| model_ips.iter().all(|ip| serving(v, ip, Some(0))),
    )
    .await;

    // The steady stream: four clients, alternating between the coordinators.
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut askers = Vec::new();
    for c in 0..4u64 {
        let (stop, tally, token) = (stop.clone(), tally.clone(), token.clone());
        let mut mine = [
            connect(&addresses[0], &ca).await.unwrap(),
            connect(&addresses[1], &ca).await.unwrap(),
        ];
        askers.push(tokio::spawn(async move {
            let mut seed = c * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                seed += 1;
                let (request, truth) = common::permutation_request(seed);
                let mut request = tonic::Request::new(request);
                hch::coordinator::auth::attach(&mut request, Some(&token));
                request.set_timeout(Duration::from_secs(20));
                match mine[(seed % 2) as usize].ask(request).await {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        if !reply.known {
                            tally.degraded.fetch_add(1, Ordering::Relaxed);
                        } else if reply.answer == truth {
                            tally.right.fetch_add(1, Ordering::Relaxed);
                        } else {
                            tally.wrong.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(status) => tally.failed.lock().unwrap().push((
                        t0.elapsed().as_secs_f64(),
                        format!("{:?}: {}", status.code(), status.message()),
                    )),
                }
            }
        }));
    }
    let mut report = vec![format!(
        "model workers loaded generation 0 over the network within {loaded_g0:?} of the \
         coordinators seeing them"
    )];

    // Scale the oracle workers from 1 to 3: each new one takes traffic.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 1..3 {
        let started = Instant::now();
        let c = oracle(i);
        let ip = oracle_ip(&c);
        oracles.push(Some(c));
        until(
            &mut clients,
            &token,
            Duration::from_secs(30),
            "a new worker takes traffic",
            |v| sent(v, &ip) > 0,
        )
        .await;
        report.push(format!(
            "scaled up: oracle worker {i} took traffic {:.2} s after `docker run` returned",
            started.elapsed().as_secs_f64()
        ));
    }

    // Kill one (SIGKILL): its calls are retried elsewhere.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed_at = t0.elapsed().as_secs_f64();
    docker(&["kill", &oracles[0].as_ref().unwrap().name]);
    oracles[0] = None;
    report.push(format!("killed oracle worker 0 at {killed_at:.1} s"));

    // Cut one off the network for 10 s, then reconnect it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cut = oracles[1].as_ref().unwrap();
    let cut_ip = oracle_ip(cut);
    let cut_at = t0.elapsed().as_secs_f64();
    let started = Instant::now();
    docker(&["network", "disconnect", &stage.network, &cut.name]);
    until(
        &mut clients,
        &token,
        Duration::from_secs(30),
        "a cut-off worker stops getting traffic",
        |v| !routed(v, &cut_ip),
    )
    .await;
    report.push(format!(
        "cut off oracle worker 1 at {cut_at:.1} s: no coordinator routed to it {:.2} s later",
        started.elapsed().as_secs_f64()
    ));
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(started.elapsed())).await;
    let started = Instant::now();
    docker(&[
        "network",
        "connect",
        "--alias",
        WORKERS,
        &stage.network,
        &cut.name,
    ]);
    let back_ip = oracle_ip(cut);
    // Routed again (listed and healthy), then sent more than when it came back.
    until(
        &mut clients,
        &token,
        Duration::from_secs(30),
        "a reconnected worker is routed to",
        |v| routed(v, &back_ip),
    )
    .await;
    let base = sent(&workers(&mut clients, &token).await, &back_ip);
    until(
        &mut clients,
        &token,
        Duration::from_secs(30),
        "a reconnected worker takes traffic",
        |v| sent(v, &back_ip) > base,
    )
    .await;
    report.push(format!(
        "reconnected it after 10 s: it took traffic again {:.2} s later",
        started.elapsed().as_secs_f64()
    ));

    // The trainer's part: generation 1 promoted; both model workers hot-load it over the network.
    let g1 = generation::publish(
        &registry,
        &model(2).unwrap(),
        Some(0),
        10,
        Default::default(),
        "g1",
    )
    .unwrap();
    chmod_readable(&registry_dir);
    let started = Instant::now();
    registry.promote(g1.generation).unwrap();
    until(
        &mut clients,
        &token,
        Duration::from_secs(60),
        "both model workers serve generation 1",
        |v| model_ips.iter().all(|ip| serving(v, ip, Some(1))),
    )
    .await;
    report.push(format!(
        "promoted generation 1: both model workers served it {:.2} s later",
        started.elapsed().as_secs_f64()
    ));

    // Scale back to 2 (SIGTERM: the worker drains).
    let stopped = oracles[2].take().unwrap();
    docker(&["stop", "-t", "15", &stopped.name]);
    drop(stopped);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for a in askers {
        a.await.unwrap();
    }
    let elapsed = t0.elapsed().as_secs_f64();

    // Two replicas behind one name: a tree asked of one is found by GetTrace on the other.
    let (request, _) = common::permutation_request(7);
    let mut request = tonic::Request::new(request);
    hch::coordinator::auth::attach(&mut request, Some(&token));
    let reply = clients[0].ask(request).await.unwrap().into_inner();
    let mut get = tonic::Request::new(pb::GetTraceRequest {
        tree_id: reply.tree_id.clone(),
    });
    hch::coordinator::auth::attach(&mut get, Some(&token));
    let trace = clients[1].get_trace(get).await.unwrap().into_inner();
    assert_eq!(trace.tree_id, reply.tree_id);
    report.push("GetTrace on the other replica found the tree".to_string());

    let right = tally.right.load(Ordering::Relaxed);
    let wrong = tally.wrong.load(Ordering::Relaxed);
    let degraded = tally.degraded.load(Ordering::Relaxed);
    let failed = tally.failed.lock().unwrap().clone();
    println!("rehearsal: {elapsed:.1} s of steady trees through two coordinators");
    for line in &report {
        println!("  {line}");
    }
    println!(
        "  trees: {} answered right, {wrong} wrong, {degraded} degraded, {} failed calls",
        right,
        failed.len()
    );
    for (at, status) in failed.iter().take(10) {
        println!("    failed at {at:.2} s: {status}");
    }
    assert_eq!(wrong, 0, "every answer is right");
    assert!(right > 100, "trees flowed: {right}");
    // A killed worker's calls are retried and a cut-off one's time out and are re-sent: the
    // clients lose nothing.
    assert!(failed.is_empty(), "failed calls: {failed:?}");
    // Containers first, then the network (dropped last, being declared first).
    drop(coordinators);
    drop(model_workers);
    drop(oracles);
    drop(_registry);
    let _ = std::fs::remove_dir_all(&dir);
}
