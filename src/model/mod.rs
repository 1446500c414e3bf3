//! Distilled models: the "X" that amplification trains and workers serve.
//!
//! - [`config`]: the architecture as plain data (presets tiny / medium / paper), checked against the
//!   domain on load.
//! - [`net`]: the tch network: a transformer over the facts, computed once per distinct instance in
//!   a batch, and a question decoder that cross-attends to them.
//! - [`cache`]: the serving side's encoding cache: each instance's facts encoded once per model,
//!   so that batches about known instances run the question decoder alone.
//! - [`Model`]: network + weights + device; encodes batches of (instance, question) pairs, predicts,
//!   saves and loads safetensors.
//! - [`answerer`]: [`ModelAnswerer`](answerer::ModelAnswerer), the model behind the
//!   [`Answerer`](crate::answerer::Answerer) interface (one forward pass per batch).
//! - [`distill`]: imitation learning on (instance, question, target) examples.
//! - [`throughput`]: the raw rate of forward passes, the ceiling trees are measured against.
//! - [`generation`]: publishing models to, and loading verified models from, the registry.
//!
//! CPU is the default; CUDA is used when libtorch has it and a GPU is present ([`pick_device`]).

pub mod answerer;
pub mod cache;
pub mod config;
pub mod distill;
pub mod generation;
pub mod net;
pub mod throughput;

use std::path::Path;
use std::sync::Arc;

use tch::{nn, Device, Kind, Tensor};

use crate::domain::{Domain, Instance, InstanceId};
use cache::EncodingCache;
use config::ModelConfig;
use net::{Batch, Encoded, Net};

/// Errors of building, running, saving or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("libtorch error: {0}")]
    Torch(#[from] tch::TchError),
    #[error("weights file {path} does not match the configuration: {message}")]
    Weights { path: String, message: String },
}

/// Where models run: CUDA if libtorch was built with it and a GPU is visible, else the CPU.
/// `HCH_DEVICE=cpu` forces the CPU.
pub fn pick_device() -> Device {
    if std::env::var("HCH_DEVICE").as_deref() == Ok("cpu") {
        Device::Cpu
    } else {
        Device::cuda_if_available()
    }
}

/// Sets libtorch's intra-op thread count (0 leaves libtorch's default: one per core).
pub fn set_threads(threads: usize) {
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
}

/// One model of a domain: configuration, weights and the network over them.
pub struct Model<D: Domain> {
    domain: D,
    config: ModelConfig,
    vs: nn::VarStore,
    net: Net,
}

impl<D: Domain> Model<D> {
    /// A model with freshly initialised weights, determined by `seed`.
    pub fn new(
        domain: D,
        config: ModelConfig,
        device: Device,
        seed: u64,
    ) -> Result<Self, ModelError> {
        config.check_for(&domain).map_err(ModelError::Config)?;
        // libtorch's random generator is global: two models made at once on two threads would
        // draw from it in turns, and neither would get the weights its seed determines.
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let (vs, net) = {
            let _init = INIT.lock().unwrap_or_else(|p| p.into_inner());
            tch::manual_seed(seed as i64);
            let vs = nn::VarStore::new(device);
            let net = Net::new(&vs.root(), &config);
            (vs, net)
        };
        Ok(Self {
            domain,
            config,
            vs,
            net,
        })
    }

    /// A model with the weights of a safetensors file (which must match the configuration: every
    /// tensor present, with the right shape).
    pub fn load(
        domain: D,
        config: ModelConfig,
        device: Device,
        weights: &Path,
    ) -> Result<Self, ModelError> {
        let mut model = Self::new(domain, config, device, 0)?;
        let path = weights.display().to_string();
        let named = Tensor::read_safetensors(weights)?;
        let expected = model.vs.variables();
        if named.len() != expected.len() {
            return Err(ModelError::Weights {
                path,
                message: format!(
                    "it holds {} tensors, the configuration needs {}",
                    named.len(),
                    expected.len()
                ),
            });
        }
        for (name, tensor) in &named {
            match expected.get(name) {
                None => {
                    return Err(ModelError::Weights {
                        path,
                        message: format!("unexpected tensor {name:?}"),
                    })
                }
                Some(var) if var.size() != tensor.size() => {
                    return Err(ModelError::Weights {
                        path,
                        message: format!(
                            "tensor {name:?} has shape {:?}, the configuration needs {:?}",
                            tensor.size(),
                            var.size()
                        ),
                    })
                }
                Some(_) => {}
            }
            // Hash-consistent weights can still be NaN or infinite (a diverged training run):
            // served, they would give confident nonsense.
            if tensor.isfinite().all().int64_value(&[]) == 0 {
                return Err(ModelError::Weights {
                    path,
                    message: format!("tensor {name:?} holds values that are not finite"),
                });
            }
        }
        model.vs.load(weights)?;
        Ok(model)
    }

    /// Writes the weights as safetensors (readable from Python with `safetensors.torch.load_file`).
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        self.vs.save(path)?;
        Ok(())
    }

    pub fn domain(&self) -> &D {
        &self.domain
    }

    /// An independent copy with the same weights (for evaluating a model while training goes on).
    pub fn duplicate(&self) -> Result<Self, ModelError>
    where
        D: Clone,
    {
        let mut copy = Self::new(self.domain.clone(), self.config.clone(), self.device(), 0)?;
        tch::no_grad(|| copy.vs.copy(&self.vs))?;
        Ok(copy)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Number of trainable parameters.
    pub fn parameters(&self) -> i64 {
        self.vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }

    /// Encodes queries into one batch, each distinct instance's facts once.
    pub fn encode(&self, queries: &[(&Arc<Instance<D>>, &D::Question)]) -> Batch {
        let mut instances: Vec<(InstanceId, &Arc<Instance<D>>)> = Vec::new();
        let mut instance_of = Vec::with_capacity(queries.len());
        for (instance, _) in queries {
            let idx = match instances.iter().position(|(id, _)| *id == instance.id()) {
                Some(i) => i,
                None => {
                    instances.push((instance.id(), instance));
                    instances.len() - 1
                }
            };
            instance_of.push(idx as i64);
        }
        let w = D::FACT_WIDTH;
        let encoded: Vec<Vec<u32>> = instances
            .iter()
            .map(|(_, inst)| self.domain.encode_facts(inst.facts()))
            .collect();
        let max_facts = encoded
            .iter()
            .map(|e| e.len() / w)
            .max()
            .unwrap_or(0)
            .max(1);
        let mut facts = vec![0i64; instances.len() * max_facts * w];
        let mut pad = vec![true; instances.len() * (max_facts + 1)];
        for (i, e) in encoded.iter().enumerate() {
            let base = i * max_facts * w;
            for (j, &t) in e.iter().enumerate() {
                facts[base + j] = t as i64;
            }
            let row = i * (max_facts + 1);
            pad[row] = false; // the sink
            for p in &mut pad[row + 1..row + 1 + e.len() / w] {
                *p = false;
            }
        }
        let questions: Vec<i64> = queries
            .iter()
            .flat_map(|(_, q)| self.domain.encode_question(q))
            .map(|t| t as i64)
            .collect();
        let device = self.device();
        let n = instances.len() as i64;
        Batch {
            facts: Tensor::from_slice(&facts)
                .view([n, max_facts as i64, w as i64])
                .to_device(device),
            fact_pad: Tensor::from_slice(&pad)
                .view([n, max_facts as i64 + 1])
                .to_device(device),
            questions: Tensor::from_slice(&questions)
                .view([queries.len() as i64, D::QUESTION_WIDTH as i64])
                .to_device(device),
            instance_of: Tensor::from_slice(&instance_of).to_device(device),
        }
    }

    /// Logits [B, answer_classes] (with gradients when called outside `no_grad`).
    pub fn logits(&self, batch: &Batch) -> Tensor {
        self.net.forward(batch)
    }

    /// Answers a batch in one forward pass; `None` where the model abstains (its confidence is
    /// below `unknown_below`) or predicts a class outside the answer vocabulary.
    pub fn predict(&self, queries: &[(&Arc<Instance<D>>, &D::Question)]) -> Vec<Option<D::Answer>> {
        if queries.is_empty() {
            return Vec::new();
        }
        let logits = tch::no_grad(|| self.logits(&self.encode(queries)));
        self.answers(&logits)
    }

    /// Answers a batch as [`predict`](Self::predict) does, taking each instance's encoded facts
    /// from `cache` (encoding and keeping those it lacks), so that a batch about known instances
    /// runs the question decoder alone. The logits do not depend on what the cache held (see
    /// [`cache`]); they may differ from `predict`'s in the last bits, since `predict` encodes the
    /// batch's instances together.
    pub fn predict_cached(
        &self,
        queries: &[(&Arc<Instance<D>>, &D::Question)],
        cache: &mut EncodingCache,
    ) -> Vec<Option<D::Answer>> {
        if queries.is_empty() {
            return Vec::new();
        }
        let logits = self.logits_cached(queries, cache);
        self.answers(&logits)
    }

    /// The logits [B, answer_classes] of [`predict_cached`](Self::predict_cached).
    pub fn logits_cached(
        &self,
        queries: &[(&Arc<Instance<D>>, &D::Question)],
        cache: &mut EncodingCache,
    ) -> Tensor {
        if queries.is_empty() {
            let classes = self.config.answer_classes;
            return Tensor::zeros([0, classes], (Kind::Float, self.device()));
        }
        tch::no_grad(|| {
            let device = self.device();
            let mut ids: Vec<InstanceId> = Vec::new();
            let mut encoded: Vec<Encoded> = Vec::new();
            let mut instance_of = Vec::with_capacity(queries.len());
            for (instance, _) in queries {
                let id = instance.id();
                let idx = match ids.iter().position(|known| *known == id) {
                    Some(i) => i,
                    None => {
                        let e = match cache.get(&id) {
                            Some(e) => e,
                            None => {
                                let tokens: Vec<i64> = self
                                    .domain
                                    .encode_facts(instance.facts())
                                    .into_iter()
                                    .map(i64::from)
                                    .collect();
                                let w = D::FACT_WIDTH as i64;
                                let facts = Tensor::from_slice(&tokens)
                                    .view([1, tokens.len() as i64 / w, w])
                                    .to_device(device);
                                let e = self.net.encode_instance(&facts);
                                cache.insert(id, &e);
                                e
                            }
                        };
                        ids.push(id);
                        encoded.push(e);
                        ids.len() - 1
                    }
                };
                instance_of.push(idx as i64);
            }
            let questions: Vec<i64> = queries
                .iter()
                .flat_map(|(_, q)| self.domain.encode_question(q))
                .map(i64::from)
                .collect();
            let questions = Tensor::from_slice(&questions)
                .view([queries.len() as i64, D::QUESTION_WIDTH as i64])
                .to_device(device);
            self.net.decode(&questions, &encoded, &instance_of)
        })
    }

    /// Logits to answers: the most likely class, or `None` below `unknown_below` or outside the
    /// answer vocabulary.
    fn answers(&self, logits: &Tensor) -> Vec<Option<D::Answer>> {
        let (classes, confidence) = tch::no_grad(|| {
            let probs = logits.softmax(-1, Kind::Float);
            let (conf, class) = probs.max_dim(-1, false);
            (
                Vec::<i64>::try_from(class.to_device(Device::Cpu)).unwrap_or_default(),
                Vec::<f32>::try_from(conf.to_device(Device::Cpu)).unwrap_or_default(),
            )
        });
        classes
            .iter()
            .zip(confidence.iter().chain(std::iter::repeat(&1.0)))
            .map(|(&c, &p)| {
                if (p as f64) < self.config.unknown_below {
                    None
                } else {
                    self.domain.class_answer(c as usize)
                }
            })
            .collect()
    }
}
