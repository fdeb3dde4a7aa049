//! CONSOLE-INBOX: the web console's inbox page with 1,000 pending approvals, rendered
//! through the router as a logged-in human's browser asks for it (reading the pending
//! requests and their runs from a SQLite store, rendering the first page of 50, escaping
//! every value), the first page and the last (page 20). CONSOLE-RUNS: the runs page with
//! 10,000 runs (1,000 with `--quick`), the first page of 50 newest first, and one run's page
//! (its transcript reads the whole audit log).
//!
//! The host is the `solo_consultancy` workspace with an outreach agent whose mail needs
//! approval, as in the console's tests; every run of the proposal workflow parks on it.

use std::sync::Arc;
use std::time::Instant;

use aios::core::{
    Connector, CredentialHandle, CredentialVault, EffectClass, InMemoryVault, OperationSpec,
    RecordingConnector, Secret,
};
use aios::orchestrator::{Agent, ConnectorRequest, FnAgent, Orchestrator};
use aios_console::{Authenticator, Console, ConsoleConfig};
use aios_sqlite::SqliteStore;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::{percentile_us, Config, Goal, Measurement};

const TOKEN: &str = "aios_bench_token";

struct One;

impl Authenticator for One {
    fn authenticate(&self, token: &str) -> Result<Option<String>, String> {
        Ok((token == TOKEN).then(|| "alice".to_string()))
    }
}

fn agent_for(role: &str) -> Arc<dyn Agent> {
    if role == "outreach" {
        Arc::new(FnAgent::new(|ctx, _input| {
            Box::pin(async move {
                let out = ctx
                    .call(ConnectorRequest::new(
                        "mail",
                        "send",
                        serde_json::json!({ "to": "client@example.com", "body": "<b>Dear</b> client" }),
                    ))
                    .await?;
                Ok(out.output)
            })
        }))
    } else {
        Arc::new(FnAgent::new(|_, _| {
            Box::pin(async { Ok(serde_json::json!({ "text": "done" })) })
        }))
    }
}

fn plan() -> Option<aios_workspace::Plan> {
    let loaded = aios_workspace::parse("aios.toml", aios_workspace::SOLO_CONSULTANCY_TOML).ok()?;
    aios_workspace::plan(&loaded, &aios_workspace::ValidateOptions::default()).ok()
}

async fn host(store: &SqliteStore, plan: &aios_workspace::Plan) -> Option<Orchestrator> {
    let mut b = store.orchestrator(plan.governor().ok()?).await.ok()?;
    let vault = InMemoryVault::new();
    for c in &plan.connectors {
        let mut k = RecordingConnector::new(c.key.clone(), EffectClass::Irreversible);
        for (op, effect) in &c.operations {
            k = k.with_operation(OperationSpec::new(op.clone(), *effect));
        }
        let connector: Arc<dyn Connector> = Arc::new(k);
        b = b.connector(connector);
        if let Some(name) = c.credentials.first() {
            vault
                .put(CredentialHandle::new(name.clone()), Secret::new("s3cret"))
                .await
                .ok()?;
            b = b.credential(&c.key, CredentialHandle::new(name.clone()));
        }
    }
    for role in plan.roles(&mut |r| agent_for(&r.key)) {
        b = b.role(role);
    }
    b.vault(Arc::new(vault)).build().ok()
}

/// Logs in through the router; the session cookie.
async fn login(router: &axum::Router) -> Option<String> {
    let resp = router
        .clone()
        .oneshot(Request::get("/login").body(Body::empty()).ok()?)
        .await
        .ok()?;
    let cookie = resp.headers().get(header::SET_COOKIE)?.to_str().ok()?;
    let cookie = cookie.split(';').next()?.to_string();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    let body = String::from_utf8_lossy(&body);
    let at = body.find("name=\"csrf\" value=\"")? + 19;
    let csrf = body.get(at..at + 64)?;
    let resp = router
        .clone()
        .oneshot(
            Request::post("/login")
                .header(header::COOKIE, cookie)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("csrf={csrf}&token={TOKEN}")))
                .ok()?,
        )
        .await
        .ok()?;
    resp.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("aios_session="))
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
}

async fn get(router: &axum::Router, path: &str, session: &str) -> Option<(StatusCode, usize)> {
    let resp = router
        .clone()
        .oneshot(
            Request::get(path)
                .header(header::COOKIE, session)
                .body(Body::empty())
                .ok()?,
        )
        .await
        .ok()?;
    let status = resp.status();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, body.len()))
}

/// The workloads.
pub fn run(config: &Config) -> Vec<Measurement> {
    match measure(config) {
        Some(ms) => ms,
        None => {
            eprintln!("CONSOLE: the set-up failed");
            vec![Measurement::new(
                "CONSOLE-INBOX",
                "set-up failed",
                0.0,
                "",
                Goal::None,
            )]
        }
    }
}

fn measure(config: &Config) -> Option<Vec<Measurement>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        let plan = plan()?;
        let dir = std::env::temp_dir().join(format!("aios-bench-console-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).ok()?;
        let store = SqliteStore::open(dir.join("aios.sqlite")).ok()?;
        let o = host(&store, &plan).await?;
        let workflow = plan.workflows.get("proposal")?.clone();
        let pending = 1_000;
        let total_runs = config.pick(1_000, 10_000);
        let started = Instant::now();
        for _ in 0..total_runs {
            o.start(workflow.clone()).await.ok()?;
        }
        let setup = started.elapsed();
        // keep 1,000 pending: answer the rest (their runs stay parked until resumed, which
        // is what the runs page lists either way)
        let requests = o.pending_approvals().await.ok()?;
        for r in requests.iter().skip(pending) {
            o.answer_approval(
                r.id,
                aios::core::HumanId::from_name("alice"),
                aios::governance::ApprovalResponse::Reject {
                    reason: "bench".into(),
                },
            )
            .await
            .ok()?;
        }
        let router = Console::builder(o.clone(), Arc::new(One))
            .config(ConsoleConfig::default())
            .build()
            .router();
        let session = login(&router).await?;
        let (status, bytes) = get(&router, "/approvals", &session).await?;
        if status != StatusCode::OK || o.pending_approvals().await.ok()?.len() != pending {
            return None;
        }
        let samples = config.pick(20, 50);
        let mut inbox = Vec::with_capacity(samples);
        for _ in 0..samples {
            let t = Instant::now();
            get(&router, "/approvals", &session).await?;
            inbox.push(t.elapsed());
        }
        inbox.sort();
        // a page deep in the inbox costs the same: only its runs are read
        let mut deep = Vec::with_capacity(samples);
        for _ in 0..samples {
            let t = Instant::now();
            get(&router, "/approvals?page=20", &session).await?;
            deep.push(t.elapsed());
        }
        deep.sort();
        // where the time goes: listing the pending requests, then a page of them with the
        // task names (one run state read per row), then rendering
        let mut listing = Vec::with_capacity(samples);
        let mut paging = Vec::with_capacity(samples);
        for _ in 0..samples {
            let t = Instant::now();
            o.pending_approvals().await.ok()?;
            listing.push(t.elapsed());
            let t = Instant::now();
            o.inbox_page(0, 50).await.ok()?;
            paging.push(t.elapsed());
        }
        listing.sort();
        paging.sort();
        let mut runs = Vec::with_capacity(samples);
        for _ in 0..samples {
            let t = Instant::now();
            get(&router, "/runs?status=parked", &session).await?;
            runs.push(t.elapsed());
        }
        runs.sort();
        let (_, run_bytes) = get(&router, "/runs", &session).await?;
        // one run's page: its state and its transcript, which reads the whole audit log
        let one = o.pending_approvals().await.ok()?.first()?.run?;
        let mut run_page = Vec::with_capacity(5);
        for _ in 0..config.pick(3, 5) {
            let t = Instant::now();
            get(&router, &format!("/runs/{one}"), &session).await?;
            run_page.push(t.elapsed());
        }
        run_page.sort();
        let entries = o.audit_log().head().await.ok()?.len;
        let _ = std::fs::remove_dir_all(&dir);
        Some(vec![
            Measurement::new(
                "CONSOLE-INBOX",
                "median (1,000 pending)",
                percentile_us(&inbox, 50.0) / 1000.0,
                "ms",
                Goal::AtMost(50.0),
            ),
            Measurement::new(
                "CONSOLE-INBOX",
                "p95",
                percentile_us(&inbox, 95.0) / 1000.0,
                "ms",
                Goal::None,
            ),
            Measurement::new(
                "CONSOLE-INBOX",
                "median, page 20 of 20",
                percentile_us(&deep, 50.0) / 1000.0,
                "ms",
                Goal::AtMost(50.0),
            ),
            Measurement::new(
                "CONSOLE-INBOX",
                "of which: listing 1,000 pending requests",
                percentile_us(&listing, 50.0) / 1000.0,
                "ms",
                Goal::None,
            ),
            Measurement::new(
                "CONSOLE-INBOX",
                "of which: inbox_page(0, 50)",
                percentile_us(&paging, 50.0) / 1000.0,
                "ms",
                Goal::None,
            ),
            Measurement::new(
                "CONSOLE-INBOX",
                "page size",
                bytes as f64 / 1024.0,
                "KiB",
                Goal::None,
            ),
            Measurement::new(
                "CONSOLE-RUNS",
                &format!("median ({total_runs} runs)"),
                percentile_us(&runs, 50.0) / 1000.0,
                "ms",
                Goal::AtMost(50.0),
            ),
            Measurement::new(
                "CONSOLE-RUNS",
                "page size",
                run_bytes as f64 / 1024.0,
                "KiB",
                Goal::None,
            ),
            Measurement::new(
                "CONSOLE-RUNS",
                &format!("one run's page, median ({entries} audit entries)"),
                percentile_us(&run_page, 50.0) / 1000.0,
                "ms",
                Goal::None,
            ),
            Measurement::new(
                "CONSOLE-RUNS",
                "set-up (runs started)",
                setup.as_secs_f64(),
                "s",
                Goal::None,
            ),
        ])
    })
}
