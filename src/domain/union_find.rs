//! Union-find (equalities).
//!
//! Facts: `n` variables `x0..x{n-1}` split into about √n classes. Each class is a tree of equality
//! facts `xA = xB` with one root whose value (0 to 63) is given by a fact `xA = V`. Names are
//! shuffled and the facts are listed in a random order, each equality in a random orientation, so
//! neither names nor text reveal which way a tree points. Questions: `value x3` (the value of x3,
//! which is its class root's), `parent x3` (the neighbour of x3 toward its root) and `depth x3`
//! (the number of equalities between x3 and its root). Answers: `value 42`, `parent x7`, `root`
//! (x3 is the root of its class, so it has no parent) and `depth 3`.
//!
//! H: a root answers `value V`, `root` and `depth 0` from its value fact. A variable with exactly
//! one equality neighbour has that neighbour as its parent. Otherwise, for `parent x`, ask the depth
//! of every neighbour (in parallel): the parent is the shallowest (ties to the smallest index). For
//! `value x` and `depth x` of a non-root, find the parent (the only neighbour, else the answerer's
//! guess of `parent x` if it names a neighbour of x, checked against the facts, else by comparing
//! neighbours' depths as above), then ask `value p` (and answer it) or `depth p` (and answer one
//! more). An unknown subanswer, or one of the wrong kind, makes the answer unknown. Not well
//! founded: `parent x` asks for the depths of x's children, which ask for x's parent in turn.
//!
//! Text: facts `n=8: x3 = x7; x7 = 42; x1 = x3; ...` (the header gives the number of variables,
//! then facts separated by `;`); questions `value x3`, `parent x3`, `depth x3`; answers `value 42`,
//! `parent x7`, `root`, `depth 3`.

use std::collections::VecDeque;
use std::ops::Range;

use super::{check_size, tokens, Domain, DomainError, DomainKind, FULL_SIZE};
use crate::eval::Ask;
use crate::rng::Rng;
use crate::text::{Cursor, ParseError};

/// The largest value a root may have.
pub const MAX_VALUE: u8 = 63;

/// The union-find domain.
#[derive(Clone, Copy, Debug, Default)]
pub struct UnionFind;

/// One fact, as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fact {
    /// `xA = xB`: two variables of one class, joined by an edge of its tree.
    Equal(u8, u8),
    /// `xA = V`: the root `xA` of a class has value V.
    Value(u8, u8),
}

/// The facts in the order they are printed (which is canonical: the text round-trips to an equal
/// value), with what follows from them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    n: usize,
    list: Vec<Fact>,
    /// The value fact of each variable (only roots have one).
    value: Vec<Option<u8>>,
    /// The equality neighbours of each variable, in increasing order.
    neighbours: Vec<Vec<u8>>,
    /// Ground truth (for [`Domain::truth`] only): the parent of each variable (`None` for roots),
    /// its depth, and the value of its class.
    parent: Vec<Option<u8>>,
    depth: Vec<u8>,
    class_value: Vec<u8>,
}

/// Why a list of facts is not a valid instance: the fact at `fact` (or the header, for `None`) is
/// at fault.
struct Invalid {
    fact: Option<usize>,
    message: String,
}

impl Facts {
    /// Checks that `list` describes a forest over `0..n` in which every variable appears and every
    /// tree has exactly one valued root, and derives the rest.
    fn new(n: usize, list: Vec<Fact>) -> Result<Self, Invalid> {
        let at = |fact: usize, message: String| Invalid {
            fact: Some(fact),
            message,
        };
        let mut value = vec![None; n];
        let mut neighbours = vec![Vec::new(); n];
        // A disjoint-set forest over the variables; `valued[find(x)]` is the index of the value fact
        // of x's class so far.
        let mut set: Vec<usize> = (0..n).collect();
        let mut valued: Vec<Option<usize>> = vec![None; n];
        fn find(set: &mut [usize], mut x: usize) -> usize {
            while set[x] != x {
                set[x] = set[set[x]];
                x = set[x];
            }
            x
        }
        for (i, &fact) in list.iter().enumerate() {
            match fact {
                Fact::Equal(a, b) => {
                    if a == b {
                        return Err(at(i, format!("x{a} = x{b} equates x{a} with itself")));
                    }
                    if neighbours[a as usize].contains(&b) {
                        let as_stated = if list[..i].contains(&fact) {
                            String::new()
                        } else {
                            format!(" (as x{b} = x{a})")
                        };
                        return Err(at(
                            i,
                            format!("duplicate fact: x{a} = x{b} is already stated{as_stated}"),
                        ));
                    }
                    let (ra, rb) = (find(&mut set, a as usize), find(&mut set, b as usize));
                    if ra == rb {
                        return Err(at(
                            i,
                            format!(
                                "x{a} = x{b} closes a cycle: x{a} and x{b} are already equal \
                                 through other facts, and the equalities must form a forest"
                            ),
                        ));
                    }
                    if let (Some(va), Some(vb)) = (valued[ra], valued[rb]) {
                        let (Fact::Value(xa, _), Fact::Value(xb, _)) = (list[va], list[vb]) else {
                            unreachable!("valued points at value facts")
                        };
                        return Err(at(
                            i,
                            format!(
                                "x{a} = x{b} puts x{xa} and x{xb} in one class, but both have \
                                 values: a class has exactly one value"
                            ),
                        ));
                    }
                    set[ra] = rb;
                    valued[rb] = valued[rb].or(valued[ra]);
                    neighbours[a as usize].push(b);
                    neighbours[b as usize].push(a);
                }
                Fact::Value(x, v) => {
                    if value[x as usize].is_some() {
                        return Err(at(i, format!("x{x} is given a value twice")));
                    }
                    let r = find(&mut set, x as usize);
                    if let Some(other) = valued[r] {
                        let Fact::Value(y, _) = list[other] else {
                            unreachable!("valued points at value facts")
                        };
                        return Err(at(
                            i,
                            format!(
                                "x{x} = {v} gives a second value to the class of x{x}, which \
                                 already has x{y} as its valued root: a class has exactly one value"
                            ),
                        ));
                    }
                    valued[r] = Some(i);
                    value[x as usize] = Some(v);
                }
            }
        }
        if let Some(x) = (0..n).find(|&x| value[x].is_none() && neighbours[x].is_empty()) {
            return Err(Invalid {
                fact: None,
                message: format!(
                    "x{x} appears in no fact: every variable x0..x{} must appear",
                    n - 1
                ),
            });
        }
        if let Some(x) = (0..n).find(|&x| valued[find(&mut set, x)].is_none()) {
            let first = list
                .iter()
                .position(|&f| matches!(f, Fact::Equal(a, b) if a as usize == x || b as usize == x))
                .unwrap_or(0);
            return Err(at(
                first,
                format!(
                    "the class of x{x} has no value: one of its variables must be given one, \
                     like x{x} = 7"
                ),
            ));
        }
        for ns in &mut neighbours {
            ns.sort_unstable();
        }

        // Breadth-first search from every root gives parents and depths.
        let mut parent = vec![None; n];
        let mut depth = vec![0u8; n];
        let mut class_value = vec![0u8; n];
        let mut queue = VecDeque::new();
        for root in 0..n {
            let Some(v) = value[root] else { continue };
            class_value[root] = v;
            queue.push_back(root);
            while let Some(x) = queue.pop_front() {
                for &c in &neighbours[x] {
                    let c = c as usize;
                    if c != root && parent[c].is_none() {
                        parent[c] = Some(x as u8);
                        depth[c] = depth[x] + 1;
                        class_value[c] = v;
                        queue.push_back(c);
                    }
                }
            }
        }
        Ok(Facts {
            n,
            list,
            value,
            neighbours,
            parent,
            depth,
            class_value,
        })
    }

    /// The number of variables `n`.
    pub fn variables(&self) -> usize {
        self.n
    }

    /// The facts, in their canonical (printed) order.
    pub fn facts(&self) -> &[Fact] {
        &self.list
    }

    /// The value fact of `x`, if `x` is a root.
    pub fn value(&self, x: u8) -> Option<u8> {
        self.value.get(x as usize).copied().flatten()
    }

    /// The variables `x` is stated equal to, in increasing order.
    pub fn neighbours(&self, x: u8) -> &[u8] {
        self.neighbours.get(x as usize).map_or(&[], Vec::as_slice)
    }
}

/// A question about one variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Question {
    /// `value xA`: the value of A's class.
    Value(u8),
    /// `parent xA`: A's neighbour toward its class root.
    Parent(u8),
    /// `depth xA`: the number of equalities between A and its class root.
    Depth(u8),
}

impl Question {
    /// The variable the question is about.
    pub fn variable(self) -> u8 {
        match self {
            Question::Value(x) | Question::Parent(x) | Question::Depth(x) => x,
        }
    }
}

/// An answer; each kind prints with its own leading word, so answers parse without the question.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Answer {
    /// `value V`.
    Value(u8),
    /// `parent xP`.
    Parent(u8),
    /// `root`: the variable is its class root and has no parent.
    Root,
    /// `depth D`.
    Depth(u8),
}

/// The parent of `x` by comparing its neighbours' depths: the shallowest neighbour (ties to the
/// smallest index), or `None` if any depth is unknown or not a depth.
async fn parent_by_depths(facts: &Facts, x: u8, ask: Ask<'_, UnionFind>) -> Option<u8> {
    let neighbours = facts.neighbours(x);
    let answers = ask
        .all(neighbours.iter().map(|&c| Question::Depth(c)))
        .await;
    let mut best: Option<(u8, u8)> = None;
    for (&c, answer) in neighbours.iter().zip(answers) {
        let Some(Answer::Depth(d)) = answer else {
            return None;
        };
        if best.map_or(true, |b| (d, c) < b) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// The parent of the non-root `x`: its only neighbour, else the answerer's guess if it names a
/// neighbour, else by comparing neighbours' depths.
async fn find_parent(facts: &Facts, x: u8, ask: Ask<'_, UnionFind>) -> Option<u8> {
    if let [only] = facts.neighbours(x) {
        return Some(*only);
    }
    match ask.one(Question::Parent(x)).await {
        Some(Answer::Parent(p)) if facts.neighbours(x).contains(&p) => Some(p),
        _ => parent_by_depths(facts, x, ask).await,
    }
}

/// Parses a variable name `xI` with `I < n`.
fn parse_variable(c: &mut Cursor<'_>, n: usize) -> Result<(u8, Range<usize>), ParseError> {
    let (x, span) = c.indexed_name('x', "variable", n)?;
    Ok((x as u8, span))
}

impl Domain for UnionFind {
    const KIND: DomainKind = DomainKind::UnionFind;
    const WELL_FOUNDED: bool = false;
    const MIN_SIZE: usize = 2;
    const FACT_WIDTH: usize = 3;
    const QUESTION_WIDTH: usize = 2;

    type Facts = Facts;
    type Question = Question;
    type Answer = Answer;

    fn generate(&self, size: usize, seed: u64) -> Result<Facts, DomainError> {
        check_size::<Self>(size)?;
        let mut rng = Rng::derived(seed, Self::KIND as u64);
        let n = size;
        let classes = ((n as f64).sqrt().round() as usize).clamp(1, n);
        // Class sizes: one member each, the rest spread uniformly at random.
        let mut sizes = vec![1usize; classes];
        for _ in classes..n {
            sizes[rng.below(classes)] += 1;
        }
        // `names[i]` is the variable at position i; each class is a run of positions whose first
        // is the root and whose others attach to a uniformly random earlier member.
        let names = rng.permutation(n);
        let mut list = Vec::with_capacity(n);
        let mut start = 0;
        for len in sizes {
            let members = &names[start..start + len];
            let value = rng.below(MAX_VALUE as usize + 1) as u8;
            list.push(Fact::Value(members[0] as u8, value));
            for i in 1..len {
                let parent = members[rng.below(i)] as u8;
                let child = members[i] as u8;
                list.push(if rng.chance(0.5) {
                    Fact::Equal(child, parent)
                } else {
                    Fact::Equal(parent, child)
                });
            }
            start += len;
        }
        rng.shuffle(&mut list);
        Ok(Facts::new(n, list)
            .unwrap_or_else(|e| panic!("generated facts are invalid: {}", e.message)))
    }

    fn size(&self, facts: &Facts) -> usize {
        facts.variables()
    }

    fn sample_question(&self, facts: &Facts, rng: &mut Rng) -> Question {
        let x = rng.below(facts.variables()) as u8;
        match rng.below(3) {
            0 => Question::Value(x),
            1 => Question::Parent(x),
            _ => Question::Depth(x),
        }
    }

    fn compute_difficulty(&self, facts: &Facts, question: &Question) -> u32 {
        facts.depth[question.variable() as usize] as u32
    }

    fn check_question(&self, facts: &Facts, question: &Question) -> Result<(), String> {
        let x = question.variable();
        let n = facts.variables();
        if x as usize >= n {
            return Err(format!(
                "variable x{x} does not exist (there are {n}: x0..x{})",
                n - 1
            ));
        }
        Ok(())
    }

    fn compute_truth(&self, facts: &Facts, question: &Question) -> Answer {
        let x = question.variable() as usize;
        match question {
            Question::Value(_) => Answer::Value(facts.class_value[x]),
            Question::Parent(_) => facts.parent[x].map_or(Answer::Root, Answer::Parent),
            Question::Depth(_) => Answer::Depth(facts.depth[x]),
        }
    }

    async fn oversee<'a>(
        &'a self,
        facts: &'a Facts,
        question: &'a Question,
        ask: Ask<'a, Self>,
    ) -> Option<Answer> {
        let x = question.variable();
        let root_value = facts.value(x);
        match *question {
            Question::Value(_) if root_value.is_some() => root_value.map(Answer::Value),
            Question::Value(_) => {
                let p = find_parent(facts, x, ask).await?;
                match ask.one(Question::Value(p)).await? {
                    Answer::Value(v) if v <= MAX_VALUE => Some(Answer::Value(v)),
                    _ => None,
                }
            }
            Question::Depth(_) if root_value.is_some() => Some(Answer::Depth(0)),
            Question::Depth(_) => {
                let p = find_parent(facts, x, ask).await?;
                match ask.one(Question::Depth(p)).await? {
                    // A depth in a class of at most n variables is below n.
                    Answer::Depth(d) if (d as usize) + 1 < facts.variables() => {
                        Some(Answer::Depth(d + 1))
                    }
                    _ => None,
                }
            }
            Question::Parent(_) if root_value.is_some() => Some(Answer::Root),
            Question::Parent(_) => match facts.neighbours(x) {
                [only] => Some(Answer::Parent(*only)),
                _ => parent_by_depths(facts, x, ask).await.map(Answer::Parent),
            },
        }
    }

    fn parse_facts(&self, text: &str) -> Result<Facts, ParseError> {
        let mut c = Cursor::new(text);
        let (word, span) = c.keyword();
        let header_start = span.start;
        if word != "n" {
            return Err(c.error(
                span.start..span.end.max(span.start + 1),
                "expected the number of variables first, like n=8:",
            ));
        }
        c.expect('=', "'=' after n, like n=8:")?;
        let (n, span) = c.number("the number of variables", FULL_SIZE as u64)?;
        let n = n as usize;
        if n < Self::MIN_SIZE {
            return Err(c.error(
                span,
                format!(
                    "the number of variables must be at least {}, found {n}",
                    Self::MIN_SIZE
                ),
            ));
        }
        let header = header_start..span.end;
        c.expect(':', "':' after the number of variables, like n=8:")?;

        let mut list = Vec::new();
        let mut spans = Vec::new();
        while !c.at_end() {
            let start = c.pos();
            let (a, _) = parse_variable(&mut c, n)?;
            c.expect('=', "'=' in a fact like x3 = x7 or x3 = 42")?;
            let fact = match c.peek() {
                Some('x') => Fact::Equal(a, parse_variable(&mut c, n)?.0),
                Some(ch) if ch.is_ascii_digit() => {
                    let (v, _) = c.number("a value", MAX_VALUE as u64)?;
                    Fact::Value(a, v as u8)
                }
                _ => {
                    return Err(c.error_at_token(format!(
                        "expected a variable (like x7) or a value 0..{MAX_VALUE} after '='"
                    )))
                }
            };
            list.push(fact);
            spans.push(start..c.pos());
            if !c.at_end() {
                c.expect(';', "';' between facts")?;
            }
        }
        Facts::new(n, list).map_err(|e| {
            let span = e.fact.map_or(header, |i| spans[i].clone());
            c.error(span, e.message)
        })
    }

    fn print_facts(&self, facts: &Facts) -> String {
        let mut s = format!("n={}:", facts.variables());
        for (i, fact) in facts.facts().iter().enumerate() {
            s.push_str(if i == 0 { " " } else { "; " });
            match *fact {
                Fact::Equal(a, b) => s.push_str(&format!("x{a} = x{b}")),
                Fact::Value(x, v) => s.push_str(&format!("x{x} = {v}")),
            }
        }
        s
    }

    fn parse_question(&self, text: &str) -> Result<Question, ParseError> {
        let mut c = Cursor::new(text);
        let (kind, span) = c.keyword();
        let make = match kind {
            "value" => Question::Value,
            "parent" => Question::Parent,
            "depth" => Question::Depth,
            _ => {
                return Err(c.error(
                    span.start..span.end.max(span.start + 1),
                    "expected a question: value xA, parent xA or depth xA",
                ))
            }
        };
        let (x, _) = parse_variable(&mut c, FULL_SIZE)?;
        c.finish("question")?;
        Ok(make(x))
    }

    fn print_question(&self, question: &Question) -> String {
        match *question {
            Question::Value(x) => format!("value x{x}"),
            Question::Parent(x) => format!("parent x{x}"),
            Question::Depth(x) => format!("depth x{x}"),
        }
    }

    fn parse_answer(&self, text: &str) -> Result<Answer, ParseError> {
        let mut c = Cursor::new(text);
        let (kind, span) = c.keyword();
        let answer = match kind {
            "value" => Answer::Value(c.number("a value", MAX_VALUE as u64)?.0 as u8),
            "parent" => Answer::Parent(parse_variable(&mut c, FULL_SIZE)?.0),
            "root" => Answer::Root,
            "depth" => Answer::Depth(c.number("a depth", FULL_SIZE as u64 - 1)?.0 as u8),
            _ => {
                return Err(c.error(
                    span.start..span.end.max(span.start + 1),
                    "expected an answer: value V, parent xP, root or depth D",
                ))
            }
        };
        c.finish("answer")?;
        Ok(answer)
    }

    fn print_answer(&self, answer: &Answer) -> String {
        match *answer {
            Answer::Value(v) => format!("value {v}"),
            Answer::Parent(p) => format!("parent x{p}"),
            Answer::Root => "root".to_string(),
            Answer::Depth(d) => format!("depth {d}"),
        }
    }

    fn vocab_size(&self) -> usize {
        tokens::marker(Marker::COUNT) as usize
    }

    fn encode_facts(&self, facts: &Facts) -> Vec<u32> {
        let mut out = Vec::with_capacity(facts.facts().len() * Self::FACT_WIDTH);
        for fact in facts.facts() {
            out.extend(match *fact {
                Fact::Equal(a, b) => [
                    tokens::symbol(a as usize),
                    tokens::symbol(b as usize),
                    tokens::marker(Marker::EQUAL),
                ],
                Fact::Value(x, v) => [
                    tokens::symbol(x as usize),
                    tokens::number(v as u32),
                    tokens::marker(Marker::VALUE_FACT),
                ],
            });
        }
        out
    }

    fn encode_question(&self, question: &Question) -> Vec<u32> {
        let marker = match question {
            Question::Value(_) => Marker::VALUE,
            Question::Parent(_) => Marker::PARENT,
            Question::Depth(_) => Marker::DEPTH,
        };
        vec![
            tokens::marker(marker),
            tokens::symbol(question.variable() as usize),
        ]
    }

    fn answer_classes(&self) -> usize {
        Class::COUNT
    }

    fn answer_class(&self, answer: &Answer) -> usize {
        match *answer {
            Answer::Value(v) => Class::VALUE + (v as usize).min(MAX_VALUE as usize),
            Answer::Parent(p) => Class::PARENT + (p as usize).min(FULL_SIZE - 1),
            Answer::Root => Class::ROOT,
            Answer::Depth(d) => Class::DEPTH + (d as usize).min(FULL_SIZE - 1),
        }
    }

    fn class_answer(&self, class: usize) -> Option<Answer> {
        match class {
            c if c < Class::PARENT => Some(Answer::Value((c - Class::VALUE) as u8)),
            c if c < Class::ROOT => Some(Answer::Parent((c - Class::PARENT) as u8)),
            Class::ROOT => Some(Answer::Root),
            c if c < Class::COUNT => Some(Answer::Depth((c - Class::DEPTH) as u8)),
            _ => None,
        }
    }
}

/// This domain's marker tokens.
struct Marker;

impl Marker {
    /// Ends an equality fact.
    const EQUAL: u32 = 0;
    /// Ends a value fact.
    const VALUE_FACT: u32 = 1;
    const VALUE: u32 = 2;
    const PARENT: u32 = 3;
    const DEPTH: u32 = 4;
    const COUNT: u32 = 5;
}

/// The layout of the answer classes: `value 0..63`, `parent x0..x63`, `root`, `depth 0..63`.
struct Class;

impl Class {
    const VALUE: usize = 0;
    const PARENT: usize = Self::VALUE + MAX_VALUE as usize + 1;
    const ROOT: usize = Self::PARENT + FULL_SIZE;
    const DEPTH: usize = Self::ROOT + 1;
    const COUNT: usize = Self::DEPTH + FULL_SIZE;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::future::BoxFuture;

    use super::*;
    use crate::answerer::{Answerer, AnswererId, Answers, Oracle, Query};
    use crate::domain::Instance;
    use crate::eval::{Budget, EvalOptions, Evaluator, Mode};

    const D: UnionFind = UnionFind;

    fn facts(text: &str) -> Facts {
        D.parse_facts(text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Parses `text`, expecting an error whose message contains `needle` and whose span covers
    /// exactly `bad` (its last occurrence in `text`).
    fn parse_error(text: &str, needle: &str, bad: &str) {
        let e = D.parse_facts(text).unwrap_err();
        assert!(e.message.contains(needle), "{text:?}: {}", e.message);
        let start = text.rfind(bad).unwrap();
        assert_eq!(e.span, start..start + bad.len(), "{text:?}: {}", e.message);
    }

    #[test]
    fn generation_is_deterministic_and_well_shaped() {
        for size in [2, 3, 5, 17, 64] {
            let f = D.generate(size, 11).unwrap();
            assert_eq!(f, D.generate(size, 11).unwrap());
            assert_eq!(f.variables(), size);
            // A forest with k trees has n - k edges and k values: n facts in all.
            let roots = f
                .facts()
                .iter()
                .filter(|f| matches!(f, Fact::Value(..)))
                .count();
            assert_eq!(f.facts().len(), size);
            assert_eq!(roots, ((size as f64).sqrt().round() as usize).max(1));
        }
        assert_ne!(D.generate(64, 1).unwrap(), D.generate(64, 2).unwrap());
        assert!(D.generate(1, 0).is_err());
        assert!(D.generate(65, 0).is_err());
    }

    #[test]
    fn facts_round_trip_through_text() {
        for size in [2, 3, 10, 64] {
            for seed in 0..3 {
                let f = D.generate(size, seed).unwrap();
                let text = D.print_facts(&f);
                assert_eq!(facts(&text), f, "{text}");
            }
        }
        let f = facts("n=3: x2 = x0;x1 = 5 ; x0=x1;");
        assert_eq!(D.print_facts(&f), "n=3: x2 = x0; x1 = 5; x0 = x1");
    }

    #[test]
    fn malformed_facts_are_pointed_out() {
        parse_error("n=1: x0 = 3", "at least 2", "1");
        parse_error("n=65: x0 = 3", "at most 64", "65");
        parse_error("k=3: x0 = 3", "number of variables first", "k");
        parse_error("n=3: x0 = 3; x1 = x3", "x3 does not exist", "x3");
        parse_error("n=3: x0 = 3; y1 = x0", "expected variable", "y1");
        parse_error("n=3: x0 = 3; x1 = x0; x2 = 64", "at most 63", "64");
        parse_error("n=3: x0 = 3; x1 = x0 x2 = x1", "';' between facts", "x2");
        parse_error(
            "n=3: x0 = 3; x1 = ;",
            "expected a variable (like x7) or a value",
            ";",
        );
        parse_error(
            "n=3: x0 = 3; x1 = x0; x1 = x0",
            "duplicate fact: x1 = x0 is already stated",
            "x1 = x0",
        );
        parse_error(
            "n=3: x0 = 3; x1 = x1; x2 = x0",
            "equates x1 with itself",
            "x1 = x1",
        );
        parse_error(
            "n=3: x0 = 3; x1 = x0; x0 = x1",
            "x0 = x1 is already stated (as x1 = x0)",
            "x0 = x1",
        );
        parse_error(
            "n=3: x0 = 3; x0 = 3; x1 = x0",
            "x0 is given a value twice",
            "x0 = 3",
        );
        parse_error(
            "n=3: x0 = 3; x1 = x0; x2 = x1; x2 = x0",
            "x2 = x0 closes a cycle",
            "x2 = x0",
        );
        parse_error(
            "n=3: x0 = 3; x1 = x0; x1 = 4; x2 = x1",
            "second value to the class of x1",
            "x1 = 4",
        );
        parse_error(
            "n=4: x0 = 3; x1 = 4; x2 = x0; x1 = x2; x3 = x0",
            "puts x1 and x0 in one class",
            "x1 = x2",
        );
        parse_error(
            "n=4: x0 = 3; x1 = x0; x2 = x1",
            "x3 appears in no fact",
            "n=4",
        );
        parse_error(
            "n=4: x0 = 3; x1 = x0; x3 = x2",
            "the class of x2 has no value",
            "x3 = x2",
        );
    }

    #[test]
    fn questions_and_answers_round_trip() {
        for q in [Question::Value(0), Question::Parent(63), Question::Depth(7)] {
            assert_eq!(D.parse_question(&D.print_question(&q)).unwrap(), q);
            assert_eq!(D.encode_question(&q).len(), UnionFind::QUESTION_WIDTH);
        }
        for a in [
            Answer::Value(0),
            Answer::Value(63),
            Answer::Parent(0),
            Answer::Parent(63),
            Answer::Root,
            Answer::Depth(0),
            Answer::Depth(63),
        ] {
            assert_eq!(D.parse_answer(&D.print_answer(&a)).unwrap(), a);
            let class = D.answer_class(&a);
            assert!(class < D.answer_classes());
            assert_eq!(D.class_answer(class), Some(a));
        }
        assert_eq!(D.answer_classes(), 193);
        assert_eq!(D.class_answer(193), None);
        let e = D.parse_question("size x1").unwrap_err();
        assert!(
            e.message.contains("value xA, parent xA or depth xA"),
            "{}",
            e.message
        );
        assert_eq!(e.span, 0..4);
        let e = D.parse_question("depth x64").unwrap_err();
        assert!(e.message.contains("x64 does not exist"), "{}", e.message);
        assert_eq!(e.span, 6..9);
        let e = D.parse_answer("value 64").unwrap_err();
        assert!(e.message.contains("at most 63"), "{}", e.message);
        assert!(D.parse_answer("root x3").is_err());
        assert!(D.parse_answer("x3").is_err());
    }

    #[test]
    fn check_question_rejects_missing_variables() {
        let f = facts("n=2: x0 = 1; x1 = x0");
        assert!(D.check_question(&f, &Question::Depth(1)).is_ok());
        let e = D.check_question(&f, &Question::Value(2)).unwrap_err();
        assert!(e.contains("x2 does not exist"), "{e}");
    }

    #[test]
    fn truth_agrees_with_walking_to_the_root() {
        for (size, seed) in [(2, 0), (3, 1), (9, 2), (30, 3), (64, 4), (64, 5)] {
            let f = D.generate(size, seed).unwrap();
            for x in 0..size as u8 {
                // Walk parent answers up to a root, checking each step is an equality fact.
                let (mut y, mut steps) = (x, 0u8);
                while let Answer::Parent(p) = D.truth(&f, &Question::Parent(y)) {
                    assert!(
                        f.facts()
                            .iter()
                            .any(|&g| g == Fact::Equal(y, p) || g == Fact::Equal(p, y)),
                        "x{y} -> x{p} is not an equality"
                    );
                    y = p;
                    steps += 1;
                    assert!((steps as usize) < size, "parent cycle from x{x}");
                }
                let root_value = f
                    .facts()
                    .iter()
                    .find_map(|&g| match g {
                        Fact::Value(r, v) if r == y => Some(v),
                        _ => None,
                    })
                    .expect("walk ends at a valued root");
                assert_eq!(D.truth(&f, &Question::Value(x)), Answer::Value(root_value));
                assert_eq!(D.truth(&f, &Question::Depth(x)), Answer::Depth(steps));
                assert_eq!(D.difficulty(&f, &Question::Value(x)), steps as u32);
                // The parent is the neighbour one step nearer the root: every other neighbour is a
                // child, one step further.
                for &c in f.neighbours(x) {
                    let Answer::Depth(d) = D.truth(&f, &Question::Depth(c)) else {
                        unreachable!()
                    };
                    let is_parent = D.truth(&f, &Question::Parent(x)) == Answer::Parent(c);
                    assert_eq!(d as i32 - steps as i32, if is_parent { -1 } else { 1 });
                }
            }
        }
    }

    /// Answers every `parent` question wrongly (alternately unknown, `root`, a non-neighbour, and
    /// an answer of the wrong kind) and everything else truthfully, so H must fall back on
    /// comparing depths.
    struct BadGuesses;

    impl Answerer<UnionFind> for BadGuesses {
        fn id(&self) -> AnswererId {
            AnswererId::custom(19, "bad guesses")
        }

        fn answer(&self, batch: Vec<Query<UnionFind>>) -> BoxFuture<'_, Answers<Answer>> {
            let answers = batch
                .iter()
                .map(|q| match q.question {
                    Question::Parent(x) => match x % 4 {
                        0 => None,
                        1 => Some(Answer::Root),
                        2 => Some(Answer::Parent(x)),
                        _ => Some(Answer::Depth(0)),
                    },
                    other => Some(D.truth(q.instance.facts(), &other)),
                })
                .collect();
            Box::pin(std::future::ready(Ok(answers)))
        }
    }

    fn evaluate_all(answerer: Arc<dyn Answerer<UnionFind>>, modes: &[Mode]) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let evaluator = Evaluator::new(D, Some(answerer), EvalOptions::default());
        for (size, seed) in [(16, 0), (30, 1), (64, 2)] {
            let instance = Instance::generate(&D, size, seed).unwrap();
            for x in 0..size as u8 {
                for q in [Question::Value(x), Question::Parent(x), Question::Depth(x)] {
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
