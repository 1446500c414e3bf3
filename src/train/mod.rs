//! Amplify, distill, iterate: the training loop.
//!
//! A *run* lives in one directory:
//!
//! ```text
//! run/
//!   run.json        the run's settings (checked on resume: a run continues as it started)
//!   registry/       generations g000000 (random weights), g000001, …; CURRENT is the promoted X
//!   targets/        the training-target store (Parquet shards, see [`store`])
//! ```
//!
//! Round n (producing generation n+1) is [`Run::train`]'s loop body, one step per method in
//! `round.rs`:
//! 1. **Produce targets.** Sample root questions on fresh instances at the curriculum's stage;
//!    evaluate Amplify(H, X_n) on each (a [`TargetSource`]: in this process, or through a
//!    coordinator and its workers), and also on some of the subquestions H asked at each root, so
//!    X learns the questions it is asked inside trees. Commit the targets to the store in parts.
//! 2. **Distill.** Continue training the student on minibatches from the replay window (the newest
//!    targets).
//! 3. **Evaluate** the student on held-out questions against the ground truth, per difficulty
//!    bucket, at the stage and at the target size, with the amplification gap (accuracy of
//!    Amplify(H, student) minus the student's own).
//! 4. **Gate.** Promote the student unless its accuracy at the stage regresses by more than the
//!    tolerance against X_n's.
//! 5. **Next stage.** Once a promoted student passes the threshold at the stage, the next round asks
//!    one level harder questions (with the difficulty curriculum) and, at the hardest, larger
//!    instances, up to the target size.
//! 6. **Publish** the student as generation n+1, with its [`RoundRecord`] in the manifest; if
//!    promoted, make it current (so workers load it). A rejected generation stays in the registry
//!    for the record; X_n keeps amplifying.
//!
//! The loop stops at a number of rounds, an accuracy of the promoted generation, or a wall time
//! ([`StopAt`]).
//!
//! # Where things are
//!
//! - [`decide`]: every decision of the loop (gate, curriculum, stage filter, stop) as a pure
//!   function with its unit tests. A change of rules goes here and nowhere else.
//! - `round.rs`: [`Run::train`] and the round's steps, which do the work and call [`decide`].
//! - `run.rs`: [`Run`]: opening or creating a run directory, generation 0, the records so far.
//! - `targets.rs`: root questions, the descent below them, target rows, and rows back as examples.
//! - `evaluate.rs`: held-out sets, the student's and X_n's accuracies, [`amplified_accuracy`].
//! - `config.rs`: [`RunConfig`] (`run.json`) and [`StopAt`]; `record.rs`: [`RoundRecord`] and
//!   [`Progress`]; `error.rs`: [`TrainError`].
//! - [`amplify`]: the target sources; [`store`]: the Parquet target store; [`report`]: tables and
//!   plots that compare runs.
//!
//! # Ground truth stays out of targets
//!
//! Only evaluation and the explicit supervised baseline ([`amplify::GroundTruth`]) call
//! [`Domain::truth`](crate::domain::Domain::truth). Each [`RoundRecord`] carries the number of
//! ground-truth calls made while its targets were produced, which the isolation test checks is
//! zero for amplification.
//!
//! # Resume
//!
//! Everything a round decides is a function of (run seed, round, index), and everything it
//! finishes is committed atomically: target parts to the store, generations to the registry. A
//! restarted run reads the newest generation, skips the target parts of its round that are already
//! committed, and goes on; it loses no committed target and writes none twice. (The optimiser's
//! moment estimates are not saved: a resumed student restarts Adam from its weights.)

pub mod amplify;
pub mod decide;
pub mod report;
pub mod store;

mod checkpoint;
mod config;
mod error;
mod evaluate;
mod record;
mod round;
mod run;
mod targets;

pub use amplify::{GroundTruth, LocalAmplifier, Produced, RemoteAmplifier, TargetSource, Task};
pub use config::{RunConfig, StopAt, RUN_FILE, RUN_FORMAT};
pub use error::TrainError;
pub use evaluate::amplified_accuracy;
pub use record::{Progress, RoundRecord};
pub use run::Run;
