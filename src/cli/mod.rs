//! The `hch` command line. Each subcommand is a thin layer over the library: it parses flags,
//! builds the pieces, and prints. Errors surface as `anyhow` messages at this edge only.

#[cfg(feature = "model")]
mod demo;
mod loadtest;
#[cfg(feature = "model")]
mod model_bench;
mod remote;
mod report;
mod serve;
#[cfg(feature = "model")]
mod train;

#[cfg(feature = "model")]
use demo::DemoArgs;
#[cfg(feature = "model")]
use model_bench::ModelBenchArgs;
#[cfg(feature = "model")]
use train::{ReportArgs, TrainArgs};
#[cfg(not(feature = "model"))]
type TrainArgs = NeedsModel;
#[cfg(not(feature = "model"))]
type ReportArgs = NeedsModel;
#[cfg(not(feature = "model"))]
type DemoArgs = NeedsModel;
#[cfg(not(feature = "model"))]
type ModelBenchArgs = NeedsModel;

/// The arguments of a command this build cannot run, taken whole so that the refusal is about the
/// command, not about a flag.
#[cfg(not(feature = "model"))]
#[derive(Args, Debug)]
struct NeedsModel {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    args: Vec<String>,
}

/// What a command that needs libtorch says in a build without it.
#[cfg(not(feature = "model"))]
pub(crate) fn needs_model(what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} needs the distilled models, and this hch was built without them (cargo feature \
         `model`, which brings libtorch, is off): build with default features to use it"
    )
}

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::io::Write as _;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::answerer::{Answerer, Oracle};
use crate::domain::{parse_question_for, print_reply, Domain, DomainKind, Instance, FULL_SIZE};
use crate::eval::{Budget, EvalOptions, Evaluator, Mode};
use crate::rng::Rng;
use crate::with_domain;

#[derive(Parser, Debug)]
#[command(
    name = "hch",
    version,
    about = "Evaluate HCH trees for iterated amplification",
    long_about = "Evaluate HCH trees for iterated amplification: an overseer H breaks questions \
                  into subquestions answered by recursion or by a model.\n\nDomains: permutation, \
                  assignments, wildcard, shortest-path, union-find (syntax in docs/domains.md)."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Pose one question about an instance and print the answer (and, with --tree, the tree).
    Ask(AskArgs),
    /// Print a generated instance and sample questions with their true answers.
    Sample(SampleArgs),
    /// Serve a worker: answers batches of questions with a model (or the oracle, for tests).
    Worker(serve::WorkerArgs),
    /// Serve a coordinator: evaluates trees for clients over a pool of workers.
    Coordinator(serve::CoordinatorArgs),
    /// A coordinator and N workers in one process, for local use.
    Up(serve::UpArgs),
    /// Serve a model registry's generations to workers on other nodes (`hch worker
    /// --registry-url`), so that they need no shared filesystem.
    Registry(serve::RegistryArgs),
    /// Receive OTLP/gRPC traces and print them: checks that servers export spans (point their
    /// OTEL_EXPORTER_OTLP_ENDPOINT here) without running a collector.
    OtlpSink(serve::OtlpSinkArgs),
    /// Make a client token for a coordinator's token file (`--tokens`): prints the token (give it
    /// to the client) and its entry (add it to the file; it holds only the token's hash).
    Token(TokenArgs),
    /// Measure subquestions per second through a coordinator and workers on loopback, against
    /// the raw rate of trivial unary gRPC calls.
    Loadtest(loadtest::LoadtestArgs),
    /// Measure the model's raw rate (questions per second through forward passes alone) by size
    /// and batch, with and without the encoding cache, on the device workers would use.
    ModelBench(ModelBenchArgs),
    /// Amplify, distill, iterate: train generations of a model from H's decompositions alone
    /// (or, with --supervised, from the ground truth). Resumes a run directory where it stopped.
    Train(TrainArgs),
    /// Compare runs: per-generation tables, steps and time to an accuracy, and a plot (SVG).
    Report(ReportArgs),
    /// The main demo: an embedded coordinator and workers train a model from random weights
    /// by amplification until 95% held-out accuracy, then answer questions in every mode.
    Demo(DemoArgs),
}

/// Where the instance comes from: generated from (size, seed), or given as text.
#[derive(Args, Debug)]
pub(crate) struct InstanceArgs {
    /// The domain: permutation, assignments, wildcard, shortest-path or union-find.
    #[arg(short, long)]
    pub(crate) domain: DomainKind,
    /// Instance size (number of symbols) when generating; the paper's full size is 64.
    #[arg(long, default_value_t = FULL_SIZE)]
    pub(crate) size: usize,
    /// Seed of the generated instance.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// The instance's facts in the domain's text syntax, instead of generating.
    #[arg(long, conflicts_with_all = ["instance_file"])]
    pub(crate) instance: Option<String>,
    /// A file holding the instance's facts in text syntax.
    #[arg(long)]
    pub(crate) instance_file: Option<PathBuf>,
}

/// Which answerer answers at the leaves.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AnswererChoice {
    /// Ground truth. For checking trees and evaluation only; models come with `hch train`.
    Oracle,
    /// No answerer (exact mode only).
    None,
}

#[derive(Args, Debug)]
pub(crate) struct AskArgs {
    #[command(flatten)]
    pub(crate) instance: InstanceArgs,
    /// The question in the domain's text syntax (for example `01*0*1` for wildcard).
    #[arg(short, long)]
    pub(crate) question: String,
    /// distilled, amplified, hch:D or exact.
    #[arg(short, long, default_value = "exact")]
    pub(crate) mode: Mode,
    /// The answerer at the leaves (required by every mode but exact).
    #[arg(long, value_enum, default_value_t = AnswererChoice::None)]
    pub(crate) answerer: AnswererChoice,
    /// Depth budget (the root is depth 0).
    #[arg(long)]
    pub(crate) max_depth: Option<u32>,
    /// Node budget.
    #[arg(long)]
    pub(crate) max_nodes: Option<u64>,
    /// Deadline for the whole tree, in milliseconds.
    #[arg(long)]
    pub(crate) deadline_ms: Option<u64>,
    /// Turn the memo off (every subquestion is evaluated, even if seen before).
    #[arg(long)]
    pub(crate) no_memo: bool,
    /// Print the tree, one node per line.
    #[arg(long)]
    pub(crate) tree: bool,
    /// Print the instance's facts.
    #[arg(long)]
    pub(crate) show_instance: bool,
    /// Also print the ground truth, to check the answer.
    #[arg(long)]
    pub(crate) truth: bool,
    /// Ask a running coordinator (`http://host:port`) instead of evaluating here.
    #[arg(long)]
    pub(crate) addr: Option<String>,
    /// The client token for a coordinator that requires one (`hch token`).
    #[arg(long, requires = "addr")]
    pub(crate) token: Option<String>,
    #[command(flatten)]
    pub(crate) tls: ClientTlsArgs,
}

/// How a client reaches a server over TLS.
#[derive(Args, Debug, Clone, Default)]
pub struct ClientTlsArgs {
    /// Connect over TLS, trusting servers whose certificates chain to this CA (PEM).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Present this client certificate chain (PEM) for mutual TLS ...
    #[arg(long, requires = "tls_ca", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// ... with this private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Verify the server's certificate as this name instead of the host in the address.
    #[arg(long, requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}

impl ClientTlsArgs {
    /// The loaded configuration, or `None` for plain TCP. An `https://` address without a CA is
    /// refused rather than silently sent in the clear.
    pub fn load(&self, address: &str) -> Result<Option<Arc<crate::tls::ClientTls>>> {
        let Some(ca) = &self.tls_ca else {
            if address.starts_with("https://") {
                bail!(
                    "{address} is https: give the CA that signed its certificate (--tls-ca FILE)"
                );
            }
            return Ok(None);
        };
        let files = crate::tls::ClientTlsFiles {
            ca: ca.clone(),
            identity: self.tls_cert.clone().zip(self.tls_key.clone()),
            server_name: self.tls_server_name.clone(),
        };
        Ok(Some(crate::tls::ClientTls::load(files)?))
    }

    /// A channel to `address`, connected now.
    pub async fn connect(&self, address: &str) -> Result<tonic::transport::Channel> {
        let tls = self.load(address)?;
        let endpoint = crate::tls::endpoint(address)
            .map_err(anyhow::Error::msg)?
            .tcp_nodelay(true);
        crate::tls::connect(endpoint, tls)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to {address}: {}", error_chain(&e)))
    }
}

/// An error and its causes on one line (tonic's transport errors say little at the top).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[derive(Args, Debug)]
struct TokenArgs {
    /// The client's name (traces are readable only by the client that asked).
    name: String,
    /// Its rights: ask (Ask, AskStream, GetTrace of its own trees) and status.
    #[arg(long, value_delimiter = ',', default_value = "ask")]
    rights: Vec<String>,
}

#[derive(Args, Debug)]
struct SampleArgs {
    #[command(flatten)]
    instance: InstanceArgs,
    /// How many questions to sample.
    #[arg(long, default_value_t = 5)]
    questions: usize,
}

/// Whether `error` is a write to a reader that went away (`hch sample | head -1`): then a
/// command-line tool stops quietly.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Entry point of the `hch` binary.
pub fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Ask(args) if args.addr.is_some() => remote::ask(args).await,
            Command::Ask(args) => with_domain!(args.instance.domain, d => ask(d, args).await),
            Command::Sample(args) => with_domain!(args.instance.domain, d => sample(d, args)),
            Command::Token(args) => token(args),
            Command::Worker(args) => serve::worker(args).await,
            Command::Coordinator(args) => serve::coordinator(args).await,
            Command::Up(args) => serve::up(args).await,
            Command::OtlpSink(args) => serve::otlp_sink(args).await,
            Command::Registry(args) => serve::registry(args).await,
            Command::Loadtest(args) => loadtest::run(args).await,
            #[cfg(feature = "model")]
            Command::Train(args) => train::train(args).await,
            #[cfg(feature = "model")]
            Command::Report(args) => train::report(args).await,
            #[cfg(feature = "model")]
            Command::Demo(args) => demo::demo(args).await,
            #[cfg(feature = "model")]
            Command::ModelBench(args) => tokio::task::block_in_place(|| model_bench::run(args)),
            #[cfg(not(feature = "model"))]
            Command::Train(_) => Err(needs_model("hch train")),
            #[cfg(not(feature = "model"))]
            Command::Report(_) => Err(needs_model("hch report")),
            #[cfg(not(feature = "model"))]
            Command::Demo(_) => Err(needs_model("hch demo")),
            #[cfg(not(feature = "model"))]
            Command::ModelBench(_) => Err(needs_model("hch model-bench")),
        }
    })
}

fn load_instance<D: Domain>(domain: &D, args: &InstanceArgs) -> Result<Arc<Instance<D>>> {
    let text = match (&args.instance, &args.instance_file) {
        (Some(text), _) => Some(text.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading instance file {}", path.display()))?,
        ),
        (None, None) => None,
    };
    match text {
        Some(text) => Instance::parse(domain, text.trim())
            .with_context(|| format!("parsing the {} instance", D::KIND)),
        None => Instance::generate(domain, args.size, args.seed).map_err(Into::into),
    }
}

async fn ask<D: Domain + Copy>(domain: D, args: AskArgs) -> Result<()> {
    let instance = load_instance(&domain, &args.instance)?;
    let question = parse_question_for(&domain, instance.facts(), &args.question)
        .with_context(|| format!("parsing the {} question", D::KIND))?;
    let answerer: Option<Arc<dyn Answerer<D>>> = match args.answerer {
        AnswererChoice::Oracle => Some(Arc::new(Oracle::new(domain))),
        AnswererChoice::None => None,
    };
    if answerer.is_none() && args.mode != Mode::Exact {
        bail!(
            "mode {} needs an answerer at the leaves: pass --answerer oracle (models come with \
             `hch train`), or use --mode exact",
            args.mode
        );
    }
    let evaluator = Evaluator::new(
        domain,
        answerer,
        EvalOptions {
            memo: !args.no_memo,
            trace: true,
        },
    );
    let budget = Budget {
        max_depth: args.max_depth,
        max_nodes: args.max_nodes,
        deadline: args.deadline_ms.map(Duration::from_millis),
    };
    let mut out = std::io::stdout().lock();
    if args.show_instance {
        writeln!(out, "instance: {}", domain.print_facts(instance.facts()))?;
    }
    let result = evaluator
        .evaluate(&instance, question.clone(), args.mode, budget)
        .await?;
    writeln!(
        out,
        "{} {} = {}",
        D::KIND,
        domain.print_question(&question),
        print_reply(&domain, &result.answer)
    )?;
    writeln!(
        out,
        "mode {}, {} nodes, {} memo hits, {} answerer queries, {:?}{}",
        args.mode,
        result.stats.nodes,
        result.stats.memo_hits,
        result.stats.answerer_queries,
        result.elapsed,
        result
            .exhausted
            .map(|e| format!(", degraded by {}", e.name()))
            .unwrap_or_default()
    )?;
    if args.truth {
        let truth = domain.truth(instance.facts(), &question);
        let verdict = if result.answer.as_ref() == Some(&truth) {
            "correct"
        } else {
            "WRONG"
        };
        writeln!(
            out,
            "ground truth: {} ({verdict})",
            domain.print_answer(&truth)
        )?;
    }
    if args.tree {
        if let Some(trace) = &result.trace {
            out.write_all(trace.render(&domain).as_bytes())?;
        }
    }
    Ok(())
}

fn token(args: TokenArgs) -> Result<()> {
    for right in &args.rights {
        if !["ask", "status"].contains(&right.as_str()) {
            bail!("unknown right {right:?}: the rights are ask and status");
        }
    }
    let rights: Vec<&str> = args.rights.iter().map(String::as_str).collect();
    let (token, entry) =
        crate::coordinator::auth::new_token(&args.name, &rights).map_err(anyhow::Error::msg)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "token (give to {}): {token}", args.name)?;
    writeln!(out, "entry (add to the coordinator's token file): {entry}")?;
    Ok(())
}

fn sample<D: Domain>(domain: D, args: SampleArgs) -> Result<()> {
    let instance = load_instance(&domain, &args.instance)?;
    // Written with `?`, not `println!`, so that a reader that stops early (`hch sample | head -1`)
    // ends the command quietly instead of panicking (see `main`).
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", domain.print_facts(instance.facts()))?;
    let mut rng = Rng::derived(args.instance.seed, 0x5a3);
    for _ in 0..args.questions {
        let q = domain.sample_question(instance.facts(), &mut rng);
        writeln!(
            out,
            "{}  ->  {}",
            domain.print_question(&q),
            domain.print_answer(&domain.truth(instance.facts(), &q))
        )?;
    }
    Ok(())
}
