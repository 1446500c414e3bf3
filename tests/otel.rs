//! Traces exported over OTLP, proved to arrive: a coordinator and two workers, each its own `hch`
//! process configured only by the standard OTEL_* environment, export to a receiver inside this
//! test (the collector's own gRPC service). One tree's spans must arrive from all three processes,
//! in one trace (the client's), with every parent link right:
//!
//! ```text
//! client span ─ hch.tree (coordinator) ─ hch.Worker/Answer (coordinator, client kind)
//!                                        └─ hch.Worker/Answer (worker, server kind) ─ hch.batch
//! ```
//!
//! and a trace the client marked not sampled must leave no span anywhere.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::Process;
use hch::otel::sink::{ReceivedSpan, Sink};
use hch::rpc::pb;

const CLIENT_TRACE: u128 = 0x4bf92f3577b34da6a3ce929d0e0e4736;
const CLIENT_SPAN: u64 = 0x00f067aa0ba902b7;

fn of_trace(spans: &[ReceivedSpan], trace: u128) -> Vec<&ReceivedSpan> {
    spans.iter().filter(|s| s.trace_id == trace).collect()
}

/// Whether both workers' batches for `trace` have arrived (the last spans each worker ends).
fn complete(spans: &[ReceivedSpan], trace: u128, workers: &[&str]) -> bool {
    let spans = of_trace(spans, trace);
    let calls = spans
        .iter()
        .filter(|s| s.service == "hch-coordinator" && s.name == "hch.Worker/Answer")
        .count();
    let batches = spans.iter().filter(|s| s.name == "hch.batch").count();
    let tree = spans.iter().any(|s| s.name == "hch.tree");
    tree && calls > 0
        && batches >= calls
        && workers.iter().all(|w| {
            spans
                .iter()
                .any(|s| s.service == *w && s.name == "hch.batch")
        })
}

async fn ask(
    client: &mut pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>,
    seed: u64,
    traceparent: &str,
) -> pb::AskResponse {
    let (request, truth) = common::permutation_request(seed);
    let mut request = tonic::Request::new(request);
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    let response = client.ask(request).await.unwrap().into_inner();
    assert_eq!(response.answer, truth, "the oracle cluster answers right");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trees_spans_arrive_from_every_process_with_their_parents() {
    let sink = Sink::keeping();
    let collector = sink.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let endpoint = format!("http://{collector}");
    // Export within 100 ms of a span ending, so the test waits on arrival, not on a timer.
    let otel = |service: Option<&'static str>| {
        let mut env = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ];
        if let Some(name) = service {
            env.push(("OTEL_SERVICE_NAME", name.to_string()));
        }
        env
    };
    let start = |args: &[&str], env: Vec<(&'static str, String)>| {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Process::start_with_env(args, &env)
    };
    let workers = [
        start(
            &["worker", "--oracle", "--listen", "127.0.0.1:0"],
            otel(Some("hch-worker-a")),
        ),
        start(
            &["worker", "--oracle", "--listen", "127.0.0.1:0"],
            otel(Some("hch-worker-b")),
        ),
    ];
    let addresses = format!("{},{}", workers[0].addr, workers[1].addr);
    // The coordinator keeps its default service name.
    let coordinator = start(
        &[
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            &addresses,
        ],
        otel(None),
    );
    let mut client =
        pb::coordinator_client::CoordinatorClient::connect(format!("http://{}", coordinator.addr))
            .await
            .unwrap();
    // Wait until the pool has both workers up, so that the tree's calls reach both.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = client
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if status.workers.iter().filter(|w| w.healthy).count() == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "workers never came up: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A trace the client decided not to sample: nobody records it.
    let unsampled: u128 = 0x1111_2222_3333_4444_5555_6666_7777_8888;
    ask(
        &mut client,
        2,
        &format!("00-{unsampled:032x}-{CLIENT_SPAN:016x}-00"),
    )
    .await;

    // The sampled tree: eight leaf calls one after another, alternating between the workers.
    let response = ask(
        &mut client,
        1,
        &format!("00-{CLIENT_TRACE:032x}-{CLIENT_SPAN:016x}-01"),
    )
    .await;
    let worker_names = ["hch-worker-a", "hch-worker-b"];
    let spans = sink
        .wait_for(Duration::from_secs(60), |s| {
            complete(s, CLIENT_TRACE, &worker_names)
        })
        .await
        .unwrap_or_else(|arrived| {
            panic!(
                "the tree's spans did not all arrive within 60 s; arrived: {:#?}",
                arrived
                    .iter()
                    .map(|s| (&s.service, &s.name, s.trace_id))
                    .collect::<Vec<_>>()
            )
        });
    let trace = of_trace(&spans, CLIENT_TRACE);
    let by_id: HashMap<u64, &ReceivedSpan> = trace.iter().map(|s| (s.span_id, *s)).collect();
    assert_eq!(by_id.len(), trace.len(), "span ids are unique");

    // The tree: the coordinator's server span, a child of the client's span.
    let trees: Vec<_> = trace.iter().filter(|s| s.name == "hch.tree").collect();
    assert_eq!(trees.len(), 1, "{trees:#?}");
    let tree = trees[0];
    assert_eq!(tree.service, "hch-coordinator");
    assert_eq!(tree.parent_span_id, Some(CLIENT_SPAN));
    assert_eq!(tree.kind, 2, "server kind");
    assert_eq!(
        tree.attribute("hch.tree_id"),
        Some(response.tree_id.as_str())
    );
    assert_eq!(tree.attribute("hch.domain"), Some("permutation"));
    assert_eq!(tree.attribute("hch.mode"), Some("hch:3"));
    assert_eq!(
        tree.attribute("hch.instance_id"),
        Some(response.instance_id.as_str())
    );
    let stats = response.stats.as_ref().unwrap();
    assert_eq!(
        tree.attribute("hch.nodes"),
        Some(stats.nodes.to_string().as_str())
    );
    assert_eq!(
        tree.attribute("hch.memo_hits"),
        Some(stats.memo_hits.to_string().as_str())
    );
    assert_eq!(tree.attribute("hch.known"), Some("true"));
    assert_eq!(tree.attribute("rpc.grpc.status_code"), Some("0"));

    // The coordinator's calls: children of the tree, one per attempt.
    let calls: Vec<_> = trace
        .iter()
        .filter(|s| s.service == "hch-coordinator" && s.name == "hch.Worker/Answer")
        .collect();
    assert!(!calls.is_empty());
    let mut called = HashSet::new();
    for call in &calls {
        assert_eq!(call.parent_span_id, Some(tree.span_id), "{call:#?}");
        assert_eq!(call.kind, 3, "client kind");
        assert_eq!(call.attribute("hch.domain"), Some("permutation"));
        called.insert(call.attribute("server.address").unwrap().to_string());
    }
    assert_eq!(
        called,
        workers.iter().map(|w| w.addr.clone()).collect(),
        "the tree's calls went to both workers"
    );

    // Each call served on a worker: a server span, child of exactly one coordinator call.
    let served: Vec<_> = trace
        .iter()
        .filter(|s| s.service.starts_with("hch-worker") && s.name == "hch.Worker/Answer")
        .collect();
    assert_eq!(served.len(), calls.len(), "one served span per call");
    let call_ids: HashSet<u64> = calls.iter().map(|c| c.span_id).collect();
    let parents: HashSet<u64> = served.iter().filter_map(|s| s.parent_span_id).collect();
    assert_eq!(
        parents, call_ids,
        "each worker span hangs under its own call"
    );
    for s in &served {
        assert_eq!(s.kind, 2);
        assert!(s
            .attribute("hch.tree_ids")
            .unwrap()
            .split(',')
            .any(|t| t == response.tree_id));
        assert!(s.attribute("hch.queue_seconds").is_some(), "{s:#?}");
    }

    // Each batch: a child of a served call in its own worker, with its size.
    let batches: Vec<_> = trace.iter().filter(|s| s.name == "hch.batch").collect();
    assert_eq!(
        batches.len(),
        served.len(),
        "one call per batch: the tree is alone"
    );
    for b in &batches {
        let parent = by_id[&b.parent_span_id.expect("a batch has a parent")];
        assert_eq!(parent.name, "hch.Worker/Answer");
        assert_eq!(
            parent.service, b.service,
            "the batch runs where the call was served"
        );
        assert!(
            b.attribute("hch.batch_size")
                .unwrap()
                .parse::<u64>()
                .unwrap()
                >= 1
        );
        assert_eq!(b.attribute("hch.answerer"), Some("oracle"));
    }
    let services: HashSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        HashSet::from(["hch-coordinator", "hch-worker-a", "hch-worker-b"])
    );

    // The unsampled tree ran first; each process exports in order, so anything it recorded
    // would have arrived before the sampled tree's spans.
    assert!(
        of_trace(&spans, unsampled).is_empty(),
        "an unsampled trace was recorded"
    );
    drop(coordinator);
    drop(workers);
}
