//! The console's router, driven with tower's `oneshot` against a host with a parked run:
//! logins, sessions, CSRF, escaping, headers, and what each form does (and does not do).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use aios_console::{Console, ConsoleConfig, CONTENT_SECURITY_POLICY};
use aios_core::{Clock, ManualClock, RunId, SystemClock};
use aios_governance::{ControlTarget, Controls};
use aios_orchestrator::Orchestrator;
use aios_sqlite::SqliteStore;
use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use axum::Router;
use common::*;
use http_body_util::BodyExt;
use tower::ServiceExt;

struct App {
    router: Router,
    orchestrator: Orchestrator,
    run: RunId,
    decided: tokio::sync::mpsc::UnboundedReceiver<RunId>,
    controls: Arc<Controls>,
    clock: Arc<ManualClock>,
    _dir: Dir,
}

async fn app(name: &str, config: ConsoleConfig) -> App {
    let dir = Dir::new(name);
    let store = SqliteStore::open(dir.store()).unwrap();
    let mail = mail_connector(&plan());
    let orchestrator = host(&store, &mail).await;
    let run = start_proposal(&orchestrator).await;
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let controls = Arc::new(
        Controls::open(
            Arc::new(store.control_store()),
            clock.clone(),
            Arc::new(store.audit_log()),
        )
        .await
        .unwrap(),
    );
    let (tx, decided) = tokio::sync::mpsc::unbounded_channel();
    let p = plan();
    let mut b = Console::builder(orchestrator.clone(), tokens())
        .config(config)
        .clock(clock.clone())
        .controls(controls.clone())
        .memory(store.memory().await.unwrap())
        .budgets(Arc::new(store.budget_ledger(Arc::new(SystemClock))))
        .human("alice")
        .on_decided(Arc::new(move |run| {
            let tx = tx.clone();
            Box::pin(async move {
                let _ = tx.send(run);
            })
        }));
    for (n, id) in &p.ids.pathways {
        b = b.control_target(format!("pathway {n}"), ControlTarget::Pathway(*id));
    }
    App {
        router: b.build().router(),
        orchestrator,
        run,
        decided,
        controls,
        clock,
        _dir: dir,
    }
}

fn config() -> ConsoleConfig {
    ConsoleConfig {
        login_delay: Duration::from_millis(1),
        ..ConsoleConfig::default()
    }
}

async fn send(router: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp: Response<Body> = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn get(path: &str, cookie: Option<&str>) -> Request<Body> {
    let mut r = Request::get(path);
    if let Some(c) = cookie {
        r = r.header(header::COOKIE, c);
    }
    r.body(Body::empty()).unwrap()
}

fn post(path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Request<Body> {
    let body = form
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let mut r =
        Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        r = r.header(header::COOKIE, c);
    }
    r.body(Body::from(body)).unwrap()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of the first `name="csrf"` hidden field.
fn csrf(body: &str) -> String {
    let at = body.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    body[at..at + 64].to_string()
}

fn set_cookies(h: &axum::http::HeaderMap) -> Vec<String> {
    h.get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

fn cookie_pair(set: &str) -> String {
    set.split(';').next().unwrap().to_string()
}

/// Logs in with `token`; the session cookie on success.
async fn login(router: &Router, token: &str) -> (StatusCode, Option<String>, String) {
    let (_, h, body) = send(router, get("/login", None)).await;
    let login_cookie = cookie_pair(&set_cookies(&h)[0]);
    let (status, h, body2) = send(
        router,
        post(
            "/login",
            Some(&login_cookie),
            &[("csrf", &csrf(&body)), ("token", token)],
        ),
    )
    .await;
    let session = set_cookies(&h)
        .into_iter()
        .find(|c| c.starts_with("aios_session=") && !c.starts_with("aios_session=;"))
        .map(|c| cookie_pair(&c));
    (status, session, body2)
}

async fn pending(o: &Orchestrator) -> usize {
    o.pending_approvals().await.unwrap().len()
}

#[tokio::test]
async fn a_right_token_logs_in_with_a_strict_http_only_cookie_and_a_wrong_one_is_refused() {
    let a = app("login", config()).await;
    // pages need a session
    let (status, h, _) = send(&a.router, get("/approvals", None)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(h[header::LOCATION], "/login");

    let (status, session, body) = login(&a.router, "aios_wrong").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(session.is_none());
    assert!(body.contains("not valid"), "{body}");
    assert!(
        !body.contains("aios_wrong"),
        "the token typed is not echoed"
    );
    let (status, session, _) = login(&a.router, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(session.is_none());

    // a forged session id is no session
    let (status, _, _) = send(&a.router, get("/approvals", Some("aios_session=0000"))).await;
    assert_eq!(status, StatusCode::SEE_OTHER);

    // the right token
    let (_, h, body) = send(&a.router, get("/login", None)).await;
    let login_cookie = set_cookies(&h)[0].clone();
    assert!(login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Strict"));
    let (status, h, _) = send(
        &a.router,
        post(
            "/login",
            Some(&cookie_pair(&login_cookie)),
            &[("csrf", &csrf(&body)), ("token", ALICE)],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(h[header::LOCATION], "/approvals");
    let session = set_cookies(&h)
        .into_iter()
        .find(|c| c.starts_with("aios_session="))
        .unwrap();
    assert!(session.contains("HttpOnly"), "{session}");
    assert!(session.contains("SameSite=Strict"), "{session}");
    let id = cookie_pair(&session)["aios_session=".len()..].to_string();
    assert_eq!(id.len(), 64, "32 random bytes");
    assert!(!id.contains("alice") && !session.contains(ALICE));

    // the session shows alice's pages, never her token
    let (status, _, body) = send(&a.router, get("/approvals", Some(&cookie_pair(&session)))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("alice"));
    for page in [
        "/approvals",
        "/runs",
        "/controls",
        "/audit",
        "/memory?q=client",
        &format!("/runs/{}", a.run),
    ] {
        let (status, _, body) = send(&a.router, get(page, Some(&cookie_pair(&session)))).await;
        assert_eq!(status, StatusCode::OK, "{page}: {body}");
        assert!(!body.contains(ALICE), "{page} shows the token");
        assert!(
            !body.contains("s3cret"),
            "{page} shows a connector credential"
        );
    }
}

#[tokio::test]
async fn the_login_form_without_its_csrf_token_is_refused() {
    let a = app("login-csrf", config()).await;
    let (_, h, body) = send(&a.router, get("/login", None)).await;
    let login_cookie = cookie_pair(&set_cookies(&h)[0]);
    // no cookie (another site posting the form), no field, a wrong field
    for (cookie, form) in [
        (
            None,
            vec![("csrf", csrf(&body)), ("token", ALICE.to_string())],
        ),
        (
            Some(login_cookie.clone()),
            vec![("token", ALICE.to_string())],
        ),
        (
            Some(login_cookie.clone()),
            vec![("csrf", "0".repeat(64)), ("token", ALICE.to_string())],
        ),
    ] {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, h, _) = send(&a.router, post("/login", cookie.as_deref(), &form)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(set_cookies(&h)
            .iter()
            .all(|c| !c.starts_with("aios_session")));
    }
}

#[tokio::test]
async fn failed_logins_wait_one_after_another() {
    let a = app(
        "slow",
        ConsoleConfig {
            login_delay: Duration::from_secs(2),
            ..ConsoleConfig::default()
        },
    )
    .await;
    let (_, h, body) = send(&a.router, get("/login", None)).await;
    let cookie = cookie_pair(&set_cookies(&h)[0]);
    let token = csrf(&body);
    // tokio's clock, paused: the delay is measured, not waited for
    tokio::time::pause();
    let start = tokio::time::Instant::now();
    let attempt = |t: &'static str| {
        let (router, cookie, token) = (a.router.clone(), cookie.clone(), token.clone());
        async move {
            send(
                &router,
                post("/login", Some(&cookie), &[("csrf", &token), ("token", t)]),
            )
            .await
            .0
        }
    };
    let (x, y, z) = tokio::join!(attempt("aios_a"), attempt("aios_b"), attempt("aios_c"));
    assert_eq!([x, y, z], [StatusCode::UNAUTHORIZED; 3]);
    assert!(
        start.elapsed() >= Duration::from_secs(6),
        "three guesses in parallel take three delays: {:?}",
        start.elapsed()
    );
    // a right token is not slowed
    let now = tokio::time::Instant::now();
    let (status, _, _) = send(
        &a.router,
        post(
            "/login",
            Some(&cookie),
            &[("csrf", &token), ("token", ALICE)],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(now.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_post_without_or_with_a_wrong_csrf_token_is_refused_and_nothing_is_decided() {
    let a = app("csrf", config()).await;
    let (_, session, _) = login(&a.router, ALICE).await;
    let session = session.unwrap();
    let (_, _, body) = send(&a.router, get("/approvals", Some(&session))).await;
    let token = csrf(&body);
    let id = a.orchestrator.pending_approvals().await.unwrap()[0]
        .id
        .to_string();
    let path = format!("/approvals/{id}");
    let other = {
        let (_, s2, _) = login(&a.router, ALICE).await;
        let (_, _, b2) = send(&a.router, get("/approvals", Some(&s2.unwrap()))).await;
        csrf(&b2)
    };
    assert_ne!(other, token);
    for form in [
        vec![("answer", "approve")],
        vec![("csrf", ""), ("answer", "approve")],
        vec![("csrf", "0000"), ("answer", "approve")],
        // another session's token is not this session's
        vec![("csrf", other.as_str()), ("answer", "approve")],
    ] {
        let (status, _, body) = send(&a.router, post(&path, Some(&session), &form)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{form:?}: {body}");
        assert!(body.contains("CSRF"), "{body}");
    }
    // no session at all, with the right token
    let (status, _, _) = send(
        &a.router,
        post(&path, None, &[("csrf", &token), ("answer", "approve")]),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // controls and logout are guarded the same way
    let (status, _, _) = send(
        &a.router,
        post(
            "/controls",
            Some(&session),
            &[
                ("target", "organisation"),
                ("action", "stop"),
                ("reason", "x"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = send(&a.router, post("/logout", Some(&session), &[])).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    assert_eq!(pending(&a.orchestrator).await, 1, "nothing was decided");
    assert!(a.controls.history().is_empty(), "no control was applied");
    let (status, _, _) = send(&a.router, get("/approvals", Some(&session))).await;
    assert_eq!(status, StatusCode::OK, "the session survived");
}

#[tokio::test]
async fn a_script_in_a_payload_is_shown_as_text() {
    let a = app("xss", config()).await;
    let (_, session, _) = login(&a.router, ALICE).await;
    let session = session.unwrap();
    let (_, h, body) = send(&a.router, get("/approvals", Some(&session))).await;
    assert!(!body.contains("<script"), "{body}");
    assert!(!body.contains("<img"), "{body}");
    assert!(
        body.contains("&lt;script&gt;window.__xss = 1&lt;/script&gt;"),
        "{body}"
    );
    assert!(h[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    // in the run's transcript too, and in a memory search for it
    let (_, _, body) = send(&a.router, get(&format!("/runs/{}", a.run), Some(&session))).await;
    assert!(!body.contains("<script"), "{body}");
    let (_, _, body) = send(
        &a.router,
        get(
            "/memory?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
            Some(&session),
        ),
    )
    .await;
    assert!(!body.contains("<script"), "{body}");
    assert!(body.contains("&lt;script&gt;alert(1)"), "{body}");
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let a = app("headers", config()).await;
    let (_, session, _) = login(&a.router, ALICE).await;
    let session = session.unwrap();
    for (path, cookie) in [
        ("/login", None),
        ("/approvals", Some(session.as_str())),
        ("/approvals", None),
        ("/nope", Some(session.as_str())),
        ("/console.css", None),
    ] {
        let (_, h, _) = send(&a.router, get(path, cookie)).await;
        assert_eq!(
            h[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY,
            "{path}"
        );
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
    }
    assert!(CONTENT_SECURITY_POLICY.contains("script-src 'none'"));
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-inline"));
    let (_, h, _) = send(&a.router, get("/approvals", Some(&session))).await;
    assert_eq!(h[header::CACHE_CONTROL], "no-store");
}

#[tokio::test]
async fn approving_records_the_decision_and_calls_the_hook() {
    let mut a = app("approve", config()).await;
    let (_, session, _) = login(&a.router, ALICE).await;
    let session = session.unwrap();
    let (_, _, body) = send(&a.router, get("/approvals", Some(&session))).await;
    let token = csrf(&body);
    let id = a.orchestrator.pending_approvals().await.unwrap()[0]
        .id
        .to_string();
    assert!(body.contains(&id) && body.contains("mail.send"), "{body}");
    let path = format!("/approvals/{id}");

    // bad answers name what is wrong, and decide nothing
    let (status, _, body) = send(
        &a.router,
        post(
            &path,
            Some(&session),
            &[("csrf", &token), ("answer", "edit"), ("input", "{\"to\": ")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body.contains("not JSON") && body.contains("line 1"),
        "{body}"
    );
    let (status, _, body) = send(
        &a.router,
        post(
            &path,
            Some(&session),
            &[("csrf", &token), ("answer", "reject"), ("reason", "  ")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.contains("reason"), "{body}");
    let (status, _, body) = send(
        &a.router,
        post(
            &path,
            Some(&session),
            &[("csrf", &token), ("answer", "maybe")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.contains("maybe"), "{body}");
    let (status, _, _) = send(
        &a.router,
        post(
            "/approvals/not-an-id",
            Some(&session),
            &[("csrf", &token), ("answer", "approve")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let unknown = aios_core::ApprovalId::from_name("never asked");
    let (status, _, body) = send(
        &a.router,
        post(
            &format!("/approvals/{unknown}"),
            Some(&session),
            &[("csrf", &token), ("answer", "approve")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("no pending approval"), "{body}");
    assert_eq!(pending(&a.orchestrator).await, 1);
    assert!(a.decided.try_recv().is_err());

    let (status, h, _) = send(
        &a.router,
        post(
            &path,
            Some(&session),
            &[("csrf", &token), ("answer", "approve")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        h[header::LOCATION],
        format!("/runs/{}?decided=approve", a.run)
    );
    assert_eq!(pending(&a.orchestrator).await, 0);
    let run = tokio::time::timeout(Duration::from_secs(10), a.decided.recv())
        .await
        .unwrap();
    assert_eq!(run, Some(a.run));
    // answered once: a second answer finds nothing
    let (status, _, body) = send(
        &a.router,
        post(
            &path,
            Some(&session),
            &[("csrf", &token), ("answer", "approve")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // the audit record names alice
    let (_, _, body) = send(
        &a.router,
        get(&format!("/runs/{}?decided=approve", a.run), Some(&session)),
    )
    .await;
    assert!(body.contains("is recorded"), "{body}");
    let (_, _, body) = send(&a.router, get("/approvals", Some(&session))).await;
    assert!(body.contains("Nothing waits"), "{body}");
}

#[tokio::test]
async fn an_edit_changes_the_input_and_a_human_who_holds_no_anchor_is_refused() {
    let a = app("edit", config()).await;
    // mallory has a valid credential but holds no anchor: the governance refuses her
    let mut map = std::collections::HashMap::new();
    map.insert("aios_mallory".to_string(), "mallory".to_string());
    let bob_console = Console::builder(a.orchestrator.clone(), Arc::new(Tokens(map)))
        .config(config())
        .build()
        .router();
    let (_, session, _) = login(&bob_console, "aios_mallory").await;
    let session = session.unwrap();
    let (_, _, body) = send(&bob_console, get("/approvals", Some(&session))).await;
    assert!(body.contains("may not answer"), "{body}");
    let id = a.orchestrator.pending_approvals().await.unwrap()[0]
        .id
        .to_string();
    let (status, _, body) = send(
        &bob_console,
        post(
            &format!("/approvals/{id}"),
            Some(&session),
            &[("csrf", &csrf(&body)), ("answer", "approve")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("mallory may not answer"), "{body}");
    assert_eq!(pending(&a.orchestrator).await, 1);

    let (_, session, _) = login(&a.router, ALICE).await;
    let session = session.unwrap();
    let (_, _, body) = send(&a.router, get("/approvals", Some(&session))).await;
    let (status, _, body) = send(
        &a.router,
        post(
            &format!("/approvals/{id}"),
            Some(&session),
            &[
                ("csrf", &csrf(&body)),
                ("answer", "edit"),
                (
                    "input",
                    r#"{"to": "client@example.com", "body": "Dear client"}"#,
                ),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(pending(&a.orchestrator).await, 0);
}

#[tokio::test]
async fn logout_ends_the_session_and_sessions_expire_by_the_clock() {
    let a = app("logout", config()).await;
    let (_, session, _) = login(&a.router, ALICE).await;
    let session = session.unwrap();
    let (_, _, body) = send(&a.router, get("/runs", Some(&session))).await;
    let (status, h, _) = send(
        &a.router,
        post("/logout", Some(&session), &[("csrf", &csrf(&body))]),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(set_cookies(&h)
        .iter()
        .any(|c| c.starts_with("aios_session=;") && c.contains("Max-Age=0")));
    let (status, _, _) = send(&a.router, get("/runs", Some(&session))).await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "the old cookie is no session"
    );

    let (_, session, _) = login(&a.router, ALICE).await;
    let session = session.unwrap();
    a.clock.advance(Duration::from_secs(8 * 3600 - 1));
    let (status, _, _) = send(&a.router, get("/runs", Some(&session))).await;
    assert_eq!(status, StatusCode::OK);
    a.clock.advance(Duration::from_secs(2));
    let (status, _, _) = send(&a.router, get("/runs", Some(&session))).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "expired after eight hours");
}

#[tokio::test]
async fn runs_are_filtered_by_status_and_paginated() {
    let a = app(
        "runs",
        ConsoleConfig {
            page_size: 2,
            ..config()
        },
    )
    .await;
    let second = start_proposal(&a.orchestrator).await;
    let third = start_proposal(&a.orchestrator).await;
    let (_, session, _) = login(&a.router, ALICE).await;
    let session = session.unwrap();
    let (_, _, page1) = send(&a.router, get("/runs?status=parked", Some(&session))).await;
    assert!(page1.contains("3 runs"), "{page1}");
    // newest first, two a page
    assert!(page1.contains(&third.to_string()) && page1.contains(&second.to_string()));
    assert!(!page1.contains(&format!("/runs/{}", a.run)));
    assert!(
        page1.contains("page 1 of 2") && page1.contains("status=parked&amp;page=2"),
        "{page1}"
    );
    let (_, _, page2) = send(&a.router, get("/runs?status=parked&page=2", Some(&session))).await;
    assert!(
        page2.contains(&format!("/runs/{}", a.run)) && !page2.contains(&format!("/runs/{third}"))
    );
    // past the end: the last page
    let (status, _, page9) = send(&a.router, get("/runs?page=9", Some(&session))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page9.contains("page 2 of 2"));
    let (_, _, none) = send(&a.router, get("/runs?status=completed", Some(&session))).await;
    assert!(none.contains("No runs"), "{none}");
    let (status, _, bad) = send(&a.router, get("/runs?status=%3Cb%3Edone", Some(&session))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(bad.contains("unknown status `&lt;b&gt;done`"), "{bad}");
    let (status, _, _) = send(&a.router, get("/runs?page=x", Some(&session))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = send(&a.router, get("/runs/not-a-run", Some(&session))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, _, run) = send(&a.router, get(&format!("/runs/{}", a.run), Some(&session))).await;
    assert!(run.contains("parked") && run.contains("send"), "{run}");
}

#[tokio::test]
async fn controls_need_a_reason_and_are_recorded_by_the_human() {
    let a = app("controls", config()).await;
    let (_, session, _) = login(&a.router, ALICE).await;
    let session = session.unwrap();
    let (_, _, body) = send(&a.router, get("/controls", Some(&session))).await;
    assert!(body.contains("Nothing is paused"), "{body}");
    assert!(body.contains("pathway "), "{body}");
    let token = csrf(&body);
    let everything = ControlTarget::Organisation.to_string();
    let (status, _, body) = send(
        &a.router,
        post(
            "/controls",
            Some(&session),
            &[
                ("csrf", &token),
                ("target", &everything),
                ("action", "stop"),
                ("reason", ""),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.contains("needs a reason"), "{body}");
    let (status, _, body) = send(
        &a.router,
        post(
            "/controls",
            Some(&session),
            &[
                ("csrf", &token),
                ("target", "nowhere"),
                ("action", "stop"),
                ("reason", "x"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.contains("unknown target `nowhere`"), "{body}");
    assert!(a.controls.history().is_empty());

    let (status, _, _) = send(
        &a.router,
        post(
            "/controls",
            Some(&session),
            &[
                ("csrf", &token),
                ("target", &everything),
                ("action", "pause"),
                ("reason", "incident 42"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        a.controls.snapshot().halt(ControlTarget::Organisation),
        Some(aios_governance::Halt::Paused)
    );
    let (_, _, body) = send(&a.router, get("/controls", Some(&session))).await;
    assert!(
        body.contains("paused") && body.contains("incident 42") && body.contains("alice"),
        "{body}"
    );
    let (status, _, _) = send(
        &a.router,
        post(
            "/controls",
            Some(&session),
            &[
                ("csrf", &token),
                ("target", &everything),
                ("action", "resume"),
                ("reason", "closed"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        a.controls.snapshot().halt(ControlTarget::Organisation),
        None
    );
    let _ = a.clock.now();
}

#[tokio::test]
async fn the_audit_page_shows_the_head_and_verifies_the_chain() {
    let a = app("audit", config()).await;
    let (_, session, _) = login(&a.router, ALICE).await;
    let session = session.unwrap();
    let head = a.orchestrator.audit_log().head().await.unwrap();
    let (_, _, body) = send(&a.router, get("/audit", Some(&session))).await;
    assert!(
        body.contains(&format!("{}:{}", head.len, head.hash)),
        "{body}"
    );
    let (_, _, body) = send(&a.router, get("/audit?verify=1", Some(&session))).await;
    assert!(body.contains("Intact"), "{body}");
}

/// The workspace with a role budget whose key and parent are markup.
const HOSTILE_BUDGET: &str = r#"
[[governance.budgets]]
key = "<script>window.__xss=3</script>"
scope = { role = "outreach" }
period = "day"
limits = { tool_calls = 10 }
alerts = [80]

[[governance.budgets]]
key = "per-run"
scope = "run"
limits = { tool_calls = 20, spend = "5.00" }
"#;

#[tokio::test]
async fn the_budgets_page_shows_each_budget_with_its_burn_and_hostile_names_as_text() {
    let dir = Dir::new("budgets");
    let store = SqliteStore::open(dir.store()).unwrap();
    let toml = aios_workspace::SOLO_CONSULTANCY_TOML.replacen(
        "[[implementation.phases]]",
        &format!("{HOSTILE_BUDGET}\n[[implementation.phases]]"),
        1,
    );
    let plan = plan_of(&toml);
    let mail = mail_connector(&plan);
    let orchestrator = host_with(&store, &mail, &plan).await;
    // one run parks on the mail, is approved and sends it; another stays parked
    let first = start_proposal(&orchestrator).await;
    start_proposal(&orchestrator).await;
    let request = orchestrator.inbox().await.unwrap()[0].id;
    let done = orchestrator
        .submit_approval(
            request,
            aios_core::HumanId::from_name("alice"),
            aios_governance::ApprovalResponse::Approve,
        )
        .await
        .unwrap();
    assert_eq!(done.run, first);
    assert_eq!(done.status, aios_orchestrator::RunStatus::Completed);
    let ledger: Arc<dyn aios_governance::BudgetLedger> =
        Arc::new(store.budget_ledger(Arc::new(SystemClock)));
    let clock = Arc::new(ManualClock::new(
        chrono::DateTime::parse_from_rfc3339("2026-12-16T12:00:00Z")
            .unwrap()
            .to_utc(),
    ));
    let router = Console::builder(orchestrator.clone(), tokens())
        .config(config())
        .clock(clock.clone())
        .budgets(ledger.clone())
        .build()
        .router();
    let (_, session, _) = login(&router, ALICE).await;
    let session = session.unwrap();
    let (status, _, body) = send(&router, get("/budgets", Some(&session))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // the hostile key is text, never markup
    assert!(!body.contains("<script>"), "{body}");
    assert!(
        body.contains("&lt;script&gt;window.__xss=3&lt;/script&gt;"),
        "{body}"
    );
    // the organisation's monthly budget: limits from the ledger, the month's window
    assert!(
        body.contains("company") && body.contains("monthly"),
        "{body}"
    );
    assert!(
        body.contains("2026-12-01 00:00:00 UTC") && body.contains("2027-01-01 00:00:00 UTC"),
        "{body}"
    );
    assert!(
        body.contains("50% of the period gone"),
        "the 16th at noon of 31 days: {body}"
    );
    assert!(
        body.contains("of 50.00") && body.contains("of 8000.00"),
        "{body}"
    );
    // the role budget: the tool calls its agent made, as the ledger counts them
    let role = aios_governance::BudgetKey::Role(aios_core::RoleId::from_name("outreach"));
    let used = ledger
        .usage(role)
        .await
        .unwrap()
        .unwrap()
        .committed
        .tool_calls;
    assert_eq!(used, 1, "the mail sent");
    assert!(body.contains("1 used + 0 reserved of 10 (10%)"), "{body}");
    assert!(
        body.contains("daily") && body.contains("2026-12-16 00:00:00 UTC"),
        "{body}"
    );
    // the per-run limits, without usage
    assert!(
        body.contains("Limit per run") && body.contains("5.00"),
        "{body}"
    );
    assert_eq!(
        body.matches("<svg").count(),
        2,
        "one burn chart per budget in force: {body}"
    );

    // a run's page shows the budget the run got and what it used
    let (_, _, page) = send(&router, get(&format!("/runs/{first}"), Some(&session))).await;
    assert!(page.contains("Budget of this run"), "{page}");
    assert!(
        page.contains("1 used + 0 reserved of 20 (5%)"),
        "the mail, of 20 tool calls: {page}"
    );
    assert!(
        page.contains("0.00 used + 0.00 reserved of 5.00 (0%)"),
        "{page}"
    );

    // without a ledger the page says so; without a session it asks for one
    let bare = Console::builder(orchestrator, tokens())
        .config(config())
        .build()
        .router();
    let (_, session2, _) = login(&bare, ALICE).await;
    let (status, _, body) = send(&bare, get("/budgets", session2.as_deref())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("without the budget ledger"), "{body}");
    let (status, h, _) = send(&router, get("/budgets", None)).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(h[header::LOCATION], "/login");
}

#[tokio::test]
async fn a_run_is_paused_resumed_and_stopped_from_its_page_with_a_reason_and_csrf() {
    let mut a = app("run-controls", config()).await;
    let (_, session, _) = login(&a.router, ALICE).await;
    let session = session.unwrap();
    let page = format!("/runs/{}", a.run);
    let path = format!("/runs/{}/control", a.run);
    let (_, _, body) = send(&a.router, get(&page, Some(&session))).await;
    assert!(
        body.contains("Control this run") && body.contains(&path),
        "{body}"
    );
    assert!(
        body.contains("value=\"pause\"") && !body.contains("value=\"resume\""),
        "{body}"
    );
    let token = csrf(&body);
    let status_of =
        |o: Orchestrator, run: RunId| async move { o.state(run).await.unwrap().unwrap().status };

    // no CSRF token, a wrong one, no session: refused, nothing applied
    for (cookie, form) in [
        (
            Some(session.as_str()),
            vec![("action", "pause"), ("reason", "x")],
        ),
        (
            Some(session.as_str()),
            vec![
                ("csrf", "0".repeat(64).as_str()),
                ("action", "pause"),
                ("reason", "x"),
            ],
        ),
        (
            None,
            vec![
                ("csrf", token.as_str()),
                ("action", "pause"),
                ("reason", "x"),
            ],
        ),
    ] {
        let (status, _, _) = send(&a.router, post(&path, cookie, &form)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    // bad input names what is wrong (escaped)
    let (status, _, body) = send(
        &a.router,
        post(
            &path,
            Some(&session),
            &[("csrf", &token), ("action", "<b>halt"), ("reason", "x")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.contains("unknown action `&lt;b&gt;halt`"), "{body}");
    let (status, _, body) = send(
        &a.router,
        post(
            &path,
            Some(&session),
            &[("csrf", &token), ("action", "pause"), ("reason", " ")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.contains("needs a reason"), "{body}");
    let (status, _, _) = send(
        &a.router,
        post(
            "/runs/nope/control",
            Some(&session),
            &[("csrf", &token), ("action", "pause"), ("reason", "x")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let other = RunId::from_name("never started");
    let (status, _, body) = send(
        &a.router,
        post(
            &format!("/runs/{other}/control"),
            Some(&session),
            &[("csrf", &token), ("action", "pause"), ("reason", "x")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        matches!(
            status_of(a.orchestrator.clone(), a.run).await,
            aios_orchestrator::RunStatus::Parked { .. }
        ),
        "nothing applied yet"
    );

    // pause: the run is paused, durably, by alice with her reason
    let (status, h, _) = send(
        &a.router,
        post(
            &path,
            Some(&session),
            &[
                ("csrf", &token),
                ("action", "pause"),
                ("reason", "<i>check the client</i>"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(h[header::LOCATION], format!("{page}?controlled=pause"));
    assert_eq!(
        status_of(a.orchestrator.clone(), a.run).await,
        aios_orchestrator::RunStatus::Paused
    );
    let entries = aios_core::AuditLogExt::entries(a.orchestrator.audit_log().as_ref())
        .await
        .unwrap();
    assert!(entries.iter().any(|e| matches!(&e.event,
        aios_core::AuditEvent::ControlApplied { target, reason, .. }
            if target == &format!("run:{}", a.run) && reason == "<i>check the client</i>")
        && e.actor == aios_core::Principal::Human(aios_core::HumanId::from_name("alice"))));
    let (_, _, body) = send(
        &a.router,
        get(&format!("{page}?controlled=pause"), Some(&session)),
    )
    .await;
    assert!(body.contains("Applied: pause"), "{body}");
    assert!(
        body.contains("value=\"resume\"") && !body.contains("value=\"pause\""),
        "{body}"
    );
    assert!(!body.contains("<i>check"), "{body}");

    // resume lifts it and tells the host, which drives the run on
    assert!(a.decided.try_recv().is_err());
    let (status, _, _) = send(
        &a.router,
        post(
            &path,
            Some(&session),
            &[
                ("csrf", &token),
                ("action", "resume"),
                ("reason", "checked"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let told = tokio::time::timeout(Duration::from_secs(10), a.decided.recv())
        .await
        .unwrap();
    assert_eq!(told, Some(a.run));
    let fresh = Controls::open(
        Arc::new(SqliteStore::open(a._dir.store()).unwrap().control_store()),
        a.clock.clone(),
        a.orchestrator.audit_log().clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        fresh.snapshot().halt(ControlTarget::Run(a.run)),
        None,
        "lifted in the store"
    );

    // stop: cancelled for good; then there is nothing left to control
    let (status, _, _) = send(
        &a.router,
        post(
            &path,
            Some(&session),
            &[
                ("csrf", &token),
                ("action", "stop"),
                ("reason", "client left"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        status_of(a.orchestrator.clone(), a.run).await,
        aios_orchestrator::RunStatus::Cancelled
    );
    let (_, _, body) = send(&a.router, get(&page, Some(&session))).await;
    assert!(!body.contains("Control this run"), "{body}");
    let (status, _, body) = send(
        &a.router,
        post(
            &path,
            Some(&session),
            &[("csrf", &token), ("action", "pause"), ("reason", "again")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body.contains("has ended"), "{body}");
}

#[tokio::test]
async fn the_report_page_draws_the_figures_over_time() {
    let dir = Dir::new("report");
    let store = SqliteStore::open(dir.store()).unwrap();
    let mail = mail_connector(&plan());
    let orchestrator = host(&store, &mail).await;
    let run = start_proposal(&orchestrator).await;
    let request = orchestrator.inbox().await.unwrap()[0].id;
    orchestrator
        .submit_approval(
            request,
            aios_core::HumanId::from_name("alice"),
            aios_governance::ApprovalResponse::Approve,
        )
        .await
        .unwrap();
    assert_eq!(
        orchestrator.state(run).await.unwrap().unwrap().status,
        aios_orchestrator::RunStatus::Completed
    );
    let log = orchestrator.audit_log().clone();
    let router = Console::builder(orchestrator, tokens())
        .config(config())
        .report(Arc::new(move || {
            let log = log.clone();
            Box::pin(async move {
                let builder = aios_workspace::ReportBuilder::new(
                    aios_workspace::Window::all(),
                    aios_workspace::Targets::default(),
                    None,
                    aios_workspace::Names::default(),
                );
                aios_workspace::report_from_log(log.as_ref(), builder)
                    .await
                    .map_err(|e| e.to_string())
            })
        }))
        .build()
        .router();
    let (_, session, _) = login(&router, ALICE).await;
    let (status, _, body) = send(&router, get("/report", session.as_deref())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for title in [
        "autonomy rate per day",
        "approval latency per day",
        "cost per completed run per day",
    ] {
        assert!(
            body.contains(&format!("<title>{title}</title>")),
            "{title}: {body}"
        );
    }
    // today's point: the run's actions, its approval answered, the run completed
    let entries = aios_core::AuditLogExt::entries(&store.audit_log())
        .await
        .unwrap();
    let today = entries[0].at.format("%d %b").to_string();
    assert!(body.contains(&today), "{body}");
    assert!(
        body.contains("median") && body.contains("95th percentile"),
        "{body}"
    );
    assert!(
        body.matches("<circle").count() >= 4,
        "a point per line: {body}"
    );
}

#[tokio::test]
async fn the_inbox_is_paginated_oldest_first() {
    let a = app(
        "inbox-pages",
        ConsoleConfig {
            page_size: 2,
            ..config()
        },
    )
    .await;
    for _ in 0..3 {
        start_proposal(&a.orchestrator).await;
    }
    let all = a.orchestrator.inbox().await.unwrap();
    assert_eq!(all.len(), 4);
    let (_, session, _) = login(&a.router, ALICE).await;
    let session = session.unwrap();
    let shown = |body: &str| {
        all.iter()
            .filter(|p| body.contains(&format!("approval-{}", p.id)))
            .map(|p| p.id)
            .collect::<Vec<_>>()
    };
    let (_, _, page1) = send(&a.router, get("/approvals", Some(&session))).await;
    assert!(page1.contains("4 pending, oldest first"), "{page1}");
    assert_eq!(shown(&page1), vec![all[0].id, all[1].id]);
    assert!(
        page1.contains("page 1 of 2") && page1.contains("newer ›"),
        "{page1}"
    );
    let (_, _, page2) = send(&a.router, get("/approvals?page=2", Some(&session))).await;
    assert_eq!(shown(&page2), vec![all[2].id, all[3].id]);
    assert!(page2.contains("send"), "the task by name: {page2}");
    // past the end, and page 0: the nearest page
    let (status, _, page9) = send(&a.router, get("/approvals?page=9", Some(&session))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown(&page9), vec![all[2].id, all[3].id]);
    assert!(page9.contains("page 2 of 2"), "{page9}");
    let (_, _, page0) = send(&a.router, get("/approvals?page=0", Some(&session))).await;
    assert_eq!(shown(&page0), vec![all[0].id, all[1].id]);
    let (status, _, _) = send(&a.router, get("/approvals?page=-1", Some(&session))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
