//! The load test's machine-readable report, shaped like ghz's JSON (`ghz --format json`), so the
//! tools people already point at ghz output read ours: count, total, average, fastest, slowest,
//! rps, the latency distribution at 10/25/50/75/90/95/99 %, a histogram, and the status codes.
//! Durations are nanoseconds, as in ghz. Latencies are kept in an HDR histogram (3 significant
//! digits, 1 µs to 10 min), so an open-loop run of any length costs constant memory.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// One tree as a client saw it.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// From when the tree was due (open loop) or sent (closed loop) to its reply.
    pub latency: Duration,
    pub code: tonic::Code,
    /// Answered, but degraded by a budget or a failed answerer.
    pub degraded: bool,
}

/// The samples of one phase.
pub struct Samples {
    latencies: Histogram<u64>,
    codes: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    pub count: u64,
    pub degraded: u64,
}

impl Default for Samples {
    fn default() -> Self {
        Self {
            latencies: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
            codes: BTreeMap::new(),
            errors: BTreeMap::new(),
            count: 0,
            degraded: 0,
        }
    }
}

impl Samples {
    pub fn add(&mut self, sample: Sample) {
        self.count += 1;
        let micros = (sample.latency.as_micros() as u64).clamp(1, 600_000_000);
        // Within the bounds by the clamp.
        let _ = self.latencies.record(micros);
        *self.codes.entry(format!("{:?}", sample.code)).or_default() += 1;
        if sample.code != tonic::Code::Ok {
            *self
                .errors
                .entry(format!("rpc error: code = {:?}", sample.code))
                .or_default() += 1;
        }
        if sample.degraded {
            self.degraded += 1;
        }
    }

    /// Trees answered (OK and not degraded).
    pub fn succeeded(&self) -> u64 {
        self.codes.get("Ok").copied().unwrap_or(0) - self.degraded
    }

    pub fn failed(&self) -> u64 {
        self.count - self.succeeded()
    }

    /// The latency at `quantile` (0 to 1).
    pub fn at(&self, quantile: f64) -> Duration {
        Duration::from_micros(self.latencies.value_at_quantile(quantile))
    }

    /// One line: `p50 .., p90 .., p99 .., max ..`.
    pub fn percentiles(&self) -> String {
        if self.count == 0 {
            return "no samples".into();
        }
        format!(
            "p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
            self.at(0.5),
            self.at(0.9),
            self.at(0.99),
            Duration::from_micros(self.latencies.max())
        )
    }

    /// The ghz-shaped report of a phase of `total` wall time.
    pub fn report(&self, total: Duration, options: Options) -> Report {
        let ns = |d: Duration| d.as_nanos() as u64;
        let micros_ns = |us: u64| us * 1000;
        let (fastest, slowest) = (self.latencies.min(), self.latencies.max());
        let latency_distribution = [10, 25, 50, 75, 90, 95, 99]
            .into_iter()
            .map(|percentage| Percentile {
                percentage,
                latency: ns(self.at(f64::from(percentage) / 100.0)),
            })
            .collect();
        // Ten buckets from the fastest to the slowest, like ghz's.
        let width = ((slowest - fastest) as f64 / 10.0).max(1.0);
        let mut counts = [0u64; 10];
        for v in self.latencies.iter_recorded() {
            let i = (((v.value_iterated_to() - fastest) as f64 / width) as usize).min(9);
            counts[i] += v.count_at_value();
        }
        let histogram = counts
            .iter()
            .enumerate()
            .map(|(i, &count)| Bucket {
                mark: (fastest as f64 + width * (i + 1) as f64) / 1e6,
                count,
                frequency: count as f64 / self.count.max(1) as f64,
            })
            .collect();
        Report {
            date: crate::tls::rfc3339_now(),
            end_reason: "timeout",
            options,
            count: self.count,
            total: ns(total),
            average: micros_ns(self.latencies.mean() as u64),
            fastest: micros_ns(fastest),
            slowest: micros_ns(slowest),
            rps: self.count as f64 / total.as_secs_f64().max(1e-9),
            degraded: self.degraded,
            error_distribution: self.errors.clone(),
            status_code_distribution: self.codes.clone(),
            latency_distribution,
            histogram,
        }
    }
}

/// How the load was applied, as ghz's `options` says it.
#[derive(Serialize, Debug, Clone)]
pub struct Options {
    pub call: String,
    pub host: String,
    /// Closed loop: clients, each with one tree in flight.
    pub concurrency: Option<usize>,
    /// Open loop: trees started per second, on a fixed schedule.
    pub rps: Option<f64>,
    /// Length of the phase, in nanoseconds.
    pub duration: u64,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub date: String,
    pub end_reason: &'static str,
    pub options: Options,
    pub count: u64,
    pub total: u64,
    pub average: u64,
    pub fastest: u64,
    pub slowest: u64,
    pub rps: f64,
    /// Not in ghz: trees answered OK but degraded by a budget or a failed answerer.
    pub degraded: u64,
    pub error_distribution: BTreeMap<String, u64>,
    pub status_code_distribution: BTreeMap<String, u64>,
    pub latency_distribution: Vec<Percentile>,
    pub histogram: Vec<Bucket>,
}

#[derive(Serialize, Debug)]
pub struct Percentile {
    pub percentage: u32,
    pub latency: u64,
}

#[derive(Serialize, Debug)]
pub struct Bucket {
    /// Upper edge of the bucket, in seconds.
    pub mark: f64,
    pub count: u64,
    pub frequency: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_counts_codes_and_orders_percentiles() {
        let mut samples = Samples::default();
        for ms in 1..=100 {
            samples.add(Sample {
                latency: Duration::from_millis(ms),
                code: tonic::Code::Ok,
                degraded: ms % 50 == 0,
            });
        }
        samples.add(Sample {
            latency: Duration::from_millis(3),
            code: tonic::Code::ResourceExhausted,
            degraded: false,
        });
        assert_eq!(
            (samples.count, samples.succeeded(), samples.failed()),
            (101, 98, 3)
        );
        let options = Options {
            call: "hch.v1.Coordinator.Ask".into(),
            host: "x".into(),
            concurrency: Some(1),
            rps: None,
            duration: 1,
        };
        let report = samples.report(Duration::from_secs(2), options);
        assert_eq!(report.count, 101);
        assert!((report.rps - 50.5).abs() < 1e-9);
        assert_eq!(report.status_code_distribution["Ok"], 100);
        assert_eq!(report.status_code_distribution["ResourceExhausted"], 1);
        let latencies: Vec<u64> = report
            .latency_distribution
            .iter()
            .map(|p| p.latency)
            .collect();
        assert!(latencies.windows(2).all(|w| w[0] <= w[1]), "{latencies:?}");
        // The median of 1..=100 ms (and one 3 ms) is about 50 ms, to HDR's precision.
        let median = report.latency_distribution[2].latency as f64 / 1e6;
        assert!((49.0..=51.0).contains(&median), "{median}");
        assert_eq!(report.histogram.iter().map(|b| b.count).sum::<u64>(), 101);
        let json = serde_json::to_value(&report).unwrap();
        for field in [
            "count",
            "total",
            "rps",
            "latencyDistribution",
            "statusCodeDistribution",
        ] {
            assert!(json.get(field).is_some(), "{field} missing: {json}");
        }
    }
}
