//! The tree viewer in a real browser: Debian's `chromium`, headless (which `make test` installs),
//! loads the coordinator's admin page while a tree is being evaluated, and again when it is done.
//!
//! The tree is held half-way by its worker: a real oracle worker behind a gate that lets the
//! first calls through and holds the rest until the test opens it. So the first look is
//! guaranteed to find the tree running, with some leaves answered and others pending, and the
//! second finds it finished, every node answered, the root with the true answer.

mod common;

use std::sync::Arc;
use std::time::Duration;

use hch::coordinator::pool::{Pool, PoolConfig, WorkerSource};
use hch::coordinator::viewer::ViewerConfig;
use hch::coordinator::{CoordinatorConfig, CoordinatorService};
use hch::rpc::pb;
use hch::worker::{Serving, Worker, WorkerService};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A real oracle worker whose calls after the first `free` wait until the gate opens.
struct GatedWorker {
    inner: Arc<WorkerService>,
    free: usize,
    calls: watch::Sender<usize>,
    open: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl pb::worker_server::Worker for GatedWorker {
    async fn answer(
        &self,
        request: tonic::Request<pb::AnswerRequest>,
    ) -> Result<tonic::Response<pb::AnswerResponse>, tonic::Status> {
        let mut n = 0;
        self.calls.send_modify(|c| {
            *c += 1;
            n = *c;
        });
        if n > self.free {
            let mut open = self.open.clone();
            let _ = open.wait_for(|&o| o).await;
        }
        self.inner.answer(request).await
    }

    async fn model_info(
        &self,
        request: tonic::Request<pb::ModelInfoRequest>,
    ) -> Result<tonic::Response<pb::ModelInfoResponse>, tonic::Status> {
        self.inner.model_info(request).await
    }
}

/// The page as headless Chromium renders it after `budget_ms` of (virtual) time, in which it
/// fetches the JSON endpoints and polls.
fn render(url: &str, budget_ms: u32) -> String {
    let output = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            &format!("--virtual-time-budget={budget_ms}"),
            "--dump-dom",
            url,
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!("running chromium ({e}): install Debian's chromium (`make test-deps` does)")
        });
    assert!(output.status.success(), "chromium failed: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// The `data-by` of every node element in the rendered page, in document order.
fn nodes(dom: &str) -> Vec<&str> {
    dom.split("data-node-id=\"")
        .skip(1)
        .map(|rest| {
            let by = rest
                .split_once("data-by=\"")
                .expect("a node says who answered")
                .1;
            &by[..by.find('"').unwrap()]
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewer_shows_a_tree_growing_and_then_done_in_a_real_browser() {
    // The worker: the real oracle service, served behind the gate on a real socket.
    let worker = Worker::start(
        Serving::Oracle {
            delay: Duration::ZERO,
        },
        Default::default(),
    );
    let (calls_tx, mut calls) = watch::channel(0);
    let (open_tx, open) = watch::channel(false);
    let gated = GatedWorker {
        inner: worker.service.clone(),
        free: 3,
        calls: calls_tx,
        open,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let worker_addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::worker_server::WorkerServer::new(gated))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    // The coordinator, with the viewer on its admin port.
    let pool = Pool::start(PoolConfig {
        source: WorkerSource::Static(vec![worker_addr.to_string()]),
        ..PoolConfig::default()
    })
    .await;
    let service = CoordinatorService::new(
        pool,
        CoordinatorConfig {
            viewer: Some(ViewerConfig::default()),
            ..CoordinatorConfig::default()
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let coordinator_addr = listener.local_addr().unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap().to_string();
    tokio::spawn(hch::server::serve_coordinator(
        listener,
        Some(admin),
        service,
        std::future::pending(),
    ));

    // A tree of eight leaf calls, one after another: the first three pass, the fourth waits.
    let (request, truth) = common::permutation_request(5);
    let question = request.question.clone();
    let mut client =
        pb::coordinator_client::CoordinatorClient::connect(format!("http://{coordinator_addr}"))
            .await
            .unwrap();
    let asked = tokio::spawn(async move { client.ask(request).await });
    calls.wait_for(|&n| n > 3).await.unwrap();

    // The tree's id, from the viewer's own list.
    let list: serde_json::Value =
        serde_json::from_str(&common::http_get(&admin_addr, "/api/trees").unwrap()).unwrap();
    let trees = list["trees"].as_array().unwrap();
    assert_eq!(trees.len(), 1, "{list}");
    assert_eq!(trees[0]["running"], true);
    let id = trees[0]["tree_id"].as_str().unwrap().to_string();
    let url = format!("http://{admin_addr}/trees#{id}");

    // While it runs: listed as running, its root and the nodes so far, some leaves answered by
    // the oracle and some still pending.
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || render(&url, 3000)
    })
    .await
    .unwrap();
    assert!(
        dom.contains(&format!("data-tree-id=\"{id}\" data-status=\"running\"")),
        "the list shows the tree running: {dom}"
    );
    assert!(
        dom.contains("id=\"tree-facts\" data-status=\"running\""),
        "{dom}"
    );
    assert!(dom.contains(&question), "the root question is shown");
    let running = nodes(&dom);
    assert!(
        running.iter().filter(|&&by| by == "answerer").count() >= 3,
        "the three calls let through answered leaves: {running:?}"
    );
    assert!(
        running.contains(&"pending"),
        "the held call's leaf and its ancestors are pending: {running:?}"
    );

    // Let it finish, then look again.
    open_tx.send(true).unwrap();
    let reply = asked.await.unwrap().unwrap().into_inner();
    assert_eq!(reply.answer, truth);
    let dom = tokio::task::spawn_blocking(move || render(&url, 3000))
        .await
        .unwrap();
    assert!(
        dom.contains(&format!("data-tree-id=\"{id}\" data-status=\"answered\"")),
        "{dom}"
    );
    assert!(
        dom.contains("id=\"tree-facts\" data-status=\"answered\""),
        "{dom}"
    );
    let done = nodes(&dom);
    assert!(!done.contains(&"pending"), "every node answered: {done:?}");
    let stats = reply.stats.unwrap();
    assert_eq!(
        done.len() as u64,
        stats.nodes + stats.memo_hits,
        "one element per node: {done:?}"
    );
    assert!(done.len() > running.len(), "the tree grew");
    assert_eq!(done[0], "overseer", "H decomposed the root");
    assert!(
        dom.contains(&format!(
            "{question}</span> → <span class=\"answer mono\">{truth}</span>"
        )),
        "the root shows its true answer"
    );
    assert!(dom.contains(&reply.tree_id));
}
