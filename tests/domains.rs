//! Every domain, at full size, on 1000 seeded root questions: amplification and HCH with oracle
//! leaves give the ground truth, exact evaluation gives it for the well-founded domains (and is
//! refused for the others), and the text syntax round-trips on everything generated.

use std::sync::Arc;

use hch::answerer::{Answerer, Oracle};
use hch::domain::{self, Domain, DomainKind, Instance, FULL_SIZE};
use hch::eval::{Budget, EvalError, EvalOptions, Evaluator, Mode};
use hch::rng::Rng;
use hch::with_domain;

const INSTANCES: u64 = 50;
const QUESTIONS_PER_INSTANCE: usize = 20;

async fn check_domain<D: Domain + Copy>(domain: D) {
    let oracle: Arc<dyn Answerer<D>> = Arc::new(Oracle::new(domain));
    let evaluator = Evaluator::new(domain, Some(oracle), EvalOptions::default());
    let exact_evaluator = Evaluator::new(domain, None, EvalOptions::default());
    let mut checked = 0;
    for seed in 0..INSTANCES {
        let facts = domain.generate(FULL_SIZE, seed).unwrap();
        assert_eq!(domain.size(&facts), FULL_SIZE, "{} seed {seed}", D::KIND);

        // Text round trip of the facts, and the same facts from the same seed.
        let text = domain.print_facts(&facts);
        let parsed = domain
            .parse_facts(&text)
            .unwrap_or_else(|e| panic!("{} seed {seed}: {e}", D::KIND));
        assert_eq!(
            parsed,
            facts,
            "{} seed {seed}: facts text round trip",
            D::KIND
        );
        assert_eq!(domain.generate(FULL_SIZE, seed).unwrap(), facts);
        assert_eq!(
            domain.encode_facts(&facts).len() % D::FACT_WIDTH,
            0,
            "{}: fact encoding width",
            D::KIND
        );

        let instance = Instance::new(&domain, facts);
        let mut rng = Rng::derived(seed, 0x51);
        for _ in 0..QUESTIONS_PER_INSTANCE {
            let q = domain.sample_question(instance.facts(), &mut rng);
            domain.check_question(instance.facts(), &q).unwrap();
            let q_text = domain.print_question(&q);
            assert_eq!(domain.parse_question(&q_text).unwrap(), q, "{q_text}");
            assert_eq!(domain.encode_question(&q).len(), D::QUESTION_WIDTH);

            let truth = domain.truth(instance.facts(), &q);
            let a_text = domain.print_answer(&truth);
            assert_eq!(domain.parse_answer(&a_text).unwrap(), truth, "{a_text}");
            let class = domain.answer_class(&truth);
            assert!(class < domain.answer_classes());
            assert_eq!(domain.class_answer(class), Some(truth.clone()));

            for mode in [Mode::Distilled, Mode::Amplified, Mode::Hch(2), Mode::Hch(3)] {
                let r = evaluator
                    .evaluate(&instance, q.clone(), mode, Budget::default())
                    .await
                    .unwrap();
                assert_eq!(
                    r.answer.as_ref(),
                    Some(&truth),
                    "{} seed {seed} question {q_text} mode {mode}",
                    D::KIND
                );
                assert_eq!(r.exhausted, None);
            }
            let exact = exact_evaluator
                .evaluate(&instance, q.clone(), Mode::Exact, Budget::default())
                .await;
            if D::WELL_FOUNDED {
                let r = exact.unwrap();
                assert_eq!(
                    r.answer.as_ref(),
                    Some(&truth),
                    "{} exact {q_text}",
                    D::KIND
                );
                assert_eq!(r.stats.answerer_queries, 0);
            } else {
                assert_eq!(
                    exact.unwrap_err(),
                    EvalError::ExactNotWellFounded(D::KIND.name())
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 1000);
}

fn run(kind: DomainKind) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { with_domain!(kind, d => check_domain(d).await) });
}

#[test]
fn permutation_full_size() {
    run(DomainKind::Permutation);
}

#[test]
fn assignments_full_size() {
    run(DomainKind::Assignments);
}

#[test]
fn wildcard_full_size() {
    run(DomainKind::Wildcard);
}

#[test]
fn shortest_path_full_size() {
    run(DomainKind::ShortestPath);
}

#[test]
fn union_find_full_size() {
    run(DomainKind::UnionFind);
}

/// Every domain generates at every size from its minimum to full, and the text round-trips.
#[test]
fn every_size_generates_and_round_trips() {
    for kind in DomainKind::ALL {
        with_domain!(kind, d => {
            for size in 0..=FULL_SIZE + 1 {
                match d.generate(size, size as u64) {
                    Ok(facts) => {
                        assert!(size >= domain_min(&d) && size <= FULL_SIZE, "{kind} {size}");
                        assert_eq!(d.size(&facts), size, "{kind} size");
                        let back = d.parse_facts(&d.print_facts(&facts)).unwrap();
                        assert_eq!(back, facts);
                        let mut rng = Rng::new(size as u64);
                        for _ in 0..20 {
                            let q = d.sample_question(&facts, &mut rng);
                            d.check_question(&facts, &q).unwrap();
                            let _ = d.truth(&facts, &q);
                        }
                    }
                    Err(e) => {
                        assert!(size < domain_min(&d) || size > FULL_SIZE, "{kind} {size}: {e}");
                        assert!(matches!(e, domain::DomainError::SizeOutOfRange { .. }));
                    }
                }
            }
        });
    }
}

fn domain_min<D: Domain>(_: &D) -> usize {
    D::MIN_SIZE
}
