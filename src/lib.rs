//! # hch: a distributed evaluator of HCH trees for iterated amplification
//!
//! Map of the crate (one concept per module):
//!
//! - [`domain`]: the five task families of Christiano, Shlegeris & Amodei (2018): instance
//!   generation, the plain-text syntax, token encodings, the overseer H and the ground truth.
//! - [`eval`]: tree evaluation (modes, budgets, the single-flight memo, traces).
//! - [`answerer`]: the interface every answerer implements (oracle, model, remote pool), their
//!   typed identities, and the dynamic batching layer any answerer can be wrapped in.
//! - `model`: the distilled models (tch): architecture, batched inference, training.
//! - [`registry`]: the generations of a trained model on disk (weights plus a verified manifest,
//!   published atomically) and the `CURRENT` pointer to the one in use.
//! - [`fsutil`]: crash-safe file writing (temporary file, fsync, rename) and streaming SHA-256.
//! - [`text`]: the parser toolkit behind the text syntax and its pointed error messages.
//! - [`metrics`]: Prometheus metrics, one registry per server, served by the admin listener.
//! - [`otel`]: OpenTelemetry spans of each tree, its worker calls and the workers' batches,
//!   exported over OTLP when an endpoint is configured (`rpc::telemetry` is their wire context).
//! - [`tls`]: transport security: TLS and mutual TLS from PEM files, reloaded when they change.
//! - [`rng`]: the reproducible random stream instances are generated from.
//! - [`rpc`]: the wire (generated code, each message's encode/decode pair, the error-to-status
//!   mapping); [`worker`], [`coordinator`], [`server`]: the distributed system over gRPC.
//! - `train`: the amplify-distill loop: target sources, the Parquet target store, the
//!   curriculum and gate, resume, reports.
//! - [`cli`]: the `hch` command line.
//!
//! `model` and `train` (and model workers) need libtorch and are behind the cargo feature `model`,
//! on by default. Without it the crate builds with no libtorch: coordinators, oracle workers,
//! clients and the tree evaluator.
//!
//! Dependencies point one way, from the services through the evaluator to the domains, with one
//! edge back by design: H (`Domain::oversee`) asks its subquestions through the evaluator's
//! [`eval::Ask`] handle.
//!
//! The flow of one question: the caller builds an [`domain::Instance`] (generated from a seed or
//! parsed from text), then an [`eval::Evaluator`] runs the domain's overseer on the root question;
//! every subquestion recurses or goes to the [`answerer::Answerer`] at the mode's depth, identical
//! subquestions are shared through the evaluator's memo, and the result carries the answer,
//! counters and a [`eval::trace::Trace`].
//!
//! The flow of training: `train::Run` samples root questions, a `train::TargetSource` evaluates
//! Amplify(H, X) on them (in-process, or through a coordinator whose workers serve the run's
//! registry), the targets are committed to a `train::store::TargetStore`, the student distils
//! them (`model::distill`), is evaluated against the ground truth, and is published and promoted in
//! the [`registry`], from which workers hot-load it.
#![forbid(unsafe_code)]

pub mod answerer;
pub mod cli;
pub mod coordinator;
pub mod domain;
pub mod eval;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
#[cfg(feature = "model")]
pub mod model;
pub mod otel;
pub mod registry;
pub mod rng;
pub mod rpc;
pub mod server;
pub mod text;
pub mod tls;
#[cfg(feature = "model")]
pub mod train;
pub mod worker;
