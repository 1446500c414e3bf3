//! Test fixtures shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use futures::future::BoxFuture;
use hch::answerer::{AnswerError, Answerer, AnswererId, Answers, Oracle, Query};
use hch::domain::Domain;
use tokio::sync::watch;

/// The oracle behind a gate: every call records itself, then waits until the test opens the gate
/// (or forever, if it never does). Counts the questions asked (per question) and the questions
/// whose call was dropped while waiting, so tests can see single-flight and cancellation directly
/// whether the evaluator sends a tree's leaves one by one or together.
pub struct Gated<D: Domain> {
    oracle: Oracle<D>,
    open: watch::Sender<bool>,
    entered: watch::Sender<usize>,
    calls: Mutex<HashMap<D::Question, usize>>,
    cancelled: AtomicUsize,
    /// Virtual time each call takes once the gate is open (tokio time, so tests can pause it).
    pub delay: std::time::Duration,
}

impl<D: Domain> Gated<D> {
    pub fn new(domain: D, open: bool) -> Self {
        Self {
            oracle: Oracle::new(domain),
            open: watch::Sender::new(open),
            entered: watch::Sender::new(0),
            calls: Mutex::new(HashMap::new()),
            cancelled: AtomicUsize::new(0),
            delay: std::time::Duration::ZERO,
        }
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Resolves once at least `n` questions have entered the answerer.
    pub async fn entered(&self, n: usize) {
        let mut rx = self.entered.subscribe();
        rx.wait_for(|&e| e >= n)
            .await
            .expect("sender lives in self");
    }

    pub fn calls(&self) -> HashMap<D::Question, usize> {
        self.calls.lock().unwrap().clone()
    }

    pub fn total_calls(&self) -> usize {
        self.calls.lock().unwrap().values().sum()
    }

    /// Questions whose call was dropped before the gate opened.
    pub fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::SeqCst)
    }
}

struct CancelGuard<'a> {
    cancelled: &'a AtomicUsize,
    questions: usize,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.cancelled.fetch_add(self.questions, Ordering::SeqCst);
        }
    }
}

impl<D: Domain> Answerer<D> for Gated<D> {
    fn id(&self) -> AnswererId {
        AnswererId::oracle()
    }

    fn answer(&self, batch: Vec<Query<D>>) -> BoxFuture<'_, Answers<D::Answer>> {
        Box::pin(async move {
            {
                let mut calls = self.calls.lock().unwrap();
                for q in &batch {
                    *calls.entry(q.question.clone()).or_default() += 1;
                }
            }
            self.entered.send_modify(|e| *e += batch.len());
            let mut guard = CancelGuard {
                cancelled: &self.cancelled,
                questions: batch.len(),
                armed: true,
            };
            let mut open = self.open.subscribe();
            open.wait_for(|&o| o)
                .await
                .map_err(|_| AnswerError::Unavailable("gate dropped".into()))?;
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            guard.armed = false;
            self.oracle.answer(batch).await
        })
    }
}

/// Settings for a tiny training run that finishes a round in seconds in a debug build.
#[cfg(feature = "model")]
pub fn tiny_run<D: Domain>(domain: &D, size: usize, supervised: bool) -> hch::train::RunConfig {
    use hch::model::config::{ModelConfig, Preset};
    hch::train::RunConfig {
        format: hch::train::RUN_FORMAT,
        domain: D::KIND.name().to_string(),
        supervised,
        seed: 7,
        start_size: size,
        target_size: size,
        size_step: 1,
        advance_at: 0.9,
        difficulty_curriculum: false,
        roots_per_round: 128,
        questions_per_instance: 4,
        reproducible: false,
        descent: 8,
        roots_per_part: 64,
        steps_per_round: 60,
        heldout: 128,
        gate_tolerance: 0.05,
        model: ModelConfig::preset(domain, Preset::Tiny),
        train: hch::model::distill::TrainConfig {
            learning_rate: 2e-3,
            batch_size: 32,
            grad_clip: 1.0,
            replay_window: 4096,
            seed: 7,
            ema_horizon: 100,
        },
    }
}

/// A coordinator and `workers` oracle workers on loopback ports, with default settings.
pub async fn oracle_cluster(workers: usize) -> hch::server::Cluster {
    hch::server::Cluster::start(hch::server::ClusterConfig {
        workers,
        ..Default::default()
    })
    .await
    .expect("an oracle cluster starts on loopback")
}

/// A permutation question at size 16 asked at `hch:3` (eight leaf calls, one after another), as a
/// wire request, with its true answer.
pub fn permutation_request(seed: u64) -> (hch::rpc::pb::AskRequest, String) {
    use hch::domain::{DomainKind, Instance};
    let d = hch::domain::permutation::Permutation;
    let inst = Instance::generate(&d, 16, seed).unwrap();
    let q = d.sample_question(inst.facts(), &mut hch::rng::Rng::new(seed));
    let request = hch::rpc::pb::AskRequest {
        domain: DomainKind::Permutation.name().to_string(),
        instance: Some(hch::rpc::pb::ask_request::Instance::InstanceText(
            d.print_facts(inst.facts()),
        )),
        question: d.print_question(&q),
        mode: "hch:3".into(),
        budget: None,
        want_trace: false,
    };
    (request, d.print_answer(&d.truth(inst.facts(), &q)))
}

/// A server in its own process (the `hch` binary, as an operator runs it), killed when dropped.
pub struct Process {
    pub child: Child,
    pub addr: String,
}

impl Process {
    /// Starts `hch ARGS` and waits for its `... listening on ADDR` line.
    pub fn start(args: &[&str]) -> Process {
        Self::start_with_env(args, &[])
    }

    /// [`Process::start`] with these environment variables set.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hch"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("hch starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .split_once(" listening on ")
            .map(|(_, addr)| addr.to_string())
            .unwrap_or_else(|| panic!("unexpected first line {line:?} from hch {args:?}"));
        Process { child, addr }
    }

    pub fn worker(listen: &str) -> Process {
        Process::start(&["worker", "--oracle", "--listen", listen])
    }

    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill {signal} failed");
    }

    /// Waits until the kernel reports the process in the state that `signal` leads to ('T' for
    /// stopped, anything else for running), so that the test's clock starts at the fault itself.
    pub async fn wait_state(&self, stopped: bool) {
        let stat = format!("/proc/{}/stat", self.child.id());
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let state = std::fs::read_to_string(&stat).unwrap_or_default();
            let after = state.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
            if after.starts_with('T') == stopped {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the process did not change state"
            );
            tokio::task::yield_now().await;
        }
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over HTTP/1.1; the body, if the status is 200.
pub fn http_get(addr: &str, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP response: {response:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{path}: {head}"));
    }
    // Chunked transfer: join the chunks.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).map_err(|e| e.to_string())?;
            if size == 0 {
                break;
            }
            out.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        return Ok(out);
    }
    Ok(body.to_string())
}
