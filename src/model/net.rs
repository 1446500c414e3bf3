//! The network: a transformer encoder over an instance's facts, computed once per instance in a
//! batch, and a question decoder that cross-attends to the encoded facts, ending in a
//! classification over the domain's answer classes.
//!
//! Shapes (I distinct instances, F facts, W tokens per fact, B questions, d width):
//! ```text
//! fact tokens [I, F, W] -> embed + slot -> [I, F, W*d] -> linear -> [I, F, d]
//!   prepend a learned "sink" fact        -> [I, F+1, d]   (padding facts are masked out)
//!   fact_layers x (self-attention, feed-forward), pre-norm residual
//! question tokens [B, Wq] -> embed + slot -> linear -> [B, 1, d]
//!   question_layers x (cross-attention to its instance's facts, feed-forward)
//! -> layer norm -> linear -> logits [B, answer_classes]
//! ```
//! The sink gives attention somewhere to go when nothing matches, which lets a single head count
//! (the share of attention left on the sink falls with the number of matching facts): wildcard
//! search sums matching strings this way.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::config::ModelConfig;

struct Attention {
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    o: nn::Linear,
    heads: i64,
}

impl Attention {
    fn new(p: nn::Path<'_>, d: i64, heads: i64) -> Self {
        let c = Default::default;
        Self {
            q: nn::linear(&p / "q", d, d, c()),
            k: nn::linear(&p / "k", d, d, c()),
            v: nn::linear(&p / "v", d, d, c()),
            o: nn::linear(&p / "o", d, d, c()),
            heads,
        }
    }

    /// `x` [B, Lq, d] attends to `kv` [B, Lk, d]; `pad` [B, Lk] is true where keys are padding.
    fn forward(&self, x: &Tensor, kv: &Tensor, pad: Option<&Tensor>) -> Tensor {
        let (k, v) = self.keys_values(kv);
        self.attend(x, &k, &v, pad)
    }

    /// The key and value projections of `kv` [B, Lk, d], split into heads: [B, h, Lk, d/h] each.
    fn keys_values(&self, kv: &Tensor) -> (Tensor, Tensor) {
        let (b, lk, d) = kv.size3().expect("attention keys are [B, L, d]");
        let split = |t: Tensor| t.view([b, lk, self.heads, d / self.heads]).transpose(1, 2);
        (split(self.k.forward(kv)), split(self.v.forward(kv)))
    }

    /// `x` [B, Lq, d] attends to projected keys and values `k`, `v` [B, h, Lk, d/h]; `pad`
    /// [B, Lk] is true where keys are padding (`None`: there is none).
    fn attend(&self, x: &Tensor, k: &Tensor, v: &Tensor, pad: Option<&Tensor>) -> Tensor {
        let (b, lq, d) = x.size3().expect("attention query is [B, L, d]");
        let lk = k.size()[2];
        let h = self.heads;
        let dh = d / h;
        let q = self.q.forward(x).view([b, lq, h, dh]).transpose(1, 2);
        let mut scores = q.matmul(&k.transpose(-2, -1)) / (dh as f64).sqrt();
        if let Some(pad) = pad {
            scores = scores.masked_fill(&pad.view([b, 1, 1, lk]), f64::NEG_INFINITY);
        }
        let out = scores.softmax(-1, Kind::Float).matmul(v);
        self.o
            .forward(&out.transpose(1, 2).contiguous().view([b, lq, d]))
    }

    /// `x` [B, 1, d] attends, question by question, to the keys and values of its own instance,
    /// with the questions laid out by instance: `k`, `v` [I, h, L, d/h] hold the batch's
    /// instances, and question `b` sits at row `slots[b]` of an [I × G] grid (G: the most
    /// questions any instance has; `None`: one instance, the questions in order). One batched
    /// product covers every instance, and nothing is copied per question: each instance's keys
    /// and values appear once (stacked, where there are several instances), and the grid's empty
    /// rows are zero queries, computed and dropped. `pad` [I, L] is true where an instance's keys
    /// are padding.
    fn attend_by_instance(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        slots: Option<&Tensor>,
        grid: i64,
        pad: Option<&Tensor>,
    ) -> Tensor {
        let (b, _, d) = x.size3().expect("attention query is [B, 1, d]");
        let (i, h, lk, dh) = k.size4().expect("keys are [I, h, L, d/h]");
        let q = self.q.forward(x).view([b, d]);
        let q = match slots {
            None => q,
            Some(slots) => {
                let mut grid_q = q.new_zeros([i * grid, d], (q.kind(), q.device()));
                let _ = grid_q.index_copy_(0, slots, &q);
                grid_q
            }
        };
        let q = q.view([i, grid, h, dh]).transpose(1, 2);
        let mut scores = q.matmul(&k.transpose(-2, -1)) / (dh as f64).sqrt();
        if let Some(pad) = pad {
            scores = scores.masked_fill(&pad.view([i, 1, 1, lk]), f64::NEG_INFINITY);
        }
        let out = scores.softmax(-1, Kind::Float).matmul(v);
        let out = out.transpose(1, 2).reshape([i * grid, d]);
        let out = match slots {
            None => out,
            Some(slots) => out.index_select(0, slots),
        };
        self.o.forward(&out.view([b, 1, d]))
    }
}

struct FeedForward {
    up: nn::Linear,
    down: nn::Linear,
}

impl FeedForward {
    fn new(p: nn::Path<'_>, d: i64, mult: i64) -> Self {
        Self {
            up: nn::linear(&p / "up", d, d * mult, Default::default()),
            down: nn::linear(&p / "down", d * mult, d, Default::default()),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.down.forward(&self.up.forward(x).gelu("none"))
    }
}

/// Pre-norm residual block: attention then feed-forward.
struct Block {
    ln_attn: nn::LayerNorm,
    attn: Attention,
    ln_ff: nn::LayerNorm,
    ff: FeedForward,
}

impl Block {
    fn new(p: nn::Path<'_>, c: &ModelConfig) -> Self {
        let d = c.d_model;
        Self {
            ln_attn: nn::layer_norm(&p / "ln_attn", vec![d], Default::default()),
            attn: Attention::new(&p / "attn", d, c.heads),
            ln_ff: nn::layer_norm(&p / "ln_ff", vec![d], Default::default()),
            ff: FeedForward::new(&p / "ff", d, c.ff_mult),
        }
    }

    /// Self-attention when `kv` is `None`, cross-attention to `kv` otherwise.
    fn forward(&self, x: &Tensor, kv: Option<&Tensor>, pad: Option<&Tensor>) -> Tensor {
        let n = self.ln_attn.forward(x);
        let x = x + self.attn.forward(&n, kv.unwrap_or(&n), pad);
        &x + self.ff.forward(&self.ln_ff.forward(&x))
    }

    /// The block with its attention computed by `attend` (from the normalised input): cross-
    /// attention to keys and values already projected (see [`Encoded`]).
    fn forward_with(&self, x: &Tensor, attend: impl Fn(&Attention, &Tensor) -> Tensor) -> Tensor {
        let n = self.ln_attn.forward(x);
        let x = x + attend(&self.attn, &n);
        &x + self.ff.forward(&self.ln_ff.forward(&x))
    }
}

/// Token tensors for one forward pass (see the module docs for shapes).
pub struct Batch {
    /// [I, F, W] fact tokens, padding facts all zero.
    pub facts: Tensor,
    /// [I, F + 1] true where the (sink-prefixed) fact is padding.
    pub fact_pad: Tensor,
    /// [B, Wq] question tokens.
    pub questions: Tensor,
    /// [B] index of each question's instance in `facts`.
    pub instance_of: Tensor,
}

pub struct Net {
    tok: nn::Embedding,
    fact_slot: Tensor,
    question_slot: Tensor,
    fact_in: nn::Linear,
    question_in: nn::Linear,
    sink: Tensor,
    fact_layers: Vec<Block>,
    fact_ln: nn::LayerNorm,
    question_layers: Vec<Block>,
    out_ln: nn::LayerNorm,
    head: nn::Linear,
    d: i64,
}

impl Net {
    pub fn new(p: &nn::Path<'_>, c: &ModelConfig) -> Self {
        let d = c.d_model;
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        Self {
            tok: nn::embedding(p / "tok", c.vocab_size, d, Default::default()),
            fact_slot: p.var("fact_slot", &[c.fact_width, d], init),
            question_slot: p.var("question_slot", &[c.question_width, d], init),
            fact_in: nn::linear(p / "fact_in", c.fact_width * d, d, Default::default()),
            question_in: nn::linear(
                p / "question_in",
                c.question_width * d,
                d,
                Default::default(),
            ),
            sink: p.var("sink", &[1, 1, d], init),
            fact_layers: (0..c.fact_layers)
                .map(|i| Block::new(p / "facts" / i, c))
                .collect(),
            fact_ln: nn::layer_norm(p / "fact_ln", vec![d], Default::default()),
            question_layers: (0..c.question_layers)
                .map(|i| Block::new(p / "question" / i, c))
                .collect(),
            out_ln: nn::layer_norm(p / "out_ln", vec![d], Default::default()),
            head: nn::linear(p / "head", d, c.answer_classes, Default::default()),
            d,
        }
    }

    /// Logits [B, answer_classes]: the training path, every instance of the batch encoded
    /// together (padded to the longest).
    pub fn forward(&self, batch: &Batch) -> Tensor {
        let x = self.encode_facts(&batch.facts, Some(&batch.fact_pad));
        let mut q = self.embed_questions(&batch.questions);
        let kv = x.index_select(0, &batch.instance_of);
        let pad = batch.fact_pad.index_select(0, &batch.instance_of);
        for layer in &self.question_layers {
            q = layer.forward(&q, Some(&kv), Some(&pad));
        }
        self.head.forward(&self.out_ln.forward(&q)).squeeze_dim(1)
    }

    /// Encoded facts [I, F+1, d] (sink first) of fact tokens [I, F, W] with padding `pad`
    /// (`None`: none).
    fn encode_facts(&self, facts: &Tensor, pad: Option<&Tensor>) -> Tensor {
        let d = self.d;
        let (i, f, w) = facts.size3().expect("facts are [I, F, W]");
        let facts = (self.tok.forward(facts) + &self.fact_slot).view([i, f, w * d]);
        let facts = self.fact_in.forward(&facts);
        let mut x = Tensor::cat(&[self.sink.expand([i, 1, d], false), facts], 1);
        for layer in &self.fact_layers {
            x = layer.forward(&x, None, pad);
        }
        self.fact_ln.forward(&x)
    }

    /// Question tokens [B, Wq] to the decoder's input [B, 1, d].
    fn embed_questions(&self, questions: &Tensor) -> Tensor {
        let d = self.d;
        let (b, wq) = questions.size2().expect("questions are [B, Wq]");
        let q = (self.tok.forward(questions) + &self.question_slot).view([b, 1, wq * d]);
        self.question_in.forward(&q)
    }

    /// One instance's facts, encoded on their own: fact tokens [1, F, W] (no padding facts) to
    /// what every question layer's cross-attention reads of them. Encoding an instance alone makes
    /// the result a function of the instance and the weights only, never of what else shared a
    /// batch, which is what lets [`super::cache::EncodingCache`] keep it.
    pub fn encode_instance(&self, facts: &Tensor) -> Encoded {
        let f = facts.size()[1];
        let x = self.encode_facts(facts, None);
        let kv = self
            .question_layers
            .iter()
            .map(|layer| {
                let (k, v) = layer.attn.keys_values(&x);
                (k.contiguous(), v.contiguous())
            })
            .collect();
        Encoded { kv, len: f + 1 }
    }

    /// Logits [B, answer_classes] of questions [B, Wq] about encoded instances: question `b` is
    /// about `instances[instance_of[b]]`. Runs the question decoder alone.
    ///
    /// Each question attends to its own instance's keys and values. Usually the questions are
    /// laid out in a grid by instance and attend in one product (see
    /// `Attention::attend_by_instance`); where one instance has far more questions than the
    /// others, the grid would be mostly empty, and the keys and values are instead gathered per
    /// question. Which way is taken depends on the batch's shape alone, never on the cache.
    pub fn decode(&self, questions: &Tensor, instances: &[Encoded], instance_of: &[i64]) -> Tensor {
        let device = questions.device();
        let (n_instances, n_questions) = (instances.len() as i64, instance_of.len() as i64);
        let longest = instances.iter().map(|e| e.len).max().unwrap_or(1);
        // Instances of different lengths are padded with zero keys, masked out; with one length
        // (the usual case: a domain's instances of one size) there is nothing to mask.
        let pad = (instances.iter().any(|e| e.len != longest)).then(|| {
            let rows: Vec<bool> = instances
                .iter()
                .flat_map(|e| (0..longest).map(move |j| j >= e.len))
                .collect();
            Tensor::from_slice(&rows)
                .view([n_instances, longest])
                .to_device(device)
        });
        let stack = |pick: &dyn Fn(&Encoded) -> &Tensor| -> Tensor {
            if let [only] = instances {
                return pick(only).shallow_clone();
            }
            let padded: Vec<Tensor> = instances
                .iter()
                .map(|e| {
                    let t = pick(e);
                    if e.len == longest {
                        t.shallow_clone()
                    } else {
                        t.constant_pad_nd([0, 0, 0, longest - e.len])
                    }
                })
                .collect();
            Tensor::cat(&padded, 0)
        };
        // The grid: each question's row among its instance's, and the most any instance has.
        let mut seen = vec![0i64; instances.len()];
        let rows: Vec<i64> = instance_of
            .iter()
            .map(|&i| {
                seen[i as usize] += 1;
                seen[i as usize] - 1
            })
            .collect();
        let grid = seen.iter().copied().max().unwrap_or(1);
        let by_instance = n_instances * grid <= GRID_SLACK * n_questions;
        let slots = (by_instance && n_instances > 1).then(|| {
            let slots: Vec<i64> = instance_of
                .iter()
                .zip(&rows)
                .map(|(&i, &r)| i * grid + r)
                .collect();
            Tensor::from_slice(&slots).to_device(device)
        });
        let index = Tensor::from_slice(instance_of).to_device(device);
        let question_pad = pad
            .as_ref()
            .filter(|_| !by_instance)
            .map(|p| p.index_select(0, &index));
        let mut q = self.embed_questions(questions);
        for (l, layer) in self.question_layers.iter().enumerate() {
            let k = stack(&|e: &Encoded| &e.kv[l].0);
            let v = stack(&|e: &Encoded| &e.kv[l].1);
            q = if by_instance {
                layer.forward_with(&q, |attn, n| {
                    attn.attend_by_instance(n, &k, &v, slots.as_ref(), grid, pad.as_ref())
                })
            } else {
                let (k, v) = (k.index_select(0, &index), v.index_select(0, &index));
                layer.forward_with(&q, |attn, n| attn.attend(n, &k, &v, question_pad.as_ref()))
            };
        }
        self.head.forward(&self.out_ln.forward(&q)).squeeze_dim(1)
    }
}

/// How much larger than the batch [`Net::decode`]'s grid of questions by instance may be (its
/// empty rows cost a query each) before it gathers keys and values per question instead.
const GRID_SLACK: i64 = 8;

/// One instance's facts as the question decoder reads them: per question layer, the keys and
/// values of its cross-attention, [1, heads, L, d/heads] each, L = facts + 1 (the sink).
pub struct Encoded {
    kv: Vec<(Tensor, Tensor)>,
    len: i64,
}

impl Encoded {
    /// Bytes of tensor data held.
    pub fn bytes(&self) -> usize {
        self.kv
            .iter()
            .flat_map(|(k, v)| [k, v])
            .map(|t| t.numel() * t.kind().elt_size_in_bytes())
            .sum()
    }

    /// A handle to the same tensors (libtorch reference counting: nothing is copied).
    pub fn share(&self) -> Encoded {
        Encoded {
            kv: self
                .kv
                .iter()
                .map(|(k, v)| (k.shallow_clone(), v.shallow_clone()))
                .collect(),
            len: self.len,
        }
    }
}
