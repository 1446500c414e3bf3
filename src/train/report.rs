//! Comparing runs: a per-generation table, the steps and wall time each run took to reach an
//! accuracy, and a plot (SVG, written by hand: two panels, held-out accuracy at the target size
//! against optimiser steps and against wall time, one line per run).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::record::read_records;
use super::store::TargetStore;
use super::{RoundRecord, RunConfig, TrainError, RUN_FILE};
use crate::registry::Registry;

/// One run as the report sees it.
pub struct RunSummary {
    pub dir: PathBuf,
    pub config: RunConfig,
    pub records: Vec<RoundRecord>,
    /// Tree nodes (H's steps and the leaves X or the oracle answered) evaluated to produce the
    /// run's targets.
    pub tree_nodes: u64,
}

impl RunSummary {
    /// Reads the run in `dir` (its settings and its generations' manifests).
    pub fn read(dir: &Path) -> Result<Self, TrainError> {
        let run_file = dir.join(RUN_FILE);
        let bytes = std::fs::read(&run_file).map_err(|e| TrainError::Run {
            path: run_file.clone(),
            message: format!("not a run directory: {e}"),
        })?;
        let config: RunConfig = serde_json::from_slice(&bytes).map_err(|e| TrainError::Run {
            path: run_file,
            message: format!("not a valid run file: {e}"),
        })?;
        let registry = Registry::open(dir.join("registry"))?;
        let records = read_records(&registry)?;
        // Read-only: the run may still be training.
        let store = TargetStore::open_read_only(dir.join("targets"), &config.domain)?;
        let tree_nodes = store.all()?.iter().map(|r| r.nodes).sum();
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            records,
            tree_nodes,
        })
    }

    /// "amplified" or "supervised", with the directory name.
    pub fn label(&self) -> String {
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.dir.display().to_string());
        format!("{name} ({})", self.kind())
    }

    pub fn kind(&self) -> &'static str {
        if self.config.supervised {
            "supervised"
        } else {
            "amplified"
        }
    }

    /// The first promoted generation whose accuracy at the target size reached `accuracy`.
    pub fn reached(&self, accuracy: f64) -> Option<&RoundRecord> {
        self.records
            .iter()
            .find(|r| r.promoted && r.accuracy_target >= accuracy)
    }
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1}%", 100.0 * x)
    } else {
        "-".to_string()
    }
}

fn signed_pct(x: Option<f64>) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{:+.1}", 100.0 * x),
        _ => "-".to_string(),
    }
}

/// The per-generation table of one run (markdown, readable as plain text).
pub fn generation_table(run: &RunSummary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| gen | size | difficulty | targets | steps | agreement | gate (new / old) | promoted | acc (stage) | acc (target {}) | amplified | gap | time |",
        run.config.target_size
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &run.records {
        let _ = writeln!(
            out,
            "| g{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} s |",
            r.generation,
            r.size,
            r.max_difficulty
                .map_or_else(|| "all".to_string(), |d| format!("≤ {d}")),
            r.targets,
            r.steps,
            r.agreement.map_or_else(|| "-".to_string(), pct),
            match (r.gate_agreement, r.gate_reference) {
                (Some(a), Some(b)) => format!("{} / {}", pct(a), pct(b)),
                _ => "-".to_string(),
            },
            if r.promoted { "yes" } else { "no" },
            pct(r.accuracy),
            pct(r.accuracy_target),
            r.amplified_target.map_or_else(|| "-".to_string(), pct),
            signed_pct(r.gap),
            r.wall_seconds
        );
    }
    out
}

/// A comparison of runs: for each, steps and time to `accuracy` and its best accuracy.
pub fn comparison(runs: &[RunSummary], accuracy: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| run | domain | target size | best accuracy | steps to {} | time to {} |",
        pct(accuracy),
        pct(accuracy)
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for run in runs {
        let best = run
            .records
            .iter()
            .map(|r| r.accuracy_target)
            .fold(f64::NAN, f64::max);
        let (steps, time) = match run.reached(accuracy) {
            Some(r) => (r.steps.to_string(), format!("{:.0} s", r.wall_seconds)),
            None => ("not reached".to_string(), "-".to_string()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {steps} | {time} |",
            run.label(),
            run.config.domain,
            run.config.target_size,
            pct(best)
        );
    }
    if let [a, b] = runs {
        if let (Some(ra), Some(rb)) = (a.reached(accuracy), b.reached(accuracy)) {
            if rb.steps > 0 {
                let _ = writeln!(
                    out,
                    "\n{} needed {:.2}x the steps of {}.",
                    a.label(),
                    ra.steps as f64 / rb.steps as f64,
                    b.label()
                );
            }
        }
    }
    out
}

/// The table of `docs/results.md`: for each domain, each arm's steps and wall time to 90% and to
/// 95% held-out accuracy, the ratio of amplification's steps to the supervised baseline's, the
/// tree nodes its targets cost, and the final accuracy. Runs are paired by domain.
pub fn task_table(runs: &[RunSummary]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| task | size | arm | steps to 90% | time to 90% | steps to 95% | time to 95% | steps ratio at 95% (90%) | tree nodes | final accuracy |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    let to = |run: &RunSummary, a: f64| match run.reached(a) {
        Some(r) => (r.steps.to_string(), format!("{:.0} s", r.wall_seconds)),
        None => ("not reached".to_string(), "-".to_string()),
    };
    let steps = |run: &RunSummary, a: f64| run.reached(a).map(|r| r.steps as f64);
    for run in runs {
        let baseline = runs
            .iter()
            .find(|b| b.config.supervised && b.config.domain == run.config.domain);
        let ratio = match (run.config.supervised, baseline) {
            (false, Some(b)) => {
                let r = |a: f64| match (steps(run, a), steps(b, a)) {
                    (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
                    _ => "-".to_string(),
                };
                format!("{} ({})", r(0.95), r(0.90))
            }
            _ => String::new(),
        };
        let (s90, t90) = to(run, 0.90);
        let (s95, t95) = to(run, 0.95);
        let last = run.records.last().map_or(f64::NAN, |r| r.accuracy_target);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {s90} | {t90} | {s95} | {t95} | {ratio} | {} | {} |",
            run.config.domain,
            run.config.target_size,
            run.kind(),
            run.tree_nodes,
            pct(last)
        );
    }
    out
}

const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// The plot: held-out accuracy at the target size against steps (left) and wall time (right).
pub fn svg(runs: &[RunSummary]) -> String {
    let (w, h) = (960.0, 420.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    type Axis = fn(&RoundRecord) -> f64;
    let panels: [(&str, Axis); 2] = [
        ("optimiser steps", |r| r.steps as f64),
        ("wall time (s)", |r| r.wall_seconds),
    ];
    for (p, (xlabel, x_of)) in panels.iter().enumerate() {
        let (left, top, pw, ph) = (60.0 + p as f64 * 470.0, 40.0, 400.0, 320.0);
        let x_max = runs
            .iter()
            .flat_map(|r| r.records.iter().map(x_of))
            .fold(1.0_f64, f64::max);
        let sx = |x: f64| left + pw * x / x_max;
        let sy = |y: f64| top + ph * (1.0 - y.clamp(0.0, 1.0));
        let _ = writeln!(
            out,
            r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
        );
        for tick in 0..=5 {
            let y = tick as f64 / 5.0;
            let _ = writeln!(
                out,
                r##"<line x1="{left}" x2="{}" y1="{}" y2="{}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}%</text>"##,
                left + pw,
                sy(y),
                sy(y),
                left - 6.0,
                sy(y) + 4.0,
                tick * 20
            );
            let x = x_max * tick as f64 / 5.0;
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                sx(x),
                top + ph + 16.0,
                if x >= 1000.0 {
                    format!("{:.1}k", x / 1000.0)
                } else {
                    format!("{x:.0}")
                }
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">{xlabel}</text>"#,
            left + pw / 2.0,
            top + ph + 34.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">held-out accuracy at the target size vs {xlabel}</text>"#,
            left + pw / 2.0,
            top - 12.0
        );
        // 95% guide.
        let _ = writeln!(
            out,
            r##"<line x1="{left}" x2="{}" y1="{}" y2="{}" stroke="#999" stroke-dasharray="4 4"/>"##,
            left + pw,
            sy(0.95),
            sy(0.95)
        );
        for (i, run) in runs.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let points: Vec<String> = run
                .records
                .iter()
                .filter(|r| r.accuracy_target.is_finite())
                .map(|r| format!("{:.1},{:.1}", sx(x_of(r)), sy(r.accuracy_target)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                points.join(" ")
            );
            if p == 0 {
                let _ = writeln!(
                    out,
                    r#"<rect x="{}" y="{}" width="12" height="3" fill="{colour}"/><text x="{}" y="{}">{}</text>"#,
                    left + 10.0,
                    top + ph - 20.0 - 16.0 * i as f64,
                    left + 28.0,
                    top + ph - 15.0 - 16.0 * i as f64,
                    xml_escape(&run.label())
                );
            }
        }
    }
    out.push_str("</svg>\n");
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
