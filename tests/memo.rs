//! The memo: every distinct evaluation happens once, within a tree and across concurrent trees,
//! and a cancelled tree hands its in-flight work over to the trees still waiting for it.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::Gated;
use hch::answerer::Answerer;
use hch::domain::wildcard::Wildcard;
use hch::domain::{Domain, DomainKind, Instance, FULL_SIZE};
use hch::eval::trace::AnsweredBy;
use hch::eval::{Budget, EvalOptions, Evaluator, Mode};
use hch::rng::Rng;
use hch::with_domain;

/// Within one tree: each (question, depth) is evaluated at most once, the answerer sees each leaf
/// question once, and turning the memo off changes the cost but not the answer.
async fn each_distinct_subquestion_once<D: Domain + Copy>(domain: D, mode: Mode) -> u64 {
    let mut memo_hits = 0;
    for seed in 0..20 {
        let facts = domain.generate(FULL_SIZE, seed).unwrap();
        let mut rng = Rng::new(seed);
        for _ in 0..5 {
            let q = domain.sample_question(&facts, &mut rng);
            let gated = Arc::new(Gated::new(domain, true));
            let answerer: Arc<dyn Answerer<D>> = gated.clone();
            let answerer = (mode != Mode::Exact).then_some(answerer);
            let with_memo = Evaluator::new(domain, answerer.clone(), EvalOptions::default());
            let instance = Instance::new(&domain, facts.clone());
            let r = with_memo
                .evaluate(&instance, q.clone(), mode, Budget::default())
                .await
                .unwrap();
            let trace = r.trace.as_ref().unwrap();
            let evaluated: Vec<_> = trace
                .nodes
                .iter()
                .filter(|n| n.by != AnsweredBy::Memo)
                .collect();
            assert_eq!(r.stats.nodes as usize, evaluated.len());
            assert_eq!(
                r.stats.memo_hits as usize,
                trace.nodes.len() - evaluated.len()
            );
            let keys: HashSet<_> = evaluated
                .iter()
                .map(|n| {
                    (
                        n.question.clone(),
                        if mode == Mode::Exact { 0 } else { n.depth },
                    )
                })
                .collect();
            assert_eq!(
                keys.len(),
                evaluated.len(),
                "{} {q:?}: an evaluation was repeated",
                D::KIND
            );
            for (question, count) in gated.calls() {
                assert_eq!(
                    count,
                    1,
                    "{}: answerer asked {question:?} {count} times",
                    D::KIND
                );
            }
            assert_eq!(gated.total_calls() as u64, r.stats.answerer_queries);
            memo_hits += r.stats.memo_hits;

            let without_memo = Evaluator::new(
                domain,
                answerer,
                EvalOptions {
                    memo: false,
                    trace: true,
                },
            );
            let fresh = Instance::new(&domain, facts.clone());
            let plain = without_memo
                .evaluate(&fresh, q.clone(), mode, Budget::default())
                .await
                .unwrap();
            assert_eq!(plain.answer, r.answer);
            assert_eq!(plain.stats.memo_hits, 0);
            assert!(plain.stats.nodes >= r.stats.nodes);
        }
    }
    memo_hits
}

#[tokio::test]
async fn each_distinct_subquestion_is_evaluated_once_per_tree() {
    for kind in DomainKind::ALL {
        with_domain!(kind, d => {
            each_distinct_subquestion_once(d, Mode::Hch(3)).await;
        });
    }
}

#[tokio::test]
async fn exact_mode_shares_subquestions_across_depths() {
    // Sequential assignments form a DAG: the same variable is reached along many paths, at
    // different depths. Exact mode keys the memo on the question alone, so each is computed once.
    let hits =
        each_distinct_subquestion_once(hch::domain::assignments::Assignments, Mode::Exact).await;
    assert!(hits > 0, "the DAG should produce memo hits");
}

/// Two concurrent trees whose subtrees overlap: the shared subquestion is evaluated once, by
/// whichever tree got there first, while the other waits for it.
#[tokio::test]
async fn in_flight_subquestions_are_shared_across_concurrent_trees() {
    let domain = Wildcard;
    let instance = Instance::generate(&domain, FULL_SIZE, 7).unwrap();
    let gated = Arc::new(Gated::new(domain, false));
    let evaluator = Evaluator::new(
        domain,
        Some(gated.clone() as Arc<dyn Answerer<_>>),
        Default::default(),
    );
    let a = domain.parse_question("01*0**").unwrap();
    // B's root is A's first child, with the same remaining depth (1).
    let b = domain.parse_question("0100**").unwrap();

    let (ra, rb, ()) = tokio::join!(
        evaluator.evaluate(&instance, a, Mode::Hch(2), Budget::default()),
        evaluator.evaluate(&instance, b, Mode::Amplified, Budget::default()),
        async {
            // A's four grandchildren are the only distinct leaves; B's two leaves are among them.
            gated.entered(4).await;
            gated.open();
        }
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.answer, Some(domain.truth(instance.facts(), &a)));
    assert_eq!(rb.answer, Some(domain.truth(instance.facts(), &b)));
    let calls = gated.calls();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(calls.values().all(|&c| c == 1), "{calls:?}");
    // Exactly one of the two evaluated the shared subtree; the other took it from the memo.
    let shared_hits = ra.stats.memo_hits + rb.stats.memo_hits;
    assert_eq!(shared_hits, 1);
}

/// Dropping a tree cancels its pending answerer calls and releases its memo claims, so a tree that
/// was waiting on them takes over instead of hanging.
#[tokio::test]
async fn a_cancelled_tree_hands_its_work_to_waiting_trees() {
    let domain = Wildcard;
    let instance = Instance::generate(&domain, FULL_SIZE, 3).unwrap();
    let gated = Arc::new(Gated::new(domain, false));
    let evaluator = Evaluator::new(
        domain,
        Some(gated.clone() as Arc<dyn Answerer<_>>),
        Default::default(),
    );
    let q = domain.parse_question("1*0*1*").unwrap();

    let mut first = Box::pin(evaluator.evaluate(&instance, q, Mode::Amplified, Budget::default()));
    let mut second = Box::pin(evaluator.evaluate(&instance, q, Mode::Amplified, Budget::default()));
    tokio::select! {
        _ = &mut first => panic!("the first tree finished while the gate was closed"),
        _ = gated.entered(2) => {}
    }
    // The second tree finds the root in flight and waits for it.
    assert!(futures::poll!(&mut second).is_pending());
    assert_eq!(gated.total_calls(), 2);

    drop(first);
    assert_eq!(
        gated.cancelled(),
        2,
        "dropping the tree must cancel its answerer calls"
    );

    gated.open();
    let r = second.await.unwrap();
    assert_eq!(r.answer, Some(domain.truth(instance.facts(), &q)));
    // The second tree evaluated the root itself, asking both leaves again.
    assert_eq!(gated.total_calls(), 4);
    assert_eq!(r.stats.memo_hits, 0);
}
