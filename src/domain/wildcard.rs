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

/// Six bytes of `0`, `1` (and `*` if `stars`) read as a pattern, as [`parse_pattern`] reads them;
/// `None` for anything else (the readers that call this fall back to the general parser, which
/// words the error).
fn plain_pattern(bytes: &[u8], stars: bool) -> Option<Pattern> {
    let bytes: &[u8; WIDTH] = bytes.try_into().ok()?;
    let mut p = Pattern { care: 0, bits: 0 };
    for &c in bytes {
        let (care, bit) = match c {
            b'0' => (1, 0),
            b'1' => (1, 1),
            b'*' if stars => (0, 0),
            _ => return None,
        };
        p.care = (p.care << 1) | care;
        p.bits = (p.bits << 1) | bit;
    }
    Some(p)
}

/// An answer as `print_answer` writes it (`-3`, `0`, `12`), read directly; `None` for anything
/// else, which the general reader reads or rejects.
fn plain_answer(bytes: &[u8]) -> Option<i32> {
    let (negative, digits) = match bytes {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, bytes),
    };
    let n = match *digits {
        [d @ b'0'..=b'9'] => (d - b'0') as i32,
        [d @ b'1'..=b'9', e @ b'0'..=b'9'] => ((d - b'0') * 10 + (e - b'0')) as i32,
        _ => return None,
    };
    (n <= FULL_SIZE as i32).then_some(if negative { -n } else { n })
}

/// Reads facts in the form printers write, `010011:+1 110000:-1` (ASCII spaces, tabs or newlines
/// between facts), a byte at a time; `None` for anything else, which [`parse_facts_general`] then
/// reads or rejects with its message. Every text this accepts, the general parser accepts with the
/// same facts (the tests compare the two), so it changes speed, never meaning. Facts are read twice
/// per tree, by the coordinator and by the worker its leaves go to: read token by token, they took
/// about 6% of an oracle load test's CPU.
fn parse_plain_facts(text: &str) -> Option<Facts> {
    const _: () = assert!(
        STRINGS <= FULL_SIZE,
        "a text of distinct strings may be too long"
    );
    const FACT: usize = WIDTH + 3; // `010011:+1`
    let bytes = text.as_bytes();
    let mut values = [0i8; STRINGS];
    let mut i = 0;
    loop {
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        if i == bytes.len() {
            // Each string at most once: at most STRINGS facts, within FULL_SIZE (asserted above).
            return Some(Facts { values });
        }
        let fact = bytes.get(i..i + FACT)?;
        let bits = plain_pattern(&fact[..WIDTH], false)?.bits;
        let value = match &fact[WIDTH..] {
            b":+1" => 1,
            b":-1" => -1,
            _ => return None,
        };
        let slot = &mut values[bits as usize];
        if *slot != 0 {
            return None;
        }
        *slot = value;
        i += FACT;
    }
}

/// Reads facts the way the grammar allows in full (whitespace anywhere between tokens), with an
/// error that points at what is wrong.
fn parse_facts_general(text: &str) -> Result<Facts, ParseError> {
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
        match parse_plain_facts(text) {
            Some(facts) => Ok(facts),
            None => parse_facts_general(text),
        }
    }

    fn print_facts(&self, facts: &Facts) -> String {
        // A fact's nine bytes at a time: facts are printed a few times per tree (the id is the
        // hash of this text, and it is how facts travel), char by char that was 6,300
        // instructions for a full instance, now 4,200.
        const FACT: usize = WIDTH + 3;
        let mut out = Vec::with_capacity(facts.strings().count() * (FACT + 1));
        for (s, v) in facts.strings() {
            if !out.is_empty() {
                out.push(b' ');
            }
            let mut fact = *b"000000:+1";
            for (i, c) in fact[..WIDTH].iter_mut().enumerate() {
                if (s >> (WIDTH - 1 - i)) & 1 == 1 {
                    *c = b'1';
                }
            }
            if v < 0 {
                fact[WIDTH + 1] = b'-';
            }
            out.extend_from_slice(&fact);
        }
        String::from_utf8(out).expect("ASCII")
    }

    fn parse_question(&self, text: &str) -> Result<Pattern, ParseError> {
        // The printed form directly: a worker reads a question per leaf.
        if let Some(p) = plain_pattern(text.as_bytes(), true) {
            return Ok(p);
        }
        let mut c = Cursor::new(text);
        let p = parse_pattern(&mut c, true)?;
        c.finish("pattern")?;
        Ok(p)
    }

    fn print_question(&self, question: &Pattern) -> String {
        (0..WIDTH).map(|i| bit_char(*question, i)).collect()
    }

    fn write_question(&self, question: &Pattern, out: &mut String) {
        out.extend((0..WIDTH).map(|i| bit_char(*question, i)));
    }

    fn parse_answer(&self, text: &str) -> Result<i32, ParseError> {
        // The printed form directly: the coordinator reads an answer per leaf.
        if let Some(n) = plain_answer(text.as_bytes()) {
            return Ok(n);
        }
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

    fn write_answer(&self, answer: &i32, out: &mut String) {
        use std::fmt::Write as _;
        let _ = write!(out, "{answer}"); // writing to a String cannot fail
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Printed facts of a random instance, with each separator replaced by one of `seps`.
    fn text(seed: u64, size: usize, seps: &[&str]) -> String {
        let printed = Wildcard.print_facts(&Wildcard.generate(size, seed).unwrap());
        let mut out = String::new();
        for (i, fact) in printed.split(' ').enumerate() {
            if i > 0 {
                out.push_str(seps[i % seps.len()]);
            }
            out.push_str(fact);
        }
        out
    }

    #[test]
    fn printed_facts_take_the_plain_path() {
        for size in [1, 17, FULL_SIZE] {
            let t = text(size as u64, size, &[" ", "\n", "\t ", "", "\r\n"]);
            let plain = parse_plain_facts(&t).expect("printed facts are plain");
            assert_eq!(plain, parse_facts_general(&t).unwrap());
            assert_eq!(Wildcard.size(&plain), size);
        }
        assert_eq!(
            parse_plain_facts("  "),
            Some(Facts {
                values: [0; STRINGS]
            })
        );
    }

    #[test]
    fn what_the_plain_path_refuses_gets_the_general_message() {
        for bad in [
            "010011:+1 010011:-1",
            "010011:+2",
            "01001:+1",
            "0100111:+1",
            "010011 :+1",
            "010011:+1x",
            "010011:\u{a0}+1",
        ] {
            assert_eq!(parse_plain_facts(bad), None, "{bad:?}");
        }
        let e = Wildcard.parse_facts("010011:+1 010011:-1").unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
        // Whitespace the plain path does not know is the general parser's to read.
        assert_eq!(
            Wildcard.parse_facts("010011 : +1\u{a0}110000:-1").unwrap(),
            Wildcard.parse_facts("010011:+1 110000:-1").unwrap()
        );
    }

    #[test]
    fn questions_and_answers_read_directly_read_as_the_general_parser_reads_them() {
        for care in 0..=Pattern::ALL {
            for bits in 0..=Pattern::ALL {
                let p = Pattern {
                    care,
                    bits: bits & care,
                };
                let text = Wildcard.print_question(&p);
                assert_eq!(plain_pattern(text.as_bytes(), true), Some(p), "{text}");
                let mut c = Cursor::new(&text);
                assert_eq!(parse_pattern(&mut c, true).unwrap(), p, "{text}");
            }
        }
        for answer in -(FULL_SIZE as i32)..=FULL_SIZE as i32 {
            let text = Wildcard.print_answer(&answer);
            assert_eq!(plain_answer(text.as_bytes()), Some(answer), "{text}");
        }
        assert_eq!(plain_answer(b"-0"), Wildcard.parse_answer(" -0 ").ok());
        // Other forms go to the general reader, which accepts some and words the errors of the rest.
        for (text, read) in [
            ("+5", Some(5)),
            (" 7 ", Some(7)),
            ("007", Some(7)),
            ("65", None),
            ("-65", None),
            ("--1", None),
            ("", None),
            ("1x", None),
        ] {
            assert_eq!(plain_answer(text.as_bytes()), None, "{text:?}");
            assert_eq!(Wildcard.parse_answer(text).ok(), read, "{text:?}");
        }
        for (text, read) in [
            (" 01*1*0", true),
            ("01*1*0 ", true),
            ("01*1*", false),
            ("01*1*02", false),
            ("01*1*x", false),
        ] {
            assert_eq!(plain_pattern(text.as_bytes(), true), None, "{text:?}");
            assert_eq!(Wildcard.parse_question(text).is_ok(), read, "{text:?}");
        }
    }

    proptest! {
        /// Any text the plain path reads, the general parser reads the same; on texts near the
        /// printed form (characters changed, dropped or doubled), whichever path reads them.
        #[test]
        fn the_plain_path_agrees_with_the_general_parser(
            seed in 0u64..1000,
            size in 1usize..=FULL_SIZE,
            edits in proptest::collection::vec((0usize..700, 0u8..4, 0usize..12), 0..4),
        ) {
            let mut t: Vec<char> = text(seed, size, &[" ", "\n"]).chars().collect();
            const CHARS: [char; 12] = ['0', '1', ':', '+', '-', ' ', '\n', '\t', '2', '*', '\u{a0}', 'x'];
            for (at, op, c) in edits {
                let at = at % (t.len() + 1);
                match op {
                    0 if at < t.len() => t[at] = CHARS[c],
                    1 if at < t.len() => { t.remove(at); }
                    2 if at < t.len() => t.insert(at, t[at]),
                    _ => t.insert(at, CHARS[c]),
                }
            }
            let t: String = t.into_iter().collect();
            let general = parse_facts_general(&t);
            if let Some(plain) = parse_plain_facts(&t) {
                prop_assert_eq!(Some(&plain), general.as_ref().ok());
            }
            prop_assert_eq!(
                Wildcard.parse_facts(&t).map_err(|e| e.to_string()),
                general.map_err(|e| e.to_string())
            );
        }
    }
}
