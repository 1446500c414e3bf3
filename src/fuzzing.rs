//! Entry points of the fuzz targets (`fuzz/`, cargo-fuzz with libFuzzer) and of the test that
//! replays their corpora on every `cargo test` (`tests/fuzz_corpus.rs`). Each takes arbitrary
//! bytes, feeds them to the code that reads untrusted input, and panics only when a property
//! that must hold does not: nothing may panic on its own, every refusal of a client's input
//! must be a client's status (never INTERNAL or UNKNOWN), and what parses must print back to
//! text that parses to the same value.
//!
//! - [`text`]: every domain's parsers (facts, questions, answers, replies), with round trips.
//! - [`coordinator_call`]: the coordinator's handlers (Ask, AskStream, GetTrace, Status) on an
//!   undecoded protobuf message and a `traceparent` header, as tonic hands them over.
//! - [`worker_call`]: the worker's Answer handler, over oracle answerers.
//! - [`tokens`]: the client token file.
//! - [`certificate`]: the DER reader that checks our own certificates' validity.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prost::Message;
use tonic::Code;

use crate::coordinator::pool::{Pool, PoolConfig};
use crate::coordinator::{CoordinatorConfig, CoordinatorService};
use crate::domain::{parse_reply, Domain, DomainKind, Instance};
use crate::eval::Budget;
use crate::rpc::coordinator::AskLimits;
use crate::rpc::pb;
use crate::with_domain;
use crate::worker::{Serving, Worker, WorkerConfig, WorkerService};

/// The first byte picks a domain and a parser; the rest is the text.
pub fn text(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let kind = DomainKind::ALL[selector as usize % DomainKind::ALL.len()];
    with_domain!(kind, d => parse_one(&d, selector / 8, text));
}

fn parse_one<D: Domain>(d: &D, which: u8, text: &str) {
    match which % 4 {
        0 => {
            if let Ok(facts) = d.parse_facts(text) {
                let printed = d.print_facts(&facts);
                let again = d.parse_facts(&printed);
                assert_eq!(again.as_ref().ok(), Some(&facts), "facts {printed:?}");
                // What parses is usable: a tree can be asked about it.
                let instance = Instance::new(d, facts);
                let _ = instance.id();
            }
        }
        1 => {
            if let Ok(question) = d.parse_question(text) {
                let printed = d.print_question(&question);
                assert_eq!(
                    d.parse_question(&printed).ok(),
                    Some(question.clone()),
                    "question {printed:?}"
                );
                let _ = d.visible_difficulty(&question);
                let _ = d.encode_question(&question);
            }
        }
        2 => {
            if let Ok(answer) = d.parse_answer(text) {
                let printed = d.print_answer(&answer);
                assert_eq!(
                    d.parse_answer(&printed).ok(),
                    Some(answer.clone()),
                    "answer {printed:?}"
                );
            }
        }
        _ => {
            let _ = parse_reply(d, text);
        }
    }
}

/// What the handler targets share: a runtime, and the services under test, built once.
struct Services {
    runtime: tokio::runtime::Runtime,
    coordinator: Arc<CoordinatorService>,
    worker: Arc<WorkerService>,
}

fn services() -> &'static Services {
    static SERVICES: OnceLock<Services> = OnceLock::new();
    SERVICES.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (coordinator, worker) = runtime.block_on(async {
            // A coordinator without workers: leaves fail fast and trees degrade, which is what
            // keeps each execution short. Small limits for the same reason.
            let pool = Pool::start(PoolConfig::default()).await;
            let coordinator = CoordinatorService::new(
                pool,
                CoordinatorConfig {
                    limits: AskLimits {
                        max_depth: 6,
                        max_nodes: 512,
                        max_deadline: Duration::from_millis(200),
                        max_instance_bytes: 16 << 10,
                    },
                    default_budget: Budget {
                        max_depth: None,
                        max_nodes: Some(512),
                        deadline: Some(Duration::from_millis(200)),
                    },
                    traces_kept: 64,
                    ..CoordinatorConfig::default()
                },
            );
            let worker = Worker::start(
                Serving::Oracle {
                    delay: Duration::ZERO,
                },
                WorkerConfig::default(),
            );
            (coordinator, worker.service)
        });
        Services {
            runtime,
            coordinator,
            worker,
        }
    })
}

/// Client input may be refused, but only with a status that says the client (or the budget, or
/// the missing workers) is why.
fn check_status(status: &tonic::Status) {
    assert!(
        !matches!(status.code(), Code::Internal | Code::Unknown),
        "client input got {:?}: {}",
        status.code(),
        status.message()
    );
    assert!(
        status.message().len() <= 1100,
        "an error message of {} bytes",
        status.message().len()
    );
}

/// Splits `data` into (selector, header value, message bytes): the first byte selects, the second
/// is the header's length.
fn split(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&selector, rest) = data.split_first()?;
    let (&len, rest) = rest.split_first()?;
    let len = (len as usize).min(rest.len());
    Some((selector, &rest[..len], &rest[len..]))
}

fn request<T>(message: T, traceparent: &[u8]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = tonic::metadata::MetadataValue::try_from(traceparent) {
        request.metadata_mut().insert("traceparent", value);
    }
    request
}

/// The coordinator's handlers. Selector: 0 Ask, 1 AskStream, 2 GetTrace, 3 Status.
pub fn coordinator_call(data: &[u8]) {
    use crate::rpc::pb::coordinator_server::Coordinator;
    let Some((selector, header, bytes)) = split(data) else {
        return;
    };
    let s = services();
    s.runtime.block_on(async {
        let service = &s.coordinator;
        let outcome = match selector % 4 {
            0 | 1 => {
                let Ok(message) = pb::AskRequest::decode(bytes) else {
                    return;
                };
                if selector % 4 == 0 {
                    service.ask(request(message, header)).await.map(|_| ())
                } else {
                    match service.ask_stream(request(message, header)).await {
                        Ok(response) => {
                            use futures::StreamExt;
                            let mut events = response.into_inner();
                            while let Some(event) = events.next().await {
                                if let Err(status) = event {
                                    check_status(&status);
                                }
                            }
                            Ok(())
                        }
                        Err(status) => Err(status),
                    }
                }
            }
            2 => {
                let Ok(message) = pb::GetTraceRequest::decode(bytes) else {
                    return;
                };
                service
                    .get_trace(request(message, header))
                    .await
                    .map(|_| ())
            }
            _ => {
                let Ok(message) = pb::StatusRequest::decode(bytes) else {
                    return;
                };
                service.status(request(message, header)).await.map(|_| ())
            }
        };
        if let Err(status) = outcome {
            check_status(&status);
        }
    });
}

/// The worker's Answer handler, over oracle answerers (so every well-formed call is answered).
pub fn worker_call(data: &[u8]) {
    use crate::rpc::pb::worker_server::Worker as _;
    let Some((_, header, bytes)) = split(data) else {
        return;
    };
    let Ok(message) = pb::AnswerRequest::decode(bytes) else {
        return;
    };
    let asked = message.question_instances.len();
    let s = services();
    s.runtime.block_on(async {
        match s.worker.answer(request(message, header)).await {
            Ok(response) => {
                let reply = response.into_inner();
                // Either every item is answered (a line each), or the facts it lacks are named.
                let answered = reply.answers.bytes().filter(|&b| b == b'\n').count();
                assert!(
                    answered == asked || !reply.missing_facts.is_empty(),
                    "{asked} items asked, {answered} answered"
                );
            }
            Err(status) => check_status(&status),
        }
    });
}

/// The client token file.
pub fn tokens(data: &[u8]) {
    let _ = crate::coordinator::auth::Tokens::parse(data);
}

/// The certificate reader, on arbitrary DER.
pub fn certificate(data: &[u8]) {
    let _ = crate::tls::validity(data);
}
