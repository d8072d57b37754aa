//! The bench's results: medians with min-max, ratios to the baseline route of the same run, CPU
//! per unit of work, memory; as a text table and as JSON.

use std::{fmt::Write as _, time::Duration};

use serde_json::{json, Value};

use super::{
    load::{Outcome, Scenario},
    Route,
};

/// One load run on one route.
#[derive(Debug)]
pub struct Run {
    pub scenario: Scenario,
    pub route: Route,
    pub outcome: Outcome,
    /// CPU seconds the mesh processes on the route used during the run.
    pub cpu_seconds: f64,
    /// Peak RSS (MiB) of each mesh process on the route during the run.
    pub peak_rss: Vec<(String, f64)>,
}

/// Idle connections held open through the mesh.
#[derive(Debug)]
pub struct Idle {
    pub count: u32,
    pub open_time: Duration,
    /// Tunnel RSS (MiB) before opening, while open, and 15 s after closing.
    pub before: Vec<(String, f64)>,
    pub open: Vec<(String, f64)>,
    pub closed: Vec<(String, f64)>,
}

impl Idle {
    /// KiB per idle connection, all tunnels together.
    fn kib_per_connection(&self) -> f64 {
        (total(&self.open) - total(&self.before)) * 1024.0 / f64::from(self.count)
    }
}

#[derive(Debug)]
pub struct Report {
    rounds: u32,
    seconds: u32,
    profile: &'static str,
    pub runs: Vec<Run>,
    pub rss_idle: Vec<(String, f64)>,
    pub rss_after: Vec<(String, f64)>,
    pub idle: Option<Idle>,
}

/// Median, minimum and maximum of some samples.
#[derive(Debug, Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(mut samples: Vec<f64>) -> Option<Self> {
        samples.retain(|v| v.is_finite());
        if samples.is_empty() {
            return None;
        }
        samples.sort_by(f64::total_cmp);
        let middle = samples.len() / 2;
        let median = if samples.len() % 2 == 1 {
            samples[middle]
        } else {
            (samples[middle - 1] + samples[middle]) / 2.0
        };
        Some(Self {
            median,
            min: samples[0],
            max: samples[samples.len() - 1],
        })
    }
}

/// One (scenario, route) row.
struct Row {
    scenario: Scenario,
    route: Route,
    value: Spread,
    ratio: Option<f64>,
    p99_ms: Option<f64>,
    /// CPU-s per GB (iperf3) or microseconds per request (wrk), mesh routes only.
    cpu: Option<f64>,
    peak_rss: Option<f64>,
}

impl Report {
    pub fn new(rounds: u32, seconds: u32, profile: &'static str) -> Self {
        Self {
            rounds,
            seconds,
            profile,
            runs: Vec::new(),
            rss_idle: Vec::new(),
            rss_after: Vec::new(),
            idle: None,
        }
    }

    fn runs_of(&self, scenario: Scenario, route: Route) -> impl Iterator<Item = &Run> {
        self.runs
            .iter()
            .filter(move |run| run.scenario == scenario && run.route == route)
    }

    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for scenario in Scenario::ALL {
            for route in Route::ALL {
                let values: Vec<f64> = self
                    .runs_of(scenario, route)
                    .map(|r| r.outcome.value)
                    .collect();
                let Some(value) = Spread::of(values) else {
                    continue;
                };
                let baseline = Spread::of(
                    self.runs_of(scenario, route.baseline())
                        .map(|r| r.outcome.value)
                        .collect(),
                );
                let ratio = baseline
                    .filter(|b| b.median > 0.0)
                    .map(|b| value.median / b.median);
                let p99_ms = Spread::of(
                    self.runs_of(scenario, route)
                        .filter_map(|r| r.outcome.p99_ms)
                        .collect(),
                )
                .map(|s| s.median);
                let cpu = route.is_meshed().then(|| {
                    Spread::of(
                        self.runs_of(scenario, route)
                            .map(|r| cpu_per_unit(scenario, r))
                            .collect(),
                    )
                    .map(|s| s.median)
                });
                let peak_rss = self
                    .runs_of(scenario, route)
                    .flat_map(|r| r.peak_rss.iter().map(|(_, mib)| *mib))
                    .reduce(f64::max);
                rows.push(Row {
                    scenario,
                    route,
                    value,
                    ratio,
                    p99_ms,
                    cpu: cpu.flatten(),
                    peak_rss,
                });
            }
        }
        rows
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nWeft lab bench: {} round(s) of {} s per run, {} binaries; medians [min-max]; ratio to the \
             direct route of the same kind in the same run; CPU of the mesh processes on the route \
             (CPU-s per GB for iperf3, us per request for wrk)",
            self.rounds, self.seconds, self.profile
        );
        let mut current = None;
        for row in self.rows() {
            if current != Some(row.scenario) {
                let _ = writeln!(out, "\n{}", row.scenario.name());
                current = Some(row.scenario);
            }
            let precision = if row.scenario.is_http() { 0 } else { 2 };
            let mut line = format!(
                "  {:<22} {:>9.p$} [{:.p$}-{:.p$}]",
                row.route.name(),
                row.value.median,
                row.value.min,
                row.value.max,
                p = precision
            );
            if let (Some(ratio), true) = (row.ratio, row.route.is_meshed()) {
                let _ = write!(line, "  x{ratio:.2}");
            }
            if let Some(p99) = row.p99_ms {
                let _ = write!(line, "  p99 {p99:.2} ms");
            }
            if let Some(cpu) = row.cpu {
                let unit = if row.scenario.is_http() {
                    "us/req"
                } else {
                    "CPU-s/GB"
                };
                let _ = write!(line, "  CPU {cpu:.2} {unit}");
            }
            if let Some(peak) = row.peak_rss {
                let _ = write!(line, "  peak RSS {peak:.1} MiB");
            }
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(
            out,
            "\nTunnel RSS (MiB): idle before load, after load (15 s later)"
        );
        for ((label, idle), (_, after)) in self.rss_idle.iter().zip(&self.rss_after) {
            let _ = writeln!(out, "  {label:<14} idle {idle:.1}  after {after:.1}");
        }
        if let Some(idle) = &self.idle {
            let _ = writeln!(
                out,
                "\n{} idle connections through the mesh (opened in {:.1} s): {:.1} KiB each, both \
                 tunnels together; tunnel RSS before {:.1} MiB, open {:.1} MiB, 15 s after closing {:.1} MiB",
                idle.count,
                idle.open_time.as_secs_f64(),
                idle.kib_per_connection(),
                total(&idle.before),
                total(&idle.open),
                total(&idle.closed),
            );
        }
        out
    }

    pub fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows()
            .into_iter()
            .map(|row| {
                json!({
                    "scenario": row.scenario.key(),
                    "route": row.route.key(),
                    "unit": if row.scenario.is_http() { "req/s" } else { "Gbit/s" },
                    "median": row.value.median,
                    "min": row.value.min,
                    "max": row.value.max,
                    "ratio_to_direct": row.ratio,
                    "p99_ms": row.p99_ms,
                    "cpu_per_unit": row.cpu,
                    "cpu_unit": if row.scenario.is_http() { "us/request" } else { "cpu-s/GB" },
                    "peak_rss_mib": row.peak_rss,
                })
            })
            .collect();
        let runs: Vec<Value> = self
            .runs
            .iter()
            .map(|run| {
                json!({
                    "scenario": run.scenario.key(),
                    "route": run.route.key(),
                    "value": run.outcome.value,
                    "units": run.outcome.units,
                    "p99_ms": run.outcome.p99_ms,
                    "cpu_seconds": run.cpu_seconds,
                    "peak_rss_mib": named(&run.peak_rss),
                })
            })
            .collect();
        json!({
            "rounds": self.rounds,
            "seconds_per_run": self.seconds,
            "profile": self.profile,
            "results": rows,
            "runs": runs,
            "tunnel_rss_mib": {
                "idle": named(&self.rss_idle),
                "after_load": named(&self.rss_after),
            },
            "idle_connections": self.idle.as_ref().map(|idle| json!({
                "count": idle.count,
                "open_seconds": idle.open_time.as_secs_f64(),
                "kib_per_connection": idle.kib_per_connection(),
                "rss_before_mib": named(&idle.before),
                "rss_open_mib": named(&idle.open),
                "rss_closed_mib": named(&idle.closed),
            })),
        })
    }
}

/// CPU-s per GB (iperf3) or microseconds per request (wrk) of one run.
fn cpu_per_unit(scenario: Scenario, run: &Run) -> f64 {
    if run.outcome.units <= 0.0 {
        return f64::NAN;
    }
    if scenario.is_http() {
        run.cpu_seconds * 1e6 / run.outcome.units
    } else {
        run.cpu_seconds / (run.outcome.units / 1e9)
    }
}

fn total(values: &[(String, f64)]) -> f64 {
    values.iter().map(|(_, v)| v).sum()
}

fn named(values: &[(String, f64)]) -> Value {
    Value::Object(
        values
            .iter()
            .map(|(label, v)| (label.clone(), json!(v)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(scenario: Scenario, route: Route, value: f64) -> Run {
        Run {
            scenario,
            route,
            outcome: Outcome {
                value,
                units: 2e9,
                p99_ms: None,
            },
            cpu_seconds: 3.0,
            peak_rss: vec![("mesh-node-n1".into(), 20.0)],
        }
    }

    #[test]
    fn medians_and_ratios_come_from_the_same_run() {
        let iperf = Scenario::Iperf { streams: 1 };
        let mut report = Report::new(3, 10, "release");
        for (direct, mesh) in [(10.0, 4.0), (12.0, 5.0), (11.0, 9.0)] {
            report.runs.push(run(iperf, Route::Direct, direct));
            report.runs.push(run(iperf, Route::Mesh, mesh));
        }
        let rows = report.rows();
        let mesh = rows.iter().find(|r| r.route == Route::Mesh).unwrap();
        assert_eq!(mesh.value.median, 5.0);
        assert_eq!((mesh.value.min, mesh.value.max), (4.0, 9.0));
        assert_eq!(mesh.ratio, Some(5.0 / 11.0));
        // 3 CPU-s over 2 GB.
        assert_eq!(mesh.cpu, Some(1.5));
        let direct = rows.iter().find(|r| r.route == Route::Direct).unwrap();
        assert_eq!(direct.cpu, None);
        let text = report.text();
        assert!(text.contains("x0.45"), "{text}");
        let json = report.json();
        assert_eq!(json["results"][1]["route"], "mesh");
        assert_eq!(json["results"][1]["median"], 5.0);
    }

    #[test]
    fn even_sample_counts_average_the_middle_two() {
        let spread = Spread::of(vec![4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(spread.median, 2.5);
        assert!(Spread::of(vec![]).is_none());
    }
}
