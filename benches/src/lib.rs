//! Benchmarks of AIOS: the workloads of `BENCHMARKS.md`, shared by the criterion benches and
//! the `report` binary.
//!
//! Each area module exposes `run(&Config) -> Vec<Measurement>`; the report binary prints one
//! JSON object per measurement, then a table.

use std::time::{Duration, Instant};

use serde::Serialize;

pub mod ann;
pub mod audit;
pub mod console;
pub mod governance;
pub mod memory;
pub mod orchestrator;
pub mod quality;
pub mod sched;
pub mod sqlite;
pub mod workspace;

/// How long to measure.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// A short run (the whole report under a minute).
    pub quick: bool,
}

impl Config {
    /// Picks `quick` or `full` by the mode.
    pub fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// The workload id from BENCHMARKS.md (`AUD-APPEND`).
    pub workload: String,
    /// What was measured (`throughput`, `median`, ...).
    pub metric: String,
    /// The figure.
    pub value: f64,
    /// Its unit (`events/s`, `us`, ...).
    pub unit: String,
    /// The target, as text (`>= 1000000`).
    pub target: String,
    /// Whether the target is met, when it can be judged.
    pub met: Option<bool>,
}

/// Which way a target points.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// Higher is better: value >= target.
    AtLeast(f64),
    /// Lower is better: value <= target.
    AtMost(f64),
    /// No target; informational.
    None,
}

impl Measurement {
    /// A measurement judged against `goal`.
    pub fn new(workload: &str, metric: &str, value: f64, unit: &str, goal: Goal) -> Self {
        let (target, met) = match goal {
            Goal::AtLeast(t) => (format!(">= {t}"), Some(value >= t)),
            Goal::AtMost(t) => (format!("<= {t}"), Some(value <= t)),
            Goal::None => (String::new(), None),
        };
        Self {
            workload: workload.into(),
            metric: metric.into(),
            value,
            unit: unit.into(),
            target,
            met,
        }
    }
}

/// Runs `f` once and returns how long it took.
pub fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let out = f();
    (start.elapsed(), out)
}

/// Times each of `samples` calls of `f` individually; returns the durations sorted.
pub fn sample(samples: usize, mut f: impl FnMut(usize)) -> Vec<Duration> {
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let start = Instant::now();
        f(i);
        out.push(start.elapsed());
    }
    out.sort();
    out
}

/// The `p`-th percentile (0..=100) of sorted durations, in microseconds.
pub fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1e6
}

/// Prints measurements as JSON lines.
pub fn print_json(ms: &[Measurement]) {
    for m in ms {
        if let Ok(line) = serde_json::to_string(m) {
            println!("{line}");
        }
    }
}

/// Prints measurements as a table.
pub fn print_table(ms: &[Measurement]) {
    println!();
    println!(
        "{:<20} {:<16} {:>16} {:<10} {:<16} met",
        "workload", "metric", "value", "unit", "target"
    );
    println!("{}", "-".repeat(88));
    for m in ms {
        let met = match m.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        println!(
            "{:<20} {:<16} {:>16.3} {:<10} {:<16} {}",
            m.workload, m.metric, m.value, m.unit, m.target, met
        );
    }
}
