//! The console in headless Chromium (Debian's `chromium` and `chromium-driver`), driven over
//! WebDriver with fantoccini: log in, see the parked run's approval, approve it, see the run
//! finish and its transcript; a wrong credential refused; a form without its CSRF token
//! refused; a script in a payload not executed. Screenshots of the main pages are saved
//! under `target/console-screenshots/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aios_console::{Console, ConsoleConfig};
use aios_core::AuditLog;
use aios_governance::{ControlTarget, Controls};
use aios_sqlite::SqliteStore;
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};

/// chromedriver, ended when the test ends.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn chromedriver() -> Driver {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start chromedriver ({e}): install Debian's `chromium` and \
                 `chromium-driver` (`.ci/run` does)"
            )
        });
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    // ready when it accepts connections
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    driver
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": std::env::var("AIOS_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1100", "--lang=en-GB"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .unwrap()
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// The page's text once it contains `needle` (a click's navigation may still be under way),
/// or whatever it is after 15 s.
async fn text_with(c: &Client, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = match c.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if text.contains(needle) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn log_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/login")).await.unwrap();
    let field = c.find(Locator::Id("token")).await.unwrap();
    field.send_keys(token).await.unwrap();
    c.find(Locator::Css("form.login button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_approves_a_parked_run_in_chromium_and_sees_it_finish() {
    let driver = chromedriver();

    // the host: the parked run, its worker resuming runs as soon as they are decided
    let dir = Dir::new("browser");
    let store = SqliteStore::open(dir.store()).unwrap();
    let mail = mail_connector(&plan());
    let orchestrator = host(&store, &mail).await;
    let run = start_proposal(&orchestrator).await;
    let controls = Arc::new(
        Controls::open(
            Arc::new(store.control_store()),
            orchestrator.clock().clone(),
            Arc::new(store.audit_log()),
        )
        .await
        .unwrap(),
    );
    let p = plan();
    let worker = orchestrator.clone();
    let log: Arc<dyn AuditLog> = Arc::new(store.audit_log());
    let names = aios_workspace::Names::from_ids(&p.ids);
    let mut b = Console::builder(orchestrator.clone(), tokens())
        .config(ConsoleConfig {
            login_delay: Duration::from_millis(200),
            ..ConsoleConfig::default()
        })
        .controls(controls.clone())
        .budgets(Arc::new(store.budget_ledger(orchestrator.clock().clone())))
        .memory(store.memory().await.unwrap())
        .human("alice")
        .report(Arc::new(move || {
            let (log, names) = (log.clone(), names.clone());
            Box::pin(async move {
                let builder = aios_workspace::ReportBuilder::new(
                    aios_workspace::Window::all(),
                    aios_workspace::Targets::default(),
                    Some(aios_core::Money::from_minor(5_000)),
                    names,
                );
                aios_workspace::report_from_log(log.as_ref(), builder)
                    .await
                    .map_err(|e| e.to_string())
            })
        }))
        .on_decided(Arc::new(move |run| {
            let worker = worker.clone();
            Box::pin(async move {
                let _ = worker.resume(run).await;
            })
        }));
    for (n, id) in &p.ids.pathways {
        b = b.control_target(format!("pathway {n}"), ControlTarget::Pathway(*id));
    }
    // the host spent on the company budget: 18.00 committed, 6.00 held by a call in flight
    let ledger = store.budget_ledger(orchestrator.clock().clone());
    let chain = aios_governance::BudgetChain::organisation();
    let spend = |minor| aios_governance::Usage::cost(aios_core::Money::from_minor(minor));
    let none = aios_governance::ReserveOptions::default();
    use aios_governance::{BudgetLedger, BudgetLedgerExt};
    ledger
        .apply_plan(&orchestrator.governor().budget_plan())
        .await
        .unwrap();
    let r = ledger.reserve(&chain, spend(2_000), &none).await.unwrap();
    ledger.commit(r.id, spend(1_800)).await.unwrap();
    ledger.reserve(&chain, spend(600), &none).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = b.build().router();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let c = browser(&driver).await;

    // a wrong credential is refused: still the login page, no session
    c.goto(&format!("{base}/login")).await.unwrap();
    shot(&c, "01-login").await;
    log_in(&c, &base, "aios_not_a_token").await;
    let text = text_with(&c, "not valid").await;
    assert!(text.contains("not valid"), "{text}");
    assert!(c.current_url().await.unwrap().path().ends_with("/login"));
    let cookies = c.get_all_cookies().await.unwrap();
    assert!(
        cookies.iter().all(|k| k.name() != "aios_session"),
        "{cookies:?}"
    );
    shot(&c, "02-login-refused").await;

    // alice logs in and sees the parked run's approval, the script shown as text, not run
    log_in(&c, &base, ALICE).await;
    let text = text_with(&c, "1 pending").await;
    assert_eq!(c.current_url().await.unwrap().path(), "/approvals");
    assert!(
        text.contains("mail.send") && text.contains("1 pending"),
        "{text}"
    );
    assert!(text.contains("<script>window.__xss = 1</script>"), "{text}");
    let xss = c
        .execute("return typeof window.__xss", vec![])
        .await
        .unwrap();
    assert_eq!(xss, serde_json::json!("undefined"));
    let session = c
        .get_all_cookies()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.name() == "aios_session")
        .expect("a session cookie");
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(format!("{:?}", session.same_site()), "Some(Strict)");
    // page script cannot read the HttpOnly cookie
    let seen = c.execute("return document.cookie", vec![]).await.unwrap();
    assert!(
        !seen.as_str().unwrap_or("").contains("aios_session"),
        "{seen}"
    );
    shot(&c, "03-approvals").await;

    // a form stripped of its CSRF token is refused and changes nothing
    c.goto(&format!("{base}/controls")).await.unwrap();
    shot(&c, "04-controls").await;
    c.find(Locator::Css("form.control input[name=reason]"))
        .await
        .unwrap()
        .send_keys("no token")
        .await
        .unwrap();
    c.execute(
        "document.querySelector('form.control input[name=csrf]').remove()",
        vec![],
    )
    .await
    .unwrap();
    c.find(Locator::Css("form.control button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let text = text_with(&c, "CSRF").await;
    assert!(text.contains("CSRF"), "{text}");
    assert!(controls.history().is_empty());

    // approve: the run finishes (the host's worker resumes it) and its transcript shows
    c.goto(&format!("{base}/approvals")).await.unwrap();
    c.find(Locator::Css("button.approve"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    text_with(&c, "is recorded").await;
    assert_eq!(
        c.current_url().await.unwrap().path(),
        format!("/runs/{run}")
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = c
            .find(Locator::Id("run-status"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if status == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.refresh().await.unwrap();
    }
    assert_eq!(mail.effects().len(), 1, "the mail went out once");
    let transcript = c
        .find(Locator::Id("transcript"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(transcript.contains("mail.send"), "{transcript}");
    assert!(
        transcript.contains("alice") || transcript.contains("approv"),
        "{transcript}"
    );
    let xss = c
        .execute("return typeof window.__xss", vec![])
        .await
        .unwrap();
    assert_eq!(xss, serde_json::json!("undefined"));
    shot(&c, "05-run").await;

    // another run parks; alice pauses it from its page, with a reason
    let second = start_proposal(&orchestrator).await;
    c.goto(&format!("{base}/runs/{second}")).await.unwrap();
    assert!(text_with(&c, "Control this run")
        .await
        .contains("Control this run"));
    c.find(Locator::Css(
        "form.control select[name=action] option[value=pause]",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    c.find(Locator::Css("form.control input[name=reason]"))
        .await
        .unwrap()
        .send_keys("<b>waiting for the client's call</b>")
        .await
        .unwrap();
    c.find(Locator::Css("form.control button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let text = text_with(&c, "Applied: pause").await;
    assert!(text.contains("Applied: pause"), "{text}");
    let status = c
        .find(Locator::Id("run-status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(status, "paused");
    assert_eq!(
        orchestrator.state(second).await.unwrap().unwrap().status,
        aios_orchestrator::RunStatus::Paused
    );
    shot(&c, "10-run-paused").await;

    c.goto(&format!("{base}/runs")).await.unwrap();
    assert!(text_with(&c, "completed").await.contains("completed"));
    shot(&c, "06-runs").await;
    c.goto(&format!("{base}/audit?verify=1")).await.unwrap();
    assert!(text_with(&c, "Intact").await.contains("Intact"));
    shot(&c, "07-audit").await;
    // long pages are shot whole in a taller window
    c.set_window_size(1280, 2900).await.unwrap();
    c.goto(&format!("{base}/report")).await.unwrap();
    let charts = c.find_all(Locator::Css("svg.chart")).await.unwrap();
    assert_eq!(charts.len(), 7, "4 charts of the totals, 3 over time");
    let lines = c
        .find_all(Locator::Css("svg.chart.line polyline"))
        .await
        .unwrap();
    assert!(
        lines.len() >= 3,
        "today's points joined or alone: {}",
        lines.len()
    );
    shot(&c, "08-report").await;
    c.goto(&format!("{base}/budgets")).await.unwrap();
    let text = text_with(&c, "company").await;
    assert!(text.contains("monthly"), "{text}");
    assert!(
        text.contains("18.00 used + 6.00 reserved of 50.00 (48%)"),
        "{text}"
    );
    let burn = c.find_all(Locator::Css("svg.chart.burn")).await.unwrap();
    assert_eq!(burn.len(), 1, "the company budget");
    shot(&c, "11-budgets").await;
    c.set_window_size(1280, 1100).await.unwrap();
    c.goto(&format!("{base}/memory?q=client")).await.unwrap();
    shot(&c, "09-memory").await;
    // log out: the session is gone
    c.goto(&format!("{base}/runs")).await.unwrap();
    c.find(Locator::Css("form.logout button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    text_with(&c, "Your token").await;
    c.goto(&format!("{base}/runs")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().ends_with("/login"));

    c.close().await.unwrap();
    server.abort();
}
