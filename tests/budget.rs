//! Budgets: depth, node count and deadline. Exhausting any of them degrades the answer (to the
//! answerer, or to an explicit unknown) and never hangs; deadlines run on paused tokio time.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Gated;
use hch::answerer::{Answerer, Oracle};
use hch::domain::permutation::Permutation;
use hch::domain::shortest_path::ShortestPath;
use hch::domain::wildcard::Wildcard;
use hch::domain::{Domain, Instance, FULL_SIZE};
use hch::eval::trace::{AnsweredBy, Exhausted};
use hch::eval::{Budget, EvalError, EvalOptions, Evaluator, Mode, MAX_TREE_DEPTH};

fn oracle<D: Domain + Copy>(domain: D) -> Option<Arc<dyn Answerer<D>>> {
    Some(Arc::new(Oracle::new(domain)))
}

#[tokio::test]
async fn node_budget_without_answerer_gives_unknown() {
    let d = Wildcard;
    let instance = Instance::generate(&d, FULL_SIZE, 1).unwrap();
    let q = d.parse_question("******").unwrap();
    let evaluator = Evaluator::new(d, None, EvalOptions::default());
    let budget = Budget {
        max_nodes: Some(10),
        ..Budget::default()
    };
    let r = evaluator
        .evaluate(&instance, q, Mode::Exact, budget)
        .await
        .unwrap();
    assert_eq!(r.answer, None);
    assert_eq!(r.exhausted, Some(Exhausted::Nodes));
    let trace = r.trace.unwrap();
    let worked = trace
        .nodes
        .iter()
        .filter(|n| matches!(n.by, AnsweredBy::Simple | AnsweredBy::Overseer))
        .count();
    assert!(worked <= 10, "{worked} nodes ran H under a budget of 10");

    // The degraded answers stay with that tree: another tree on the same instance (same memo)
    // evaluates for itself and gets the truth.
    let full = evaluator
        .evaluate(&instance, q, Mode::Exact, Budget::default())
        .await
        .unwrap();
    assert_eq!(full.answer, Some(d.truth(instance.facts(), &q)));
    assert_eq!(full.exhausted, None);
}

#[tokio::test]
async fn node_budget_with_answerer_degrades_to_the_answerer() {
    let d = Wildcard;
    let instance = Instance::generate(&d, FULL_SIZE, 2).unwrap();
    let q = d.parse_question("*1*0**").unwrap();
    let evaluator = Evaluator::new(d, oracle(d), EvalOptions::default());
    let budget = Budget {
        max_nodes: Some(5),
        ..Budget::default()
    };
    let r = evaluator
        .evaluate(&instance, q, Mode::Hch(6), budget)
        .await
        .unwrap();
    // The oracle is right, so degrading to it keeps the answer right.
    assert_eq!(r.answer, Some(d.truth(instance.facts(), &q)));
    assert_eq!(r.exhausted, Some(Exhausted::Nodes));
    assert!(r.stats.answerer_queries > 0);
    let trace = r.trace.unwrap();
    assert!(trace
        .nodes
        .iter()
        .any(|n| n.by == AnsweredBy::Answerer && n.exhausted == Some(Exhausted::Nodes)));
}

#[tokio::test]
async fn depth_budget_stops_recursion() {
    let d = Wildcard;
    let instance = Instance::generate(&d, FULL_SIZE, 3).unwrap();
    let q = d.parse_question("******").unwrap();
    let budget = Budget {
        max_depth: Some(2),
        ..Budget::default()
    };

    let exact = Evaluator::new(d, None, EvalOptions::default());
    let r = exact
        .evaluate(&instance, q, Mode::Exact, budget)
        .await
        .unwrap();
    assert_eq!(r.answer, None);
    assert_eq!(r.exhausted, Some(Exhausted::Depth));
    assert!(r.trace.unwrap().nodes.iter().all(|n| n.depth <= 2));

    let hch = Evaluator::new(d, oracle(d), EvalOptions::default());
    let r = hch
        .evaluate(&instance, q, Mode::Hch(6), budget)
        .await
        .unwrap();
    assert_eq!(r.answer, Some(d.truth(instance.facts(), &q)));
    assert_eq!(r.exhausted, Some(Exhausted::Depth));
    let trace = r.trace.unwrap();
    assert_eq!(trace.nodes.iter().map(|n| n.depth).max(), Some(2));
}

#[tokio::test(start_paused = true)]
async fn deadline_ends_a_tree_whose_answerer_never_answers() {
    let d = Wildcard;
    let instance = Instance::generate(&d, FULL_SIZE, 4).unwrap();
    let q = d.parse_question("0*1*0*").unwrap();
    let gated = Arc::new(Gated::new(d, false)); // never opened
    let evaluator = Evaluator::new(
        d,
        Some(gated.clone() as Arc<dyn Answerer<_>>),
        Default::default(),
    );
    let start = tokio::time::Instant::now();
    let budget = Budget {
        deadline: Some(Duration::from_secs(1)),
        ..Budget::default()
    };
    let r = evaluator
        .evaluate(&instance, q, Mode::Amplified, budget)
        .await
        .unwrap();
    assert_eq!(r.answer, None);
    assert_eq!(r.exhausted, Some(Exhausted::Deadline));
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(
        gated.cancelled(),
        2,
        "the pending calls are cancelled at the deadline"
    );
    let trace = r.trace.unwrap();
    let root = trace.root().unwrap();
    assert_eq!(root.exhausted, Some(Exhausted::Deadline));
}

#[tokio::test(start_paused = true)]
async fn deadline_cuts_a_slow_sequential_tree_and_spares_a_fast_one() {
    // Permutation powering asks sequentially: sigma^63 in hch:2 makes a chain of 4 leaf calls, each
    // taking 100 ms of (virtual) answerer time.
    let d = Permutation;
    let instance = Instance::generate(&d, FULL_SIZE, 5).unwrap();
    let q = d.parse_question("sigma^63(0)").unwrap();
    let mut gated = Gated::new(d, true);
    gated.delay = Duration::from_millis(100);
    let gated = Arc::new(gated);
    let evaluator = Evaluator::new(
        d,
        Some(gated.clone() as Arc<dyn Answerer<_>>),
        Default::default(),
    );

    let start = tokio::time::Instant::now();
    let tight = Budget {
        deadline: Some(Duration::from_millis(250)),
        ..Budget::default()
    };
    let r = evaluator
        .evaluate(&instance, q, Mode::Hch(2), tight)
        .await
        .unwrap();
    assert_eq!(r.answer, None);
    assert_eq!(r.exhausted, Some(Exhausted::Deadline));
    assert_eq!(start.elapsed(), Duration::from_millis(250));

    let fresh = Instance::new(&d, instance.facts().clone());
    let roomy = Budget {
        deadline: Some(Duration::from_secs(60)),
        ..Budget::default()
    };
    let r = evaluator
        .evaluate(&fresh, q, Mode::Hch(2), roomy)
        .await
        .unwrap();
    assert_eq!(r.answer, Some(d.truth(fresh.facts(), &q)));
    assert_eq!(r.exhausted, None);
}

#[tokio::test]
async fn a_tree_that_waits_for_nothing_still_stops_at_its_deadline() {
    // Exact mode asks no answerer, so the whole tree is one walk that never yields to the
    // deadline's timer: the nodes themselves must see the deadline pass (on the real clock here,
    // where a nanosecond has passed before the first node opens). This reaches the check made as
    // a walk begins; a deadline passing in the middle of a walk is seen at every 32nd node, which
    // no test can time without a clock that moves on its own.
    let d = Wildcard;
    let instance = Instance::generate(&d, FULL_SIZE, 3).unwrap();
    let q = d.parse_question("******").unwrap();
    let evaluator = Evaluator::new(d, None, EvalOptions::default());
    let budget = Budget {
        deadline: Some(Duration::from_nanos(1)),
        ..Budget::default()
    };
    let r = evaluator
        .evaluate(&instance, q, Mode::Exact, budget)
        .await
        .unwrap();
    assert_eq!(r.exhausted, Some(Exhausted::Deadline));
    assert_eq!(r.answer, None);
    // Unbounded, the same tree has an answer.
    let r = evaluator
        .evaluate(&instance, q, Mode::Exact, Budget::default())
        .await
        .unwrap();
    assert_eq!(r.answer, Some(d.truth(instance.facts(), &q)));
}

#[tokio::test]
async fn impossible_requests_are_refused_with_a_reason() {
    let instance = Instance::generate(&ShortestPath, 8, 1).unwrap();
    let q = ShortestPath.parse_question("dist 0 5").unwrap();
    let exact = Evaluator::new(ShortestPath, None, EvalOptions::default());
    let err = exact
        .evaluate(&instance, q, Mode::Exact, Budget::default())
        .await
        .unwrap_err();
    assert_eq!(err, EvalError::ExactNotWellFounded("shortest-path"));
    assert!(err.to_string().contains("not well founded"), "{err}");

    let err = exact
        .evaluate(&instance, q, Mode::Amplified, Budget::default())
        .await
        .unwrap_err();
    assert_eq!(err, EvalError::NoAnswerer(Mode::Amplified));

    let with = Evaluator::new(ShortestPath, oracle(ShortestPath), EvalOptions::default());
    for budget in [
        Budget {
            max_nodes: Some(0),
            ..Budget::default()
        },
        Budget {
            max_depth: Some(MAX_TREE_DEPTH + 1),
            ..Budget::default()
        },
    ] {
        let err = with
            .evaluate(&instance, q, Mode::Amplified, budget)
            .await
            .unwrap_err();
        assert!(matches!(err, EvalError::InvalidBudget(_)), "{err}");
    }
    let bad = ShortestPath.parse_question("dist 0 63").unwrap();
    let err = with
        .evaluate(&instance, bad, Mode::Amplified, Budget::default())
        .await
        .unwrap_err();
    assert!(matches!(err, EvalError::InvalidQuestion(_)), "{err}");
}

/// The paper's `answer_if_simple`: in amplified mode a subquestion H can answer from the facts
/// alone (a permutation's σ¹(x), a wildcard string without `*`) is answered by H, shown as
/// "simple" in the trace, and never sent to the answerer; the root, and subquestions H would
/// decompose, still go to X.
#[tokio::test]
async fn simple_subquestions_are_answered_by_h_not_sent_to_x() {
    let d = Permutation;
    let instance = Instance::generate(&d, 8, 3).unwrap();
    let evaluator = Evaluator::new(d, oracle(d), EvalOptions::default());
    // σ³(x) = σ(σ(σ¹(x))): H asks σ¹(x) (simple: a fact) and then σ¹(y) (simple too).
    let q = d.parse_question("sigma^3(3)").unwrap();
    let r = evaluator
        .evaluate(&instance, q, Mode::Amplified, Budget::default())
        .await
        .unwrap();
    assert_eq!(r.answer, Some(d.truth(instance.facts(), &q)));
    assert_eq!(r.stats.answerer_queries, 0, "a fact lookup went to X");
    let trace = r.trace.unwrap();
    let children: Vec<_> = trace.nodes.iter().filter(|n| n.depth == 1).collect();
    assert!(!children.is_empty());
    assert!(children
        .iter()
        .all(|n| matches!(n.by, AnsweredBy::Simple | AnsweredBy::Memo)));

    // σ⁴(x) asks σ²(x) and σ²(y): not simple, so X answers them.
    let q = d.parse_question("sigma^4(3)").unwrap();
    let r = evaluator
        .evaluate(&instance, q, Mode::Amplified, Budget::default())
        .await
        .unwrap();
    assert!(r.stats.answerer_queries >= 1);
    let trace = r.trace.unwrap();
    assert!(trace
        .nodes
        .iter()
        .filter(|n| n.depth == 1)
        .all(|n| matches!(n.by, AnsweredBy::Answerer | AnsweredBy::Memo)));

    // Distilled mode is X alone, even on a question H could answer.
    let q = d.parse_question("sigma^1(3)").unwrap();
    let r = evaluator
        .evaluate(&instance, q, Mode::Distilled, Budget::default())
        .await
        .unwrap();
    assert_eq!(r.stats.answerer_queries, 1);
}
