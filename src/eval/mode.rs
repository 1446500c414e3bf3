//! How a tree is evaluated ([`Mode`]) and what it may spend ([`Budget`]), with the bounds every
//! budget respects wherever it comes from.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::EvalError;

/// Deepest tree any mode or budget may ask for. Exact mode uses it when no depth budget is given;
/// it is far beyond what the well-founded overseers need at full size (sequential assignments, the
/// deepest, needs at most 64).
pub const MAX_TREE_DEPTH: u32 = 1024;

/// How a tree is evaluated. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The answerer alone.
    Distilled,
    /// H with the answerer on every subquestion: hch(1).
    Amplified,
    /// Recursion to depth d, the answerer at the leaves. hch(0) is distilled, hch(1) amplified.
    Hch(u32),
    /// Recursion to H's base cases, no answerer. Only for well-founded domains.
    Exact,
}

impl Mode {
    /// Depth at which the answerer answers, or `None` for exact mode.
    pub fn leaf_depth(self) -> Option<u32> {
        match self {
            Mode::Distilled => Some(0),
            Mode::Amplified => Some(1),
            Mode::Hch(d) => Some(d),
            Mode::Exact => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Distilled => f.write_str("distilled"),
            Mode::Amplified => f.write_str("amplified"),
            Mode::Hch(d) => write!(f, "hch:{d}"),
            Mode::Exact => f.write_str("exact"),
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    /// `distilled`, `amplified`, `exact`, or `hch:D` (also `hch(D)`, `hchD`).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s {
            "distilled" => return Ok(Mode::Distilled),
            "amplified" => return Ok(Mode::Amplified),
            "exact" => return Ok(Mode::Exact),
            _ => {}
        }
        let depth = s
            .strip_prefix("hch")
            .map(|rest| {
                rest.trim_start_matches([':', '('])
                    .trim_end_matches(')')
                    .trim()
            })
            .ok_or_else(|| {
                format!("unknown mode {s:?}: the modes are distilled, amplified, hch:D and exact")
            })?;
        let d: u32 = depth
            .parse()
            .map_err(|_| format!("mode {s:?}: expected a depth after hch, like hch:3"))?;
        if d > MAX_TREE_DEPTH {
            return Err(format!(
                "mode {s:?}: depth {d} exceeds the maximum {MAX_TREE_DEPTH}"
            ));
        }
        Ok(Mode::Hch(d))
    }
}

/// Limits on one tree. Exhausting any of them degrades answers (to the answerer, or to unknown);
/// it never hangs and never fails the tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// Nodes deeper than this are not created (the root is depth 0).
    pub max_depth: Option<u32>,
    /// At most this many nodes are evaluated (memo hits are free).
    pub max_nodes: Option<u64>,
    /// Time allowed for the whole tree, from the start of evaluation.
    pub deadline: Option<Duration>,
}

impl Budget {
    /// The bounds every budget must respect, wherever it comes from (the wire's decoder adds the
    /// operator's own maximums on top): a depth of at most [`MAX_TREE_DEPTH`], at least one node,
    /// a deadline above zero.
    pub fn check(&self) -> Result<(), EvalError> {
        if let Some(d) = self.max_depth.filter(|&d| d > MAX_TREE_DEPTH) {
            return Err(EvalError::InvalidBudget(format!(
                "max_depth {d} exceeds the maximum {MAX_TREE_DEPTH}"
            )));
        }
        if self.max_nodes == Some(0) {
            return Err(EvalError::InvalidBudget(
                "max_nodes must be at least 1".to_string(),
            ));
        }
        if self.deadline.is_some_and(|d| d.is_zero()) {
            return Err(EvalError::InvalidBudget(
                "the deadline must be above zero".to_string(),
            ));
        }
        Ok(())
    }
}
