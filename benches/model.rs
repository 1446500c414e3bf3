//! Forward throughput of the distilled model on CPU: questions per second at batch sizes 1 to
//! 1024, for the tiny and medium configurations, on full-size wildcard instances (64 facts).
//! Each batch holds 8 questions per distinct instance, as a worker's batches do when several
//! trees work on the same instances; facts are encoded once per distinct instance.
//!
//! This is the raw model limit the coordinator and workers are compared against. The figure
//! includes encoding the batch into tensors (as serving does).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hch::domain::wildcard::Wildcard;
use hch::domain::{Domain, Instance, FULL_SIZE};
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

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = forward
}
criterion_main!(benches);
