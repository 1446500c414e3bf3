//! The distributed system on real sockets: a coordinator and oracle workers on 127.0.0.1, port 0,
//! spoken to by a real tonic client.

use std::time::Duration;

use hch::answerer::batched::BatchConfig;
use hch::coordinator::pool::PoolConfig;
use hch::coordinator::CoordinatorConfig;
use hch::domain::{Domain, DomainKind, Instance};
use hch::rng::Rng;
use hch::rpc::coordinator::AskLimits;
use hch::rpc::pb;
use hch::server::{Cluster, ClusterConfig};
use hch::with_domain;
use hch::worker::{Serving, WorkerConfig};
use tonic::Code;

type Client = pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>;

async fn cluster(
    workers: usize,
    delay: Duration,
    worker: WorkerConfig,
    config: CoordinatorConfig,
) -> Cluster {
    Cluster::start(ClusterConfig {
        workers,
        serving: Serving::Oracle { delay },
        worker,
        pool: PoolConfig {
            refresh_every: Duration::from_millis(200),
            ..PoolConfig::default()
        },
        coordinator: config,
        ..ClusterConfig::default()
    })
    .await
    .unwrap()
}

async fn client(cluster: &Cluster) -> Client {
    Client::connect(format!("http://{}", cluster.coordinator.addr))
        .await
        .unwrap()
}

fn ask(domain: DomainKind, instance: String, question: String, mode: &str) -> pb::AskRequest {
    pb::AskRequest {
        domain: domain.name().to_string(),
        instance: Some(pb::ask_request::Instance::InstanceText(instance)),
        question,
        mode: mode.to_string(),
        budget: None,
        want_trace: false,
    }
}

/// A tree that takes a while over slow workers: permutation powering at hch:3, whose 8 leaf calls
/// go one after another.
fn sequential_tree(seed: u64) -> pb::AskRequest {
    let d = hch::domain::permutation::Permutation;
    let inst = Instance::generate(&d, 64, seed).unwrap();
    ask(
        DomainKind::Permutation,
        d.print_facts(inst.facts()),
        "sigma^63(2)".into(),
        "hch:3",
    )
}

/// (instance text, question text, true answer text) for a few seeded questions.
fn cases<D: Domain>(d: &D, size: usize, n: u64) -> Vec<(String, String, String)> {
    (0..n)
        .map(|seed| {
            let inst = Instance::generate(d, size, seed).unwrap();
            let q = d.sample_question(inst.facts(), &mut Rng::new(seed));
            (
                d.print_facts(inst.facts()),
                d.print_question(&q),
                d.print_answer(&d.truth(inst.facts(), &q)),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_and_three_workers_answer_every_domain() {
    let cluster = cluster(
        3,
        Duration::ZERO,
        WorkerConfig::default(),
        CoordinatorConfig::default(),
    )
    .await;
    let mut client = client(&cluster).await;
    for kind in DomainKind::ALL {
        let cases = with_domain!(kind, d => cases(&d, 16, 12));
        for (i, (facts, question, truth)) in cases.into_iter().enumerate() {
            let mode = if i % 2 == 0 { "amplified" } else { "hch:3" };
            let mut request = ask(kind, facts, question.clone(), mode);
            request.want_trace = i == 0;
            let r = client.ask(request).await.unwrap().into_inner();
            assert_eq!(r.answer, truth, "{kind} {question} {mode}");
            assert!(r.known);
            assert_eq!(r.exhausted, "", "{kind} {question}");
            if i == 0 {
                let trace = r.trace.expect("trace requested");
                assert_eq!(trace.nodes[0].question, question);
                let stored = client
                    .get_trace(pb::GetTraceRequest {
                        tree_id: r.tree_id.clone(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(stored, trace);
            }
        }
    }
    let status = client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.workers.len(), 3);
    assert!(status
        .workers
        .iter()
        .all(|w| w.healthy && w.answerer == "oracle"));
    assert!(status.workers.iter().map(|w| w.items_sent).sum::<u64>() > 0);
    cluster.stop().await;
}

/// A tree's wave of leaves larger than the most questions a worker call may carry is split over
/// several calls, and its answers come back together and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_wider_than_a_call_is_split_and_reassembled() {
    let max_batch = 5;
    let mut config = CoordinatorConfig::default();
    config.remote.max_batch = max_batch;
    let cluster = cluster(2, Duration::ZERO, WorkerConfig::default(), config).await;
    let mut client = client(&cluster).await;
    let d = hch::domain::wildcard::Wildcard;
    for seed in 0..4 {
        let instance = Instance::generate(&d, 64, seed).unwrap();
        let question = d.parse_question("******").unwrap();
        let mut request = ask(
            DomainKind::Wildcard,
            d.print_facts(instance.facts()),
            "******".to_string(),
            // At depth 6 the strings have no `*` left: H reads them from the facts itself. At
            // depth 5 each leaf still has one, so X is asked.
            "hch:5",
        );
        request.want_trace = true;
        let r = client.ask(request).await.unwrap().into_inner();
        assert_eq!(
            r.answer,
            d.print_answer(&d.truth(instance.facts(), &question))
        );
        assert_eq!(r.exhausted, "");
        // The 32 leaves of the one wave (every leaf is a distinct pattern)...
        assert_eq!(r.stats.unwrap().answerer_queries, 32);
        // ...each with its own answer (a sum at the root would hide answers out of order).
        let trace = r.trace.expect("trace requested");
        let leaves = trace.nodes.iter().filter(|n| n.by == "answerer");
        assert_eq!(leaves.clone().count(), 32);
        for node in leaves {
            let q = d.parse_question(&node.question).unwrap();
            assert_eq!(node.answer, d.print_answer(&d.truth(instance.facts(), &q)));
        }
    }
    let (answered, calls) = cluster.workers.iter().fold((0, 0), |(a, c), (_, w)| {
        (a + w.questions_answered(), c + w.calls_and_batches().0)
    });
    assert_eq!(answered, 4 * 32);
    assert!(
        calls >= answered.div_ceil(max_batch as u64),
        "{answered} questions in {calls} calls of at most {max_batch}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_survives_a_worker_stopped_in_its_middle() {
    // Slow workers and a sequential tree (permutation powering at hch:3: 8 leaf calls one after
    // another), so the tree is certainly in flight when a worker goes away.
    let mut cluster = cluster(
        3,
        Duration::from_millis(30),
        WorkerConfig::default(),
        CoordinatorConfig::default(),
    )
    .await;
    let mut client = client(&cluster).await;
    let d = hch::domain::permutation::Permutation;
    let inst = Instance::generate(&d, 64, 11).unwrap();
    let q = d.parse_question("sigma^63(5)").unwrap();
    let truth = d.print_answer(&d.truth(inst.facts(), &q));
    let request = ask(
        DomainKind::Permutation,
        d.print_facts(inst.facts()),
        "sigma^63(5)".into(),
        "hch:3",
    );
    let mut stream = client.ask_stream(request).await.unwrap().into_inner();
    // Wait until a worker has answered a leaf: the tree is under way.
    first_leaf_answered(&mut stream).await;
    // Stop two of the three workers, abruptly.
    for _ in 0..2 {
        let (worker, _) = cluster.workers.remove(0);
        worker.abort();
    }
    let mut done = None;
    while let Some(event) = stream.message().await.unwrap() {
        if let Some(pb::tree_event::Event::Done(r)) = event.event {
            done = Some(r);
        }
    }
    let done = done.expect("the tree finished");
    assert_eq!(done.answer, truth, "{done:?}");
    assert_eq!(done.exhausted, "");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_cancels_stops_the_work_on_the_workers() {
    let cluster = cluster(
        2,
        Duration::from_millis(50),
        WorkerConfig::default(),
        CoordinatorConfig::default(),
    )
    .await;
    let mut client = client(&cluster).await;
    let d = hch::domain::permutation::Permutation;
    let inst = Instance::generate(&d, 64, 12).unwrap();
    let request = ask(
        DomainKind::Permutation,
        d.print_facts(inst.facts()),
        "sigma^63(1)".into(),
        "hch:3",
    );
    let mut stream = client.ask_stream(request).await.unwrap().into_inner();
    first_leaf_answered(&mut stream).await;
    drop(stream); // the client goes away
                  // The coordinator drops the tree and its calls; wait (bounded) until it says so.
    let status = wait_until(&mut client, |s| {
        s.trees_in_flight == 0 && s.workers.iter().all(|w| w.calls_in_flight == 0)
    })
    .await;
    // The whole tree needs 8 sequential leaf answers; the cancelled one got at most 2.
    let answered: u64 = cluster
        .workers
        .iter()
        .map(|(_, w)| w.questions_answered())
        .sum();
    assert!(
        answered <= 2,
        "workers answered {answered} questions after the client left"
    );
    assert_eq!(status.trees_total, 1);
    cluster.stop().await;
}

/// A client that stops reading its AskStream is cut off once the stream's buffer has stayed full
/// for the configured stall: its tree is stopped (its slot freed) and the stream ends, after the
/// events it holds, with RESOURCE_EXHAUSTED instead of buffering the rest of the tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_stream_is_cut_off() {
    let config = CoordinatorConfig {
        stream_buffer: 4,
        stream_stall: Duration::from_millis(200),
        ..CoordinatorConfig::default()
    };
    let cluster = cluster(2, Duration::ZERO, WorkerConfig::default(), config).await;
    let mut client = client(&cluster).await;
    // About 47 000 trace nodes, 94 000 events (4 MB): more than HTTP/2's flow-control windows
    // (hyper's client: 2 MB a stream) let through to a client that does not read.
    let mut request = ask(
        DomainKind::ShortestPath,
        String::new(),
        "dist 0 63".into(),
        "hch:256",
    );
    request.instance = Some(pb::ask_request::Instance::Generated(
        pb::GeneratedInstance { size: 64, seed: 1 },
    ));
    let mut stream = client
        .clone()
        .ask_stream(request)
        .await
        .unwrap()
        .into_inner();
    // Nothing is read until the coordinator has let go of the tree (bounded wait).
    let status = wait_until(&mut client, |s| {
        s.trees_total == 1 && s.trees_in_flight == 0
    })
    .await;
    assert_eq!(status.trees_in_flight, 0);
    let mut events = 0;
    let end = loop {
        match stream.message().await {
            Ok(Some(event)) => {
                assert!(
                    !matches!(event.event, Some(pb::tree_event::Event::Done(_))),
                    "the tree finished although its client did not read"
                );
                events += 1;
            }
            Ok(None) => panic!("the stream ended without saying why, after {events} events"),
            Err(status) => break status,
        }
    };
    assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
    assert!(end.message().contains("read nothing"), "{end:?}");
    assert!(events < 80_000, "{events} events were buffered");
    cluster.stop().await;
}

/// A worker process frozen with SIGSTOP (its socket open, nothing answered, not even a reset)
/// holds a batch only for the call timeout: the batch is re-sent to another worker and every
/// tree finishes, right and undegraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_is_routed_around() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    use hch::coordinator::pool::WorkerSource;
    use hch::server::{start_coordinator, start_worker};

    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let (healthy, _) = start_worker(
        loopback,
        Serving::Oracle {
            delay: Duration::ZERO,
        },
        WorkerConfig::default(),
    )
    .await
    .unwrap();
    // A worker in its own process, to freeze.
    let mut frozen = Command::new(env!("CARGO_BIN_EXE_hch"))
        .args(["worker", "--oracle", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(frozen.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let frozen_addr = line
        .trim()
        .strip_prefix("worker listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let mut config = CoordinatorConfig::default();
    config.remote.call_timeout = Duration::from_millis(300);
    let (coordinator, _) = start_coordinator(
        loopback,
        PoolConfig {
            source: WorkerSource::Static(vec![frozen_addr.clone(), healthy.addr.to_string()]),
            refresh_every: Duration::from_secs(3600),
            ..PoolConfig::default()
        },
        config,
    )
    .await
    .unwrap();
    let mut client = Client::connect(format!("http://{}", coordinator.addr))
        .await
        .unwrap();
    // Both workers are in the pool (it asked each for its ModelInfo when it started); then one
    // freezes. The pool does not refresh during the test, so only the call timeout can route
    // around it.
    let status = client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.workers.iter().all(|w| w.healthy), "{status:?}");
    let stopped = Command::new("kill")
        .args(["-STOP", &frozen.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    // The signal is delivered asynchronously: wait (bounded) until the kernel reports the
    // process stopped ('T' in /proc/PID/stat), so that no call reaches it while it still runs.
    let stat = format!("/proc/{}/stat", frozen.id());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = std::fs::read_to_string(&stat).unwrap();
        // The state follows the command name, which is in parentheses.
        let after = state.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
        if after.starts_with('T') {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker did not stop: {state}"
        );
        tokio::task::yield_now().await;
    }

    let d = hch::domain::wildcard::Wildcard;
    let trees = (0..16u64).map(|seed| {
        let inst = Instance::generate(&d, 64, seed).unwrap();
        let truth = d.print_answer(&d.truth(inst.facts(), &d.parse_question("*1****").unwrap()));
        let request = ask(
            DomainKind::Wildcard,
            d.print_facts(inst.facts()),
            "*1****".into(),
            "hch:3",
        );
        let mut client = client.clone();
        async move { (client.ask(request).await, truth) }
    });
    // A guard against a hang, not a timing: a tree needs one call timeout to be re-routed.
    let replies =
        tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(trees)).await;
    let _ = frozen.kill();
    let _ = frozen.wait();
    for (reply, truth) in replies.expect("the trees finished despite the frozen worker") {
        let reply = reply.unwrap().into_inner();
        assert_eq!(reply.answer, truth);
        assert_eq!(reply.exhausted, "", "{reply:?}");
    }
    let status = client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let frozen_status = status
        .workers
        .iter()
        .find(|w| w.address == frozen_addr)
        .unwrap();
    assert!(frozen_status.failures >= 1, "{status:?}");
    let _ = coordinator.stop().await;
    healthy.abort();
}

/// With a token file, every call needs a token (UNAUTHENTICATED without one, or with one nobody
/// was given) with the right to it (PERMISSION_DENIED otherwise), and a client reads the traces
/// of its own trees only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_decide_who_may_ask_and_whose_traces_they_read() {
    use hch::coordinator::auth::{attach, new_token, Tokens};
    let (alice, a) = new_token("alice", &["ask", "status"]).unwrap();
    let (bob, b) = new_token("bob", &["status"]).unwrap();
    let (carol, c) = new_token("carol", &["ask"]).unwrap();
    let file = format!("{{\"clients\": [{a}, {b}, {c}]}}");
    let config = CoordinatorConfig {
        tokens: Some(std::sync::Arc::new(Tokens::parse(file.as_bytes()).unwrap())),
        ..CoordinatorConfig::default()
    };
    let cluster = cluster(1, Duration::ZERO, WorkerConfig::default(), config).await;
    let mut client = client(&cluster).await;
    fn as_client<T>(token: Option<&str>, request: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(request);
        attach(&mut request, token);
        request
    }
    let question = || {
        ask(
            DomainKind::Wildcard,
            "010011:+1 110000:-1".into(),
            "*1****".into(),
            "amplified",
        )
    };
    for token in [None, Some("0123")] {
        let e = client.ask(as_client(token, question())).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }
    let e = client
        .ask(as_client(Some(&bob), question()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("bob"), "{e:?}");

    let reply = client
        .ask(as_client(Some(&alice), question()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.answer, "0");
    let get = |token: &str| {
        as_client(
            Some(token),
            pb::GetTraceRequest {
                tree_id: reply.tree_id.clone(),
            },
        )
    };
    let trace = client.get_trace(get(&alice)).await.unwrap().into_inner();
    assert_eq!(trace.tree_id, reply.tree_id);
    let e = client.get_trace(get(&carol)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "another client's trace: {e:?}");

    let status = client
        .status(as_client(Some(&bob), pb::StatusRequest {}))
        .await;
    assert_eq!(status.unwrap().into_inner().trees_total, 1);
    let e = client
        .status(as_client(Some(&carol), pb::StatusRequest {}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    cluster.stop().await;
}

/// Reads tree events until a worker has answered a leaf (the tree is then certainly in flight).
async fn first_leaf_answered(stream: &mut tonic::Streaming<pb::TreeEvent>) {
    loop {
        let event = stream.message().await.unwrap().expect("stream ended early");
        if let Some(pb::tree_event::Event::Answered(a)) = event.event {
            if a.by == "answerer" {
                return;
            }
        }
    }
}

/// Polls the coordinator's status until `done` holds (for at most 10 s).
async fn wait_until(
    client: &mut Client,
    done: impl Fn(&pb::StatusResponse) -> bool,
) -> pb::StatusResponse {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = client
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if done(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached: {s:?}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_invalid_argument_with_a_message() {
    let cluster = cluster(
        1,
        Duration::ZERO,
        WorkerConfig::default(),
        CoordinatorConfig::default(),
    )
    .await;
    let mut client = client(&cluster).await;
    let good = || {
        ask(
            DomainKind::Wildcard,
            "010011:+1 110000:-1".into(),
            "*1****".into(),
            "amplified",
        )
    };
    let mut cases: Vec<(pb::AskRequest, &str)> = Vec::new();
    let mut r = good();
    r.domain = "chess".into();
    cases.push((r, "unknown domain \"chess\""));
    let mut r = good();
    r.question = "*1*2**".into();
    cases.push((r, "'2'"));
    let mut r = good();
    r.instance = Some(pb::ask_request::Instance::InstanceText("010011:+2".into()));
    cases.push((r, "+1 or -1"));
    let mut r = good();
    r.instance = Some(pb::ask_request::Instance::InstanceText("0".repeat(100_000)));
    cases.push((r, "limit"));
    let mut r = good();
    r.instance = None;
    cases.push((r, "no instance"));
    let mut r = good();
    r.budget = Some(pb::Budget {
        max_depth: None,
        max_nodes: Some(u64::MAX),
        deadline_ms: None,
    });
    cases.push((r, "max_nodes"));
    let mut r = good();
    r.budget = Some(pb::Budget {
        max_depth: Some(100_000),
        max_nodes: None,
        deadline_ms: None,
    });
    cases.push((r, "max_depth"));
    let mut r = good();
    r.mode = "sideways".into();
    cases.push((r, "unknown mode"));
    let mut r = ask(
        DomainKind::ShortestPath,
        "n=3: 0>1".into(),
        "dist 0 2".into(),
        "exact",
    );
    r.budget = None;
    cases.push((r, "not well founded"));
    let mut r = good();
    r.instance = Some(pb::ask_request::Instance::Generated(
        pb::GeneratedInstance { size: 500, seed: 1 },
    ));
    cases.push((r, "size 500"));
    for (request, needle) in cases {
        let status = client.ask(request.clone()).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{request:?}: {status:?}"
        );
        assert!(
            status.message().contains(needle),
            "{:?} should mention {needle:?}",
            status.message()
        );
    }
    // The coordinator is still fine.
    let r = client.ask(good()).await.unwrap().into_inner();
    assert_eq!(r.answer, "0");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_resource_exhausted_and_servers_stay_healthy() {
    let worker = WorkerConfig {
        batch: BatchConfig {
            max_batch: 1,
            max_wait: Duration::ZERO,
            queue_capacity: 1,
        },
        ..WorkerConfig::default()
    };
    let cluster = cluster(
        1,
        Duration::from_millis(200),
        worker,
        CoordinatorConfig::default(),
    )
    .await;
    let addr = format!("http://{}", cluster.workers[0].0.addr);
    let d = hch::domain::wildcard::Wildcard;
    let inst = Instance::generate(&d, 8, 1).unwrap();
    let call = |q: &str| pb::AnswerRequest {
        domain: "wildcard".into(),
        instances: vec![pb::Facts {
            id: inst.id().0.to_vec(),
            text: d.print_facts(inst.facts()),
        }],
        questions: format!("{q}\n"),
        question_instances: vec![0],
    };
    let channel = tonic::transport::Endpoint::from_shared(addr)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let mut c = pb::worker_client::WorkerClient::new(channel.clone());
            let request = call("01****");
            tokio::spawn(async move { c.answer(request).await })
        })
        .collect();
    let mut exhausted = 0;
    let mut answered = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(r) => {
                assert_eq!(r.into_inner().answers.lines().count(), 1);
                answered += 1;
            }
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(s.message().contains("queue is full"), "{}", s.message());
                exhausted += 1;
            }
        }
    }
    assert!(
        exhausted > 0,
        "a one-slot queue should refuse some of 6 concurrent calls"
    );
    assert!(answered > 0);
    // Still healthy and serving.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "hch.v1.Worker".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let mut c = pb::worker_client::WorkerClient::new(channel);
    assert!(c.answer(call("1*****")).await.is_ok());

    // A worker that is asked about facts it does not have says so, by id.
    let by_id = pb::AnswerRequest {
        domain: "wildcard".into(),
        instances: vec![pb::Facts {
            id: vec![7; 32],
            text: String::new(),
        }],
        questions: "1*****\n".into(),
        question_instances: vec![0],
    };
    let r = c.answer(by_id).await.unwrap().into_inner();
    assert_eq!(r.missing_facts, vec![vec![7u8; 32]]);
    assert!(r.answers.is_empty());
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_caps_concurrent_trees() {
    let config = CoordinatorConfig {
        max_trees: 1,
        ..CoordinatorConfig::default()
    };
    let cluster = cluster(
        1,
        Duration::from_millis(100),
        WorkerConfig::default(),
        config,
    )
    .await;
    let mut first = client(&cluster).await;
    let mut second = first.clone();
    let request = sequential_tree(3);
    let mut stream = first
        .ask_stream(request.clone())
        .await
        .unwrap()
        .into_inner();
    let _ = stream.message().await.unwrap(); // the first tree has started
    let status = second.ask(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    drop(stream);
    cluster.stop().await;
}

/// A connection that stays silent is closed once the idle time has passed, by the coordinator
/// (whose idle time is at least a second past the longest deadline it allows) and by a worker:
/// connections opened and abandoned cannot pile up until the server runs out of descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_the_idle_time() {
    use tokio::io::AsyncReadExt;
    let config = CoordinatorConfig {
        idle_close: Duration::from_millis(100),
        limits: AskLimits {
            max_deadline: Duration::from_millis(200),
            ..AskLimits::default()
        },
        ..CoordinatorConfig::default()
    };
    let worker = WorkerConfig {
        idle_close: Duration::from_millis(300),
        ..WorkerConfig::default()
    };
    let cluster = cluster(1, Duration::ZERO, worker, config).await;
    let servers = [
        (cluster.coordinator.addr, Duration::from_millis(1200)),
        (cluster.workers[0].0.addr, Duration::from_millis(300)),
    ];
    for (addr, idle) in servers {
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let opened = tokio::time::Instant::now();
        // The server may send its HTTP/2 preface; then it closes the connection (end of stream,
        // or a reset), never before the idle time. The timeout only turns a server that never
        // closes into a failure.
        let mut received = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut received))
            .await
            .expect("the silent connection was not closed");
        assert!(
            received.len() < 1024,
            "{addr} sent {} bytes",
            received.len()
        );
        // End of stream, or a reset: either way, closed.
        let _ = read;
        assert!(
            opened.elapsed() >= idle,
            "{addr} closed after {:?}",
            opened.elapsed()
        );
    }
    // The cluster still answers on fresh connections.
    let mut client = client(&cluster).await;
    let status = client
        .status(hch::rpc::pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.workers.len(), 1);
    cluster.stop().await;
}

/// A tree cut off by the call's own gRPC deadline ends the call with DEADLINE_EXCEEDED, saying
/// so, rather than CANCELLED by the server's timer; a tree cut off by its budget's deadline is
/// an answer (unknown, with the budget named).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_deadline_is_deadline_exceeded_and_a_budgets_is_an_answer() {
    // Slow workers and a sequential tree: 8 leaf calls of at least 700 ms one after another,
    // longer than the call's 5 s. The tree stops a tenth of that before the deadline: room for
    // the reply to arrive ahead of the timers in tonic's client and server, which start from the
    // same `grpc-timeout` and would end the call as CANCELLED. The room is wide because the other
    // tests of this file run at the same time on two cores, dozens of threads among them, and
    // 100 ms of it was once not enough.
    let cluster = cluster(
        2,
        Duration::from_millis(700),
        WorkerConfig::default(),
        CoordinatorConfig {
            call_deadline_margin: Duration::from_millis(500),
            ..CoordinatorConfig::default()
        },
    )
    .await;
    let mut client = client(&cluster).await;
    let request = || sequential_tree(11);

    let mut call = tonic::Request::new(request());
    call.set_timeout(Duration::from_secs(5));
    let status = tokio::time::timeout(Duration::from_secs(30), client.ask(call))
        .await
        .expect("the server ends the call at its deadline")
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("deadline"), "{status:?}");

    let mut budgeted = request();
    budgeted.budget = Some(pb::Budget {
        deadline_ms: Some(150),
        ..Default::default()
    });
    let reply = client.ask(budgeted).await.unwrap().into_inner();
    assert_eq!(reply.answer, "?");
    assert_eq!(reply.exhausted, "deadline");
    cluster.stop().await;
}

/// One client cannot take every tree slot: over its share it gets RESOURCE_EXHAUSTED naming the
/// limit, while another client (here, another connection) is still served, and the client's
/// share comes back as its trees end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_tree_slot() {
    let config = CoordinatorConfig {
        max_trees: 8,
        max_trees_per_client: 2,
        ..CoordinatorConfig::default()
    };
    let cluster = cluster(
        1,
        Duration::from_millis(50),
        WorkerConfig::default(),
        config,
    )
    .await;
    let mut greedy = client(&cluster).await;
    let request = sequential_tree(3);
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut stream = greedy
            .ask_stream(request.clone())
            .await
            .unwrap()
            .into_inner();
        let _ = stream.message().await.unwrap(); // the tree has started
        streams.push(stream);
    }
    let status = greedy.ask(request.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("most one client"), "{status:?}");

    // Another connection is another client.
    let mut other = client(&cluster).await;
    let reply = other.ask(request.clone()).await.unwrap().into_inner();
    assert_ne!(reply.answer, "?");

    // The greedy client's trees finish; its share is free again.
    for mut stream in streams {
        while stream.message().await.unwrap().is_some() {}
    }
    let reply = greedy.ask(request).await.unwrap().into_inner();
    assert_ne!(reply.answer, "?");
    cluster.stop().await;
}

/// Ten times the load the coordinator takes at once: the excess is shed with
/// RESOURCE_EXHAUSTED, never another error and never a wrong answer; every tree admitted is
/// answered right; and once the burst is over the cluster serves normally, with its slots free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_the_load_is_shed_and_nothing_else_breaks() {
    const SLOTS: usize = 8;
    let config = CoordinatorConfig {
        max_trees: SLOTS,
        ..CoordinatorConfig::default()
    };
    let cluster = cluster(
        2,
        Duration::from_millis(20),
        WorkerConfig::default(),
        config,
    )
    .await;
    let d = hch::domain::union_find::UnionFind;
    let cases = cases(&d, 16, 10 * SLOTS as u64);
    // Each call on a connection of its own, so the per-client share does not come into it; all
    // connected first, so the calls arrive together.
    let mut clients = Vec::new();
    for _ in &cases {
        clients.push(client(&cluster).await);
    }
    let calls: Vec<_> = clients
        .into_iter()
        .zip(cases.clone())
        .map(|(mut client, (facts, question, truth))| {
            tokio::spawn(async move {
                let request = ask(DomainKind::UnionFind, facts, question, "hch:3");
                (client.ask(request).await, truth)
            })
        })
        .collect();
    let (mut answered, mut shed) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            (Ok(reply), truth) => {
                assert_eq!(reply.into_inner().answer, truth);
                answered += 1;
            }
            (Err(status), _) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                shed += 1;
            }
        }
    }
    eprintln!("{answered} answered, {shed} shed");
    assert!(answered >= SLOTS, "{answered} answered, {shed} shed");
    assert!(shed > 0, "nothing was shed: the load never reached the cap");

    // After the burst: every slot is free and trees are answered.
    let mut client = client(&cluster).await;
    let status = client
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.trees_in_flight, 0);
    for (facts, question, truth) in cases.into_iter().take(SLOTS) {
        let request = ask(DomainKind::UnionFind, facts, question, "hch:3");
        assert_eq!(
            client.ask(request).await.unwrap().into_inner().answer,
            truth
        );
    }
    cluster.stop().await;
}

/// The operator's size limits: an instance text over `max_instance_bytes` is refused by name
/// (INVALID_ARGUMENT), and a message over `max_message_bytes` is refused by tonic before it is
/// decoded, naming both sizes; requests within both are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_and_message_sizes_are_the_operators_to_set() {
    let config = CoordinatorConfig {
        limits: AskLimits {
            max_instance_bytes: 700,
            ..AskLimits::default()
        },
        max_message_bytes: 2048,
        ..CoordinatorConfig::default()
    };
    let cluster = cluster(1, Duration::ZERO, WorkerConfig::default(), config).await;
    let mut client = client(&cluster).await;
    let d = hch::domain::permutation::Permutation;
    let facts = |size| d.print_facts(Instance::generate(&d, size, 1).unwrap().facts());
    let request = |facts: String| ask(DomainKind::Permutation, facts, "sigma^3(1)".into(), "hch:2");

    let small = facts(16);
    assert!(small.len() <= 700);
    assert!(client.ask(request(small)).await.is_ok());

    let padded = format!("{}{}", facts(16), " ".repeat(800));
    let status = client.ask(request(padded)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("the limit is 700"), "{status:?}");

    let huge = format!("{}{}", facts(16), " ".repeat(4000));
    let status = client.ask(request(huge)).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    assert!(status.message().contains("2048"), "{status:?}");
    cluster.stop().await;
}

#[tokio::test]
async fn a_client_over_its_rate_is_told_when_to_come_back_and_others_are_not() {
    let config = CoordinatorConfig {
        tree_rate_per_client: Some(0.5),
        tree_burst_per_client: 2,
        ..CoordinatorConfig::default()
    };
    let c = cluster(2, Duration::ZERO, WorkerConfig::default(), config).await;
    // Without tokens, a client is its connection.
    let mut greedy = client(&c).await;
    for seed in 0..2 {
        greedy.ask(sequential_tree(seed)).await.unwrap();
    }
    // Its burst of two is spent; at half a tree a second the next token is up to 2 s away.
    let refused = greedy.ask(sequential_tree(2)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("retry in"),
        "{}",
        refused.message()
    );
    let pushback: u64 = refused
        .metadata()
        .get("grpc-retry-pushback-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no retry pushback in {refused:?}"));
    assert!((1..=2000).contains(&pushback), "{pushback} ms");
    // Another client is not held back by the first one's rate.
    let mut other = client(&c).await;
    other.ask(sequential_tree(3)).await.unwrap();
    c.stop().await;
}

/// Two coordinator replicas over the same worker, each told of both (as a headless Service
/// would): a client's GetTrace finds its tree whichever replica it reaches, with its token
/// forwarded so that another client still cannot read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_trace_finds_a_tree_evaluated_by_another_replica() {
    use hch::coordinator::auth::{attach, new_token, Tokens};
    use hch::coordinator::peers::PeerConfig;
    use hch::coordinator::pool::{Pool, PoolConfig, WorkerSource};
    use hch::coordinator::CoordinatorService;
    let (worker, _) = hch::server::start_worker(
        "127.0.0.1:0".parse().unwrap(),
        hch::worker::Serving::Oracle {
            delay: Duration::ZERO,
        },
        WorkerConfig::default(),
    )
    .await
    .unwrap();
    let (alice, a) = new_token("alice", &["ask"]).unwrap();
    let (carol, c) = new_token("carol", &["ask"]).unwrap();
    let tokens = std::sync::Arc::new(
        Tokens::parse(format!("{{\"clients\": [{a}, {c}]}}").as_bytes()).unwrap(),
    );
    let listeners = [
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    ];
    let replicas: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    for listener in listeners {
        let pool = Pool::start(PoolConfig {
            source: WorkerSource::Static(vec![worker.addr.to_string()]),
            ..PoolConfig::default()
        })
        .await;
        let config = CoordinatorConfig {
            tokens: Some(tokens.clone()),
            peers: Some(PeerConfig::new(
                WorkerSource::Static(replicas.clone()),
                None,
            )),
            ..CoordinatorConfig::default()
        };
        tokio::spawn(hch::server::serve_coordinator(
            listener,
            None,
            CoordinatorService::new(pool, config),
            std::future::pending(),
        ));
    }
    let connect = |addr: &String| {
        pb::coordinator_client::CoordinatorClient::connect(format!("http://{addr}"))
    };
    let mut first = connect(&replicas[0]).await.unwrap();
    let mut second = connect(&replicas[1]).await.unwrap();
    let mut request = tonic::Request::new(ask(
        DomainKind::Wildcard,
        "010011:+1 110000:-1".into(),
        "*1****".into(),
        "amplified",
    ));
    attach(&mut request, Some(&alice));
    let reply = first.ask(request).await.unwrap().into_inner();
    let get = |token: &str, id: &str| {
        let mut request = tonic::Request::new(pb::GetTraceRequest {
            tree_id: id.to_string(),
        });
        attach(&mut request, Some(token));
        request
    };
    // Asked of the replica that did not evaluate it: found on the other one.
    let trace = second
        .get_trace(get(&alice, &reply.tree_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(trace.tree_id, reply.tree_id);
    assert!(!trace.nodes.is_empty());
    // Another client is refused there too, as if the tree did not exist.
    let e = second
        .get_trace(get(&carol, &reply.tree_id))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // A tree nobody evaluated: NOT_FOUND, saying how many replicas were asked.
    let e = second
        .get_trace(get(&alice, "t00000000000000000000000000000000"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("no replica of the 2"), "{e:?}");
}
