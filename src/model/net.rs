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
    fn forward(&self, x: &Tensor, kv: &Tensor, pad: &Tensor) -> Tensor {
        let (b, lq, d) = x.size3().expect("attention query is [B, L, d]");
        let lk = kv.size()[1];
        let h = self.heads;
        let dh = d / h;
        let split = |t: Tensor, l: i64| t.view([b, l, h, dh]).transpose(1, 2);
        let q = split(self.q.forward(x), lq);
        let k = split(self.k.forward(kv), lk);
        let v = split(self.v.forward(kv), lk);
        let scores = q.matmul(&k.transpose(-2, -1)) / (dh as f64).sqrt();
        let scores = scores.masked_fill(&pad.view([b, 1, 1, lk]), f64::NEG_INFINITY);
        let out = scores.softmax(-1, Kind::Float).matmul(&v);
        self.o
            .forward(&out.transpose(1, 2).contiguous().view([b, lq, d]))
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
    fn forward(&self, x: &Tensor, kv: Option<&Tensor>, pad: &Tensor) -> Tensor {
        let n = self.ln_attn.forward(x);
        let x = x + self.attn.forward(&n, kv.unwrap_or(&n), pad);
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

    /// Logits [B, answer_classes].
    pub fn forward(&self, batch: &Batch) -> Tensor {
        let d = self.d;
        let (i, f, w) = batch.facts.size3().expect("facts are [I, F, W]");
        let facts = (self.tok.forward(&batch.facts) + &self.fact_slot).view([i, f, w * d]);
        let facts = self.fact_in.forward(&facts);
        let mut x = Tensor::cat(&[self.sink.expand([i, 1, d], false), facts], 1);
        for layer in &self.fact_layers {
            x = layer.forward(&x, None, &batch.fact_pad);
        }
        let x = self.fact_ln.forward(&x);

        let (b, wq) = batch.questions.size2().expect("questions are [B, Wq]");
        let q = (self.tok.forward(&batch.questions) + &self.question_slot).view([b, 1, wq * d]);
        let mut q = self.question_in.forward(&q);
        let kv = x.index_select(0, &batch.instance_of);
        let pad = batch.fact_pad.index_select(0, &batch.instance_of);
        for layer in &self.question_layers {
            q = layer.forward(&q, Some(&kv), &pad);
        }
        self.head.forward(&self.out_ln.forward(&q)).squeeze_dim(1)
    }
}
