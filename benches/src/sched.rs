//! MODEL-SCHED: 50 agents x 20 model calls on one backend limited to 8 concurrent, 600
//! requests/min and 100k tokens/min, with the model scheduler and with callers that retry
//! rate-limit answers on their own.
//!
//! Time is virtual: the backend ([`SimulatedBackend`]) sleeps on a manual timer, and the
//! workload runs to completion in [`drive`], which moves the clock to the next deadline
//! whenever nothing else can run. The figures are therefore exact for the simulated
//! backend, independent of the machine; the wall-clock time of the simulation is reported
//! too, as the scheduler's and orchestrator's own cost. The backend enforces its per-minute
//! limits as token buckets holding one second of refill (10 requests, 1,667 tokens), as
//! providers do in short intervals, and counts a call's tokens (prompt plus the output it
//! produces) when the call arrives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aios::core::{Clock, ManualTimer, Message, ModelRequest, RoleId, RunId};
use aios::orchestrator::testing::{drive, SimulatedBackend};
use aios::orchestrator::{
    BackendLimits, CheckpointMode, FnAgent, ModelRouter, Orchestrator, OrchestratorConfig,
    RetryPolicy, Role, RunStatus, SchedulerConfig, TaskSpec, Workflow,
};

use crate::orchestrator::{governor, panic_free_exit};
use crate::{Config, Goal, Measurement};

const AGENTS: usize = 50;
const CALLS: usize = 20;
const CONCURRENT: u32 = 8;
const RPM: u32 = 600;
const TPM: u64 = 100_000;
/// Output tokens of every answer, and the latency it takes.
const OUTPUT: u64 = 60;
const BASE_LATENCY: Duration = Duration::from_millis(300);
const PER_TOKEN: Duration = Duration::from_millis(5);
/// The output allowance each request declares (what the estimate charges).
const MAX_OUTPUT: u32 = 150;

fn limits() -> BackendLimits {
    limits_scaled(1.0)
}

/// The limits with the per-minute rates multiplied by `factor` (what a scheduler configured
/// too high believes).
fn limits_scaled(factor: f64) -> BackendLimits {
    BackendLimits::new()
        .max_concurrent(CONCURRENT)
        .requests_per_minute((f64::from(RPM) * factor) as u32)
        .tokens_per_minute((TPM as f64 * factor) as u64)
}

/// The prompt of agent `i`: 40 to 157 tokens, so agents differ in what they cost.
fn prompt(i: usize) -> String {
    "w".repeat(160 + (i * 37) % 470)
}

/// Call latencies (virtual seconds) and the finish time of each agent, by run.
type Log = Arc<std::sync::Mutex<HashMap<RunId, (usize, Vec<f64>, f64)>>>;

fn caller(clock: Arc<dyn Clock>, log: Log, retry: RetryPolicy) -> Role {
    let agent = FnAgent::new(move |ctx, input| {
        let clock = clock.clone();
        let log = log.clone();
        Box::pin(async move {
            let i = input.input.as_u64().unwrap_or(0) as usize;
            let text = prompt(i);
            let start = clock.now_nanos();
            let mut latencies = Vec::with_capacity(CALLS);
            for _ in 0..CALLS {
                let before = clock.now_nanos();
                let mut request = ModelRequest::new(vec![Message::user(text.clone())]);
                request.max_output_tokens = Some(MAX_OUTPUT);
                ctx.complete(request).await?;
                latencies.push(secs(clock.now_nanos() - before));
            }
            let took = secs(clock.now_nanos() - start);
            if let Ok(mut log) = log.lock() {
                log.insert(ctx.run_id(), (i, latencies, took));
            }
            Ok(serde_json::json!(i))
        })
    });
    Role::new("counter", "noop", Arc::new(agent))
        .retry(retry)
        .max_calls(CALLS as u32)
}

fn secs(nanos: i64) -> f64 {
    nanos as f64 / 1e9
}

/// What one variant measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Virtual seconds from the start to the last answer.
    pub total: f64,
    /// Rate-limit answers the backend gave.
    pub rate_limited: u64,
    /// Calls the backend served.
    pub served: u64,
    /// Agents whose run did not complete.
    pub failed_agents: usize,
    /// Per agent: the 95th percentile of its call latencies (virtual seconds).
    pub p95: Vec<f64>,
    /// Jain's fairness index over the agents' throughput (calls per second of the agent's
    /// own run time).
    pub jain: f64,
    /// The lower bound the limits allow for this workload (virtual seconds).
    pub bound: f64,
    /// Wall-clock time of the simulation.
    pub wall: Duration,
}

/// The time the limits allow at best for the workload: every request and token started
/// at the buckets' rates after their first full bucket, and the last answer's latency
/// after that; or the concurrency limit's bound if it is larger.
pub fn bound() -> f64 {
    let n = (AGENTS * CALLS) as f64;
    let tokens: f64 = (0..AGENTS)
        .map(|i| (aios::core::ScriptedModel::count_tokens(&prompt(i)) + OUTPUT) as f64)
        .sum::<f64>()
        * CALLS as f64;
    let latency = (BASE_LATENCY + PER_TOKEN * OUTPUT as u32).as_secs_f64();
    let per_second_r = f64::from(RPM) / 60.0;
    let per_second_t = TPM as f64 / 60.0;
    let by_requests = (n - per_second_r) / per_second_r;
    let by_tokens = (tokens - per_second_t) / per_second_t;
    let by_concurrency = n * latency / f64::from(CONCURRENT);
    (by_requests.max(by_tokens) + latency).max(by_concurrency)
}

/// Runs the workload with the scheduler (`scheduled`) or with callers retrying on their own.
/// `refused_counted`: the backend counts refused calls against its request limit.
pub fn workload(scheduled: bool, refused_counted: bool) -> Outcome {
    workload_with(scheduled.then_some(1.0), refused_counted)
}

/// The workload with a scheduler that believes the per-minute limits are `belief` times the
/// backend's (`None`: no scheduler).
pub fn workload_with(belief: Option<f64>, refused_counted: bool) -> Outcome {
    let scheduled = belief.is_some();
    let timer = ManualTimer::default();
    let clock: Arc<dyn Clock> = Arc::new(timer.clock().clone());
    let backend = SimulatedBackend::new("cloud", limits(), clock.clone(), Arc::new(timer.clone()))
        .with_output_tokens(OUTPUT)
        .with_latency(BASE_LATENCY, PER_TOKEN)
        .with_refused_counted(refused_counted);
    let log: Log = Arc::default();
    let retry = if scheduled {
        // a 429 should not happen; if it does, the queue pauses and the retry waits there
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::ZERO,
            jitter: 0.0,
            attempt_timeout: None,
            overall_timeout: None,
            ..RetryPolicy::default()
        }
    } else {
        // what a careful caller does alone: exponential backoff with full jitter
        RetryPolicy {
            max_attempts: 50,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 1.0,
            attempt_timeout: None,
            overall_timeout: None,
        }
    };
    let mut builder = Orchestrator::builder(governor())
        .role(caller(clock.clone(), log.clone(), retry))
        .models(ModelRouter::single(Arc::new(backend.clone())))
        .clock(clock.clone())
        .timer(Arc::new(timer.clone()))
        .config(OrchestratorConfig {
            checkpoints: CheckpointMode::OnExit,
            ..OrchestratorConfig::deterministic("bench", 7)
        });
    if let Some(factor) = belief {
        builder =
            builder.model_scheduler(SchedulerConfig::new().backend("cloud", limits_scaled(factor)));
    }
    let orchestrator = builder
        .build()
        .unwrap_or_else(|e| panic_free_exit(&e.to_string()));
    let role = RoleId::from_name("counter");
    let runs = (0..AGENTS).map(|i| {
        let wf = Workflow::new("agent").task(TaskSpec::new("calls", role, serde_json::json!(i)));
        orchestrator.start(wf)
    });
    let start = clock.now_nanos();
    let wall = Instant::now();
    let outcomes = drive(&timer, futures::future::join_all(runs))
        .unwrap_or_else(|| panic_free_exit("the simulation is stuck"));
    let wall = wall.elapsed();
    let total = secs(clock.now_nanos() - start);
    let failed_agents = outcomes
        .iter()
        .filter(|o| !matches!(o, Ok(o) if o.status == RunStatus::Completed))
        .count();
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    let mut p95 = vec![];
    let mut throughput = vec![];
    for (_, latencies, took) in log.values() {
        let mut l = latencies.clone();
        l.sort_by(f64::total_cmp);
        let idx = ((0.95 * (l.len() - 1) as f64).round() as usize).min(l.len() - 1);
        p95.push(l[idx]);
        throughput.push(l.len() as f64 / took.max(1e-9));
    }
    // an agent that failed counts with throughput zero
    throughput.resize(AGENTS, 0.0);
    let sum: f64 = throughput.iter().sum();
    let squares: f64 = throughput.iter().map(|x| x * x).sum();
    let jain = if squares > 0.0 {
        sum * sum / (AGENTS as f64 * squares)
    } else {
        0.0
    };
    let stats = backend.stats();
    Outcome {
        total,
        rate_limited: stats.rate_limited,
        served: stats.served,
        failed_agents,
        p95,
        jain,
        bound: bound(),
        wall,
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The wall-clock cost of one uncontended permit (acquire, grant, drop) on a backend with
/// every limit set, in nanoseconds: the scheduler's own overhead per model attempt.
pub fn permit_overhead(n: usize) -> f64 {
    use aios::orchestrator::{FlowId, ModelScheduler, PermitRequest};
    use futures::FutureExt;
    let timer = ManualTimer::default();
    let limits = BackendLimits::new()
        .max_concurrent(8)
        .requests_per_minute(u32::MAX / 2)
        .tokens_per_minute(u64::MAX / 4);
    let scheduler = ModelScheduler::new(
        SchedulerConfig::new().backend("cloud", limits),
        Arc::new(timer.clock().clone()),
        Arc::new(timer.clone()),
    );
    let model = aios::core::ModelId::new("cloud");
    let start = Instant::now();
    for i in 0..n {
        let ask = PermitRequest::new(model.clone(), FlowId::new(i as u64 % 50)).tokens(250);
        if let Some(mut permit) = scheduler.acquire(ask).now_or_never() {
            permit.used(160);
        }
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// Runs MODEL-SCHED (the same in quick and full mode: time is virtual; only the permit
/// overhead is measured on the wall clock).
pub fn run(config: &Config) -> Vec<Measurement> {
    let s = workload(true, false);
    let n = workload(false, false);
    let c = workload(false, true);
    let sc = workload(true, true);
    let wrong = workload_with(Some(1.1), true);
    let w = "MODEL-SCHED";
    let overhead = permit_overhead(config.pick(100_000, 1_000_000));
    vec![
        Measurement::new(w, "permit overhead", overhead, "ns", Goal::None),
        Measurement::new(w, "bound", s.bound, "s (virtual)", Goal::None),
        Measurement::new(
            w,
            "total",
            s.total,
            "s (virtual)",
            Goal::AtMost(s.bound * 1.1),
        ),
        Measurement::new(
            w,
            "total/bound",
            s.total / s.bound,
            "ratio",
            Goal::AtMost(1.1),
        ),
        Measurement::new(w, "429s", s.rate_limited as f64, "count", Goal::AtMost(0.0)),
        Measurement::new(w, "served", s.served as f64, "calls", Goal::None),
        Measurement::new(
            w,
            "failed agents",
            s.failed_agents as f64,
            "count",
            Goal::AtMost(0.0),
        ),
        Measurement::new(w, "p95 median", median(&s.p95), "s (virtual)", Goal::None),
        Measurement::new(w, "p95 worst agent", max(&s.p95), "s (virtual)", Goal::None),
        Measurement::new(w, "jain", s.jain, "index", Goal::AtLeast(0.95)),
        Measurement::new(w, "wall", s.wall.as_secs_f64() * 1e3, "ms", Goal::None),
        Measurement::new(w, "naive total", n.total, "s (virtual)", Goal::None),
        Measurement::new(w, "naive 429s", n.rate_limited as f64, "count", Goal::None),
        Measurement::new(w, "naive served", n.served as f64, "calls", Goal::None),
        Measurement::new(
            w,
            "naive failed",
            n.failed_agents as f64,
            "count",
            Goal::None,
        ),
        Measurement::new(
            w,
            "naive p95 median",
            median(&n.p95),
            "s (virtual)",
            Goal::None,
        ),
        Measurement::new(w, "naive p95 worst", max(&n.p95), "s (virtual)", Goal::None),
        Measurement::new(w, "naive jain", n.jain, "index", Goal::None),
        Measurement::new(w, "speed-up", n.total / s.total, "x", Goal::AtLeast(2.0)),
        Measurement::new(
            w,
            "counted: total",
            sc.total,
            "s (virtual)",
            Goal::AtMost(sc.bound * 1.1),
        ),
        Measurement::new(
            w,
            "counted: 429s",
            sc.rate_limited as f64,
            "count",
            Goal::AtMost(0.0),
        ),
        Measurement::new(w, "counted: jain", sc.jain, "index", Goal::AtLeast(0.95)),
        Measurement::new(w, "counted: naive", c.total, "s (virtual)", Goal::None),
        Measurement::new(
            w,
            "counted: n. 429s",
            c.rate_limited as f64,
            "count",
            Goal::None,
        ),
        Measurement::new(
            w,
            "counted: n. fail",
            c.failed_agents as f64,
            "count",
            Goal::None,
        ),
        Measurement::new(
            w,
            "counted: n. p95w",
            max(&c.p95),
            "s (virtual)",
            Goal::None,
        ),
        Measurement::new(w, "counted: n. jain", c.jain, "index", Goal::None),
        Measurement::new(
            w,
            "counted: speed-up",
            c.total / sc.total,
            "x",
            Goal::AtLeast(2.0),
        ),
        Measurement::new(
            w,
            "limits +10%: total",
            wrong.total,
            "s (virtual)",
            Goal::None,
        ),
        Measurement::new(
            w,
            "limits +10%: 429s",
            wrong.rate_limited as f64,
            "count",
            Goal::None,
        ),
        Measurement::new(
            w,
            "limits +10%: fail",
            wrong.failed_agents as f64,
            "count",
            Goal::None,
        ),
        Measurement::new(w, "limits +10%: jain", wrong.jain, "index", Goal::None),
    ]
}
