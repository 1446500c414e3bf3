//! Shortest path.
//!
//! Facts: a directed graph on the `n` vertices `0..n`, with `2n` distinct random edges and no
//! self-loops (all `n(n - 1)` possible edges when that is fewer). Questions: `dist A B`, the length
//! of a shortest path from A to B, and `next A B`, the first step of a shortest path from A to B.
//! Answers: `dist D` or `unreachable` (for `dist`), `next C` or `none` (for `next`: no step, because
//! A is B or B is unreachable from A). The first step is canonical: the smallest-numbered
//! out-neighbour C of A with dist(C, B) = dist(A, B) - 1.
//!
//! H, for `dist A B`: A = B is 0 and an edge A>B is 1. Otherwise ask `next A B` as a guess; `none`
//! means B is unreachable. A guess `next C` whose C is an out-neighbour of A (checked against the
//! facts) leaves C as the only candidate; a guess that fails the check (or is unknown) leaves every
//! out-neighbour of A. Ask `dist C B` for every candidate (in parallel) and answer one more than the
//! smallest, or `unreachable` if none reaches B. For `next A B`: A = B is `none` and an edge A>B is
//! `next B`; otherwise ask `dist C B` for every out-neighbour C of A (in parallel) and answer the
//! nearest (ties to the smallest vertex), or `none` if none reaches B. An unknown subanswer, or one
//! of the wrong kind, makes the answer unknown. Not well founded: `dist` relies on its answerer's
//! guess of `next`, which asks about the very distance being computed one level deeper.
//!
//! Text: facts `n=8: 0>3 0>5 1>2 ...` (edges in increasing order when printed, any order when
//! parsed); questions `dist 3 5`, `next 3 5`; answers `dist 4`, `unreachable`, `next 5`, `none`.

use std::collections::VecDeque;
use std::ops::Range;

use super::{check_size, tokens, Domain, DomainError, DomainKind, FULL_SIZE};
use crate::eval::Ask;
use crate::rng::Rng;
use crate::text::{Cursor, ParseError};

/// The shortest-path domain.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShortestPath;

/// A directed graph without self-loops or repeated edges, stored canonically: `out[a]` is the
/// sorted list of the out-neighbours of `a`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    out: Vec<Vec<u8>>,
}

impl Facts {
    /// The number of vertices `n`.
    pub fn vertices(&self) -> usize {
        self.out.len()
    }

    /// The out-neighbours of `a`, in increasing order (empty for a vertex that does not exist).
    pub fn out(&self, a: u8) -> &[u8] {
        self.out.get(a as usize).map_or(&[], Vec::as_slice)
    }

    /// Whether the edge `a>b` is among the facts.
    pub fn has_edge(&self, a: u8, b: u8) -> bool {
        self.out(a).binary_search(&b).is_ok()
    }

    /// Every edge `(a, b)`, in increasing order.
    pub fn edges(&self) -> impl Iterator<Item = (u8, u8)> + '_ {
        self.out
            .iter()
            .enumerate()
            .flat_map(|(a, bs)| bs.iter().map(move |&b| (a as u8, b)))
    }

    fn edge_count(&self) -> usize {
        self.out.iter().map(Vec::len).sum()
    }

    /// Distance from every vertex to `b` (`None` where `b` is unreachable), by one breadth-first
    /// search over the reversed edges. Ground truth only.
    fn distances_to(&self, b: u8) -> Vec<Option<u8>> {
        let n = self.vertices();
        let mut into = vec![Vec::new(); n];
        for (a, c) in self.edges() {
            into[c as usize].push(a);
        }
        let mut dist = vec![None; n];
        dist[b as usize] = Some(0u8);
        let mut queue = VecDeque::from([b]);
        while let Some(v) = queue.pop_front() {
            let d = dist[v as usize].unwrap_or(0);
            for &u in &into[v as usize] {
                if dist[u as usize].is_none() {
                    dist[u as usize] = Some(d + 1);
                    queue.push_back(u);
                }
            }
        }
        dist
    }
}

/// A question about a pair of vertices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Question {
    /// `dist A B`: the length of a shortest path from A to B.
    Dist(u8, u8),
    /// `next A B`: the first step of the canonical shortest path from A to B.
    Next(u8, u8),
}

impl Question {
    /// The pair `(A, B)` the question is about.
    pub fn pair(self) -> (u8, u8) {
        match self {
            Question::Dist(a, b) | Question::Next(a, b) => (a, b),
        }
    }
}

/// An answer; each kind prints with its own leading word, so answers parse without the question.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Answer {
    /// `dist D`: B is D steps from A.
    Dist(u8),
    /// `unreachable`: there is no path from A to B.
    Unreachable,
    /// `next C`: the first step from A toward B is C.
    Next(u8),
    /// `none`: there is no first step (A is B, or B is unreachable from A).
    NoStep,
}

/// What H makes of an answer to `dist C B`: `Ok(Some(d))`, `Ok(None)` for unreachable, `Err(())`
/// when it is unknown, of the wrong kind, or impossible in a graph of `n` vertices.
fn checked_distance(answer: Option<Answer>, n: usize) -> Result<Option<u8>, ()> {
    match answer {
        Some(Answer::Dist(d)) if (d as usize) < n => Ok(Some(d)),
        Some(Answer::Unreachable) => Ok(None),
        _ => Err(()),
    }
}

/// Asks `dist C B` for every candidate C and returns the nearest `(d, C)` (ties to the smallest C),
/// `Ok(None)` if none reaches B, or `Err(())` if any answer is unknown or fails its check.
async fn nearest<'a>(
    facts: &Facts,
    candidates: &[u8],
    b: u8,
    ask: Ask<'a, ShortestPath>,
) -> Result<Option<(u8, u8)>, ()> {
    let answers = ask
        .all(candidates.iter().map(|&c| Question::Dist(c, b)))
        .await;
    let mut best = None;
    for (&c, answer) in candidates.iter().zip(answers) {
        if let Some(d) = checked_distance(answer, facts.vertices())? {
            if best.map_or(true, |(bd, bc)| (d, c) < (bd, bc)) {
                best = Some((d, c));
            }
        }
    }
    Ok(best)
}

/// Parses `n=K:`, with K between [`ShortestPath::MIN_SIZE`] and [`FULL_SIZE`].
fn parse_header(c: &mut Cursor<'_>, min: usize) -> Result<usize, ParseError> {
    let (word, span) = c.keyword();
    if word != "n" {
        return Err(c.error(
            span.start..span.end.max(span.start + 1),
            "expected the number of vertices first, like n=8:",
        ));
    }
    c.expect('=', "'=' after n, like n=8:")?;
    let (n, span) = c.number("the number of vertices", FULL_SIZE as u64)?;
    if (n as usize) < min {
        return Err(c.error(
            span,
            format!("the number of vertices must be at least {min}, found {n}"),
        ));
    }
    c.expect(':', "':' after the number of vertices, like n=8:")?;
    Ok(n as usize)
}

/// Parses a vertex number below `n` (`FULL_SIZE` when the graph is not known).
fn parse_vertex(
    c: &mut Cursor<'_>,
    what: &str,
    n: usize,
) -> Result<(u8, Range<usize>), ParseError> {
    let (v, span) = c.number(what, u64::MAX).map_err(|e| {
        let mut e = e;
        if e.message.contains("out of range") {
            e.message = format!("{what} is far too large: there are at most {FULL_SIZE} vertices");
        }
        e
    })?;
    if v as usize >= n {
        return Err(c.error(
            span,
            format!(
                "vertex {v} does not exist (there are {n}: 0..{})",
                n.saturating_sub(1)
            ),
        ));
    }
    Ok((v as u8, span))
}

impl Domain for ShortestPath {
    const KIND: DomainKind = DomainKind::ShortestPath;
    const WELL_FOUNDED: bool = false;
    const MIN_SIZE: usize = 2;
    const FACT_WIDTH: usize = 2;
    const QUESTION_WIDTH: usize = 3;

    type Facts = Facts;
    type Question = Question;
    type Answer = Answer;

    fn generate(&self, size: usize, seed: u64) -> Result<Facts, DomainError> {
        check_size::<Self>(size)?;
        let mut rng = Rng::derived(seed, Self::KIND as u64);
        let n = size;
        let possible = n * (n - 1);
        let edges = (2 * n).min(possible);
        let mut out = vec![Vec::new(); n];
        // Edge i of the n(n - 1) possible ones: from i / (n - 1) to the (i % (n - 1))-th other vertex.
        for &i in &rng.permutation(possible)[..edges] {
            let a = i / (n - 1);
            let mut b = i % (n - 1);
            if b >= a {
                b += 1;
            }
            out[a].push(b as u8);
        }
        for bs in &mut out {
            bs.sort_unstable();
        }
        Ok(Facts { out })
    }

    fn size(&self, facts: &Facts) -> usize {
        facts.vertices()
    }

    fn sample_question(&self, facts: &Facts, rng: &mut Rng) -> Question {
        let n = facts.vertices();
        let dist = rng.chance(0.5);
        let a = rng.below(n);
        let mut b = rng.below(n - 1);
        if b >= a {
            b += 1;
        }
        let (a, b) = (a as u8, b as u8);
        if dist {
            Question::Dist(a, b)
        } else {
            Question::Next(a, b)
        }
    }

    fn compute_difficulty(&self, facts: &Facts, question: &Question) -> u32 {
        let (a, b) = question.pair();
        facts.distances_to(b)[a as usize].map_or(facts.vertices() as u32, u32::from)
    }

    fn check_question(&self, facts: &Facts, question: &Question) -> Result<(), String> {
        let n = facts.vertices();
        let (a, b) = question.pair();
        for v in [a, b] {
            if v as usize >= n {
                return Err(format!(
                    "vertex {v} does not exist (there are {n}: 0..{})",
                    n - 1
                ));
            }
        }
        Ok(())
    }

    fn compute_truth(&self, facts: &Facts, question: &Question) -> Answer {
        let (a, b) = question.pair();
        let dist = facts.distances_to(b);
        match (*question, dist[a as usize]) {
            (Question::Dist(..), Some(d)) => Answer::Dist(d),
            (Question::Dist(..), None) => Answer::Unreachable,
            (Question::Next(..), None | Some(0)) => Answer::NoStep,
            (Question::Next(..), Some(d)) => facts
                .out(a)
                .iter()
                .find(|&&c| dist[c as usize] == Some(d - 1))
                .map_or(Answer::NoStep, |&c| Answer::Next(c)),
        }
    }

    async fn oversee<'a>(
        &'a self,
        facts: &'a Facts,
        question: &'a Question,
        ask: Ask<'a, Self>,
    ) -> Option<Answer> {
        let n = facts.vertices();
        match *question {
            Question::Dist(a, b) if a == b => Some(Answer::Dist(0)),
            Question::Dist(a, b) if facts.has_edge(a, b) => Some(Answer::Dist(1)),
            Question::Dist(a, b) => {
                let guess = ask.one(Question::Next(a, b)).await;
                let only;
                let candidates = match guess {
                    Some(Answer::NoStep) => return Some(Answer::Unreachable),
                    Some(Answer::Next(c)) if facts.has_edge(a, c) => {
                        only = [c];
                        &only[..]
                    }
                    _ => facts.out(a),
                };
                match nearest(facts, candidates, b, ask).await.ok()? {
                    // A path from a has at most n - 1 steps.
                    Some((d, _)) if (d as usize) + 1 < n => Some(Answer::Dist(d + 1)),
                    Some(_) => None,
                    None => Some(Answer::Unreachable),
                }
            }
            Question::Next(a, b) if a == b => Some(Answer::NoStep),
            Question::Next(a, b) if facts.has_edge(a, b) => Some(Answer::Next(b)),
            Question::Next(a, b) => match nearest(facts, facts.out(a), b, ask).await.ok()? {
                Some((_, c)) => Some(Answer::Next(c)),
                None => Some(Answer::NoStep),
            },
        }
    }

    fn parse_facts(&self, text: &str) -> Result<Facts, ParseError> {
        let mut c = Cursor::new(text);
        let n = parse_header(&mut c, Self::MIN_SIZE)?;
        let mut out: Vec<Vec<u8>> = vec![Vec::new(); n];
        while !c.at_end() {
            let start = c.pos();
            let (a, _) = parse_vertex(&mut c, "a vertex", n)?;
            c.expect('>', "'>' between the two vertices of an edge, like 0>3")?;
            let (b, _) = parse_vertex(&mut c, "a vertex after '>'", n)?;
            let span = start..c.pos();
            if a == b {
                return Err(c.error(
                    span,
                    format!("self-loop {a}>{b}: an edge must join two different vertices"),
                ));
            }
            if out[a as usize].contains(&b) {
                return Err(c.error(
                    span,
                    format!("duplicate edge {a}>{b}: each edge may appear once"),
                ));
            }
            out[a as usize].push(b);
        }
        for bs in &mut out {
            bs.sort_unstable();
        }
        Ok(Facts { out })
    }

    fn print_facts(&self, facts: &Facts) -> String {
        let mut s = format!("n={}:", facts.vertices());
        for (a, b) in facts.edges() {
            s.push_str(&format!(" {a}>{b}"));
        }
        s
    }

    fn parse_question(&self, text: &str) -> Result<Question, ParseError> {
        let mut c = Cursor::new(text);
        let (kind, span) = c.keyword();
        let make = match kind {
            "dist" => Question::Dist,
            "next" => Question::Next,
            _ => {
                return Err(c.error(
                    span.start..span.end.max(span.start + 1),
                    "expected a question: dist A B or next A B",
                ))
            }
        };
        let (a, _) = parse_vertex(&mut c, "a vertex", FULL_SIZE)?;
        let (b, _) = parse_vertex(&mut c, "a second vertex", FULL_SIZE)?;
        c.finish("question")?;
        Ok(make(a, b))
    }

    fn print_question(&self, question: &Question) -> String {
        match *question {
            Question::Dist(a, b) => format!("dist {a} {b}"),
            Question::Next(a, b) => format!("next {a} {b}"),
        }
    }

    fn parse_answer(&self, text: &str) -> Result<Answer, ParseError> {
        let mut c = Cursor::new(text);
        let (kind, span) = c.keyword();
        let answer = match kind {
            "dist" => {
                let (d, _) = c.number("a distance", FULL_SIZE as u64 - 1)?;
                Answer::Dist(d as u8)
            }
            "unreachable" => Answer::Unreachable,
            "next" => Answer::Next(parse_vertex(&mut c, "a vertex", FULL_SIZE)?.0),
            "none" => Answer::NoStep,
            _ => {
                return Err(c.error(
                    span.start..span.end.max(span.start + 1),
                    "expected an answer: dist D, unreachable, next C or none",
                ))
            }
        };
        c.finish("answer")?;
        Ok(answer)
    }

    fn print_answer(&self, answer: &Answer) -> String {
        match *answer {
            Answer::Dist(d) => format!("dist {d}"),
            Answer::Unreachable => "unreachable".to_string(),
            Answer::Next(c) => format!("next {c}"),
            Answer::NoStep => "none".to_string(),
        }
    }

    fn vocab_size(&self) -> usize {
        tokens::marker(Marker::COUNT) as usize
    }

    fn encode_facts(&self, facts: &Facts) -> Vec<u32> {
        let mut out = Vec::with_capacity(facts.edge_count() * Self::FACT_WIDTH);
        for (a, b) in facts.edges() {
            out.extend([tokens::symbol(a as usize), tokens::symbol(b as usize)]);
        }
        out
    }

    fn encode_question(&self, question: &Question) -> Vec<u32> {
        let marker = match question {
            Question::Dist(..) => Marker::DIST,
            Question::Next(..) => Marker::NEXT,
        };
        let (a, b) = question.pair();
        vec![
            tokens::marker(marker),
            tokens::symbol(a as usize),
            tokens::symbol(b as usize),
        ]
    }

    fn answer_classes(&self) -> usize {
        Class::COUNT
    }

    fn answer_class(&self, answer: &Answer) -> usize {
        match *answer {
            Answer::Dist(d) => Class::DIST + (d as usize).min(FULL_SIZE - 1),
            Answer::Unreachable => Class::UNREACHABLE,
            Answer::Next(c) => Class::NEXT + (c as usize).min(FULL_SIZE - 1),
            Answer::NoStep => Class::NO_STEP,
        }
    }

    fn class_answer(&self, class: usize) -> Option<Answer> {
        match class {
            c if c < Class::UNREACHABLE => Some(Answer::Dist((c - Class::DIST) as u8)),
            Class::UNREACHABLE => Some(Answer::Unreachable),
            c if c < Class::NO_STEP => Some(Answer::Next((c - Class::NEXT) as u8)),
            Class::NO_STEP => Some(Answer::NoStep),
            _ => None,
        }
    }
}

/// This domain's marker tokens.
struct Marker;

impl Marker {
    const DIST: u32 = 0;
    const NEXT: u32 = 1;
    const COUNT: u32 = 2;
}

/// The layout of the answer classes: `dist 0..63`, `unreachable`, `next 0..63`, `none`.
struct Class;

impl Class {
    const DIST: usize = 0;
    const UNREACHABLE: usize = Self::DIST + FULL_SIZE;
    const NEXT: usize = Self::UNREACHABLE + 1;
    const NO_STEP: usize = Self::NEXT + FULL_SIZE;
    const COUNT: usize = Self::NO_STEP + 1;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::future::BoxFuture;

    use super::*;
    use crate::answerer::{Answerer, AnswererId, Answers, Oracle, Query};
    use crate::domain::Instance;
    use crate::eval::{Budget, EvalOptions, Evaluator, Mode};

    const D: ShortestPath = ShortestPath;

    fn facts(text: &str) -> Facts {
        D.parse_facts(text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Parses `text`, expecting an error whose message contains `needle` and whose span covers
    /// exactly `bad` (the last occurrence of it in `text`).
    fn parse_error(text: &str, needle: &str, bad: &str) {
        let e = D.parse_facts(text).unwrap_err();
        assert!(e.message.contains(needle), "{text:?}: {}", e.message);
        let start = text.rfind(bad).unwrap();
        assert_eq!(e.span, start..start + bad.len(), "{text:?}: {}", e.message);
    }

    /// All-pairs distances by Floyd-Warshall, independent of the breadth-first search.
    fn floyd_warshall(f: &Facts) -> Vec<Vec<Option<u32>>> {
        let n = f.vertices();
        let mut d = vec![vec![None; n]; n];
        for (a, row) in d.iter_mut().enumerate() {
            row[a] = Some(0);
        }
        for (a, b) in f.edges() {
            d[a as usize][b as usize] = Some(1);
        }
        for k in 0..n {
            for i in 0..n {
                for j in 0..n {
                    if let (Some(x), Some(y)) = (d[i][k], d[k][j]) {
                        if d[i][j].map_or(true, |z| x + y < z) {
                            d[i][j] = Some(x + y);
                        }
                    }
                }
            }
        }
        d
    }

    #[test]
    fn generation_is_deterministic_and_has_2n_edges() {
        for size in [2, 3, 4, 10, 64] {
            let f = D.generate(size, 7).unwrap();
            assert_eq!(f, D.generate(size, 7).unwrap());
            assert_eq!(f.vertices(), size);
            assert_eq!(f.edge_count(), (2 * size).min(size * (size - 1)));
            assert!(f.edges().all(|(a, b)| a != b && (b as usize) < size));
        }
        assert_ne!(D.generate(64, 1).unwrap(), D.generate(64, 2).unwrap());
        assert!(D.generate(1, 0).is_err());
        assert!(D.generate(65, 0).is_err());
    }

    #[test]
    fn facts_round_trip_through_text() {
        for size in [2, 3, 9, 64] {
            for seed in 0..3 {
                let f = D.generate(size, seed).unwrap();
                let text = D.print_facts(&f);
                assert_eq!(facts(&text), f, "{text}");
            }
        }
        let f = facts("n=4: 2>1 0>3  0>1\n3>2");
        assert_eq!(D.print_facts(&f), "n=4: 0>1 0>3 2>1 3>2");
        assert_eq!(D.print_facts(&facts("n=2:")), "n=2:");
    }

    #[test]
    fn malformed_facts_are_pointed_out() {
        parse_error("n=1: ", "at least 2", "1");
        parse_error("n=65: 0>1", "at most 64", "65");
        parse_error("m=4: 0>1", "number of vertices first", "m");
        parse_error("n=4 0>1", "':' after the number", "0");
        parse_error("n=4: 0>1 2>4", "vertex 4 does not exist", "4");
        parse_error("n=4: 0>1 9>2", "vertex 9 does not exist", "9");
        parse_error("n=4: 0>1 2>2", "self-loop 2>2", "2>2");
        parse_error("n=4: 0>1 2>3 0>1", "duplicate edge 0>1", "0>1");
        parse_error("n=4: 0>1 2 3", "'>' between", "3");
        parse_error("n=4: 0>1 2>", "expected a vertex after '>'", "");
    }

    #[test]
    fn questions_and_answers_round_trip() {
        for q in [Question::Dist(0, 63), Question::Next(12, 3)] {
            assert_eq!(D.parse_question(&D.print_question(&q)).unwrap(), q);
            assert_eq!(D.encode_question(&q).len(), ShortestPath::QUESTION_WIDTH);
        }
        for a in [
            Answer::Dist(0),
            Answer::Dist(63),
            Answer::Unreachable,
            Answer::Next(0),
            Answer::Next(63),
            Answer::NoStep,
        ] {
            assert_eq!(D.parse_answer(&D.print_answer(&a)).unwrap(), a);
            let class = D.answer_class(&a);
            assert!(class < D.answer_classes());
            assert_eq!(D.class_answer(class), Some(a));
        }
        assert_eq!(D.answer_classes(), 130);
        assert_eq!(D.class_answer(130), None);
        let e = D.parse_question("far 1 2").unwrap_err();
        assert!(e.message.contains("dist A B or next A B"), "{}", e.message);
        assert_eq!(e.span, 0..3);
        let e = D.parse_question("dist 1 64").unwrap_err();
        assert!(
            e.message.contains("vertex 64 does not exist"),
            "{}",
            e.message
        );
        assert_eq!(e.span, 7..9);
        let e = D.parse_answer("dist 64").unwrap_err();
        assert!(e.message.contains("at most 63"), "{}", e.message);
        let e = D.parse_answer("maybe").unwrap_err();
        assert!(e.message.contains("expected an answer"), "{}", e.message);
        assert!(D.parse_answer("none 3").is_err());
    }

    #[test]
    fn check_question_rejects_missing_vertices() {
        let f = facts("n=3: 0>1");
        assert!(D.check_question(&f, &Question::Dist(0, 2)).is_ok());
        let e = D.check_question(&f, &Question::Next(3, 0)).unwrap_err();
        assert!(e.contains("vertex 3 does not exist"), "{e}");
    }

    #[test]
    fn truth_agrees_with_floyd_warshall() {
        for (size, seed) in [(2, 0), (3, 1), (8, 2), (20, 3), (64, 4), (64, 5)] {
            let f = D.generate(size, seed).unwrap();
            let d = floyd_warshall(&f);
            let pairs = (0..size).flat_map(|a| (0..size).map(move |b| (a, b)));
            for (a, b) in pairs {
                let (qa, qb) = (a as u8, b as u8);
                let dist = D.truth(&f, &Question::Dist(qa, qb));
                let next = D.truth(&f, &Question::Next(qa, qb));
                match d[a][b] {
                    None => {
                        assert_eq!(dist, Answer::Unreachable);
                        assert_eq!(next, Answer::NoStep);
                        assert_eq!(D.difficulty(&f, &Question::Dist(qa, qb)), size as u32);
                    }
                    Some(x) => {
                        assert_eq!(dist, Answer::Dist(x as u8));
                        assert_eq!(D.difficulty(&f, &Question::Next(qa, qb)), x);
                        let step = (0..size)
                            .find(|&c| x > 0 && f.has_edge(qa, c as u8) && d[c][b] == Some(x - 1));
                        let expected = step.map_or(Answer::NoStep, |c| Answer::Next(c as u8));
                        assert_eq!(next, expected, "next {a} {b}");
                    }
                }
            }
        }
    }

    /// Answers every `next` question wrongly (alternately unknown, a non-edge, and an answer of the
    /// wrong kind) and everything else truthfully, so H must fall back on all out-neighbours.
    struct BadGuesses;

    impl Answerer<ShortestPath> for BadGuesses {
        fn id(&self) -> AnswererId {
            AnswererId::custom(17, "bad guesses")
        }

        fn answer(&self, batch: Vec<Query<ShortestPath>>) -> BoxFuture<'_, Answers<Answer>> {
            let answers = batch
                .iter()
                .map(|q| match q.question {
                    Question::Next(a, b) => match (a + b) % 3 {
                        0 => None,
                        1 => Some(Answer::Next(a)),
                        _ => Some(Answer::Dist(1)),
                    },
                    other => Some(D.truth(q.instance.facts(), &other)),
                })
                .collect();
            Box::pin(std::future::ready(Ok(answers)))
        }
    }

    fn evaluate_all(answerer: Arc<dyn Answerer<ShortestPath>>, modes: &[Mode]) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let evaluator = Evaluator::new(D, Some(answerer), EvalOptions::default());
        for seed in 0..3 {
            let instance = Instance::generate(&D, 12, seed).unwrap();
            for a in 0..12u8 {
                for b in 0..12u8 {
                    for q in [Question::Dist(a, b), Question::Next(a, b)] {
                        let truth = D.truth(instance.facts(), &q);
                        for &mode in modes {
                            let r = rt
                                .block_on(evaluator.evaluate(&instance, q, mode, Budget::default()))
                                .unwrap();
                            assert_eq!(r.answer, Some(truth), "seed {seed} {q:?} {mode}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn overseer_with_oracle_leaves_is_exact_at_every_depth() {
        let modes = [Mode::Amplified, Mode::Hch(2), Mode::Hch(4), Mode::Hch(7)];
        evaluate_all(Arc::new(Oracle::new(D)), &modes);
    }

    #[test]
    fn overseer_falls_back_when_the_guess_fails_its_check() {
        evaluate_all(Arc::new(BadGuesses), &[Mode::Amplified, Mode::Hch(2)]);
    }
}
