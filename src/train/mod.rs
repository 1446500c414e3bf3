//! Amplify, distill, iterate: the training loop.
//!
//! A *run* lives in one directory:
//!
//! ```text
//! run/
//!   run.json        the run's settings (checked on resume: a run continues as it started)
//!   registry/       generations g000000 (random weights), g000001, …; CURRENT is the promoted X
//!   targets/        the training-target store (Parquet shards, see [`store`])
//!   checkpoints/    the trainer's state after the newest round (student, Adam, teacher)
//! ```
//!
//! Round n (producing generation n+1) is [`Run::train`]'s loop body, one step per method in
//! `round.rs`:
//! 1. **Produce targets.** Sample root questions (several per fresh instance) at the curriculum's
//!    stage; evaluate Amplify(H, X_n) on each (a [`TargetSource`]: in this process, or through a
//!    coordinator and its workers), and also on a random path of the subquestions H asked below
//!    each root, so X learns the questions it is asked inside trees. Subquestions H can answer
//!    from the facts H answers itself (the paper's `answer_if_simple`). Commit the targets to the
//!    store in parts.
//! 2. **Measure the teacher.** X_n's agreement with the round's amplified targets on its fresh
//!    root questions: the curriculum's measure, as in the paper.
//! 3. **Distill.** Continue training the student on minibatches from the replay window (the newest
//!    targets), with Adam; the teacher is a moving average of the student.
//! 4. **Gate.** Promote the teacher unless its agreement with Amplify(H, X_n) on held-out
//!    questions at the stage falls more than the tolerance below X_n's own.
//! 5. **Next stage.** Once X_n agrees with its round's targets often enough, the next round asks
//!    one level harder questions (by the difficulty visible in their text, where a domain has
//!    one) and, at the hardest, larger instances, up to the target size.
//! 6. **Report.** Held-out accuracy against the truth, per difficulty bucket, and of
//!    Amplify(H, generation): computed, printed, stored, and read by nothing that decides.
//! 7. **Publish** the teacher as generation n+1, with its [`RoundRecord`] in the manifest (and the
//!    trainer's checkpoint, first); if promoted, make it current (so workers load it). A rejected
//!    generation stays in the registry for the record; X_n keeps amplifying.
//!
//! The loop stops at a number of rounds, an accuracy of the promoted generation (which ends a run
//! and changes nothing before), or a wall time ([`StopAt`]).
//!
//! # Where things are
//!
//! - [`decide`]: every decision of the loop (gate, curriculum, stage filter, stop) as a pure
//!   function with its unit tests. A change of rules goes here and nowhere else.
//! - `round.rs`: [`Run::train`] and the round's steps, which do the work and call [`decide`].
//! - `run.rs`: [`Run`]: opening or creating a run directory, generation 0, the records so far.
//! - `targets.rs`: root questions, the descent below them, target rows, and rows back as examples.
//! - `evaluate.rs`: the agreements the loop decides by, and the accuracies it reports.
//! - `checkpoint.rs`: the trainer's state, saved each round and verified on resume.
//! - `config.rs`: [`RunConfig`] (`run.json`) and [`StopAt`]; `record.rs`: [`RoundRecord`] and
//!   [`Progress`]; `error.rs`: [`TrainError`].
//! - [`amplify`]: the target sources; [`store`]: the Parquet target store; [`report`]: tables and
//!   plots that compare runs.
//!
//! # The ground truth decides nothing
//!
//! Targets, the curriculum and the gate come from H, the facts, the models and their amplified
//! answers. The truth ([`Domain::truth`](crate::domain::Domain::truth), and
//! [`Domain::difficulty`](crate::domain::Domain::difficulty) where it takes a solver) is read
//! only for the report and by the explicit supervised baseline ([`amplify::GroundTruth`]). Two
//! tests hold this: each [`RoundRecord`] counts the truth calls made while its targets were
//! produced, which must be zero for amplification (`tests/ground_truth_isolation.rs`); and a run
//! with the truth poisoned makes the same decisions, targets and weights as without
//! (`tests/truth_poisoned.rs`).
//!
//! # Resume
//!
//! Everything a round decides is a function of (run seed, round, index) and of what the models
//! answer, and everything it finishes is committed atomically: target parts to the store, the
//! trainer's checkpoint, generations to the registry. A restarted run reads the newest generation
//! and its checkpoint (student, Adam's moments, teacher, sampler), skips the target parts of its
//! round that are already committed, and goes on; it loses no committed target and writes none
//! twice. With [`RunConfig::reproducible`] it ends with the very weights of an uninterrupted run
//! (`tests/train_resume.rs`).

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
