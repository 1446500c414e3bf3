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
//! Round n (producing generation n+1):
//! 1. **Amplify.** Sample root questions on fresh instances at the curriculum's size; evaluate
//!    Amplify(H, X_n) on each (a [`TargetSource`]: in this process, or through a coordinator and
//!    its workers), and also on some of the subquestions H asked at each root, so X learns the
//!    questions it is asked inside trees. Commit the targets to the store in parts.
//! 2. **Distill.** Continue training the student on minibatches from the replay window (the newest
//!    targets).
//! 3. **Evaluate** the student on held-out questions against the ground truth, per difficulty
//!    bucket, at the curriculum's size and at the target size, with the amplification gap
//!    (accuracy of Amplify(H, student) minus the student's own).
//! 4. **Gate and publish.** Publish the student as generation n+1; promote it (so workers load it)
//!    unless its accuracy at the curriculum's size regresses by more than the tolerance against
//!    X_n's. A rejected generation stays in the registry for the record; X_n keeps amplifying.
//! 5. **Curriculum.** Once the promoted X's accuracy at the curriculum's size passes the threshold,
//!    the next round samples larger instances, up to the target size.
//!
//! # Ground truth stays out of targets
//!
//! Only evaluation and the explicit supervised baseline ([`amplify::GroundTruth`]) call
//! [`Domain::truth`]. Each [`RoundRecord`] carries the number of ground-truth calls made while its
//! targets were produced, which the isolation test checks is zero for amplification.
//!
//! # Resume
//!
//! Everything a round decides is a function of (run seed, round, index), and everything it
//! finishes is committed atomically: target parts to the store, generations to the registry. A
//! restarted run reads the newest generation, skips the target parts of its round that are already
//! committed, and goes on; it loses no committed target and writes none twice. (The optimiser's
//! moment estimates are not saved: a resumed student restarts Adam from its weights.)

pub mod amplify;
pub mod report;
pub mod store;

mod config;
mod error;
mod record;
mod run;
mod targets;

pub use amplify::{GroundTruth, LocalAmplifier, Produced, RemoteAmplifier, TargetSource, Task};
pub use config::{RunConfig, StopAt, RUN_FILE, RUN_FORMAT};
pub use error::TrainError;
pub use record::{Progress, RoundRecord};
pub use run::{amplified_accuracy, Run};
