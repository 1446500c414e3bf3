//! `hch loadtest --model` / `--registry`: trees answered by model workers, held against the
//! model's raw rate on this machine (questions per second through forward passes alone, at the
//! best batch size, measured in the same run on batches shaped like the trees' leaves).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::domain::{Domain, DomainKind};
use crate::model::cache::EncodingCache;
use crate::model::config::{ModelConfig, Preset};
use crate::model::generation;
use crate::model::throughput::{measure, Instances, Rate};
use crate::model::Model;
use crate::registry::Registry;
use crate::server::Cluster;
use crate::with_domain;

/// The registry model workers serve, and what to remove afterwards.
pub(super) struct Served {
    pub registry: PathBuf,
    pub generation: u64,
    pub describe: String,
    /// A temporary registry made for this run (removed when the run ends).
    temporary: Option<PathBuf>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(dir) = &self.temporary {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The generation to serve: the current one of `registry`, or an untrained model of `preset`
/// published into a temporary registry (a model's speed does not depend on what it learned).
pub(super) fn serve(
    domain: DomainKind,
    registry: Option<&Path>,
    preset: Option<Preset>,
) -> Result<Served> {
    if let Some(path) = registry {
        let reg = Registry::open(path)
            .with_context(|| format!("opening the registry {}", path.display()))?;
        let Some(current) = reg.current()? else {
            bail!(
                "the registry {} has no current generation: promote one first (hch train does)",
                path.display()
            );
        };
        let (manifest, _) = reg.manifest(current)?;
        if manifest.domain != domain.name() {
            bail!(
                "the registry's current generation {current} is a {} model; --domain is {domain}",
                manifest.domain
            );
        }
        return Ok(Served {
            registry: path.to_path_buf(),
            generation: current,
            describe: format!("generation {current} of {}", path.display()),
            temporary: None,
        });
    }
    let preset = preset.unwrap_or(Preset::Tiny);
    let dir = std::env::temp_dir().join(format!("hch-loadtest-registry-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut served = Served {
        registry: dir.clone(),
        generation: 0,
        describe: String::new(),
        temporary: Some(dir.clone()),
    };
    let reg = Registry::open(&dir).with_context(|| format!("making {}", dir.display()))?;
    let manifest = with_domain!(domain, d => {
        let model = Model::new(d, ModelConfig::preset(&d, preset), tch::Device::Cpu, 0)?;
        generation::publish(
            &reg,
            &model,
            None,
            0,
            serde_json::json!({"untrained": true}),
            format!("hch loadtest: an untrained {preset:?} model"),
        )?
    });
    reg.promote(manifest.generation)?;
    served.generation = manifest.generation;
    served.describe = format!(
        "an untrained {} model",
        format!("{preset:?}").to_lowercase()
    );
    Ok(served)
}

/// Waits until every worker of `cluster` serves `generation`.
pub(super) async fn loaded(cluster: &Cluster, generation: u64, within: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        let waiting = cluster
            .workers
            .iter()
            .filter(|(_, w)| w.info().answerer.generation() != Some(generation))
            .count();
        if waiting == 0 {
            return Ok(());
        }
        if started.elapsed() > within {
            bail!(
                "{waiting} of {} workers had not loaded generation {generation} after {within:?}",
                cluster.workers.len()
            );
        }
        // Loading runs on the workers' own tasks; nothing here to wait on but the clock.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The model's raw rate at each batch size.
struct Raw {
    pub rates: Vec<Rate>,
}

impl Raw {
    fn best(&self) -> Rate {
        *self
            .rates
            .iter()
            .max_by(|a, b| a.per_second().total_cmp(&b.per_second()))
            .expect("at least one batch size was measured")
    }
}

/// What the raw phase measures: the generation the workers serve, loaded here on the same
/// device, on batches of `per_instance` questions per instance (the trees' subquestions per tree),
/// from instances that recur as the trees' do; each batch size for `each`.
pub(super) struct RawSpec {
    pub domain: DomainKind,
    pub registry: PathBuf,
    pub size: usize,
    pub per_instance: usize,
    pub instances: Instances,
    pub each: Duration,
    pub cache_bytes: usize,
}

/// The raw phase: the model's rate at batch 16 to `max_batch` with the workers' `threads`
/// libtorch threads, and, for reference, its best batch with every core. Prints them; returns the
/// best rate and the all-core one.
pub(super) async fn baseline(
    spec: RawSpec,
    max_batch: usize,
    threads: usize,
) -> Result<(f64, Option<f64>)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let batches: Vec<usize> = [16, 64, 256, max_batch]
        .into_iter()
        .filter(|&b| b <= max_batch)
        .collect();
    let per_instance = spec.per_instance;
    let (raw, all_cores) = tokio::task::spawn_blocking(move || -> Result<_> {
        let measured = raw(&spec, &batches)?;
        let all_cores = if cores > threads {
            crate::model::set_threads(cores);
            let r = raw(&spec, &[measured.best().batch]);
            crate::model::set_threads(threads);
            Some(r?.best())
        } else {
            None
        };
        Ok((measured, all_cores))
    })
    .await
    .context("the raw model phase panicked")??;
    for r in &raw.rates {
        println!(
            "raw model rate:       {:>10.0} questions/s at batch {} ({} questions per instance)",
            r.per_second(),
            r.batch,
            per_instance.min(r.batch)
        );
    }
    let best = raw.best();
    println!(
        "raw model best:       {:>10.0} questions/s at batch {}, forward passes alone, {threads} libtorch thread(s) as the workers have",
        best.per_second(),
        best.batch,
    );
    if let Some(all) = all_cores {
        println!(
            "raw model, all cores: {:>10.0} questions/s at batch {} with {cores} threads and nothing else running",
            all.per_second(),
            all.batch
        );
    }
    Ok((best.per_second(), all_cores.map(|r| r.per_second())))
}

/// Measures `spec` at each of `batches`.
fn raw(spec: &RawSpec, batches: &[usize]) -> Result<Raw> {
    with_domain!(spec.domain, d => raw_typed(d, spec, batches))
}

fn raw_typed<D: Domain + Copy>(domain: D, spec: &RawSpec, batches: &[usize]) -> Result<Raw> {
    let reg = Registry::open(&spec.registry)?;
    let loaded = generation::load(&reg, None, domain, crate::model::pick_device())?;
    let mut rates = Vec::new();
    for &batch in batches {
        // A fresh cache per size, as a worker that just loaded the generation has.
        let mut cache = EncodingCache::new(spec.cache_bytes);
        rates.push(measure(
            &loaded.model,
            &mut cache,
            spec.size,
            batch,
            spec.per_instance,
            spec.instances,
            spec.each,
            2,
        )?);
    }
    Ok(Raw { rates })
}
