//! `hch model-bench`: the model's raw rate (questions per second through forward passes alone) by
//! size and batch, on the device the workers would use, with and without the encoding cache.
//! One table, the figure `hch loadtest --model` holds trees against, and what
//! `scripts/gpu-check.sh` runs on a GPU.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use crate::domain::{Domain, DomainKind, FULL_SIZE};
use crate::model::cache::EncodingCache;
use crate::model::config::{ModelConfig, Preset};
use crate::model::throughput::{measure, Instances};
use crate::model::Model;
use crate::with_domain;

#[derive(Args, Debug)]
pub struct ModelBenchArgs {
    #[arg(long, default_value = "wildcard")]
    domain: DomainKind,
    /// Model sizes (tiny, medium, paper), untrained: speed does not depend on what was learned.
    #[arg(long, value_delimiter = ',', default_value = "tiny,medium")]
    presets: Vec<Preset>,
    /// Batch sizes (questions per forward pass).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256,1024")]
    batches: Vec<usize>,
    /// Questions about each instance in a batch.
    #[arg(long, default_value_t = 8)]
    per_instance: usize,
    /// Instance size.
    #[arg(long, default_value_t = FULL_SIZE)]
    size: usize,
    /// Seconds of forward passes per cell (after one pass to warm up; at least two passes).
    #[arg(long, default_value_t = 0.5)]
    seconds: f64,
    /// libtorch threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(args: ModelBenchArgs) -> Result<()> {
    crate::domain::check_size_for(args.domain, args.size)?;
    anyhow::ensure!(
        args.batches.iter().all(|&b| (1..=65_536).contains(&b)),
        "--batches: each batch size must be between 1 and 65536"
    );
    anyhow::ensure!(
        args.seconds > 0.0 && args.seconds <= 600.0,
        "--seconds must be above 0 and at most 600"
    );
    crate::model::set_threads(args.threads);
    with_domain!(args.domain, d => bench(d, &args))
}

fn bench<D: Domain + Copy>(domain: D, args: &ModelBenchArgs) -> Result<()> {
    let device = crate::model::pick_device();
    println!(
        "model-bench: {} at size {}, {} questions per instance, device {device:?}, {} libtorch threads",
        D::KIND,
        args.size,
        args.per_instance,
        tch::get_num_threads()
    );
    println!("fresh: every instance new (encoded on first sight); cached: its encoding held, the decoder alone runs");
    println!();
    println!("| preset | parameters | batch | fresh q/s | cached q/s | cached speed-up |");
    println!("|---|---:|---:|---:|---:|---:|");
    let time = Duration::from_secs_f64(args.seconds);
    for &preset in &args.presets {
        let started = Instant::now();
        let model = Model::new(domain, ModelConfig::preset(&domain, preset), device, 0)
            .with_context(|| format!("building the {preset:?} model"))?;
        let name = format!("{preset:?}").to_lowercase();
        for &batch in &args.batches {
            let per_instance = args.per_instance.clamp(1, batch);
            let mut cache = EncodingCache::new(crate::model::cache::DEFAULT_BUDGET_BYTES);
            let fresh = measure(
                &model,
                &mut cache,
                args.size,
                batch,
                per_instance,
                Instances::Fresh,
                time,
                2,
            )?;
            let mut cache = EncodingCache::new(usize::MAX);
            let groups = batch.div_ceil(per_instance) as u64;
            let cached = measure(
                &model,
                &mut cache,
                args.size,
                batch,
                per_instance,
                Instances::Recurring(groups),
                time,
                2,
            )?;
            println!(
                "| {name} | {:.1} M | {batch} | {:.0} | {:.0} | {:.1}x |",
                model.parameters() as f64 / 1e6,
                fresh.per_second(),
                cached.per_second(),
                cached.per_second() / fresh.per_second().max(1e-9)
            );
        }
        tracing::info!(preset = %name, seconds = started.elapsed().as_secs_f64(), "preset measured");
    }
    Ok(())
}
