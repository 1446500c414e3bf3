//! Wildcard search.
//!
//! Facts: up to `n` distinct binary strings of length 6, each worth +1 or -1. Question: a pattern
//! of `0`, `1` and `*`; root questions have at least one `*`. Answer: the sum of the values of the
//! strings that match the pattern (absent strings are worth 0).
//!
//! H: a pattern without `*` is a lookup; otherwise split the first `*` into `0` and `1`, ask both
//! (in parallel), and add. Well founded: every subquestion has one `*` fewer.
//!
//! Text: facts `010011:+1 110000:-1`; question `01*0*1`; answer `-2`.

use super::{check_size, tokens, Domain, DomainError, DomainKind, FULL_SIZE};
use crate::eval::Ask;
use crate::rng::Rng;
use crate::text::{Cursor, ParseError};

/// Length of every string and pattern.
pub const WIDTH: usize = 6;
const STRINGS: usize = 1 << WIDTH;

/// The wildcard-search domain.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wildcard;

/// The value (+1, -1, or 0 when absent) of each of the 64 strings, indexed by the string read as a
/// binary number (first character most significant).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    values: [i8; STRINGS],
}

impl Facts {
    /// The value of `bits`: +1, -1, or 0 if the string is not among the facts.
    pub fn value(&self, bits: u8) -> i32 {
        self.values[bits as usize & (STRINGS - 1)] as i32
    }

    /// `(string, value)` for every string present, in increasing order of the string.
    pub fn strings(&self) -> impl Iterator<Item = (u8, i8)> + '_ {
        self.values
            .iter()
            .enumerate()
            .filter(|(_, &v)| v != 0)
            .map(|(b, &v)| (b as u8, v))
    }
}

/// A pattern: position `i` (0 is the leftmost character) is fixed to bit `(bits >> (5 - i)) & 1`
/// when the same bit of `care` is set, and is a `*` otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pattern {
    pub care: u8,
    pub bits: u8,
}

impl Pattern {
    const ALL: u8 = (STRINGS - 1) as u8;

    pub fn stars(self) -> u32 {
        (!self.care & Self::ALL).count_ones()
    }

    pub fn matches(self, string: u8) -> bool {
        (string ^ self.bits) & self.care == 0
    }

    /// The leftmost `*` replaced by 0 and by 1, or `None` if there is no `*`.
    pub fn split(self) -> Option<(Pattern, Pattern)> {
        let free = !self.care & Self::ALL;
        if free == 0 {
            return None;
        }
        let bit = 1u8 << (7 - free.leading_zeros());
        let care = self.care | bit;
        Some((
            Pattern {
                care,
                bits: self.bits & !bit,
            },
            Pattern {
                care,
                bits: self.bits | bit,
            },
        ))
    }
}

fn bit_char(pattern: Pattern, i: usize) -> char {
    let b = 1u8 << (WIDTH - 1 - i);
    match (pattern.care & b != 0, pattern.bits & b != 0) {
        (false, _) => '*',
        (true, false) => '0',
        (true, true) => '1',
    }
}

/// Parses exactly six characters of `0`, `1` (and `*` if `stars`) from the cursor.
fn parse_pattern(c: &mut Cursor<'_>, stars: bool) -> Result<Pattern, ParseError> {
    let (word, span) = c.word();
    let what = if stars {
        "a pattern of six characters 0, 1 or *"
    } else {
        "a binary string of six characters 0 or 1"
    };
    if word.len() != WIDTH {
        return Err(c.error(
            span.start..span.start + word.len().max(1),
            format!("expected {what}, found {} characters", word.len()),
        ));
    }
    let mut p = Pattern { care: 0, bits: 0 };
    for (i, ch) in word.chars().enumerate() {
        let b = 1u8 << (WIDTH - 1 - i);
        match ch {
            '0' => p.care |= b,
            '1' => {
                p.care |= b;
                p.bits |= b;
            }
            '*' if stars => {}
            _ => {
                let at = span.start + i;
                return Err(c.error(at..at + 1, format!("expected {what}, found {ch:?}")));
            }
        }
    }
    Ok(p)
}

impl Domain for Wildcard {
    const KIND: DomainKind = DomainKind::Wildcard;
    const WELL_FOUNDED: bool = true;
    const MIN_SIZE: usize = 1;
    const FACT_WIDTH: usize = WIDTH + 1;
    const QUESTION_WIDTH: usize = WIDTH;

    type Facts = Facts;
    type Question = Pattern;
    type Answer = i32;

    fn generate(&self, size: usize, seed: u64) -> Result<Facts, DomainError> {
        check_size::<Self>(size)?;
        let mut rng = Rng::derived(seed, Self::KIND as u64);
        let chosen = rng.permutation(STRINGS);
        let mut values = [0i8; STRINGS];
        for &s in &chosen[..size] {
            values[s] = if rng.chance(0.5) { 1 } else { -1 };
        }
        Ok(Facts { values })
    }

    fn size(&self, facts: &Facts) -> usize {
        facts.strings().count()
    }

    fn sample_question(&self, _facts: &Facts, rng: &mut Rng) -> Pattern {
        let stars = rng.range_inclusive(1, WIDTH);
        let positions = rng.permutation(WIDTH);
        let mut care = Pattern::ALL;
        for &p in &positions[..stars] {
            care &= !(1u8 << p);
        }
        let bits = (rng.next_u64() as u8) & care;
        Pattern { care, bits }
    }

    fn compute_difficulty(&self, _facts: &Facts, question: &Pattern) -> u32 {
        question.stars()
    }

    /// Visible in the text: the number of `*`.
    fn visible_difficulty(&self, question: &Pattern) -> Option<u32> {
        Some(question.stars())
    }

    fn check_question(&self, _facts: &Facts, question: &Pattern) -> Result<(), String> {
        if question.care & !Pattern::ALL != 0 || question.bits & !question.care != 0 {
            return Err("pattern has bits outside its six positions".to_string());
        }
        Ok(())
    }

    fn compute_truth(&self, facts: &Facts, question: &Pattern) -> i32 {
        facts
            .strings()
            .filter(|&(s, _)| question.matches(s))
            .map(|(_, v)| v as i32)
            .sum()
    }

    async fn oversee<'a>(
        &'a self,
        facts: &'a Facts,
        question: &'a Pattern,
        ask: Ask<'a, Self>,
    ) -> Option<i32> {
        match question.split() {
            None => Some(facts.value(question.bits)),
            Some((zero, one)) => {
                let (a, b) = ask.two(zero, one).await;
                Some(a? + b?)
            }
        }
    }

    fn parse_facts(&self, text: &str) -> Result<Facts, ParseError> {
        let mut c = Cursor::new(text);
        let mut values = [0i8; STRINGS];
        let mut count = 0;
        while !c.at_end() {
            let start = c.pos();
            let p = parse_pattern(&mut c, false)?;
            c.expect(':', "':' between a string and its value")?;
            let value = if c.eat_str("+1") {
                1
            } else if c.eat_str("-1") {
                -1
            } else {
                return Err(c.error_at_token("expected a value +1 or -1"));
            };
            let slot = &mut values[p.bits as usize];
            if *slot != 0 {
                return Err(c.error(
                    start..c.pos(),
                    "string listed twice: each string may appear once",
                ));
            }
            *slot = value;
            count += 1;
        }
        if count > FULL_SIZE {
            return Err(ParseError::new(text, 0..text.len(), "too many strings"));
        }
        Ok(Facts { values })
    }

    fn print_facts(&self, facts: &Facts) -> String {
        let mut out = String::with_capacity(facts.strings().count() * 10);
        for (s, v) in facts.strings() {
            if !out.is_empty() {
                out.push(' ');
            }
            let p = Pattern {
                care: Pattern::ALL,
                bits: s,
            };
            out.extend((0..WIDTH).map(|i| bit_char(p, i)));
            out.push_str(if v > 0 { ":+1" } else { ":-1" });
        }
        out
    }

    fn parse_question(&self, text: &str) -> Result<Pattern, ParseError> {
        let mut c = Cursor::new(text);
        let p = parse_pattern(&mut c, true)?;
        c.finish("pattern")?;
        Ok(p)
    }

    fn print_question(&self, question: &Pattern) -> String {
        (0..WIDTH).map(|i| bit_char(*question, i)).collect()
    }

    fn parse_answer(&self, text: &str) -> Result<i32, ParseError> {
        let mut c = Cursor::new(text);
        let negative = if c.eat('-') {
            true
        } else {
            c.eat('+');
            false
        };
        let (n, _) = c.number("a sum between -64 and 64", FULL_SIZE as u64)?;
        c.finish("answer")?;
        Ok(if negative { -(n as i32) } else { n as i32 })
    }

    fn print_answer(&self, answer: &i32) -> String {
        answer.to_string()
    }

    fn vocab_size(&self) -> usize {
        tokens::marker(Marker::COUNT) as usize
    }

    fn encode_facts(&self, facts: &Facts) -> Vec<u32> {
        let mut out = Vec::with_capacity(facts.strings().count() * Self::FACT_WIDTH);
        for (s, v) in facts.strings() {
            let p = Pattern {
                care: Pattern::ALL,
                bits: s,
            };
            out.extend((0..WIDTH).map(|i| Marker::of_char(bit_char(p, i))));
            out.push(tokens::marker(if v > 0 {
                Marker::PLUS
            } else {
                Marker::MINUS
            }));
        }
        out
    }

    fn encode_question(&self, question: &Pattern) -> Vec<u32> {
        (0..WIDTH)
            .map(|i| Marker::of_char(bit_char(*question, i)))
            .collect()
    }

    fn answer_classes(&self) -> usize {
        2 * FULL_SIZE + 1
    }

    fn answer_class(&self, answer: &i32) -> usize {
        (answer + FULL_SIZE as i32).clamp(0, 2 * FULL_SIZE as i32) as usize
    }

    fn class_answer(&self, class: usize) -> Option<i32> {
        (class <= 2 * FULL_SIZE).then(|| class as i32 - FULL_SIZE as i32)
    }
}

/// This domain's marker tokens.
struct Marker;

impl Marker {
    const ZERO: u32 = 0;
    const ONE: u32 = 1;
    const STAR: u32 = 2;
    const PLUS: u32 = 3;
    const MINUS: u32 = 4;
    const COUNT: u32 = 5;

    fn of_char(ch: char) -> u32 {
        tokens::marker(match ch {
            '0' => Self::ZERO,
            '1' => Self::ONE,
            _ => Self::STAR,
        })
    }
}
