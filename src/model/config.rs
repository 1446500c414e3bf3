//! Architecture configuration: plain data, saved in every generation's manifest and checked
//! against the domain when a generation is loaded.

use serde::{Deserialize, Serialize};

use crate::domain::{Domain, DomainKind};

/// Largest width / depth a configuration may ask for: far above the paper's size, low enough that
/// a typo cannot ask for terabytes.
pub const MAX_WIDTH: i64 = 4096;
pub const MAX_LAYERS: i64 = 48;
/// Most parameters a configuration may have (4 GiB of f32 weights): the bounds on width, layers
/// and feed-forward size each allow far more together (a generation's manifest can otherwise
/// describe a model of hundreds of gigabytes, which a worker would try to allocate).
pub const MAX_PARAMETERS: f64 = (1u64 << 30) as f64;

/// The architecture of one model. The domain-derived fields (vocabulary, widths, classes) are
/// recorded so that a generation can be checked against the domain it is loaded for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub domain: String,
    /// Width of every hidden vector.
    pub d_model: i64,
    /// Attention heads (must divide `d_model`).
    pub heads: i64,
    /// Transformer encoder layers over the facts (self-attention across facts).
    pub fact_layers: i64,
    /// Question layers: cross-attention from the question to the encoded facts, then a
    /// feed-forward block. Several layers allow chained lookups (a fact, then the fact it names).
    pub question_layers: i64,
    /// Feed-forward width as a multiple of `d_model`.
    pub ff_mult: i64,
    /// Answers whose probability is below this are reported as unknown (0 never abstains).
    pub unknown_below: f64,
    pub vocab_size: i64,
    pub fact_width: i64,
    pub question_width: i64,
    pub answer_classes: i64,
}

/// Named sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Learns small instances on two CPU cores in minutes.
    Tiny,
    /// A middle size for CPU benchmarks.
    Medium,
    /// The paper's size: 6 encoder layers, width 512, 8 heads. For GPUs.
    Paper,
}

impl std::str::FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tiny" => Ok(Preset::Tiny),
            "medium" => Ok(Preset::Medium),
            "paper" => Ok(Preset::Paper),
            _ => Err(format!(
                "unknown model size {s:?}: the sizes are tiny, medium, paper"
            )),
        }
    }
}

impl ModelConfig {
    pub fn preset<D: Domain>(domain: &D, preset: Preset) -> Self {
        let (d_model, heads, fact_layers, question_layers) = match preset {
            Preset::Tiny => (64, 4, 1, 2),
            Preset::Medium => (256, 8, 3, 3),
            Preset::Paper => (512, 8, 6, 6),
        };
        Self {
            domain: D::KIND.name().to_string(),
            d_model,
            heads,
            fact_layers,
            question_layers,
            ff_mult: 2,
            unknown_below: 0.0,
            vocab_size: domain.vocab_size() as i64,
            fact_width: D::FACT_WIDTH as i64,
            question_width: D::QUESTION_WIDTH as i64,
            answer_classes: domain.answer_classes() as i64,
        }
    }

    /// About how many parameters the architecture has (attention and feed-forward weights of
    /// every layer, embeddings and the output), computed in floating point so that no
    /// configuration overflows it.
    pub fn estimated_parameters(&self) -> f64 {
        let d = self.d_model.max(0) as f64;
        let ff = 2.0 * self.ff_mult.max(0) as f64 * d * d;
        let fact_layer = 4.0 * d * d + ff;
        let question_layer = 8.0 * d * d + ff;
        let embeddings = (self.vocab_size.max(0) + self.fact_width.max(0)) as f64 * d;
        fact_layer * self.fact_layers.max(0) as f64
            + question_layer * self.question_layers.max(0) as f64
            + embeddings
            + d * self.answer_classes.max(0) as f64
    }

    /// Checks the configuration is sane and fits `D`; the message names every mismatch.
    pub fn check_for<D: Domain>(&self, domain: &D) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.domain.parse::<DomainKind>().ok() != Some(D::KIND) {
            problems.push(format!(
                "the model is for domain {:?}, not {}",
                self.domain,
                D::KIND
            ));
        }
        let expect = [
            ("vocab_size", self.vocab_size, domain.vocab_size() as i64),
            ("fact_width", self.fact_width, D::FACT_WIDTH as i64),
            (
                "question_width",
                self.question_width,
                D::QUESTION_WIDTH as i64,
            ),
            (
                "answer_classes",
                self.answer_classes,
                domain.answer_classes() as i64,
            ),
        ];
        for (name, got, want) in expect {
            if got != want {
                problems.push(format!("{name} is {got} but domain {} has {want}", D::KIND));
            }
        }
        if !(1..=MAX_WIDTH).contains(&self.d_model) {
            problems.push(format!(
                "d_model {} is not in 1..={MAX_WIDTH}",
                self.d_model
            ));
        }
        if self.heads < 1 || self.d_model % self.heads.max(1) != 0 {
            problems.push(format!(
                "heads {} must be positive and divide d_model {}",
                self.heads, self.d_model
            ));
        }
        for (name, v) in [
            ("fact_layers", self.fact_layers),
            ("question_layers", self.question_layers),
        ] {
            if !(0..=MAX_LAYERS).contains(&v) {
                problems.push(format!("{name} {v} is not in 0..={MAX_LAYERS}"));
            }
        }
        if !(1..=16).contains(&self.ff_mult) {
            problems.push(format!("ff_mult {} is not in 1..=16", self.ff_mult));
        }
        let parameters = self.estimated_parameters();
        if parameters > MAX_PARAMETERS {
            problems.push(format!(
                "the architecture has about {:.1e} parameters, more than the {:.1e} allowed",
                parameters, MAX_PARAMETERS
            ));
        }
        if !(0.0..=1.0).contains(&self.unknown_below) {
            problems.push(format!(
                "unknown_below {} is not in 0..=1",
                self.unknown_below
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}
