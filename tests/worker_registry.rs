//! A worker serving a model registry: NOT_SERVING until a generation is promoted, then serving
//! it, then loading a newer generation while it runs. Once with the registry on the worker's own
//! disk, once served over the network by the registry service (no shared filesystem: the worker
//! copies each promoted generation into its own cache, verified).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hch::domain::wildcard::Wildcard;
use hch::domain::{Domain, Instance};
use hch::model::config::{ModelConfig, Preset};
use hch::model::{generation, Model};
use hch::registry::Registry;
use hch::rpc::pb;
use hch::server::start_worker;
use hch::worker::{Serving, WorkerConfig};
use tch::Device;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hch-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_worker_serves_the_current_generation_and_hot_loads_the_next() {
    let dir = temp_dir("worker-registry");
    let serving = Serving::Registry {
        registry: dir.clone(),
        domain: hch::domain::DomainKind::Wildcard,
    };
    serves_and_hot_loads(&dir, serving).await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_gets_each_generation_over_the_network() {
    let source = temp_dir("worker-registry-source");
    let cache = temp_dir("worker-registry-cache");
    Registry::open(&source).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(hch::server::serve_registry(
        listener,
        None,
        source.clone(),
        None,
        std::future::pending(),
    ));
    let serving = Serving::Mirror {
        url: url.clone(),
        channel: tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect_lazy(),
        cache: cache.clone(),
        domain: hch::domain::DomainKind::Wildcard,
    };
    serves_and_hot_loads(&source, serving).await;
    // What the worker loaded came from its own verified copy.
    let copy = Registry::open(&cache).unwrap();
    assert_eq!(copy.current().unwrap(), Some(1));
    for g in [0, 1] {
        assert_eq!(
            std::fs::read(copy.load(g).unwrap().weights_path).unwrap(),
            std::fs::read(
                Registry::open(&source)
                    .unwrap()
                    .load(g)
                    .unwrap()
                    .weights_path
            )
            .unwrap()
        );
    }
    std::fs::remove_dir_all(source).unwrap();
    std::fs::remove_dir_all(cache).unwrap();
}

/// Starts a worker serving `serving`, whose generations are published into the registry at
/// `dir`, and checks it through health, ModelInfo and Answer as generations 0 and 1 appear.
async fn serves_and_hot_loads(dir: &Path, serving: Serving) {
    let registry = Registry::open(dir).unwrap();
    let config = WorkerConfig {
        reload_every: Duration::from_millis(20),
        ..WorkerConfig::default()
    };
    let (running, service) = start_worker(SocketAddr::from(([127, 0, 0, 1], 0)), serving, config)
        .await
        .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", running.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let mut worker = pb::worker_client::WorkerClient::new(channel);
    let check = HealthCheckRequest {
        service: "hch.v1.Worker".into(),
    };
    let status = health.check(check.clone()).await.unwrap().into_inner();
    assert_eq!(status.status(), ServingStatus::NotServing);

    let d = Wildcard;
    let inst = Instance::generate(&d, 8, 1).unwrap();
    let request = pb::AnswerRequest {
        domain: "wildcard".into(),
        instances: vec![pb::Facts {
            id: inst.id().0.to_vec(),
            text: d.print_facts(inst.facts()),
        }],
        questions: "01****\n".into(),
        question_instances: vec![0],
    };
    let refused = worker.answer(request.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let wrong_domain = pb::AnswerRequest {
        domain: "permutation".into(),
        ..request.clone()
    };
    let refused = worker.answer(wrong_domain).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );

    // Publish and promote generation 0: the worker loads it and turns SERVING.
    let model = Model::new(d, ModelConfig::preset(&d, Preset::Tiny), Device::Cpu, 1).unwrap();
    let g0 = generation::publish(&registry, &model, None, 0, Default::default(), "g0").unwrap();
    registry.promote(g0.generation).unwrap();
    let mut watch = health.watch(check.clone()).await.unwrap().into_inner();
    while let Some(s) = watch.message().await.unwrap() {
        if s.status() == ServingStatus::Serving {
            break;
        }
    }
    drop(watch);
    let info = worker
        .model_info(pb::ModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.generation, Some(0));
    assert_eq!(info.answerer, "model g0");
    let answered = worker.answer(request.clone()).await.unwrap().into_inner();
    let answers: Vec<&str> = answered.answers.lines().collect();
    assert_eq!(answers.len(), 1);
    assert_ne!(
        answers[0],
        hch::domain::UNKNOWN_TEXT,
        "a model always answers (it never abstains by default)"
    );

    // Generation 1 is promoted while the worker serves: it is picked up.
    let model = Model::new(d, ModelConfig::preset(&d, Preset::Tiny), Device::Cpu, 2).unwrap();
    let g1 = generation::publish(&registry, &model, Some(0), 10, Default::default(), "g1").unwrap();
    registry.promote(g1.generation).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let info = worker
            .model_info(pb::ModelInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        if info.generation == Some(1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "generation 1 was never loaded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(worker.answer(request).await.is_ok());
    assert!(service.questions_answered() >= 2);
    running.stop().await.unwrap();
}
