//! Distilled models: a tiny model learns a small domain from ground-truth targets, saved weights
//! reload bit-identically, and mismatched or corrupted weights are refused with a clear error.

use std::path::PathBuf;
use std::sync::Arc;

use hch::answerer::{Answerer, Query};
use hch::domain::{Domain, Instance};
use hch::model::answerer::ModelAnswerer;
use hch::model::config::{ModelConfig, Preset};
use hch::model::train::{evaluate, supervised_examples, ReplayBuffer, TrainConfig, Trainer};
use hch::model::{Model, ModelError};
use tch::Device;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hch-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The README promises a tiny model learns a small instance size on CPU in minutes; this is the
/// small, fast version of that promise.
#[test]
fn tiny_model_learns_a_small_domain_supervised() {
    use hch::domain::wildcard::Wildcard;
    hch::model::set_threads(2);
    let domain = Wildcard;
    let size = 4;
    let train = supervised_examples(&domain, size, 0, 2000, 8).unwrap();
    let held_out = supervised_examples(&domain, size, 1_000_000, 200, 8).unwrap();
    let config = ModelConfig::preset(&domain, Preset::Tiny);
    let model = Model::new(domain, config, Device::Cpu, 1).unwrap();
    let before = evaluate(&model, &held_out, 512).fraction();
    let mut trainer = Trainer::new(
        model,
        TrainConfig {
            learning_rate: 3e-3,
            batch_size: 128,
            ..TrainConfig::default()
        },
    )
    .unwrap();
    let mut replay = ReplayBuffer::new(1 << 20);
    replay.extend(train);
    let mut after = 0.0;
    for round in 0..30 {
        trainer.train(&replay, 100);
        let acc = evaluate(trainer.model(), &held_out, 512);
        after = acc.fraction();
        eprintln!("round {round}: held-out accuracy {after:.3} {:?}", acc.by_difficulty);
        if after >= 0.95 {
            break;
        }
    }
    assert!(before < 0.5, "an untrained model should not already know: {before}");
    assert!(after >= 0.95, "held-out accuracy {after} after {} steps", trainer.steps());
}

fn small_trained_model() -> Model<hch::domain::wildcard::Wildcard> {
    use hch::domain::wildcard::Wildcard;
    let domain = Wildcard;
    let model = Model::new(domain, ModelConfig::preset(&domain, Preset::Tiny), Device::Cpu, 7).unwrap();
    let mut trainer = Trainer::new(model, TrainConfig::default()).unwrap();
    let mut replay = ReplayBuffer::new(1000);
    replay.extend(supervised_examples(&domain, 6, 0, 20, 8).unwrap());
    trainer.train(&replay, 5);
    trainer.into_model()
}

#[test]
fn save_then_load_gives_bit_identical_outputs() {
    let dir = scratch("save-load");
    let model = small_trained_model();
    let domain = *model.domain();
    let examples = supervised_examples(&domain, 6, 500, 10, 8).unwrap();
    let queries: Vec<_> = examples.iter().map(|e| (&e.instance, &e.question)).collect();
    let path = dir.join("weights.safetensors");
    model.save(&path).unwrap();
    let loaded = Model::load(domain, model.config().clone(), Device::Cpu, &path).unwrap();
    let (a, b) = tch::no_grad(|| {
        (
            model.logits(&model.encode(&queries)),
            loaded.logits(&loaded.encode(&queries)),
        )
    });
    assert!(a.equal(&b), "logits differ after a save/load round trip");
    assert_eq!(model.predict(&queries), loaded.predict(&queries));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn weights_that_do_not_fit_the_configuration_are_refused() {
    let dir = scratch("mismatch");
    let model = small_trained_model();
    let domain = *model.domain();
    let path = dir.join("weights.safetensors");
    model.save(&path).unwrap();

    let mut wider = model.config().clone();
    wider.d_model = 128;
    let err = Model::load(domain, wider, Device::Cpu, &path).err().unwrap();
    assert!(matches!(err, ModelError::Weights { .. }), "{err}");
    let shown = err.to_string();
    assert!(shown.contains("weights.safetensors") && shown.contains("shape"), "{shown}");

    let mut deeper = model.config().clone();
    deeper.question_layers += 1;
    let err = Model::load(domain, deeper, Device::Cpu, &path).err().unwrap();
    assert!(err.to_string().contains("tensors"), "{err}");

    // A configuration for another domain is refused before any file is read.
    let other = hch::domain::permutation::Permutation;
    let err = Model::load(other, model.config().clone(), Device::Cpu, &path).err().unwrap();
    let shown = err.to_string();
    assert!(shown.contains("for domain \"wildcard\", not permutation"), "{shown}");

    // A file that is not safetensors at all.
    std::fs::write(&path, b"not a safetensors file").unwrap();
    let err = Model::load(domain, model.config().clone(), Device::Cpu, &path).err().unwrap();
    assert!(matches!(err, ModelError::Torch(_)), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// The model answers through the `Answerer` interface, a whole batch in one call, and agrees with
/// direct prediction.
#[tokio::test]
async fn model_answerer_answers_batches() {
    let model = small_trained_model();
    let domain = *model.domain();
    let examples = supervised_examples(&domain, 6, 900, 4, 5).unwrap();
    let queries: Vec<_> = examples.iter().map(|e| (&e.instance, &e.question)).collect();
    let direct = model.predict(&queries);
    let answerer = ModelAnswerer::new(model, 42, "model test");
    let batch: Vec<Query<_>> = examples
        .iter()
        .map(|e| Query {
            instance: e.instance.clone(),
            question: e.question,
        })
        .collect();
    let answers = answerer.answer(&batch).await.unwrap();
    assert_eq!(answers, direct);
    assert_eq!(answerer.id().key, 42);
    let _: Arc<Instance<_>> = examples[0].instance.clone();
}
