//! Permutation powering.
//!
//! Facts: a permutation σ of the `n` elements `0..n`. Question: an element `x` and a power `k`
//! between 1 and 63. Answer: σ^k(x), an element.
//!
//! H: `k = 1` is a lookup of σ(x) in the facts. Otherwise ask y = σ^⌊k/2⌋(x), then (once y is known)
//! z = σ^⌊k/2⌋(y), and answer z if `k` is even or σ(z), looked up in the facts, if `k` is odd.
//! Well founded: every subquestion has a smaller power.
//!
//! Text: facts are the images in order, `3 0 2 1` meaning σ(0) = 3, σ(1) = 0, σ(2) = 2, σ(3) = 1;
//! question `sigma^5(3)`; answer `1`.

use std::ops::Range;

use super::{check_size, tokens, Domain, DomainError, DomainKind, FULL_SIZE};
use crate::eval::Ask;
use crate::rng::Rng;
use crate::text::{Cursor, ParseError};

/// The largest power a question may ask for.
pub const MAX_POWER: u8 = 63;

/// The permutation-powering domain.
#[derive(Clone, Copy, Debug, Default)]
pub struct Permutation;

/// The permutation σ: `images[x]` is σ(x). Always a permutation of `0..images.len()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    images: Vec<u8>,
}

impl Facts {
    /// The number of elements `n`.
    pub fn size(&self) -> usize {
        self.images.len()
    }

    /// σ(x), or `None` if `x` is not an element.
    pub fn apply(&self, x: u8) -> Option<u8> {
        self.images.get(x as usize).copied()
    }

    /// σ(0), σ(1), ..., σ(n - 1).
    pub fn images(&self) -> &[u8] {
        &self.images
    }

    fn contains(&self, x: u8) -> bool {
        (x as usize) < self.images.len()
    }
}

/// The question "σ^k(x)?".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Power {
    /// The element σ is applied to.
    pub x: u8,
    /// How many times σ is applied, 1 to [`MAX_POWER`].
    pub k: u8,
}

impl Domain for Permutation {
    const KIND: DomainKind = DomainKind::Permutation;
    const WELL_FOUNDED: bool = true;
    const MIN_SIZE: usize = 2;
    const FACT_WIDTH: usize = 2;
    const QUESTION_WIDTH: usize = 2;

    type Facts = Facts;
    type Question = Power;
    type Answer = u8;

    fn generate(&self, size: usize, seed: u64) -> Result<Facts, DomainError> {
        check_size::<Self>(size)?;
        let mut rng = Rng::derived(seed, Self::KIND as u64);
        let images = rng.permutation(size).into_iter().map(|x| x as u8).collect();
        Ok(Facts { images })
    }

    fn size(&self, facts: &Facts) -> usize {
        facts.size()
    }

    fn sample_question(&self, facts: &Facts, rng: &mut Rng) -> Power {
        let x = rng.below(facts.size()) as u8;
        let k = rng.range_inclusive(1, MAX_POWER as usize) as u8;
        Power { x, k }
    }

    fn compute_difficulty(&self, _facts: &Facts, question: &Power) -> u32 {
        u8::BITS - question.k.leading_zeros()
    }

    /// Visible in the text: the bit length of the exponent.
    fn visible_difficulty(&self, question: &Power) -> Option<u32> {
        Some(u8::BITS - question.k.leading_zeros())
    }

    fn check_question(&self, facts: &Facts, question: &Power) -> Result<(), String> {
        if !facts.contains(question.x) {
            return Err(format!(
                "element {} does not exist (there are {}: 0..{})",
                question.x,
                facts.size(),
                facts.size() - 1
            ));
        }
        if !(1..=MAX_POWER).contains(&question.k) {
            return Err(format!(
                "power {} is out of range (it must be between 1 and {MAX_POWER})",
                question.k
            ));
        }
        Ok(())
    }

    /// σ applied `k` times to `x`. The question must pass [`Domain::check_question`].
    fn compute_truth(&self, facts: &Facts, question: &Power) -> u8 {
        (0..question.k).fold(question.x, |y, _| facts.images[y as usize])
    }

    async fn oversee<'a>(
        &'a self,
        facts: &'a Facts,
        question: &'a Power,
        ask: Ask<'a, Self>,
    ) -> Option<u8> {
        let Power { x, k } = *question;
        if !facts.contains(x) || !(1..=MAX_POWER).contains(&k) {
            return None;
        }
        if k == 1 {
            return facts.apply(x);
        }
        let half = k / 2;
        let y = ask.one(Power { x, k: half }).await?;
        if !facts.contains(y) {
            return None;
        }
        let z = ask.one(Power { x: y, k: half }).await?;
        if !facts.contains(z) {
            return None;
        }
        if k % 2 == 1 {
            facts.apply(z)
        } else {
            Some(z)
        }
    }

    fn parse_facts(&self, text: &str) -> Result<Facts, ParseError> {
        let mut c = Cursor::new(text);
        let mut numbers: Vec<(u64, Range<usize>)> = Vec::new();
        while !c.at_end() {
            numbers.push(c.number("an element number", u32::MAX as u64)?);
        }
        let n = numbers.len();
        if n > FULL_SIZE {
            return Err(c.error(
                numbers[FULL_SIZE].1.clone(),
                format!("too many elements: a permutation has at most {FULL_SIZE}, found {n}"),
            ));
        }
        if n < Self::MIN_SIZE {
            let span = numbers.first().map_or(0..text.len(), |(_, s)| s.clone());
            return Err(c.error(
                span,
                format!(
                    "too few elements: a permutation has at least {}, found {n}",
                    Self::MIN_SIZE
                ),
            ));
        }
        let mut preimage: [Option<usize>; FULL_SIZE] = [None; FULL_SIZE];
        let mut images = Vec::with_capacity(n);
        for (x, (v, span)) in numbers.into_iter().enumerate() {
            if v as usize >= n {
                return Err(c.error(
                    span,
                    format!(
                        "image {v} is out of range: a permutation of {n} elements has images 0..{}",
                        n - 1
                    ),
                ));
            }
            if let Some(earlier) = preimage[v as usize] {
                return Err(c.error(
                    span,
                    format!(
                        "duplicate image {v}: sigma({earlier}) is already {v}, so this is not \
                         a permutation"
                    ),
                ));
            }
            preimage[v as usize] = Some(x);
            images.push(v as u8);
        }
        Ok(Facts { images })
    }

    fn print_facts(&self, facts: &Facts) -> String {
        let mut out = String::with_capacity(facts.size() * 3);
        for (i, v) in facts.images.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(&v.to_string());
        }
        out
    }

    fn parse_question(&self, text: &str) -> Result<Power, ParseError> {
        let mut c = Cursor::new(text);
        let (word, span) = c.keyword();
        if word != "sigma" {
            const EXPECTED: &str = "expected a question like sigma^5(3)";
            return Err(if span.is_empty() {
                c.error_at_token(EXPECTED)
            } else {
                c.error(span, EXPECTED)
            });
        }
        c.expect('^', "'^' after sigma")?;
        let (k, k_span) = c.number("power", MAX_POWER as u64)?;
        if k == 0 {
            return Err(c.error(
                k_span,
                format!("power 0 is out of range (at least 1, at most {MAX_POWER})"),
            ));
        }
        c.expect('(', "'(' after the power")?;
        let (x, _) = c.number("element", (FULL_SIZE - 1) as u64)?;
        c.expect(')', "')' after the element")?;
        c.finish("question")?;
        Ok(Power {
            x: x as u8,
            k: k as u8,
        })
    }

    fn print_question(&self, question: &Power) -> String {
        format!("sigma^{}({})", question.k, question.x)
    }

    fn parse_answer(&self, text: &str) -> Result<u8, ParseError> {
        let mut c = Cursor::new(text);
        let (x, _) = c.number("element", (FULL_SIZE - 1) as u64)?;
        c.finish("answer")?;
        Ok(x as u8)
    }

    fn print_answer(&self, answer: &u8) -> String {
        answer.to_string()
    }

    fn vocab_size(&self) -> usize {
        tokens::FIRST_MARKER as usize
    }

    fn encode_facts(&self, facts: &Facts) -> Vec<u32> {
        facts
            .images
            .iter()
            .enumerate()
            .flat_map(|(x, &y)| [tokens::symbol(x), tokens::symbol(y as usize)])
            .collect()
    }

    fn encode_question(&self, question: &Power) -> Vec<u32> {
        vec![
            tokens::symbol(question.x as usize),
            tokens::number(question.k as u32),
        ]
    }

    fn answer_classes(&self) -> usize {
        FULL_SIZE
    }

    fn answer_class(&self, answer: &u8) -> usize {
        *answer as usize
    }

    fn class_answer(&self, class: usize) -> Option<u8> {
        (class < FULL_SIZE).then_some(class as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Instance;
    use crate::eval::{Budget, EvalOptions, Evaluator, Mode};

    const D: Permutation = Permutation;

    fn parse_err(text: &str) -> ParseError {
        D.parse_facts(text).unwrap_err()
    }

    #[test]
    fn facts_text_round_trips_at_several_sizes() {
        for size in [2, 3, 17, FULL_SIZE] {
            let facts = D.generate(size, 11).unwrap();
            assert_eq!(D.size(&facts), size);
            let text = D.print_facts(&facts);
            assert_eq!(D.parse_facts(&text).unwrap(), facts, "{text}");
        }
        let facts = D.parse_facts(" 3 0\t2\n1 ").unwrap();
        assert_eq!(facts.images(), &[3, 0, 2, 1]);
        assert_eq!(D.print_facts(&facts), "3 0 2 1");
    }

    #[test]
    fn question_and_answer_text() {
        let q = D.parse_question("sigma^5(3)").unwrap();
        assert_eq!(q, Power { x: 3, k: 5 });
        assert_eq!(D.print_question(&q), "sigma^5(3)");
        assert_eq!(
            D.parse_question(" sigma ^ 63 ( 0 ) ").unwrap(),
            Power { x: 0, k: 63 }
        );
        assert_eq!(D.parse_answer("6").unwrap(), 6);
        assert_eq!(D.print_answer(&6), "6");

        let e = D.parse_question("tau^5(3)").unwrap_err();
        assert!(e.message.contains("sigma^5(3)"), "{e}");
        assert_eq!(e.span, 0..3);
        let e = D.parse_question("sigma^0(3)").unwrap_err();
        assert!(e.message.contains("power 0 is out of range"), "{e}");
        assert_eq!(e.span, 6..7);
        let e = D.parse_question("sigma^64(3)").unwrap_err();
        assert!(e.message.contains("at most 63"), "{e}");
        assert_eq!(e.span, 6..8);
        let e = D.parse_question("sigma^5 3").unwrap_err();
        assert!(e.message.contains("'('"), "{e}");
        assert_eq!(e.span, 8..9);
        let e = D.parse_question("sigma^5(3) x").unwrap_err();
        assert!(e.message.contains("unexpected text"), "{e}");
        assert!(D.parse_answer("64").is_err());
        assert!(D.parse_answer("-1").is_err());
    }

    #[test]
    fn out_of_range_image_is_reported_at_the_number() {
        let e = parse_err("3 0 4 1");
        assert!(e.message.contains("image 4 is out of range"), "{e}");
        assert!(e.message.contains("0..3"), "{e}");
        assert_eq!(e.span, 4..5);
        let e = parse_err("0 1 99999999999");
        assert!(e.message.contains("out of range"), "{e}");
        assert_eq!(e.span, 4..15);
    }

    #[test]
    fn duplicate_image_is_reported_at_the_second_occurrence() {
        let e = parse_err("2 0 2 1");
        assert!(e.message.contains("duplicate image 2"), "{e}");
        assert!(e.message.contains("sigma(0)"), "{e}");
        assert_eq!(e.span, 4..5);
    }

    #[test]
    fn element_count_must_be_between_2_and_64() {
        let e = parse_err("0");
        assert!(e.message.contains("too few elements"), "{e}");
        assert_eq!(e.span, 0..1);
        let e = parse_err("   ");
        assert!(e.message.contains("too few elements"), "{e}");
        let text: Vec<String> = (0..65).map(|i| i.to_string()).collect();
        let text = text.join(" ");
        let e = parse_err(&text);
        assert!(e.message.contains("too many elements"), "{e}");
        let at = text.rfind("64").unwrap();
        assert_eq!(e.span, at..at + 2);
        let e = parse_err("1 0 x");
        assert!(e.message.contains("expected an element number"), "{e}");
        assert_eq!(e.span, 4..5);
    }

    /// σ^k(x) through the cycle decomposition: the element `k` steps further round x's cycle.
    fn power_by_cycles(images: &[u8], x: u8, k: u8) -> u8 {
        let mut cycle = vec![x];
        let mut y = images[x as usize];
        while y != x {
            cycle.push(y);
            y = images[y as usize];
        }
        cycle[k as usize % cycle.len()]
    }

    #[test]
    fn truth_matches_the_cycle_decomposition() {
        for seed in 0..5 {
            let facts = D.generate(FULL_SIZE, seed).unwrap();
            for x in 0..FULL_SIZE as u8 {
                for k in 1..=MAX_POWER {
                    let q = Power { x, k };
                    assert_eq!(D.truth(&facts, &q), power_by_cycles(facts.images(), x, k));
                }
            }
        }
    }

    #[test]
    fn exact_evaluation_of_h_matches_the_truth() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let instance = Instance::new(&D, D.generate(9, 4).unwrap());
        let evaluator = Evaluator::new(D, None, EvalOptions::default());
        rt.block_on(async {
            for x in 0..9 {
                for k in 1..=MAX_POWER {
                    let q = Power { x, k };
                    let r = evaluator
                        .evaluate(&instance, q, Mode::Exact, Budget::default())
                        .await
                        .unwrap();
                    assert_eq!(r.answer, Some(D.truth(instance.facts(), &q)), "{q:?}");
                }
            }
        });
    }

    #[test]
    fn generation_is_deterministic_per_seed_and_a_permutation() {
        let a = D.generate(FULL_SIZE, 1).unwrap();
        assert_eq!(a, D.generate(FULL_SIZE, 1).unwrap());
        assert_ne!(a, D.generate(FULL_SIZE, 2).unwrap());
        let mut sorted = a.images().to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..FULL_SIZE as u8).collect::<Vec<_>>());
        assert!(D.generate(1, 0).is_err());
        assert!(D.generate(FULL_SIZE + 1, 0).is_err());
    }

    #[test]
    fn questions_are_checked_and_bucketed_by_bit_length() {
        let facts = D.generate(4, 0).unwrap();
        assert!(D.check_question(&facts, &Power { x: 3, k: 63 }).is_ok());
        let e = D.check_question(&facts, &Power { x: 4, k: 1 }).unwrap_err();
        assert!(e.contains("element 4 does not exist"), "{e}");
        let e = D.check_question(&facts, &Power { x: 0, k: 0 }).unwrap_err();
        assert!(e.contains("power 0"), "{e}");
        let e = D
            .check_question(&facts, &Power { x: 0, k: 64 })
            .unwrap_err();
        assert!(e.contains("power 64"), "{e}");
        let mut rng = Rng::new(0);
        for _ in 0..200 {
            let q = D.sample_question(&facts, &mut rng);
            D.check_question(&facts, &q).unwrap();
        }
        let difficulty = |k| D.difficulty(&facts, &Power { x: 0, k });
        assert_eq!(
            [1, 2, 3, 4, 7, 8, 32, 63].map(difficulty),
            [1, 2, 2, 3, 3, 4, 6, 6]
        );
    }

    #[test]
    fn tokens_fit_the_vocabulary() {
        let facts = D.generate(FULL_SIZE, 3).unwrap();
        let tokens = D.encode_facts(&facts);
        assert_eq!(tokens.len(), FULL_SIZE * Permutation::FACT_WIDTH);
        let q = D.encode_question(&Power { x: 63, k: 63 });
        assert_eq!(q.len(), Permutation::QUESTION_WIDTH);
        let vocab = D.vocab_size() as u32;
        assert!(tokens
            .iter()
            .chain(&q)
            .all(|&t| t != tokens::PAD && t < vocab));
        for class in 0..D.answer_classes() {
            let a = D.class_answer(class).unwrap();
            assert_eq!(D.answer_class(&a), class);
        }
        assert_eq!(D.class_answer(FULL_SIZE), None);
    }
}
