//! Where training targets come from: Amplify(H, X), evaluated in this process or by a coordinator
//! and its workers, and, for the supervised baseline only, the ground truth.
//!
//! Every source also reports the subquestions H asked at the root (from the tree's trace): the
//! loop amplifies some of those too, so that X is trained on the distribution of questions it is
//! asked inside trees, down to the simple ones H answers from the facts. That is what grounds the
//! bootstrap: at first only H's direct answers are right, and each round makes X right one level
//! further up.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use tonic::transport::Channel;

use super::TrainError;
use crate::answerer::batched::{BatchConfig, BatchedAnswerer};
use crate::answerer::{Answerer, AnswererId, Oracle};
use crate::domain::{parse_reply, Domain, Instance};
use crate::eval::trace::TraceView;
use crate::eval::{Budget, EvalOptions, Evaluator, Mode};
use crate::model::answerer::ModelAnswerer;
use crate::model::generation;
use crate::registry::{Manifest, Registry};
use crate::rpc::coordinator::{AskQuery, AskReply, CoordinatorStatus, InstanceSpec};
use crate::rpc::pb::coordinator_client::CoordinatorClient;
use crate::rpc::{pb, ServiceError};

/// One question to produce a target for.
pub struct Task<D: Domain> {
    pub instance: Arc<Instance<D>>,
    pub size: u32,
    pub seed: u64,
    pub question: D::Question,
}

impl<D: Domain> Clone for Task<D> {
    fn clone(&self) -> Self {
        Self {
            instance: self.instance.clone(),
            size: self.size,
            seed: self.seed,
            question: self.question.clone(),
        }
    }
}

/// What a source made of one task.
pub struct Produced<D: Domain> {
    /// The target; `None` (unknown) is not used for training.
    pub answer: Option<D::Answer>,
    /// Who answered the subquestions ("model g3", "ground truth").
    pub answerer: String,
    pub generation: Option<u64>,
    pub tree_id: String,
    pub nodes: u64,
    pub time_us: u64,
    /// The subquestions H asked at the root, in order, without repeats.
    pub subquestions: Vec<D::Question>,
}

/// A producer of training targets.
pub trait TargetSource<D: Domain>: Send + Sync {
    /// One [`Produced`] per task, in order.
    fn produce<'a>(
        &'a self,
        tasks: &'a [Task<D>],
    ) -> BoxFuture<'a, Result<Vec<Produced<D>>, TrainError>>;

    /// Makes `manifest`'s generation the X of every later [`TargetSource::produce`] (a no-op for
    /// the ground truth). Returns once it is in use.
    fn serve<'a>(&'a self, manifest: &'a Manifest) -> BoxFuture<'a, Result<(), TrainError>>;

    /// Whether the targets are amplified answers (false: the ground truth).
    fn amplified(&self) -> bool;
}

/// Trees evaluated at once by the in-process sources (enough to fill a forward pass).
const CONCURRENT_TREES: usize = 512;

/// Batching for answerers in this process: large batches, a short wait, a queue that never refuses
/// (the callers are our own trees).
pub(crate) fn local_batching() -> BatchConfig {
    BatchConfig {
        max_batch: 1024,
        max_wait: Duration::from_micros(500),
        queue_capacity: 1 << 16,
    }
}

/// Amplified trees evaluated in this process over the current generation.
pub struct LocalAmplifier<D: Domain + Copy> {
    domain: D,
    registry: Registry,
    answerer: Arc<BatchedAnswerer<D>>,
    evaluator: Evaluator<D>,
    reproducible: bool,
}

impl<D: Domain + Copy> LocalAmplifier<D> {
    /// Starts on the current tokio runtime, serving `manifest`'s generation. With `reproducible`,
    /// each model query is a forward pass of its own, so that the targets do not depend on how
    /// timing groups queries into batches (a run's `reproducible` setting).
    pub fn start(
        domain: D,
        registry: Registry,
        manifest: &Manifest,
        reproducible: bool,
    ) -> Result<Self, TrainError> {
        let first = load_answerer(domain, &registry, manifest, reproducible)?;
        let answerer = Arc::new(BatchedAnswerer::start(first, local_batching()));
        let evaluator = Evaluator::new(
            domain,
            Some(answerer.clone() as Arc<dyn Answerer<D>>),
            EvalOptions::default(),
        );
        Ok(Self {
            domain,
            registry,
            answerer,
            evaluator,
            reproducible,
        })
    }
}

fn load_answerer<D: Domain + Copy>(
    domain: D,
    registry: &Registry,
    manifest: &Manifest,
    one_by_one: bool,
) -> Result<Arc<dyn Answerer<D>>, TrainError> {
    let loaded = generation::load(
        registry,
        Some(manifest.generation),
        domain,
        crate::model::pick_device(),
    )?;
    let id = loaded.answerer_id();
    let answerer = ModelAnswerer::new(loaded.model, id);
    Ok(Arc::new(if one_by_one {
        answerer.one_by_one()
    } else {
        answerer
    }))
}

/// Amplify(H, answerer) on each task with `evaluator`, keeping the root's subquestions.
async fn amplify_locally<D: Domain>(
    evaluator: &Evaluator<D>,
    tasks: &[Task<D>],
) -> Result<Vec<Produced<D>>, TrainError> {
    // Collected first: a lazy `map` closure here trips the compiler's higher-ranked lifetime
    // check when the future is boxed as `Send`.
    let trees: Vec<_> = tasks.iter().map(|t| amplify_one(evaluator, t)).collect();
    futures::stream::iter(trees)
        .buffered(CONCURRENT_TREES)
        .try_collect()
        .await
}

async fn amplify_one<D: Domain>(
    evaluator: &Evaluator<D>,
    task: &Task<D>,
) -> Result<Produced<D>, TrainError> {
    let result = evaluator
        .evaluate(
            &task.instance,
            task.question.clone(),
            Mode::Amplified,
            Budget::default(),
        )
        .await
        .map_err(|e| TrainError::Source(e.to_string()))?;
    let trace = result.trace.as_ref();
    let answerer = trace.and_then(|t| t.answerer.as_ref());
    let mut subquestions: Vec<D::Question> = Vec::new();
    for node in trace.map(|t| t.nodes.as_slice()).unwrap_or_default() {
        if node.depth == 1 && !subquestions.contains(&node.question) {
            subquestions.push(node.question.clone());
        }
    }
    Ok(Produced {
        answer: result.answer,
        generation: answerer.and_then(AnswererId::generation),
        answerer: answerer.map_or_else(|| "nobody".to_string(), |a| a.label().to_string()),
        tree_id: format!("local-{}", result.tree),
        nodes: result.stats.nodes,
        time_us: result.elapsed.as_micros() as u64,
        subquestions,
    })
}

impl<D: Domain + Copy> TargetSource<D> for LocalAmplifier<D> {
    fn produce<'a>(
        &'a self,
        tasks: &'a [Task<D>],
    ) -> BoxFuture<'a, Result<Vec<Produced<D>>, TrainError>> {
        Box::pin(amplify_locally(&self.evaluator, tasks))
    }

    fn serve<'a>(&'a self, manifest: &'a Manifest) -> BoxFuture<'a, Result<(), TrainError>> {
        Box::pin(async move {
            let next = load_answerer(self.domain, &self.registry, manifest, self.reproducible)?;
            self.answerer.replace(next);
            Ok(())
        })
    }

    fn amplified(&self) -> bool {
        true
    }
}

/// Amplified trees evaluated by a coordinator (and its workers) over gRPC. The workers load
/// generations from the registry the trainer publishes to; [`TargetSource::serve`] waits until
/// the coordinator reports every worker on the new generation.
pub struct RemoteAmplifier<D: Domain> {
    domain: D,
    client: CoordinatorClient<Channel>,
    /// Longest wait for the workers to load a promoted generation.
    pub load_timeout: Duration,
    /// The client token, for a coordinator that requires one.
    pub token: Option<String>,
}

impl<D: Domain + Copy> RemoteAmplifier<D> {
    /// Connects to the coordinator at `address` (`host:port` or a URL), over TLS with `tls`.
    pub async fn connect(
        domain: D,
        address: &str,
        tls: Option<std::sync::Arc<crate::tls::ClientTls>>,
    ) -> Result<Self, TrainError> {
        let endpoint = crate::tls::endpoint(address).map_err(TrainError::Source)?;
        let channel = crate::tls::connect(endpoint, tls)
            .await
            .map_err(|e| TrainError::Source(format!("cannot reach coordinator {address}: {e}")))?;
        Ok(Self {
            domain,
            client: CoordinatorClient::new(channel)
                .max_decoding_message_size(crate::rpc::limits::MAX_MESSAGE_BYTES),
            load_timeout: Duration::from_secs(20),
            token: None,
        })
    }

    async fn ask(&self, task: &Task<D>) -> Result<Produced<D>, TrainError> {
        let query = AskQuery {
            domain: D::KIND,
            instance: InstanceSpec::Generated {
                size: task.size,
                seed: task.seed,
            },
            question: self.domain.print_question(&task.question),
            mode: Mode::Amplified,
            budget: Budget::default(),
            want_trace: true,
        };
        let response = self
            .client
            .clone()
            .ask(self.request(query.encode()))
            .await
            .map_err(|s| coordinator_error(s.into()))?;
        let reply = AskReply::decode(response.into_inner()).map_err(coordinator_error)?;
        // H can combine wrong subanswers into a value outside the domain's answers (a sum out of
        // range); like any unrepresentable answer, that is no target.
        let answer = parse_reply(&self.domain, &reply.answer).unwrap_or(None);
        let subquestions = reply
            .trace
            .as_ref()
            .map(|t| root_subquestions(&self.domain, t))
            .transpose()?
            .unwrap_or_default();
        Ok(Produced {
            answer,
            generation: reply.generation,
            answerer: reply.answerer.unwrap_or_else(|| "nobody".to_string()),
            tree_id: reply.tree_id,
            nodes: reply.stats.nodes,
            time_us: reply.elapsed.as_micros() as u64,
            subquestions,
        })
    }

    /// A call to the coordinator, carrying the token if there is one.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        crate::coordinator::auth::attach(&mut request, self.token.as_deref());
        request
    }

    async fn status(&self) -> Result<CoordinatorStatus, TrainError> {
        let response = self
            .client
            .clone()
            .status(self.request(pb::StatusRequest {}))
            .await
            .map_err(|s| coordinator_error(s.into()))?;
        CoordinatorStatus::decode(response.into_inner()).map_err(coordinator_error)
    }
}

fn coordinator_error(e: ServiceError) -> TrainError {
    TrainError::Source(format!("coordinator: {}", e.message()))
}

/// The subquestions H asked at the root of a tree, in order, without repeats.
fn root_subquestions<D: Domain>(
    domain: &D,
    trace: &TraceView,
) -> Result<Vec<D::Question>, TrainError> {
    let mut subquestions: Vec<D::Question> = Vec::new();
    for node in trace.nodes.iter().filter(|n| n.depth == 1) {
        let q = domain
            .parse_question(&node.question)
            .map_err(|e| TrainError::Source(format!("coordinator sent a bad subquestion: {e}")))?;
        if !subquestions.contains(&q) {
            subquestions.push(q);
        }
    }
    Ok(subquestions)
}

impl<D: Domain + Copy> TargetSource<D> for RemoteAmplifier<D> {
    fn produce<'a>(
        &'a self,
        tasks: &'a [Task<D>],
    ) -> BoxFuture<'a, Result<Vec<Produced<D>>, TrainError>> {
        let calls: Vec<_> = tasks.iter().map(|t| self.ask(t)).collect();
        Box::pin(
            futures::stream::iter(calls)
                .buffered(CONCURRENT_TREES / 4)
                .try_collect(),
        )
    }

    fn serve<'a>(&'a self, manifest: &'a Manifest) -> BoxFuture<'a, Result<(), TrainError>> {
        Box::pin(async move {
            let want = manifest.generation;
            let deadline = tokio::time::Instant::now() + self.load_timeout;
            // Workers poll the registry and the coordinator polls the workers; wait (polling the
            // coordinator's status) until every worker it knows serves the new generation.
            let mut tick = tokio::time::interval(Duration::from_millis(25));
            loop {
                tick.tick().await;
                let status = self.status().await?;
                let total = status.workers.len();
                let ready = status
                    .workers
                    .iter()
                    .filter(|w| w.healthy && w.generation == Some(want))
                    .count();
                if total > 0 && ready == total {
                    return Ok(());
                }
                if tokio::time::Instant::now() > deadline {
                    let seen: Vec<String> = status
                        .workers
                        .iter()
                        .map(|w| {
                            format!(
                                "{} {} serving {}",
                                w.address,
                                if w.healthy { "up" } else { "down" },
                                w.answerer.as_deref().unwrap_or("nothing")
                            )
                        })
                        .collect();
                    return Err(TrainError::Source(format!(
                        "after {:?}, {ready} of {total} workers serve g{want} ({}): are they \
                         watching this run's registry?",
                        self.load_timeout,
                        seen.join(", ")
                    )));
                }
            }
        })
    }

    fn amplified(&self) -> bool {
        true
    }
}

/// The supervised baseline's source: the same trees (so the same question distribution, the
/// root's subquestions included) evaluated over the oracle, with the ground truth as the target.
pub struct GroundTruth<D: Domain + Copy> {
    domain: D,
    evaluator: Evaluator<D>,
}

impl<D: Domain + Copy> GroundTruth<D> {
    pub fn new(domain: D) -> Self {
        Self {
            domain,
            evaluator: Evaluator::new(
                domain,
                Some(Arc::new(Oracle::new(domain))),
                EvalOptions::default(),
            ),
        }
    }
}

impl<D: Domain + Copy> TargetSource<D> for GroundTruth<D> {
    fn produce<'a>(
        &'a self,
        tasks: &'a [Task<D>],
    ) -> BoxFuture<'a, Result<Vec<Produced<D>>, TrainError>> {
        Box::pin(async move {
            let mut produced = amplify_locally(&self.evaluator, tasks).await?;
            for (p, task) in produced.iter_mut().zip(tasks) {
                p.answer = Some(self.domain.truth(task.instance.facts(), &task.question));
                p.answerer = "ground truth".to_string();
                p.generation = None;
                p.tree_id = String::new();
            }
            Ok(produced)
        })
    }

    fn serve<'a>(&'a self, _manifest: &'a Manifest) -> BoxFuture<'a, Result<(), TrainError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn amplified(&self) -> bool {
        false
    }
}
