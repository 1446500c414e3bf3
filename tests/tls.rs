//! Transport security on real sockets: a coordinator serving TLS to its clients and calling its
//! workers over mutual TLS, with certificates made here by a test CA (rcgen) and written to files
//! as Kubernetes would mount them.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hch::coordinator::pool::PoolConfig;
use hch::coordinator::CoordinatorConfig;
use hch::rpc::pb;
use hch::server::{Cluster, ClusterConfig};
use hch::tls::{
    ClientAuth, ClientTls, ClientTlsFiles, ServerTls, ServerTlsFiles, TlsError, TlsFiles,
};
use hch::worker::{Serving, WorkerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority of the test's own.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A leaf certificate for `names` (DNS names or IP addresses), for a server or a client,
    /// valid from `years` (a year range relative to now: (-1, 1) is valid now).
    fn issue(&self, names: &[&str], client: bool, years: (i32, i32)) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let year = 2026;
        params.not_before = rcgen::date_time_ymd(year + years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(year + years.1 + 1, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

struct Leaf {
    cert: String,
    key: String,
}

/// A directory of PEM files, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("hch-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn leaf(&self, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{name}.crt"), &leaf.cert),
            self.write(&format!("{name}.key"), &leaf.key),
        )
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const NOW: (i32, i32) = (-1, 1);

fn server_tls(cert: &Path, key: &Path, client_auth: ClientAuth) -> Arc<ServerTls> {
    ServerTls::load(ServerTlsFiles {
        cert: cert.into(),
        key: key.into(),
        client_auth,
    })
    .unwrap()
}

fn client_tls(
    ca: &Path,
    identity: Option<(PathBuf, PathBuf)>,
    server_name: Option<&str>,
) -> Arc<ClientTls> {
    ClientTls::load(ClientTlsFiles {
        ca: ca.into(),
        identity,
        server_name: server_name.map(str::to_string),
    })
    .unwrap()
}

async fn channel(
    addr: std::net::SocketAddr,
    tls: Option<Arc<ClientTls>>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let endpoint = hch::tls::endpoint(&addr.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    hch::tls::connect(endpoint, tls).await
}

/// A call that needs a finished handshake: the worker's ModelInfo.
async fn model_info(
    addr: std::net::SocketAddr,
    tls: Option<Arc<ClientTls>>,
) -> Result<pb::ModelInfoResponse, String> {
    let channel = channel(addr, tls).await.map_err(|e| format!("{e:?}"))?;
    pb::worker_client::WorkerClient::new(channel)
        .model_info(pb::ModelInfoRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{s:?}"))
}

/// The cluster of the tests below: workers that require a client certificate from the cluster
/// CA and present one for the name `hch-worker`; a coordinator that presents its own, for
/// `localhost` and 127.0.0.1, to clients, and a client certificate to the workers.
struct Secure {
    cluster: Cluster,
    dir: Dir,
    cluster_ca: PathBuf,
    cluster_ca_key: Ca,
    client_ca: Ca,
    client_ca_path: PathBuf,
    worker_tls: Arc<ServerTls>,
}

async fn secure_cluster(name: &str) -> Secure {
    let dir = Dir::new(name);
    let cluster_ca = Ca::new("hch cluster CA");
    let client_ca = Ca::new("hch client CA");
    let cluster_ca_path = dir.write("cluster-ca.crt", &cluster_ca.pem);
    let client_ca_path = dir.write("client-ca.crt", &client_ca.pem);
    let (worker_cert, worker_key) =
        dir.leaf("worker", &cluster_ca.issue(&["hch-worker"], false, NOW));
    let (coord_cert, coord_key) = dir.leaf(
        "coordinator",
        &cluster_ca.issue(&["localhost", "127.0.0.1"], false, NOW),
    );
    let coord_client = dir.leaf(
        "coordinator-client",
        &cluster_ca.issue(&["hch-coordinator"], true, NOW),
    );
    let worker_tls = server_tls(
        &worker_cert,
        &worker_key,
        ClientAuth::Required(cluster_ca_path.clone()),
    );
    let cluster = Cluster::start(ClusterConfig {
        workers: 2,
        serving: Serving::Oracle {
            delay: Duration::ZERO,
        },
        worker: WorkerConfig {
            tls: Some(worker_tls.clone()),
            ..WorkerConfig::default()
        },
        pool: PoolConfig {
            refresh_every: Duration::from_millis(200),
            tls: Some(client_tls(
                &cluster_ca_path,
                Some(coord_client),
                Some("hch-worker"),
            )),
            ..PoolConfig::default()
        },
        coordinator: CoordinatorConfig {
            tls: Some(server_tls(
                &coord_cert,
                &coord_key,
                ClientAuth::Optional(client_ca_path.clone()),
            )),
            ..CoordinatorConfig::default()
        },
        ..ClusterConfig::default()
    })
    .await
    .unwrap();
    Secure {
        cluster,
        dir,
        cluster_ca: cluster_ca_path,
        cluster_ca_key: cluster_ca,
        client_ca,
        client_ca_path,
        worker_tls,
    }
}

#[tokio::test]
async fn trees_run_over_tls_and_mutual_tls_and_the_answers_are_right() {
    let s = secure_cluster("trees").await;
    let addr = s.cluster.coordinator.addr;
    let tls = client_tls(&s.cluster_ca, None, None);
    let mut client =
        pb::coordinator_client::CoordinatorClient::new(channel(addr, Some(tls)).await.unwrap());
    // The pool probed its workers (over mutual TLS) before the coordinator started serving.
    let status = client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        status.workers.len() == 2 && status.workers.iter().all(|w| w.healthy),
        "the coordinator did not reach its workers over mutual TLS: {status:?}"
    );
    for seed in 0..6 {
        let (request, truth) = common::permutation_request(seed);
        let reply = client.ask(request).await.unwrap().into_inner();
        assert_eq!(reply.answer, truth, "seed {seed}");
    }
    // Every leaf went to the workers over mutual TLS.
    let status = client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let sent: u64 = status.workers.iter().map(|w| w.items_sent).sum();
    assert!(sent > 0, "no subquestion reached a worker: {status:?}");
    // A client with a certificate from the client CA is let in as well.
    let dir = &s.dir;
    let identity = dir.leaf("alice", &s.client_ca.issue(&["alice"], true, NOW));
    let mut with_cert = pb::coordinator_client::CoordinatorClient::new(
        channel(addr, Some(client_tls(&s.cluster_ca, Some(identity), None)))
            .await
            .unwrap(),
    );
    let (request, truth) = common::permutation_request(7);
    assert_eq!(
        with_cert.ask(request).await.unwrap().into_inner().answer,
        truth
    );
    assert!(s.client_ca_path.exists());
    s.cluster.stop().await;
}

#[tokio::test]
async fn the_coordinator_refuses_plain_tcp_and_certificates_from_strangers() {
    let s = secure_cluster("refuse-coordinator").await;
    let addr = s.cluster.coordinator.addr;
    // Plain TCP to a TLS port: the handshake bytes are not HTTP/2, no call gets through.
    let plain = async {
        let channel = channel(addr, None).await?;
        Ok::<_, Box<dyn std::error::Error>>(
            pb::coordinator_client::CoordinatorClient::new(channel)
                .status(pb::StatusRequest {})
                .await?,
        )
    };
    assert!(plain.await.is_err(), "a plain-TCP client was served");
    // A client that trusts another CA refuses the coordinator's certificate.
    let other = Ca::new("someone else's CA");
    let other_ca = s.dir.write("other-ca.crt", &other.pem);
    assert!(channel(addr, Some(client_tls(&other_ca, None, None)))
        .await
        .is_err());
    // A client certificate from another CA is refused by the coordinator.
    let mallory = s.dir.leaf("mallory", &other.issue(&["mallory"], true, NOW));
    let refused = async {
        let channel = channel(addr, Some(client_tls(&s.cluster_ca, Some(mallory), None))).await?;
        Ok::<_, Box<dyn std::error::Error>>(
            pb::coordinator_client::CoordinatorClient::new(channel)
                .status(pb::StatusRequest {})
                .await?,
        )
    };
    assert!(
        refused.await.is_err(),
        "a stranger's certificate was accepted"
    );
    s.cluster.stop().await;
}

#[tokio::test]
async fn a_worker_refuses_callers_without_a_certificate_from_the_cluster_ca() {
    let s = secure_cluster("refuse-worker").await;
    let worker = s.cluster.workers[0].0.addr;
    let name = Some("hch-worker");
    // Without a client certificate: the handshake fails.
    let anonymous = model_info(worker, Some(client_tls(&s.cluster_ca, None, name))).await;
    assert!(
        anonymous.is_err(),
        "a caller without a certificate was served"
    );
    // With a client certificate from the client CA (a user, not a coordinator): refused.
    let user = s.dir.leaf("user", &s.client_ca.issue(&["user"], true, NOW));
    let user = model_info(worker, Some(client_tls(&s.cluster_ca, Some(user), name))).await;
    assert!(
        user.is_err(),
        "a user's certificate was accepted by a worker"
    );
    // Plain TCP: refused.
    assert!(model_info(worker, None).await.is_err());
    // With the cluster CA's client certificate (what the coordinator holds): served.
    let peer = s.dir.leaf(
        "trainer",
        &s.cluster_ca_key.issue(&["hch-trainer"], true, NOW),
    );
    let served = model_info(worker, Some(client_tls(&s.cluster_ca, Some(peer), name))).await;
    assert!(
        served.is_ok(),
        "a coordinator's certificate was refused: {served:?}"
    );
    // Verified as the wrong name: the client refuses the worker.
    let wrong = model_info(
        worker,
        Some(client_tls(
            &s.cluster_ca,
            Some((
                s.dir.0.join("coordinator-client.crt"),
                s.dir.0.join("coordinator-client.key"),
            )),
            Some("not-the-worker"),
        )),
    )
    .await;
    assert!(wrong.is_err(), "a worker was accepted under another name");
    let _ = &s.worker_tls;
    s.cluster.stop().await;
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_new_connections_and_a_bad_one_is_refused() {
    let s = secure_cluster("rotate").await;
    let worker = s.cluster.workers[0].0.addr;
    let identity = Some((
        s.dir.0.join("coordinator-client.crt"),
        s.dir.0.join("coordinator-client.key"),
    ));
    // The worker's certificate is rotated to one for another name, as a Secret update would.
    let cluster_ca = &s.cluster_ca_key;
    let rotated = cluster_ca.issue(&["hch-worker-v2"], false, NOW);
    let mut reloads = s.worker_tls.reloads();
    let watch = s.worker_tls.watch(Duration::from_millis(50));
    std::fs::write(s.dir.0.join("worker.key"), &rotated.key).unwrap();
    std::fs::write(s.dir.0.join("worker.crt"), &rotated.cert).unwrap();
    // The watcher may see the new key beside the old certificate: a mismatch, which it refuses,
    // keeping the old pair. The only change it can put in use is the new pair.
    tokio::time::timeout(Duration::from_secs(20), reloads.changed())
        .await
        .expect("the watcher never loaded the rotated certificate")
        .unwrap();
    watch.abort();
    let v2 = model_info(
        worker,
        Some(client_tls(
            &s.cluster_ca,
            identity.clone(),
            Some("hch-worker-v2"),
        )),
    )
    .await;
    assert!(v2.is_ok(), "the rotated certificate is not served: {v2:?}");
    let v1 = model_info(
        worker,
        Some(client_tls(
            &s.cluster_ca,
            identity.clone(),
            Some("hch-worker"),
        )),
    )
    .await;
    assert!(v1.is_err(), "the old certificate is still served");

    // A key that does not match: refused, naming both files, and the pair in use stays.
    let other = cluster_ca.issue(&["hch-worker-v3"], false, NOW);
    std::fs::write(s.dir.0.join("worker.key"), &other.key).unwrap();
    match s.worker_tls.reload() {
        Err(TlsError::KeyMismatch { cert, key }) => {
            assert!(cert.ends_with("worker.crt") && key.ends_with("worker.key"));
        }
        other => panic!("a mismatched key was not refused: {other:?}"),
    }
    let still = model_info(
        worker,
        Some(client_tls(&s.cluster_ca, identity, Some("hch-worker-v2"))),
    )
    .await;
    assert!(
        still.is_ok(),
        "a refused reload disturbed serving: {still:?}"
    );
    s.cluster.stop().await;
}

#[test]
fn every_problem_with_a_file_names_the_file() {
    let dir = Dir::new("errors");
    let ca = Ca::new("errors CA");
    let ca_path = dir.write("ca.crt", &ca.pem);
    let (cert, key) = dir.leaf("server", &ca.issue(&["localhost"], false, NOW));
    let load = |cert: &Path, key: &Path| {
        ServerTls::load(ServerTlsFiles {
            cert: cert.into(),
            key: key.into(),
            client_auth: ClientAuth::Required(ca_path.clone()),
        })
        .map(|_| ())
    };
    assert!(load(&cert, &key).is_ok());

    let missing = dir.0.join("missing.crt");
    let error = load(&missing, &key).unwrap_err();
    assert!(matches!(error, TlsError::Unreadable { .. }), "{error}");
    assert!(error.to_string().contains("missing.crt"), "{error}");

    let garbage = dir.write("garbage.crt", "this is not PEM");
    let error = load(&garbage, &key).unwrap_err();
    assert!(matches!(error, TlsError::NoPem { .. }), "{error}");
    assert!(error.to_string().contains("garbage.crt"), "{error}");

    // A FIFO in a certificate's place is refused, not waited on.
    let fifo = dir.0.join("fifo.crt");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let error = load(&fifo, &key).unwrap_err();
    assert!(matches!(error, TlsError::Unreadable { .. }), "{error}");
    assert!(error.to_string().contains("fifo.crt"), "{error}");

    let (old_cert, old_key) = dir.leaf("old", &ca.issue(&["localhost"], false, (-5, -3)));
    let error = load(&old_cert, &old_key).unwrap_err();
    assert!(matches!(error, TlsError::Expired { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("old.crt") && text.contains("expired"),
        "{text}"
    );
    assert!(text.contains("2024-01-01"), "{text}");

    let (future_cert, future_key) = dir.leaf("future", &ca.issue(&["localhost"], false, (3, 5)));
    let error = load(&future_cert, &future_key).unwrap_err();
    assert!(matches!(error, TlsError::NotYetValid { .. }), "{error}");

    let (_, other_key) = dir.leaf("other", &ca.issue(&["localhost"], false, NOW));
    let error = load(&cert, &other_key).unwrap_err();
    assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("other.key") && text.contains("server.crt"),
        "{text}"
    );

    let key_as_ca = ClientTls::load(ClientTlsFiles {
        ca: key.clone(),
        identity: None,
        server_name: None,
    })
    .unwrap_err();
    assert!(key_as_ca.to_string().contains("server.key"), "{key_as_ca}");

    // The files each configuration reads, in the order errors refer to them.
    let files = ServerTlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_auth: ClientAuth::Optional(ca_path.clone()),
    };
    let roles: Vec<_> = files.paths().into_iter().map(|(role, _)| role).collect();
    assert_eq!(roles, ["certificate", "private key", "client CA"]);
}

#[test]
fn validity_is_read_from_the_certificate() {
    let ca = Ca::new("dates CA");
    let leaf = ca.issue(&["localhost"], false, (-1, 2));
    let der = rustls_pem_to_der(&leaf.cert);
    let v = hch::tls::validity(&der).unwrap();
    // 2025-01-01 and 2029-01-01, midnight UTC.
    assert_eq!(v.not_before, 1_735_689_600);
    assert_eq!(v.not_after, 1_861_920_000);
}

fn rustls_pem_to_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    decode_base64(&body)
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c) << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}
