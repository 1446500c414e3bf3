//! Domains: the five task families of "Supervising strong learners by amplifying weak experts"
//! (Christiano, Shlegeris, Amodei 2018).
//!
//! A [`Domain`] generates seeded instances (facts) with a size knob, samples questions about them,
//! prints and parses the plain-text syntax of `docs/domains.md`, encodes facts, questions and
//! answers as tokens for models, holds the overseer H ([`Domain::oversee`]), and knows the ground
//! truth ([`Domain::truth`], for evaluation and the oracle only).
//!
//! Each domain is one file that reads top to bottom: facts, questions, H, syntax, tokens, truth.
//! `union_find.rs` is the longest (about 630 lines before its tests, its H having the most cases
//! to check X's guesses); it is kept whole for that reason.
//!
//! Everything downstream (the evaluator, answerers, the CLI) is generic over `D: Domain`, so a tree
//! evaluation compiles to direct calls without dynamic dispatch on the hot path. Code that learns the
//! domain only at run time (a CLI flag, a gRPC request) picks the type with [`with_domain!`].

pub mod assignments;
pub mod permutation;
pub mod shortest_path;
pub mod union_find;
pub mod wildcard;

use std::fmt::{self, Debug};
use std::future::Future;
use std::hash::Hash;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

// The one import from the domains back into the evaluator, by design: H is a program over an
// `ask` capability (it asks subquestions and combines their answers), and the evaluator is what
// answers them. Everything else flows one way, from the evaluator to the domains.
use crate::eval::Ask;
use crate::rng::Rng;
use crate::text::ParseError;

/// Calls of [`Domain::truth`] and [`Domain::difficulty`] in this process, over all domains.
static TRUTH_CALLS: AtomicU64 = AtomicU64::new(0);

/// While non-zero, the seed of a stream of random answers that replace the ground truth (see
/// [`poison_truth`]).
static POISON: AtomicU64 = AtomicU64::new(0);

/// How many times the ground truth (the true answer, or a difficulty only a solver knows) has been
/// consulted in this process (any domain, any thread). Amplification must not move it; see the
/// ground-truth isolation test.
pub fn truth_calls() -> u64 {
    TRUTH_CALLS.load(Ordering::Relaxed)
}

/// Replaces the ground truth in this whole process, from now on, by random answers and random
/// difficulties (`seed` picks the stream; 0 restores the truth). A test fixture: a training run
/// whose decisions come from H, the facts and the models alone makes the same decisions, targets
/// and weights with the truth poisoned as without (`tests/truth_poisoned.rs`); only its
/// reported accuracies change.
#[doc(hidden)]
pub fn poison_truth(seed: u64) {
    POISON.store(seed, Ordering::SeqCst);
}

/// A random draw for a poisoned truth call (see [`poison_truth`]), or `None` when the truth is
/// not poisoned.
fn poisoned_draw() -> Option<u64> {
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    match POISON.load(Ordering::Relaxed) {
        0 => None,
        seed => Some(Rng::derived(seed, DRAWS.fetch_add(1, Ordering::Relaxed)).next_u64()),
    }
}

/// The largest size any domain generates: the paper's full size, 64 symbols.
pub const FULL_SIZE: usize = 64;

/// The text an unknown answer is written as, in every domain.
pub const UNKNOWN_TEXT: &str = "?";

/// One task family. See the module docs and `docs/domains.md`.
pub trait Domain: Debug + Send + Sync + Sized + 'static {
    /// Which of the five this is.
    const KIND: DomainKind;
    /// Whether H's recursion terminates on its own (every subquestion is strictly simpler), so that
    /// exact evaluation (no answerer at all) is defined.
    const WELL_FOUNDED: bool;
    /// Smallest size [`Domain::generate`] accepts.
    const MIN_SIZE: usize;
    /// Tokens per fact in [`Domain::encode_facts`].
    const FACT_WIDTH: usize;
    /// Tokens per question in [`Domain::encode_question`].
    const QUESTION_WIDTH: usize;

    /// The facts of one instance.
    type Facts: Clone + Debug + PartialEq + Send + Sync + 'static;
    type Question: Clone + Debug + Eq + Hash + Send + Sync + 'static;
    type Answer: Clone + Debug + Eq + Hash + Send + Sync + 'static;

    /// A random instance of `size` symbols (between `MIN_SIZE` and [`FULL_SIZE`]), determined by
    /// `seed`.
    fn generate(&self, size: usize, seed: u64) -> Result<Self::Facts, DomainError>;

    /// The size (number of symbols) of an instance.
    fn size(&self, facts: &Self::Facts) -> usize;

    /// A random root question about `facts`, as the paper's training distribution draws them.
    fn sample_question(&self, facts: &Self::Facts, rng: &mut Rng) -> Self::Question;

    /// A small integer that orders questions by difficulty (the number of wildcards, the depth in
    /// the forest, the distance, ...), used to bucket reported accuracy. Where it needs a solver
    /// (a depth, a distance), it is ground truth: like [`Domain::truth`], every call is counted,
    /// and nothing the training loop decides may read it. Call this; domains implement
    /// [`Domain::compute_difficulty`].
    fn difficulty(&self, facts: &Self::Facts, question: &Self::Question) -> u32 {
        TRUTH_CALLS.fetch_add(1, Ordering::Relaxed);
        match poisoned_draw() {
            Some(draw) => (draw % 8) as u32,
            None => self.compute_difficulty(facts, question),
        }
    }

    /// The difficulty itself, which each domain implements (see [`Domain::difficulty`]).
    fn compute_difficulty(&self, facts: &Self::Facts, question: &Self::Question) -> u32;

    /// The difficulty as it shows in the question's text alone (the number of `*` in a wildcard
    /// pattern, the bit length of a permutation's exponent), or `None` where the domain's
    /// difficulty cannot be seen without solving the instance. It takes no facts, so it cannot
    /// consult a solver: this is the only difficulty the training curriculum may cap questions by.
    fn visible_difficulty(&self, question: &Self::Question) -> Option<u32> {
        let _ = question;
        None
    }

    /// Whether `question` is well formed for these facts (names symbols that exist, ...). Text
    /// parsing checks syntax only; this checks meaning.
    fn check_question(&self, facts: &Self::Facts, question: &Self::Question) -> Result<(), String>;

    /// The correct answer. For evaluation, the oracle answerer and the supervised baseline only: it
    /// must never feed the target-producing path of amplification. Every call is counted
    /// ([`truth_calls`]), which is how a test proves that it does not.
    fn truth(&self, facts: &Self::Facts, question: &Self::Question) -> Self::Answer {
        TRUTH_CALLS.fetch_add(1, Ordering::Relaxed);
        let Some(draw) = poisoned_draw() else {
            return self.compute_truth(facts, question);
        };
        // Poisoned (a test fixture): some answer of the vocabulary, at random.
        let classes = self.answer_classes() as u64;
        (0..classes)
            .find_map(|i| self.class_answer(((draw + i) % classes) as usize))
            .unwrap_or_else(|| self.compute_truth(facts, question))
    }

    /// The ground truth itself, which each domain implements. Call [`Domain::truth`] instead, so
    /// that the call is counted.
    fn compute_truth(&self, facts: &Self::Facts, question: &Self::Question) -> Self::Answer;

    /// The overseer H: answers `question` from the facts if it is simple, or asks subquestions
    /// through `ask` (adaptively, and in parallel where they are independent) and combines their
    /// answers. `None` means "unknown" and is what H returns when a subanswer it needs is unknown
    /// or fails its checks.
    fn oversee<'a>(
        &'a self,
        facts: &'a Self::Facts,
        question: &'a Self::Question,
        ask: Ask<'a, Self>,
    ) -> impl Future<Output = Option<Self::Answer>> + Send + 'a;

    fn parse_facts(&self, text: &str) -> Result<Self::Facts, ParseError>;
    fn print_facts(&self, facts: &Self::Facts) -> String;
    fn parse_question(&self, text: &str) -> Result<Self::Question, ParseError>;
    fn print_question(&self, question: &Self::Question) -> String;
    /// Parses a known answer; `?` (unknown) is handled by [`parse_reply`].
    fn parse_answer(&self, text: &str) -> Result<Self::Answer, ParseError>;
    fn print_answer(&self, answer: &Self::Answer) -> String;
    /// Appends what [`Domain::print_question`] prints to `out`. A worker call carries hundreds of
    /// questions in one text (and its reply as many answers): a domain that prints into the
    /// buffer saves a string per question.
    fn write_question(&self, question: &Self::Question, out: &mut String) {
        out.push_str(&self.print_question(question));
    }
    /// Appends what [`Domain::print_answer`] prints to `out` (see [`Domain::write_question`]).
    fn write_answer(&self, answer: &Self::Answer, out: &mut String) {
        out.push_str(&self.print_answer(answer));
    }

    /// Size of the token vocabulary shared by facts and questions (token 0 is padding).
    fn vocab_size(&self) -> usize;
    /// Facts as `FACT_WIDTH` tokens each, concatenated.
    fn encode_facts(&self, facts: &Self::Facts) -> Vec<u32>;
    /// A question as `QUESTION_WIDTH` tokens.
    fn encode_question(&self, question: &Self::Question) -> Vec<u32>;
    /// Number of answer classes; a model predicts one of `0..answer_classes()`.
    fn answer_classes(&self) -> usize;
    fn answer_class(&self, answer: &Self::Answer) -> usize;
    /// The answer a class stands for; `None` for a class outside the vocabulary.
    fn class_answer(&self, class: usize) -> Option<Self::Answer>;
}

/// Token layout shared by the domains: 0 is padding, then one token per symbol (element, variable,
/// vertex), then one per small number, then each domain's own markers.
pub mod tokens {
    use super::FULL_SIZE;

    pub const PAD: u32 = 0;
    const SYMBOL_BASE: u32 = 1;
    const NUMBER_BASE: u32 = SYMBOL_BASE + FULL_SIZE as u32;
    /// Small numbers 0..=NUMBERS-1 have tokens of their own.
    pub const NUMBERS: u32 = FULL_SIZE as u32 + 1;
    /// The first token a domain may use for its own markers.
    pub const FIRST_MARKER: u32 = NUMBER_BASE + NUMBERS;

    pub fn symbol(i: usize) -> u32 {
        debug_assert!(i < FULL_SIZE);
        SYMBOL_BASE + i as u32
    }

    pub fn number(n: u32) -> u32 {
        debug_assert!(n < NUMBERS);
        NUMBER_BASE + n
    }

    pub fn marker(i: u32) -> u32 {
        FIRST_MARKER + i
    }
}

/// Errors a domain reports about requests (as opposed to text syntax).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("unknown domain {0:?}; the domains are {list}", list = DomainKind::NAMES.join(", "))]
    UnknownDomain(String),
    #[error("size {size} is out of range for domain {domain}: it must be between {min} and {max}")]
    SizeOutOfRange {
        domain: &'static str,
        size: usize,
        min: usize,
        max: usize,
    },
    #[error("invalid question for this instance: {0}")]
    InvalidQuestion(String),
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// Checks `size` against `D`'s bounds.
pub fn check_size<D: Domain>(size: usize) -> Result<(), DomainError> {
    if (D::MIN_SIZE..=FULL_SIZE).contains(&size) {
        Ok(())
    } else {
        Err(DomainError::SizeOutOfRange {
            domain: D::KIND.name(),
            size,
            min: D::MIN_SIZE,
            max: FULL_SIZE,
        })
    }
}

/// Checks `size` against the bounds of the domain `kind`.
pub fn check_size_for(kind: DomainKind, size: usize) -> Result<(), DomainError> {
    crate::with_domain!(kind, d => check_size_of(&d, size))
}

pub fn check_size_of<D: Domain>(_: &D, size: usize) -> Result<(), DomainError> {
    check_size::<D>(size)
}

/// Parses an answer that may be unknown (`?`).
pub fn parse_reply<D: Domain>(domain: &D, text: &str) -> Result<Option<D::Answer>, ParseError> {
    if text.trim() == UNKNOWN_TEXT {
        Ok(None)
    } else {
        domain.parse_answer(text).map(Some)
    }
}

/// Prints an answer that may be unknown (`?`).
pub fn print_reply<D: Domain>(domain: &D, reply: &Option<D::Answer>) -> String {
    match reply {
        Some(a) => domain.print_answer(a),
        None => UNKNOWN_TEXT.to_string(),
    }
}

/// The name of one of the five domains, as written on the command line and on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DomainKind {
    Permutation,
    Assignments,
    Wildcard,
    ShortestPath,
    UnionFind,
}

impl DomainKind {
    pub const ALL: [DomainKind; 5] = [
        DomainKind::Permutation,
        DomainKind::Assignments,
        DomainKind::Wildcard,
        DomainKind::ShortestPath,
        DomainKind::UnionFind,
    ];
    pub const NAMES: [&'static str; 5] = [
        "permutation",
        "assignments",
        "wildcard",
        "shortest-path",
        "union-find",
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

impl fmt::Display for DomainKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DomainKind {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, DomainError> {
        Self::NAMES
            .iter()
            .position(|n| *n == s)
            .map(|i| Self::ALL[i])
            .ok_or_else(|| DomainError::UnknownDomain(s.to_string()))
    }
}

/// Runs `$body` with `$d` bound to the domain value of `$kind` (a [`DomainKind`]), so that generic
/// code can be called from a run-time choice:
/// `with_domain!(kind, d => run(d))`.
#[macro_export]
macro_rules! with_domain {
    ($kind:expr, $d:ident => $body:expr) => {
        match $kind {
            $crate::domain::DomainKind::Permutation => {
                let $d = $crate::domain::permutation::Permutation;
                $body
            }
            $crate::domain::DomainKind::Assignments => {
                let $d = $crate::domain::assignments::Assignments;
                $body
            }
            $crate::domain::DomainKind::Wildcard => {
                let $d = $crate::domain::wildcard::Wildcard;
                $body
            }
            $crate::domain::DomainKind::ShortestPath => {
                let $d = $crate::domain::shortest_path::ShortestPath;
                $body
            }
            $crate::domain::DomainKind::UnionFind => {
                let $d = $crate::domain::union_find::UnionFind;
                $body
            }
        }
    };
}

/// Content hash of an instance: SHA-256 of its canonical text. Facts travel by this hash once a
/// worker has them, and two requests about the same facts share one memo.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(pub [u8; 32]);

impl InstanceId {
    pub fn of_text(canonical: &str) -> Self {
        Self(crate::fsutil::sha256(canonical.as_bytes()))
    }

    /// Short hex prefix for logs and traces.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceId({})", self.short())
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// One instance's facts with their content hash, shared (in an `Arc`) by every tree, answerer and
/// training example about it. It is plain data: the evaluator keeps its memo tables by the id
/// (see [`crate::eval::memo`]).
pub struct Instance<D: Domain> {
    id: InstanceId,
    facts: D::Facts,
}

impl<D: Domain> Instance<D> {
    pub fn new(domain: &D, facts: D::Facts) -> Arc<Self> {
        let id = InstanceId::of_text(&domain.print_facts(&facts));
        Arc::new(Self { id, facts })
    }

    /// Generates an instance (see [`Domain::generate`]).
    pub fn generate(domain: &D, size: usize, seed: u64) -> Result<Arc<Self>, DomainError> {
        Ok(Self::new(domain, domain.generate(size, seed)?))
    }

    /// Parses facts in the domain's text syntax.
    pub fn parse(domain: &D, text: &str) -> Result<Arc<Self>, DomainError> {
        Ok(Self::new(domain, domain.parse_facts(text)?))
    }

    pub fn id(&self) -> InstanceId {
        self.id
    }

    pub fn facts(&self) -> &D::Facts {
        &self.facts
    }
}

impl<D: Domain> Debug for Instance<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("domain", &D::KIND)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Parses a question and checks it against the instance.
pub fn parse_question_for<D: Domain>(
    domain: &D,
    facts: &D::Facts,
    text: &str,
) -> Result<D::Question, DomainError> {
    let q = domain.parse_question(text)?;
    domain
        .check_question(facts, &q)
        .map_err(DomainError::InvalidQuestion)?;
    Ok(q)
}
