//! Trace context across processes: a client's W3C `traceparent` reaches the coordinator's tree span
//! and, through the gRPC metadata of the worker calls, the workers' spans; a client that sends none
//! still gets one trace id shared by the tree and its worker calls.
//!
//! The spans are read from a recording `tracing` layer installed for this test binary alone (its own
//! process: the subscriber is global, since the servers' tasks run on any runtime thread).

mod common;

use std::collections::HashMap;
use std::sync::Mutex;

use hch::domain::wildcard::Wildcard;
use hch::domain::{Domain, Instance};
use hch::rpc::pb;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

type Fields = HashMap<String, String>;

/// Spans named "tree" and "worker.answer", with their fields, as they were created.
static SPANS: Mutex<Vec<(String, Fields)>> = Mutex::new(Vec::new());

struct Recorder;

struct FieldVisitor<'a>(&'a mut Fields);

impl Visit for FieldVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl<S: Subscriber> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        let name = attrs.metadata().name();
        if name == "tree" || name == "worker.answer" {
            let mut fields = Fields::new();
            attrs.record(&mut FieldVisitor(&mut fields));
            SPANS.lock().unwrap().push((name.to_string(), fields));
        }
    }
}

fn spans(name: &str) -> Vec<Fields> {
    SPANS
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, f)| f.clone())
        .collect()
}

async fn ask(
    client: &mut pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>,
    seed: u64,
    traceparent: Option<&str>,
) -> pb::AskResponse {
    let d = Wildcard;
    let instance = Instance::generate(&d, 64, seed).unwrap();
    let mut request = tonic::Request::new(pb::AskRequest {
        domain: "wildcard".to_string(),
        instance: Some(pb::ask_request::Instance::InstanceText(
            d.print_facts(instance.facts()),
        )),
        question: "**1*0*".to_string(),
        mode: "hch:2".to_string(),
        budget: None,
        want_trace: false,
    });
    if let Some(tp) = traceparent {
        request
            .metadata_mut()
            .insert("traceparent", tp.parse().unwrap());
    }
    let response = client.ask(request).await.unwrap().into_inner();
    assert!(response.known, "the oracle cluster answers: {response:?}");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_travels_from_client_to_workers() {
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Recorder))
        .expect("this test binary installs the only subscriber");
    let cluster = common::oracle_cluster(2).await;
    let mut client = pb::coordinator_client::CoordinatorClient::connect(format!(
        "http://{}",
        cluster.coordinator.addr
    ))
    .await
    .unwrap();

    // The client's trace continues on the coordinator and on every worker call of the tree.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = ask(
        &mut client,
        1,
        Some(&format!("00-{trace}-00f067aa0ba902b7-01")),
    )
    .await;
    let trees = spans("tree");
    let tree = trees
        .iter()
        .find(|f| f["tree"] == response.tree_id)
        .expect("a span for the tree");
    assert_eq!(tree["trace_id"], trace);
    let calls: Vec<_> = spans("worker.answer")
        .into_iter()
        .filter(|f| f["trees"].split(',').any(|t| t == response.tree_id))
        .collect();
    assert!(
        !calls.is_empty(),
        "the tree's worker calls name it in hch-trees"
    );
    for call in &calls {
        assert_eq!(call["trace_id"], trace, "worker call {call:?}");
        assert_eq!(call["parent_span"].len(), 16, "worker call {call:?}");
    }

    // Without a client trace, the tree starts one and its worker calls join it.
    let response = ask(&mut client, 2, None).await;
    let trees = spans("tree");
    let tree = trees
        .iter()
        .find(|f| f["tree"] == response.tree_id)
        .expect("a span for the second tree");
    let fresh = &tree["trace_id"];
    assert_eq!(fresh.len(), 32);
    assert_ne!(fresh, trace);
    let calls: Vec<_> = spans("worker.answer")
        .into_iter()
        .filter(|f| f["trees"].split(',').any(|t| t == response.tree_id))
        .collect();
    assert!(!calls.is_empty());
    for call in &calls {
        assert_eq!(&call["trace_id"], fresh, "worker call {call:?}");
    }
    cluster.stop().await;
}
