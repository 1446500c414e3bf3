//! The model's raw rate: questions per second through forward passes alone, the ceiling that tree
//! evaluation is measured against (`hch loadtest --model`, `hch model-bench`,
//! `scripts/gpu-check.sh`).
//!
//! A batch is shaped like a worker's: `per_instance` questions about each of its instances. Where
//! the instances come from decides what the encoding cache does: fresh instances (a new one per
//! group, as trees on new instances bring) are encoded on first sight, while a small recurring set
//! is encoded once and then only decoded. Only the forward passes are timed (with the copies to
//! and from the device, as serving does): making instances and questions is the caller's cost,
//! not the model's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cache::EncodingCache;
use super::Model;
use crate::domain::{Domain, Instance};
use crate::rng::Rng;

/// Where a measurement's instances come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instances {
    /// A new instance for every group of questions: each is encoded once, on first sight.
    Fresh,
    /// This many instances, over and over: after the first pass, the decoder alone runs.
    Recurring(u64),
}

/// What [`measure`] found.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub batch: usize,
    pub questions: u64,
    pub passes: u64,
    /// Time inside forward passes.
    pub busy: Duration,
}

impl Rate {
    /// Questions per second of forward-pass time.
    pub fn per_second(&self) -> f64 {
        self.questions as f64 / self.busy.as_secs_f64().max(1e-9)
    }
}

/// Runs forward passes of `batch` questions (`per_instance` about each instance, instances of
/// `size` from `instances`) until `time` has been spent in them (after one untimed pass to warm
/// up), at least `min_passes` passes.
#[allow(clippy::too_many_arguments)]
pub fn measure<D: Domain + Copy>(
    model: &Model<D>,
    cache: &mut EncodingCache,
    size: usize,
    batch: usize,
    per_instance: usize,
    instances: Instances,
    time: Duration,
    min_passes: u64,
) -> Result<Rate, crate::domain::DomainError> {
    let per_instance = per_instance.clamp(1, batch.max(1));
    let domain = *model.domain();
    let mut next_seed = 0u64;
    let mut instance = move || -> Result<Arc<Instance<D>>, crate::domain::DomainError> {
        let seed = match instances {
            Instances::Fresh => next_seed,
            Instances::Recurring(n) => next_seed % n.max(1),
        };
        next_seed += 1;
        // Seeds far from those trees use, so that a worker's cache is no help to this model.
        Instance::generate(&domain, size, seed.wrapping_add(1 << 40))
    };
    let mut rng = Rng::new(batch as u64);
    let mut rate = Rate {
        batch,
        questions: 0,
        passes: 0,
        busy: Duration::ZERO,
    };
    let mut warm = false;
    while !warm || rate.busy < time || rate.passes < min_passes {
        let mut owned = Vec::with_capacity(batch);
        while owned.len() < batch {
            let inst = instance()?;
            for _ in 0..per_instance.min(batch - owned.len()) {
                let q = model.domain().sample_question(inst.facts(), &mut rng);
                owned.push((inst.clone(), q));
            }
        }
        let queries: Vec<_> = owned.iter().map(|(i, q)| (i, q)).collect();
        let started = Instant::now();
        let answers = model.predict_cached(&queries, cache);
        let took = started.elapsed();
        debug_assert_eq!(answers.len(), batch);
        if warm {
            rate.busy += took;
            rate.questions += batch as u64;
            rate.passes += 1;
        }
        warm = true;
    }
    Ok(rate)
}
