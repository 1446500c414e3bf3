//! Forward throughput of the distilled model on CPU: questions per second at batch sizes 1 to
//! 1024, for the tiny and medium configurations, on full-size wildcard instances (64 facts).
//! Each batch holds 8 questions per distinct instance, as a worker's batches do when several
//! trees work on the same instances; facts are encoded once per distinct instance.
//!
//! This is the raw model limit the coordinator and workers are compared against. The figure
//! includes encoding the batch into tensors (as serving does).
//!
//! `encoding-cache/*`: the same forward pass with and without the worker's encoding cache, at
//! batch 1, 16 and 256 with 1, 8 and 64 questions per instance. `fresh` encodes every instance of
//! every batch (`Model::predict`, what workers did before the cache); `cached` finds every
//! instance's encoding already held (a worker's steady state: trees revisit their instance), so
//! only the question decoder runs.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hch::domain::wildcard::Wildcard;
use hch::domain::{Domain, Instance, FULL_SIZE};
use hch::model::cache::EncodingCache;
use hch::model::config::{ModelConfig, Preset};
use hch::model::Model;
use hch::rng::Rng;
use tch::Device;

const QUESTIONS_PER_INSTANCE: usize = 8;

fn forward(c: &mut Criterion) {
    hch::model::set_threads(
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    );
    let domain = Wildcard;
    let instances: Vec<Arc<Instance<Wildcard>>> = (0..128)
        .map(|s| Instance::generate(&domain, FULL_SIZE, s).unwrap())
        .collect();
    let mut rng = Rng::new(9);
    let questions: Vec<_> = (0..1024)
        .map(|i| {
            let inst = &instances[(i / QUESTIONS_PER_INSTANCE) % instances.len()];
            (inst.clone(), domain.sample_question(inst.facts(), &mut rng))
        })
        .collect();
    for preset in [Preset::Tiny, Preset::Medium] {
        let model =
            Model::new(domain, ModelConfig::preset(&domain, preset), Device::Cpu, 0).unwrap();
        let mut group = c.benchmark_group(format!("forward/{preset:?}").to_lowercase());
        for batch in [1usize, 4, 16, 64, 256, 1024] {
            let queries: Vec<_> = questions[..batch].iter().map(|(i, q)| (i, q)).collect();
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(format!("batch-{batch}"), |b| {
                b.iter(|| model.predict(&queries))
            });
        }
        group.finish();
    }
}

fn encoding_cache(c: &mut Criterion) {
    let domain = Wildcard;
    let mut rng = Rng::new(11);
    for preset in [Preset::Tiny, Preset::Medium] {
        let model =
            Model::new(domain, ModelConfig::preset(&domain, preset), Device::Cpu, 0).unwrap();
        let mut group = c.benchmark_group(format!("encoding-cache/{preset:?}").to_lowercase());
        for (batch, per_instance) in [(1, 1), (16, 1), (16, 8), (256, 1), (256, 8), (256, 64)] {
            let instances: Vec<Arc<Instance<Wildcard>>> = (0..batch / per_instance)
                .map(|s| Instance::generate(&domain, FULL_SIZE, 1000 + s as u64).unwrap())
                .collect();
            let owned: Vec<_> = (0..batch)
                .map(|i| {
                    let inst = &instances[i / per_instance];
                    (inst.clone(), domain.sample_question(inst.facts(), &mut rng))
                })
                .collect();
            let queries: Vec<_> = owned.iter().map(|(i, q)| (i, q)).collect();
            let mut cache = EncodingCache::new(usize::MAX);
            model.predict_cached(&queries, &mut cache);
            group.throughput(Throughput::Elements(batch as u64));
            let name = format!("batch-{batch}/per-instance-{per_instance}");
            group.bench_function(format!("{name}/fresh"), |b| {
                b.iter(|| model.predict(&queries))
            });
            group.bench_function(format!("{name}/cached"), |b| {
                b.iter(|| model.predict_cached(&queries, &mut cache))
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = forward, encoding_cache
}
criterion_main!(benches);
