//! The plain-text syntax of every domain: generated instances, questions and every answer class
//! round-trip through text, and malformed text (random damage to valid text) never panics and is
//! either still valid or refused with an error that points inside the input.

use hch::domain::{parse_reply, print_reply, Domain, DomainKind};
use hch::rng::Rng;
use hch::with_domain;
use proptest::prelude::*;

fn round_trip<D: Domain>(d: &D, size: usize, seed: u64) -> Result<(), TestCaseError> {
    let size = size.clamp(D::MIN_SIZE, hch::domain::FULL_SIZE);
    let facts = d.generate(size, seed).unwrap();
    let text = d.print_facts(&facts);
    prop_assert_eq!(&d.parse_facts(&text).unwrap(), &facts);
    // Printing is canonical: parse-print is the identity on printed text.
    prop_assert_eq!(d.print_facts(&d.parse_facts(&text).unwrap()), text);
    let mut rng = Rng::new(seed);
    for _ in 0..8 {
        let q = d.sample_question(&facts, &mut rng);
        let qt = d.print_question(&q);
        prop_assert_eq!(d.parse_question(&qt).unwrap(), q.clone());
        let a = Some(d.truth(&facts, &q));
        prop_assert_eq!(parse_reply(d, &print_reply(d, &a)).unwrap(), a.clone());
        // Worker calls print into one buffer, a line per question and per answer: the same text,
        // and never a newline in it.
        let (mut qw, mut aw) = ("x".to_string(), "x".to_string());
        d.write_question(&q, &mut qw);
        d.write_answer(a.as_ref().unwrap(), &mut aw);
        prop_assert_eq!(&qw[1..], qt.as_str());
        let at = d.print_answer(a.as_ref().unwrap());
        prop_assert_eq!(&aw[1..], at.as_str());
        prop_assert!(!qt.contains('\n') && !aw.contains('\n'), "{qt:?} / {aw:?}");
    }
    Ok(())
}

/// Damage: delete a span, or insert / overwrite characters drawn from the syntax's own alphabet
/// and some that never belong.
#[derive(Debug, Clone)]
enum Damage {
    Delete(usize, usize),
    Insert(usize, char),
    Replace(usize, char),
}

fn damage() -> impl Strategy<Value = Damage> {
    let chars = prop::sample::select(vec![
        '0', '1', '7', '9', '*', 'x', '=', '+', '-', ';', ':', '>', '^', '(', ')', ' ', 'é', '\n',
        '?', 'n',
    ]);
    prop_oneof![
        (any::<usize>(), 1usize..6).prop_map(|(a, n)| Damage::Delete(a, n)),
        (any::<usize>(), chars.clone()).prop_map(|(a, c)| Damage::Insert(a, c)),
        (any::<usize>(), chars).prop_map(|(a, c)| Damage::Replace(a, c)),
    ]
}

fn apply(text: &str, damage: &Damage) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| {
        if chars.is_empty() {
            0
        } else {
            i % (chars.len() + 1)
        }
    };
    let mut out = chars.clone();
    match *damage {
        Damage::Delete(i, n) => {
            let i = at(i).min(out.len());
            let end = (i + n).min(out.len());
            out.drain(i..end);
        }
        Damage::Insert(i, c) => out.insert(at(i).min(out.len()), c),
        Damage::Replace(i, c) => {
            if !out.is_empty() {
                let i = at(i) % out.len();
                out[i] = c;
            }
        }
    }
    out.into_iter().collect()
}

fn check_error(input: &str, e: &hch::text::ParseError) -> Result<(), TestCaseError> {
    prop_assert_eq!(e.input.as_str(), input);
    prop_assert!(e.span.start <= e.span.end && e.span.end <= input.len());
    prop_assert!(input.is_char_boundary(e.span.start) && input.is_char_boundary(e.span.end));
    prop_assert!(!e.message.is_empty());
    prop_assert!(e.to_string().contains("column"));
    Ok(())
}

fn damaged<D: Domain>(d: &D, seed: u64, dmg: &Damage) -> Result<(), TestCaseError> {
    let size = 6usize.max(D::MIN_SIZE);
    let facts = d.generate(size, seed).unwrap();
    let text = apply(&d.print_facts(&facts), dmg);
    if let Err(e) = d.parse_facts(&text) {
        check_error(&text, &e)?;
    }
    let q = d.sample_question(&facts, &mut Rng::new(seed));
    let text = apply(&d.print_question(&q), dmg);
    if let Err(e) = d.parse_question(&text) {
        check_error(&text, &e)?;
    }
    let text = apply(&d.print_answer(&d.truth(&facts, &q)), dmg);
    if let Err(e) = d.parse_answer(&text) {
        check_error(&text, &e)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn generated_text_round_trips(kind in 0usize..5, size in 1usize..=64, seed in any::<u64>()) {
        with_domain!(DomainKind::ALL[kind], d => round_trip(&d, size, seed))?;
    }

    #[test]
    fn damaged_text_is_refused_with_a_pointed_error(
        kind in 0usize..5,
        seed in any::<u64>(),
        dmg in damage(),
    ) {
        with_domain!(DomainKind::ALL[kind], d => damaged(&d, seed, &dmg))?;
    }
}

/// Every answer class prints and parses back to itself, and `?` is the unknown answer.
#[test]
fn every_answer_class_round_trips() {
    for kind in DomainKind::ALL {
        with_domain!(kind, d => {
            for class in 0..d.answer_classes() {
                let a = d.class_answer(class).unwrap();
                assert_eq!(d.answer_class(&a), class, "{kind} class {class}");
                assert_eq!(d.parse_answer(&d.print_answer(&a)).unwrap(), a, "{kind}");
            }
            assert_eq!(d.class_answer(d.answer_classes()), None);
            assert_eq!(parse_reply(&d, " ? ").unwrap(), None);
        });
    }
}

/// A few hand-written mistakes per domain, with the message a person would need.
#[test]
fn malformed_text_names_the_problem() {
    use hch::domain::{
        assignments::Assignments, permutation::Permutation, shortest_path::ShortestPath,
        union_find::UnionFind, wildcard::Wildcard,
    };
    let cases: Vec<(String, &str)> = vec![
        (
            Wildcard.parse_question("01*2*1").unwrap_err().to_string(),
            "'2'",
        ),
        (
            Wildcard
                .parse_facts("010011:+1 010011:-1")
                .unwrap_err()
                .to_string(),
            "twice",
        ),
        (
            Permutation.parse_facts("0 1 1").unwrap_err().to_string(),
            "1",
        ),
        (
            Permutation
                .parse_question("sigma^64(3)")
                .unwrap_err()
                .to_string(),
            "63",
        ),
        (
            Assignments
                .parse_facts("x0 = 3; x1 = x0 + x2; x2 = 1")
                .unwrap_err()
                .to_string(),
            "before it is defined",
        ),
        (
            ShortestPath
                .parse_facts("n=4: 0>1 1>7")
                .unwrap_err()
                .to_string(),
            "7",
        ),
        (
            ShortestPath
                .parse_question("dist 3")
                .unwrap_err()
                .to_string(),
            "expected",
        ),
        (
            UnionFind
                .parse_question("colour x3")
                .unwrap_err()
                .to_string(),
            "colour",
        ),
    ];
    for (shown, needle) in cases {
        assert!(
            shown.contains(needle),
            "{shown:?} should mention {needle:?}"
        );
        assert!(shown.contains('^'), "{shown:?} should point at the problem");
    }
}
