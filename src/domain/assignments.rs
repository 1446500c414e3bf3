//! Sequential assignments.
//!
//! Facts: `n` variables `x0..x{n-1}`, each defined once, in some order, either as a constant
//! between 0 and 7 or as the sum modulo 8 of two variables defined earlier (possibly the same one
//! twice). Generated instances define about √n of them as constants, the first one always, and
//! name the variables by a random permutation of the definition order, so that a name's index says
//! nothing about where it is defined. Question: a variable. Answer: its value, 0 to 7.
//!
//! H: look the variable's definition up in the facts; a constant is the answer, a sum asks both
//! operands (in parallel) and adds them modulo 8. Well founded: operands are defined earlier, so
//! every subquestion is one step closer to the constants.
//!
//! Text: facts are the definitions in definition order, separated by `;`:
//! `x3 = 5; x0 = x3 + x3; x1 = x0 + x3`; question `x1`; answer `7`.

use std::ops::Range;

use super::{check_size, tokens, Domain, DomainError, DomainKind, FULL_SIZE};
use crate::eval::Ask;
use crate::rng::Rng;
use crate::text::{Cursor, ParseError};

/// Values live modulo this.
pub const MODULUS: u8 = 8;

/// The sequential-assignments domain.
#[derive(Clone, Copy, Debug, Default)]
pub struct Assignments;

/// A variable, `x<index>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Var(pub u8);

/// How one variable is defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Def {
    /// A constant, 0 to 7.
    Const(u8),
    /// The sum modulo 8 of two variables defined earlier.
    Sum(Var, Var),
}

/// The program: each variable's definition, and the order they are defined in (which is part of
/// the facts, so that the text form is canonical).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// Variables in definition order; every variable appears once.
    order: Vec<Var>,
    /// Definitions indexed by variable.
    defs: Vec<Def>,
}

impl Facts {
    /// The number of variables `n`.
    pub fn size(&self) -> usize {
        self.defs.len()
    }

    /// The definition of `v`, or `None` if there is no such variable.
    pub fn def(&self, v: Var) -> Option<Def> {
        self.defs.get(v.0 as usize).copied()
    }

    /// `(variable, definition)` in definition order.
    pub fn definitions(&self) -> impl Iterator<Item = (Var, Def)> + '_ {
        self.order.iter().map(|&v| (v, self.defs[v.0 as usize]))
    }

    /// Every variable's value, indexed by variable.
    pub fn values(&self) -> Vec<u8> {
        let mut values = vec![0u8; self.size()];
        for (v, def) in self.definitions() {
            values[v.0 as usize] = match def {
                Def::Const(c) => c,
                Def::Sum(a, b) => (values[a.0 as usize] + values[b.0 as usize]) % MODULUS,
            };
        }
        values
    }

    /// Every variable's depth in the definition DAG (0 for constants, else one more than its
    /// deeper operand), indexed by variable.
    pub fn depths(&self) -> Vec<u32> {
        let mut depths = vec![0u32; self.size()];
        for (v, def) in self.definitions() {
            if let Def::Sum(a, b) = def {
                depths[v.0 as usize] = 1 + depths[a.0 as usize].max(depths[b.0 as usize]);
            }
        }
        depths
    }
}

/// The number of constants a generated instance of `size` variables has: √size rounded, at least
/// one.
pub fn constant_count(size: usize) -> usize {
    ((size as f64).sqrt().round() as usize).max(1)
}

/// Parses a variable name `x<index>` with index below `count`.
fn parse_var(c: &mut Cursor<'_>, count: usize) -> Result<(Var, Range<usize>), ParseError> {
    let (index, span) = c.indexed_name('x', "variable", count)?;
    Ok((Var(index as u8), span))
}

/// Parses an operand of a sum: a variable that `defs` already defines.
fn parse_operand(c: &mut Cursor<'_>, defs: &[Option<Def>]) -> Result<Var, ParseError> {
    let (v, span) = parse_var(c, defs.len())?;
    if defs[v.0 as usize].is_none() {
        return Err(c.error(span, format!("x{} is used before it is defined", v.0)));
    }
    Ok(v)
}

/// Byte spans of the non-blank `;`-separated parts of `text`, trimmed.
fn definition_spans(text: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut start = 0;
    for part in text.split(';') {
        let trimmed = part.trim();
        if !trimmed.is_empty() {
            let at = start + (part.len() - part.trim_start().len());
            spans.push(at..at + trimmed.len());
        }
        start += part.len() + 1;
    }
    spans
}

impl Domain for Assignments {
    const KIND: DomainKind = DomainKind::Assignments;
    const WELL_FOUNDED: bool = true;
    const MIN_SIZE: usize = 2;
    const FACT_WIDTH: usize = 3;
    const QUESTION_WIDTH: usize = 1;

    type Facts = Facts;
    type Question = Var;
    type Answer = u8;

    fn generate(&self, size: usize, seed: u64) -> Result<Facts, DomainError> {
        check_size::<Self>(size)?;
        let mut rng = Rng::derived(seed, Self::KIND as u64);
        // Which definition positions are constants: the first, and a random choice of the rest.
        let mut is_const = vec![false; size];
        is_const[0] = true;
        for p in rng
            .permutation(size - 1)
            .into_iter()
            .take(constant_count(size) - 1)
        {
            is_const[p + 1] = true;
        }
        let order: Vec<Var> = rng
            .permutation(size)
            .into_iter()
            .map(|v| Var(v as u8))
            .collect();
        let mut defs = vec![Def::Const(0); size];
        for (i, &v) in order.iter().enumerate() {
            defs[v.0 as usize] = if is_const[i] {
                Def::Const(rng.below(MODULUS as usize) as u8)
            } else {
                Def::Sum(order[rng.below(i)], order[rng.below(i)])
            };
        }
        Ok(Facts { order, defs })
    }

    fn size(&self, facts: &Facts) -> usize {
        facts.size()
    }

    fn sample_question(&self, facts: &Facts, rng: &mut Rng) -> Var {
        Var(rng.below(facts.size()) as u8)
    }

    fn compute_difficulty(&self, facts: &Facts, question: &Var) -> u32 {
        facts
            .depths()
            .get(question.0 as usize)
            .copied()
            .unwrap_or(0)
    }

    fn check_question(&self, facts: &Facts, question: &Var) -> Result<(), String> {
        if (question.0 as usize) < facts.size() {
            Ok(())
        } else {
            Err(format!(
                "variable x{} does not exist (there are {}: x0..x{})",
                question.0,
                facts.size(),
                facts.size() - 1
            ))
        }
    }

    /// The variable's value. The question must pass [`Domain::check_question`].
    fn compute_truth(&self, facts: &Facts, question: &Var) -> u8 {
        facts.values()[question.0 as usize]
    }

    async fn oversee<'a>(
        &'a self,
        facts: &'a Facts,
        question: &'a Var,
        ask: Ask<'a, Self>,
    ) -> Option<u8> {
        match facts.def(*question)? {
            Def::Const(c) => Some(c),
            Def::Sum(a, b) => {
                let (a, b) = ask.two(a, b).await;
                let (a, b) = (a?, b?);
                (a < MODULUS && b < MODULUS).then(|| (a + b) % MODULUS)
            }
        }
    }

    fn parse_facts(&self, text: &str) -> Result<Facts, ParseError> {
        // Names are checked against the number of definitions, so find those first: the
        // non-blank `;`-separated parts (a trailing `;` is allowed and adds none).
        let parts = definition_spans(text);
        let n = parts.len();
        if n < Self::MIN_SIZE {
            return Err(ParseError::new(
                text,
                parts.first().cloned().unwrap_or(0..text.len()),
                format!(
                    "too few definitions: there must be at least {}, found {n}",
                    Self::MIN_SIZE
                ),
            ));
        }
        if n > FULL_SIZE {
            return Err(ParseError::new(
                text,
                parts[FULL_SIZE].clone(),
                format!("too many definitions: there may be at most {FULL_SIZE}, found {n}"),
            ));
        }

        let mut c = Cursor::new(text);
        let mut defs: Vec<Option<Def>> = vec![None; n];
        let mut order = Vec::with_capacity(n);
        while !c.at_end() {
            let (v, span) = parse_var(&mut c, n)?;
            if defs[v.0 as usize].is_some() {
                return Err(c.error(
                    span,
                    format!("x{} is defined twice: each variable is defined once", v.0),
                ));
            }
            c.expect('=', "'=' after the variable being defined")?;
            let def = match c.peek() {
                Some(ch) if ch.is_ascii_digit() => {
                    Def::Const(c.number("constant", (MODULUS - 1) as u64)?.0 as u8)
                }
                Some('x') => {
                    let a = parse_operand(&mut c, &defs)?;
                    c.expect('+', "'+' between the two operands")?;
                    let b = parse_operand(&mut c, &defs)?;
                    Def::Sum(a, b)
                }
                _ => {
                    return Err(c.error_at_token(
                        "expected a constant 0 to 7 or a sum of two variables like x3 + x5",
                    ))
                }
            };
            defs[v.0 as usize] = Some(def);
            order.push(v);
            if !c.eat(';') && !c.at_end() {
                return Err(c.error_at_token("expected ';' between definitions"));
            }
        }
        // `n` definitions of distinct variables below `n` define every variable.
        let defs = defs
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                d.ok_or_else(|| {
                    ParseError::new(text, 0..text.len(), format!("x{i} is never defined"))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Facts { order, defs })
    }

    fn print_facts(&self, facts: &Facts) -> String {
        let mut out = String::with_capacity(facts.size() * 16);
        for (i, (v, def)) in facts.definitions().enumerate() {
            if i > 0 {
                out.push_str("; ");
            }
            match def {
                Def::Const(c) => out.push_str(&format!("x{} = {c}", v.0)),
                Def::Sum(a, b) => out.push_str(&format!("x{} = x{} + x{}", v.0, a.0, b.0)),
            }
        }
        out
    }

    fn parse_question(&self, text: &str) -> Result<Var, ParseError> {
        let mut c = Cursor::new(text);
        let (v, _) = parse_var(&mut c, FULL_SIZE)?;
        c.finish("variable")?;
        Ok(v)
    }

    fn print_question(&self, question: &Var) -> String {
        format!("x{}", question.0)
    }

    fn parse_answer(&self, text: &str) -> Result<u8, ParseError> {
        let mut c = Cursor::new(text);
        let (value, _) = c.number("value", (MODULUS - 1) as u64)?;
        c.finish("answer")?;
        Ok(value as u8)
    }

    fn print_answer(&self, answer: &u8) -> String {
        answer.to_string()
    }

    fn vocab_size(&self) -> usize {
        tokens::marker(1) as usize
    }

    fn encode_facts(&self, facts: &Facts) -> Vec<u32> {
        let mut out = Vec::with_capacity(facts.size() * Self::FACT_WIDTH);
        for (v, def) in facts.definitions() {
            out.push(tokens::symbol(v.0 as usize));
            match def {
                Def::Const(c) => out.extend([tokens::number(c as u32), tokens::marker(0)]),
                Def::Sum(a, b) => {
                    out.extend([tokens::symbol(a.0 as usize), tokens::symbol(b.0 as usize)])
                }
            }
        }
        out
    }

    fn encode_question(&self, question: &Var) -> Vec<u32> {
        vec![tokens::symbol(question.0 as usize)]
    }

    fn answer_classes(&self) -> usize {
        MODULUS as usize
    }

    fn answer_class(&self, answer: &u8) -> usize {
        *answer as usize
    }

    fn class_answer(&self, class: usize) -> Option<u8> {
        (class < MODULUS as usize).then_some(class as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Instance;
    use crate::eval::{Budget, EvalOptions, Evaluator, Mode};

    const D: Assignments = Assignments;

    fn parse_err(text: &str) -> ParseError {
        D.parse_facts(text).unwrap_err()
    }

    /// The span of the `nth` occurrence (from 0) of `needle` in `text`.
    fn span_of(text: &str, needle: &str, nth: usize) -> Range<usize> {
        let at = text.match_indices(needle).nth(nth).unwrap().0;
        at..at + needle.len()
    }

    #[test]
    fn facts_text_round_trips_at_several_sizes() {
        for size in [2, 3, 10, FULL_SIZE] {
            let facts = D.generate(size, 5).unwrap();
            assert_eq!(D.size(&facts), size);
            let text = D.print_facts(&facts);
            assert_eq!(D.parse_facts(&text).unwrap(), facts, "{text}");
        }
        let text = "x2 = 5; x0 = x2 + x2; x1 = x0 + x2";
        let facts = D.parse_facts(text).unwrap();
        assert_eq!(D.print_facts(&facts), text);
        assert_eq!(facts.def(Var(0)), Some(Def::Sum(Var(2), Var(2))));
        assert_eq!(facts.values(), vec![2, 7, 5]);
        let loose = D
            .parse_facts(" x2=5 ;x0 = x2+x2;\n x1 = x0 + x2 ; ")
            .unwrap();
        assert_eq!(loose, facts);
    }

    #[test]
    fn question_and_answer_text() {
        assert_eq!(D.parse_question("x17").unwrap(), Var(17));
        assert_eq!(D.print_question(&Var(17)), "x17");
        assert!(D.parse_question("x64").is_err());
        assert!(D.parse_question("y1").is_err());
        assert!(D.parse_question("x1 x2").is_err());
        assert_eq!(D.parse_answer("5").unwrap(), 5);
        assert_eq!(D.print_answer(&5), "5");
        let e = D.parse_answer("8").unwrap_err();
        assert!(e.message.contains("at most 7"), "{e}");
    }

    #[test]
    fn use_before_definition_is_reported_at_the_operand() {
        let text = "x0 = 1; x1 = x0 + x2; x2 = 3";
        let e = parse_err(text);
        assert_eq!(e.message, "x2 is used before it is defined");
        assert_eq!(e.span, span_of(text, "x2", 0));
        let text = "x0 = x0 + x0; x1 = 1";
        let e = parse_err(text);
        assert_eq!(e.message, "x0 is used before it is defined");
        assert_eq!(e.span, 5..7);
    }

    #[test]
    fn names_must_be_below_the_definition_count() {
        let text = "x0 = 1; x5 = x0 + x0";
        let e = parse_err(text);
        assert!(e.message.contains("x5 does not exist"), "{e}");
        assert!(e.message.contains("there are 2"), "{e}");
        assert_eq!(e.span, span_of(text, "x5", 0));
        let text = "x0 = 1; x1 = x0 + x7";
        let e = parse_err(text);
        assert!(e.message.contains("x7 does not exist"), "{e}");
        assert_eq!(e.span, span_of(text, "x7", 0));
        let e = parse_err("x0 = 1; y1 = x0 + x0");
        assert!(e.message.contains("expected variable"), "{e}");
        assert_eq!(e.span, 8..10);
    }

    #[test]
    fn each_variable_is_defined_once() {
        let text = "x0 = 1; x0 = 2; x1 = x0 + x0";
        let e = parse_err(text);
        assert!(e.message.contains("x0 is defined twice"), "{e}");
        assert_eq!(e.span, span_of(text, "x0", 1));
    }

    #[test]
    fn constants_are_0_to_7() {
        let text = "x0 = 8; x1 = x0 + x0";
        let e = parse_err(text);
        assert!(e.message.contains("constant 8 is out of range"), "{e}");
        assert_eq!(e.span, 5..6);
        let e = parse_err("x0 = -1; x1 = x0 + x0");
        assert!(
            e.message.contains("expected a constant 0 to 7 or a sum"),
            "{e}"
        );
        assert_eq!(e.span.start, 5);
    }

    #[test]
    fn syntax_errors_name_what_was_expected() {
        let e = parse_err("x0 = 1; x1 x0 + x0");
        assert!(e.message.contains("'='"), "{e}");
        assert_eq!(e.span, 11..13);
        let e = parse_err("x0 = 1; x1 = x0 - x0");
        assert!(e.message.contains("'+'"), "{e}");
        let e = parse_err("x0 = 1; x1 = x0 + x0 x1");
        assert!(e.message.contains("';'"), "{e}");
        assert_eq!(e.span, 21..23);
        let e = parse_err("x0 = 1;; x1 = x0 + x0");
        assert!(e.message.contains("expected variable"), "{e}");
        assert_eq!(e.span, 7..8);
    }

    #[test]
    fn definition_count_must_be_between_2_and_64() {
        let e = parse_err("x0 = 1");
        assert!(e.message.contains("too few definitions"), "{e}");
        assert_eq!(e.span, 0..6);
        let e = parse_err("  ");
        assert!(e.message.contains("too few definitions"), "{e}");
        let mut defs = vec!["x0 = 1".to_string()];
        defs.extend((1..65).map(|i| format!("x{i} = x0 + x0")));
        let text = defs.join("; ");
        let e = parse_err(&text);
        assert!(e.message.contains("too many definitions"), "{e}");
        assert_eq!(&text[e.span.clone()], "x64 = x0 + x0");
    }

    /// Values by recursion over the definitions, memoized, without using the definition order.
    fn value_by_recursion(facts: &Facts, v: Var, memo: &mut [Option<u8>]) -> u8 {
        if let Some(x) = memo[v.0 as usize] {
            return x;
        }
        let x = match facts.def(v).unwrap() {
            Def::Const(c) => c,
            Def::Sum(a, b) => {
                (value_by_recursion(facts, a, memo) + value_by_recursion(facts, b, memo)) % 8
            }
        };
        memo[v.0 as usize] = Some(x);
        x
    }

    #[test]
    fn truth_matches_recursive_evaluation() {
        for seed in 0..10 {
            let facts = D.generate(FULL_SIZE, seed).unwrap();
            let mut memo = vec![None; FULL_SIZE];
            for v in 0..FULL_SIZE as u8 {
                let expected = value_by_recursion(&facts, Var(v), &mut memo);
                assert_eq!(D.truth(&facts, &Var(v)), expected);
            }
        }
    }

    #[test]
    fn exact_evaluation_of_h_matches_the_truth() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let instance = Instance::new(&D, D.generate(FULL_SIZE, 9).unwrap());
        let evaluator = Evaluator::new(D, None, EvalOptions::default());
        rt.block_on(async {
            for v in 0..FULL_SIZE as u8 {
                let r = evaluator
                    .evaluate(&instance, Var(v), Mode::Exact, Budget::default())
                    .await
                    .unwrap();
                assert_eq!(r.answer, Some(D.truth(instance.facts(), &Var(v))), "x{v}");
            }
        });
    }

    #[test]
    fn generation_is_deterministic_per_seed() {
        let a = D.generate(FULL_SIZE, 1).unwrap();
        assert_eq!(a, D.generate(FULL_SIZE, 1).unwrap());
        assert_ne!(a, D.generate(FULL_SIZE, 2).unwrap());
        assert!(D.generate(1, 0).is_err());
        assert!(D.generate(FULL_SIZE + 1, 0).is_err());
    }

    #[test]
    fn about_sqrt_n_constants_and_the_first_is_one() {
        for (size, expected) in [(2, 1), (3, 2), (10, 3), (30, 5), (FULL_SIZE, 8)] {
            assert_eq!(constant_count(size), expected);
            for seed in 0..5 {
                let facts = D.generate(size, seed).unwrap();
                let defs: Vec<Def> = facts.definitions().map(|(_, d)| d).collect();
                assert!(matches!(defs[0], Def::Const(_)), "size {size} seed {seed}");
                let constants = defs.iter().filter(|d| matches!(d, Def::Const(_))).count();
                assert_eq!(constants, expected, "size {size} seed {seed}");
            }
        }
    }

    #[test]
    fn names_are_shuffled_relative_to_the_definition_order() {
        let facts = D.generate(FULL_SIZE, 3).unwrap();
        let order: Vec<u8> = facts.definitions().map(|(v, _)| v.0).collect();
        assert_ne!(order, (0..FULL_SIZE as u8).collect::<Vec<_>>());
    }

    #[test]
    fn difficulty_is_the_depth_in_the_dag() {
        let facts = D
            .parse_facts("x2 = 5; x0 = x2 + x2; x3 = 1; x1 = x0 + x3")
            .unwrap();
        let depth = |v| D.difficulty(&facts, &Var(v));
        assert_eq!([0, 1, 2, 3].map(depth), [1, 2, 0, 0]);
    }

    #[test]
    fn questions_are_checked() {
        let facts = D.generate(4, 0).unwrap();
        assert!(D.check_question(&facts, &Var(3)).is_ok());
        let e = D.check_question(&facts, &Var(4)).unwrap_err();
        assert!(e.contains("x4 does not exist"), "{e}");
        let mut rng = Rng::new(0);
        for _ in 0..100 {
            D.check_question(&facts, &D.sample_question(&facts, &mut rng))
                .unwrap();
        }
    }

    #[test]
    fn tokens_fit_the_vocabulary() {
        let facts = D.parse_facts("x1 = 7; x0 = x1 + x1").unwrap();
        let encoded = D.encode_facts(&facts);
        assert_eq!(
            encoded,
            [
                tokens::symbol(1),
                tokens::number(7),
                tokens::marker(0),
                tokens::symbol(0),
                tokens::symbol(1),
                tokens::symbol(1),
            ]
        );
        let facts = D.generate(FULL_SIZE, 0).unwrap();
        let encoded = D.encode_facts(&facts);
        assert_eq!(encoded.len(), FULL_SIZE * Assignments::FACT_WIDTH);
        let vocab = D.vocab_size() as u32;
        assert!(encoded.iter().all(|&t| t != tokens::PAD && t < vocab));
        assert_eq!(D.encode_question(&Var(63)), [tokens::symbol(63)]);
        for class in 0..D.answer_classes() {
            assert_eq!(D.answer_class(&D.class_answer(class).unwrap()), class);
        }
        assert_eq!(D.class_answer(8), None);
    }
}
