//! The loop's decisions, as pure functions of what a round measured: whether the student is
//! promoted ([`promote`]), what the curriculum asks of the next round ([`first_stage`],
//! [`next_stage`]), which questions are within a stage ([`within_cap`]), how often a model agrees
//! with amplified answers ([`agreement`]), and when the run stops ([`stop`]).
//!
//! Nothing here reads a file, a model or a clock, so each rule is tested on its own, branch by
//! branch, instead of only through rounds of real training.
//!
//! # What a decision may look at
//!
//! H, the facts, the models and their amplified answers: never the ground truth. Every input
//! below is an agreement between a model and Amplify(H, X) or a difficulty visible in a question's
//! text ([`Domain::visible_difficulty`]); held-out accuracy against the truth is computed for the
//! report and read by nothing here but [`stop`], which ends a run without changing anything that
//! came before it. `tests/truth_poisoned.rs` checks this end to end: a run with the truth
//! poisoned makes the same decisions, targets and weights.

use super::{RoundRecord, StopAt};
use crate::domain::Domain;

/// What the curriculum asks of a round: the instance size of its root questions and, under the
/// difficulty curriculum, the most difficult of them (by [`Domain::visible_difficulty`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stage {
    pub size: usize,
    pub max_difficulty: Option<u32>,
}

/// The curriculum's settings (from the run's settings).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Curriculum {
    pub start_size: usize,
    pub target_size: usize,
    pub size_step: usize,
    /// The teacher's agreement with the amplified targets at a stage that moves the curriculum on.
    pub advance_at: f64,
    /// Whether to raise the questions' visible difficulty one level at a time within each size.
    pub difficulty_curriculum: bool,
}

/// How often `answers` equal `targets`, position by position; an unknown on either side is a
/// disagreement (an unknown target is a question amplification could not answer). 0 for none.
pub fn agreement<A: PartialEq>(answers: &[Option<A>], targets: &[Option<A>]) -> f64 {
    if targets.is_empty() {
        return 0.0;
    }
    let agreed = answers
        .iter()
        .zip(targets)
        .filter(|(a, t)| a.is_some() && a == t)
        .count();
    agreed as f64 / targets.len() as f64
}

/// The gate: a student is promoted unless its agreement with Amplify(H, X_n) on held-out questions
/// at the round's stage falls more than `tolerance` below X_n's own agreement with the same
/// answers, so one unlucky round cannot replace a better X with a worse one, and a tie keeps the
/// newer model.
pub fn promote(agreement: f64, reference: f64, tolerance: f64) -> bool {
    agreement + tolerance >= reference
}

/// The first round's stage: the start size and, under the difficulty curriculum, the easiest
/// visible difficulty of the held-out questions at that size (`easiest`; 0 if there is none),
/// because H's answers to a level are right only once X is right one level below.
pub fn first_stage(curriculum: &Curriculum, easiest: Option<u32>) -> Stage {
    Stage {
        size: curriculum.start_size,
        max_difficulty: curriculum
            .difficulty_curriculum
            .then(|| easiest.unwrap_or(0)),
    }
}

/// The stage after a round at `stage`. The curriculum moves on once the teacher that amplified the
/// round (X_n) agreed with the round's amplified targets on at least `advance_at` of its fresh root
/// questions, as the paper does: then X_n answers the stage's questions as H would with its help,
/// which (by induction from H's direct answers) is what being right at the stage takes. The
/// difficulty cap rises by one until it reaches `hardest` (the hardest visible difficulty at this
/// size), and after that the size grows by the step, up to the target size. The cap is kept when
/// the size grows.
pub fn next_stage(curriculum: &Curriculum, stage: Stage, agreement: f64, hardest: u32) -> Stage {
    if agreement < curriculum.advance_at {
        return stage;
    }
    match stage.max_difficulty {
        Some(cap) if cap < hardest => Stage {
            max_difficulty: Some(cap + 1),
            ..stage
        },
        _ => Stage {
            size: (stage.size + curriculum.size_step).min(curriculum.target_size),
            ..stage
        },
    }
}

/// Whether `question` is within a stage's difficulty cap, by its visible difficulty (a question
/// without one is within every cap).
pub fn within_cap<D: Domain>(domain: &D, question: &D::Question, cap: Option<u32>) -> bool {
    match (cap, domain.visible_difficulty(question)) {
        (Some(cap), Some(d)) => d <= cap,
        _ => true,
    }
}

/// Whether the run is done, given the newest generation's record and the promoted generation
/// (`current`). Each limit counts the whole run, so a resumed run stops where it would have:
/// - rounds: round n publishes generation n+1, so the newest generation's number is the number
///   of rounds done;
/// - accuracy: the newest generation is the promoted one and reached it at the target size (a
///   rejected student's accuracy does not count, however high). The one reading of the truth in
///   this module: it only ends the run;
/// - wall time spent in rounds.
pub fn stop(at: &StopAt, newest: &RoundRecord, current: Option<u64>) -> bool {
    at.rounds.is_some_and(|r| newest.generation >= r)
        || at.accuracy.is_some_and(|a| {
            newest.promoted && current == Some(newest.generation) && newest.accuracy_target >= a
        })
        || at
            .wall
            .is_some_and(|w| newest.wall_seconds >= w.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;

    const CURRICULUM: Curriculum = Curriculum {
        start_size: 4,
        target_size: 8,
        size_step: 3,
        advance_at: 0.9,
        difficulty_curriculum: true,
    };

    fn at(size: usize, max_difficulty: Option<u32>) -> Stage {
        Stage {
            size,
            max_difficulty,
        }
    }

    #[test]
    fn the_gate_allows_a_regression_up_to_the_tolerance() {
        assert!(promote(0.80, 0.70, 0.0), "better");
        assert!(promote(0.70, 0.70, 0.0), "a tie promotes");
        assert!(!promote(0.69, 0.70, 0.0), "worse, no tolerance");
        assert!(promote(0.69, 0.70, 0.02), "worse within the tolerance");
        assert!(promote(0.68, 0.70, 0.02 + 1e-9), "at the tolerance");
        assert!(!promote(0.67, 0.70, 0.02), "worse beyond the tolerance");
    }

    #[test]
    fn the_first_stage_is_the_start_size_at_the_easiest_difficulty() {
        assert_eq!(first_stage(&CURRICULUM, Some(2)), at(4, Some(2)));
        assert_eq!(first_stage(&CURRICULUM, None), at(4, Some(0)));
        let sizes_only = Curriculum {
            difficulty_curriculum: false,
            ..CURRICULUM
        };
        assert_eq!(first_stage(&sizes_only, Some(2)), at(4, None));
    }

    #[test]
    fn the_curriculum_stays_until_the_teacher_agrees_often_enough() {
        let here = at(4, Some(1));
        assert_eq!(next_stage(&CURRICULUM, here, 0.89, 5), here);
        assert_ne!(next_stage(&CURRICULUM, here, 0.9, 5), here);
    }

    #[test]
    fn the_difficulty_rises_one_level_until_the_hardest() {
        assert_eq!(
            next_stage(&CURRICULUM, at(4, Some(1)), 0.95, 3),
            at(4, Some(2))
        );
        assert_eq!(
            next_stage(&CURRICULUM, at(4, Some(2)), 0.95, 3),
            at(4, Some(3))
        );
    }

    #[test]
    fn at_the_hardest_difficulty_the_size_grows_keeping_the_cap() {
        assert_eq!(
            next_stage(&CURRICULUM, at(4, Some(3)), 0.95, 3),
            at(7, Some(3))
        );
        // A cap above the hardest (held-out questions at a new size) counts as the hardest.
        assert_eq!(
            next_stage(&CURRICULUM, at(4, Some(5)), 0.95, 3),
            at(7, Some(5))
        );
    }

    #[test]
    fn without_a_difficulty_cap_the_size_grows_up_to_the_target() {
        assert_eq!(next_stage(&CURRICULUM, at(4, None), 0.95, 3), at(7, None));
        assert_eq!(next_stage(&CURRICULUM, at(7, None), 0.95, 3), at(8, None));
        assert_eq!(next_stage(&CURRICULUM, at(8, None), 1.0, 3), at(8, None));
    }

    #[test]
    fn agreement_counts_equal_known_answers_over_all_targets() {
        let answers = [Some(1), Some(2), None, Some(4), Some(5)];
        let targets = [Some(1), Some(3), None, Some(4), None];
        assert_eq!(agreement(&answers, &targets), 2.0 / 5.0);
        assert_eq!(agreement::<u8>(&[], &[]), 0.0);
        assert_eq!(agreement(&[Some(1)], &[Some(1)]), 1.0);
    }

    #[test]
    fn the_cap_reads_the_question_text_only() {
        use crate::domain::permutation::{Permutation, Power};
        use crate::domain::union_find::UnionFind;
        assert!(within_cap(&Permutation, &Power { x: 0, k: 3 }, Some(2)));
        assert!(!within_cap(&Permutation, &Power { x: 0, k: 4 }, Some(2)));
        assert!(within_cap(&Permutation, &Power { x: 0, k: 200 }, None));
        // Union-find's difficulty (a depth in the forest) needs a solver: no cap applies.
        let q = UnionFind.parse_question("value x0").unwrap();
        assert!(within_cap(&UnionFind, &q, Some(0)));
    }

    fn newest(generation: u64, promoted: bool, accuracy_target: f64) -> RoundRecord {
        RoundRecord {
            generation,
            round: generation.checked_sub(1),
            amplified_by: None,
            size: 6,
            next_size: 6,
            max_difficulty: None,
            next_max_difficulty: None,
            targets: 0,
            unknown: 0,
            targets_total: 0,
            steps: 0,
            loss: None,
            agreement: None,
            gate_agreement: None,
            gate_reference: None,
            accuracy: accuracy_target,
            accuracy_target,
            amplified_target: None,
            gap: None,
            by_difficulty: BTreeMap::new(),
            promoted,
            wall_seconds: 100.0,
            truth_calls_in_targets: 0,
        }
    }

    #[test]
    fn no_limit_never_stops() {
        assert!(!stop(&StopAt::default(), &newest(50, true, 1.0), Some(50)));
    }

    #[test]
    fn the_round_limit_counts_the_rounds_of_the_whole_run() {
        let rounds = StopAt {
            rounds: Some(3),
            ..StopAt::default()
        };
        assert!(!stop(&rounds, &newest(0, true, 0.0), Some(0)));
        assert!(!stop(&rounds, &newest(2, false, 0.0), Some(1)));
        assert!(stop(&rounds, &newest(3, false, 0.0), Some(1)));
        assert!(stop(&rounds, &newest(4, true, 0.0), Some(4)));
    }

    #[test]
    fn the_accuracy_limit_counts_only_the_promoted_generation() {
        let accuracy = StopAt {
            accuracy: Some(0.95),
            ..StopAt::default()
        };
        assert!(stop(&accuracy, &newest(5, true, 0.95), Some(5)));
        assert!(!stop(&accuracy, &newest(5, true, 0.94), Some(5)));
        assert!(
            !stop(&accuracy, &newest(5, false, 0.99), Some(4)),
            "rejected by the gate"
        );
        assert!(
            !stop(&accuracy, &newest(5, true, 0.99), Some(4)),
            "published but not yet promoted"
        );
    }

    #[test]
    fn the_wall_limit_counts_the_time_spent_in_rounds() {
        let wall = |seconds| StopAt {
            wall: Some(Duration::from_secs(seconds)),
            ..StopAt::default()
        };
        // The record has spent 100 s.
        assert!(stop(&wall(100), &newest(2, false, 0.0), Some(1)));
        assert!(!stop(&wall(101), &newest(2, false, 0.0), Some(1)));
    }
}
