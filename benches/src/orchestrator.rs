//! ORCH-SEQ3, ORCH-SEQ3-CKPT, ORCH-SEQ10, ORCH-PAR5, ORCH-HITL, ORCH-DAG100K, ORCH-PARKED10K.

use std::sync::Arc;

use aios::core::{EffectClass, HumanId, RecordingConnector, RoleId, SeededRng};
use aios::governance::{ApprovalResponse, GovernanceModel, Governor};
use aios::orchestrator::{
    CheckpointMode, ConnectorRequest, FnAgent, Orchestrator, OrchestratorConfig, Role, RunStatus,
    TaskSpec, Workflow,
};
use futures::executor::block_on;

use crate::{percentile_us, sample, time, Config, Goal, Measurement};

/// The governance model of the orchestration benches: a `noop` pathway the `counter` role
/// may use, and an `outreach` pathway whose irreversible actions need the owner's approval.
pub const MODEL: &str = r#"{
  "version": 1,
  "charter": { "intent": "benchmarks", "final_authority": "owner" },
  "anchors": [{ "key": "owner", "title": "Owner", "holders": ["ann"], "response_time": "1h" }],
  "roles": [{ "key": "counter" }, { "key": "outreach" }],
  "pathways": [
    { "key": "noop", "anchor": "owner", "delegate": "counter",
      "limits": { "actions": ["model.complete"], "effects": ["read_only"] },
      "escalation": [{ "name": "risky", "when": { "risk_at_least": 90 }, "mode": "halt" }] },
    { "key": "outreach", "anchor": "owner", "delegate": "outreach",
      "limits": { "actions": ["email.send"], "effects": ["irreversible"] },
      "escalation": [{ "name": "approve-irreversible", "when": { "effect_at_least": "irreversible" },
                       "mode": "approve_before" }] }
  ],
  "budgets": [{ "key": "org", "scope": "organisation", "limits": { "cost": 1000000000 } }]
}"#;

/// The compiled bench model.
pub fn governor() -> Governor {
    match GovernanceModel::from_json(MODEL).map(|m| m.compile()) {
        Ok(Ok(g)) => g,
        Ok(Err(report)) => panic_free_exit(&report.to_string()),
        Err(e) => panic_free_exit(&e.to_string()),
    }
}

pub(crate) fn panic_free_exit(msg: &str) -> ! {
    eprintln!("bench set-up is invalid: {msg}");
    std::process::exit(2)
}

/// A no-op agent: returns its input (or the sum of its dependencies' outputs) plus one.
pub fn counter_role() -> Role {
    let agent = FnAgent::new(|_ctx, input| {
        Box::pin(async move {
            let deps: i64 = input.deps.values().filter_map(|v| v.as_i64()).sum();
            Ok(serde_json::json!(
                input.input.as_i64().unwrap_or(0) + deps + 1
            ))
        })
    });
    Role::new("counter", "noop", Arc::new(agent))
}

/// An orchestrator with the no-op role and the given checkpoint mode.
pub fn orchestrator(mode: CheckpointMode, concurrency: usize) -> Orchestrator {
    Orchestrator::builder(governor())
        .role(counter_role())
        .role(outreach_role())
        .connector(Arc::new(RecordingConnector::new(
            "email",
            EffectClass::Irreversible,
        )))
        .config(OrchestratorConfig {
            checkpoints: mode,
            concurrency,
            ..OrchestratorConfig::default()
        })
        .build()
        .unwrap_or_else(|e| panic_free_exit(&e.to_string()))
}

fn outreach_role() -> Role {
    let agent = FnAgent::new(|ctx, _input| {
        Box::pin(async move {
            let out = ctx
                .call(ConnectorRequest::new(
                    "email",
                    "send",
                    serde_json::json!({ "to": "x" }),
                ))
                .await?;
            Ok(out.output)
        })
    });
    Role::new("outreach", "outreach", Arc::new(agent)).connector("email")
}

/// `n` no-op tasks in a chain.
pub fn chain(n: usize) -> Workflow {
    let role = RoleId::from_name("counter");
    (0..n).fold(Workflow::new("chain"), |wf, i| {
        let t = TaskSpec::new(format!("t{i}"), role, serde_json::json!(0));
        wf.task(if i == 0 {
            t
        } else {
            t.after([format!("t{}", i - 1)])
        })
    })
}

/// `n` tasks in parallel, then one that joins them.
pub fn fan_in(n: usize) -> Workflow {
    let role = RoleId::from_name("counter");
    let wf = (0..n).fold(Workflow::new("par"), |wf, i| {
        wf.task(TaskSpec::new(format!("p{i}"), role, serde_json::json!(0)))
    });
    wf.task(
        TaskSpec::new("join", role, serde_json::json!(0)).after((0..n).map(|i| format!("p{i}"))),
    )
}

/// `n` no-op tasks in a seeded random DAG where each task waits for up to two earlier ones.
pub fn random_dag(n: usize, seed: u64) -> Workflow {
    let role = RoleId::from_name("counter");
    let mut rng = SeededRng::new(seed);
    let tasks = (0..n)
        .map(|i| {
            let mut deps: Vec<String> = Vec::new();
            if i > 0 {
                for _ in 0..2.min(i) {
                    let d = format!("t{}", rng.next_u64() as usize % i);
                    if !deps.contains(&d) {
                        deps.push(d);
                    }
                }
            }
            TaskSpec::new(format!("t{i}"), role, serde_json::json!(0)).after(deps)
        })
        .collect();
    Workflow {
        name: "dag".into(),
        tasks,
    }
}

/// One task whose irreversible send needs the owner's approval.
pub fn one_send() -> Workflow {
    Workflow::new("send").task(TaskSpec::new(
        "send",
        RoleId::from_name("outreach"),
        serde_json::Value::Null,
    ))
}

fn run_ok(o: &Orchestrator, wf: Workflow) -> bool {
    matches!(block_on(o.start(wf)), Ok(out) if out.status == RunStatus::Completed)
}

fn latency(
    workload: &str,
    samples: usize,
    target_us: f64,
    mut f: impl FnMut() -> bool,
) -> Vec<Measurement> {
    for _ in 0..samples / 10 {
        f();
    }
    let mut ok = true;
    let sorted = sample(samples, |_| ok &= f());
    let metric = if ok { "median" } else { "median FAILED" };
    vec![
        Measurement::new(
            workload,
            metric,
            percentile_us(&sorted, 50.0),
            "us",
            Goal::AtMost(target_us),
        ),
        Measurement::new(
            workload,
            "p99",
            percentile_us(&sorted, 99.0),
            "us",
            Goal::None,
        ),
    ]
}

/// Resident and peak memory of this process, in MB (Linux; 0 elsewhere).
pub fn memory_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Runs the orchestration workloads.
pub fn run(config: &Config) -> Vec<Measurement> {
    let samples = config.pick(2_000, 20_000);
    let mut out = Vec::new();

    let o = orchestrator(CheckpointMode::OnExit, 8);
    out.extend(latency("ORCH-SEQ3", samples, 10.0, || run_ok(&o, chain(3))));
    let o = orchestrator(CheckpointMode::EveryStep, 8);
    out.extend(latency("ORCH-SEQ3-CKPT", samples, 20.0, || {
        run_ok(&o, chain(3))
    }));
    let o = orchestrator(CheckpointMode::OnExit, 8);
    out.extend(latency("ORCH-SEQ10", samples, 30.0, || {
        run_ok(&o, chain(10))
    }));
    let o = orchestrator(CheckpointMode::OnExit, 8);
    out.extend(latency("ORCH-PAR5", samples, 30.0, || {
        run_ok(&o, fan_in(5))
    }));

    let o = orchestrator(CheckpointMode::EveryStep, 8);
    let ann = HumanId::from_name("ann");
    let send = one_send();
    out.extend(latency("ORCH-HITL", samples, 50.0, || {
        let Ok(parked) = block_on(o.start(send.clone())) else { return false };
        let Some(id) = parked.pending_approvals().first().copied() else { return false };
        matches!(block_on(o.submit_approval(id, ann, ApprovalResponse::Approve)), Ok(done) if done.status == RunStatus::Completed)
    }));

    out.extend(isolated("dag100k", config));
    out.extend(isolated("parked10k", config));
    out
}

/// Runs a memory-sensitive workload in a fresh process (the report binary with
/// `--subprocess <name>`), so earlier workloads do not distort its memory figures; falls back
/// to this process if the binary cannot be started.
pub fn isolated(name: &str, config: &Config) -> Vec<Measurement> {
    let exe = std::env::current_exe();
    let mut cmd = match exe {
        Ok(exe) => std::process::Command::new(exe),
        Err(_) => return subprocess(name, config),
    };
    cmd.arg("--subprocess").arg(name);
    if config.quick {
        cmd.arg("--quick");
    }
    match cmd.output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                Some(Measurement {
                    workload: v["workload"].as_str()?.to_string(),
                    metric: v["metric"].as_str()?.to_string(),
                    value: v["value"].as_f64()?,
                    unit: v["unit"].as_str()?.to_string(),
                    target: v["target"].as_str()?.to_string(),
                    met: v["met"].as_bool(),
                })
            })
            .collect(),
        _ => subprocess(name, config),
    }
}

/// The body of an isolated workload (`dag100k` or `parked10k`).
pub fn subprocess(name: &str, _config: &Config) -> Vec<Measurement> {
    let mut out = Vec::new();
    match name {
        "dag100k" => {
            // 100,000 tasks in a random DAG, concurrency 64
            let wf = random_dag(100_000, 42);
            let o = orchestrator(CheckpointMode::OnExit, 64);
            let (rss_before, _) = memory_mb();
            let (d, ok) = time(|| run_ok(&o, wf));
            let (_, peak) = memory_mb();
            let metric = if ok { "total" } else { "total FAILED" };
            out.push(Measurement::new(
                "ORCH-DAG100K",
                metric,
                d.as_secs_f64() * 1e3,
                "ms",
                Goal::AtMost(1000.0),
            ));
            out.push(Measurement::new(
                "ORCH-DAG100K",
                "peak RSS",
                peak,
                "MB",
                Goal::AtMost(300.0),
            ));
            out.push(Measurement::new(
                "ORCH-DAG100K",
                "RSS at start",
                rss_before,
                "MB",
                Goal::None,
            ));
        }
        "parked10k" => {
            // 10,000 runs parked on approval (checkpointed), then all approved and completed
            let n = 10_000;
            let o = orchestrator(CheckpointMode::EveryStep, 8);
            let ann = HumanId::from_name("ann");
            let send = one_send();
            let (before, _) = memory_mb();
            let mut ids = Vec::with_capacity(n);
            for _ in 0..n {
                if let Ok(p) = block_on(o.start(send.clone())) {
                    ids.extend(p.pending_approvals().first().copied());
                }
            }
            let (after, _) = memory_mb();
            let (d, completed) = time(|| {
                ids.iter()
                    .filter(|id| {
                        matches!(
                            block_on(o.submit_approval(**id, ann, ApprovalResponse::Approve)),
                            Ok(done) if done.status == RunStatus::Completed
                        )
                    })
                    .count()
            });
            let metric = if completed == n {
                "approve all"
            } else {
                "approve FAILED"
            };
            out.push(Measurement::new(
                "ORCH-PARKED10K",
                "memory growth",
                after - before,
                "MB",
                Goal::AtMost(100.0),
            ));
            out.push(Measurement::new(
                "ORCH-PARKED10K",
                metric,
                d.as_secs_f64() * 1e3,
                "ms",
                Goal::AtMost(1000.0),
            ));
        }
        _ => {}
    }
    out
}
