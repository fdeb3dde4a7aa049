//! The pages and the forms' handlers.

use std::sync::Arc;

use aios_core::{ApprovalId, HumanId, Money, Principal, RunId};
use aios_governance::{
    ApprovalError, ApprovalResponse, ControlAction, ControlCommand, ResponseKind,
};
use aios_memory::{RecallMode, RecallQuery};
use aios_orchestrator::{PendingApproval, RunControl, RunStatus};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use crate::charts::{bar_chart, gauge, line_chart, Bar, Series};
use crate::security::{self, cookie, same_secret, set_cookie, Session, LOGIN_COOKIE};
use crate::{Console, SESSION_COOKIE};

pub(crate) type S = State<Arc<Console>>;

const CSS: &str = include_str!("console.css");

impl Console {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.base_path)
    }

    fn session(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let s = self.sessions.get(&id, self.clock.now())?;
        Some((id, s))
    }

    /// The session of a page view, or a redirect to the login page.
    #[allow(clippy::result_large_err)]
    pub(crate) fn viewer(&self, headers: &HeaderMap) -> Result<Session, Response> {
        self.session(headers)
            .map(|(_, s)| s)
            .ok_or_else(|| redirect(&self.url("/login")))
    }

    /// The session of a POST whose form carries `csrf`, or 403 with nothing done.
    #[allow(clippy::result_large_err)]
    pub(crate) fn poster(
        &self,
        headers: &HeaderMap,
        csrf: Option<&str>,
    ) -> Result<(String, Session), Response> {
        let Some((id, s)) = self.session(headers) else {
            return Err(forbidden(
                self,
                None,
                "you are not logged in (or the session ended)",
            ));
        };
        match csrf {
            Some(token) if same_secret(token, &s.csrf) => Ok((id, s)),
            _ => Err(forbidden(
                self,
                Some(&s),
                "the form's CSRF token is missing or wrong: reload the page and try again",
            )),
        }
    }

    pub(crate) fn page(&self, title: &str, session: Option<&Session>, body: Markup) -> Markup {
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · AIOS console" }
                    link rel="stylesheet" href=(self.url("/console.css"));
                }
                body {
                    header {
                        span.brand { "AIOS console" }
                        @if let Some(s) = session {
                            nav {
                                a href=(self.url("/approvals")) { "Approvals" }
                                a href=(self.url("/runs")) { "Runs" }
                                a href=(self.url("/budgets")) { "Budgets" }
                                a href=(self.url("/controls")) { "Controls" }
                                a href=(self.url("/audit")) { "Audit" }
                                a href=(self.url("/memory")) { "Memory" }
                                a href=(self.url("/report")) { "Report" }
                            }
                            form.logout method="post" action=(self.url("/logout")) {
                                input type="hidden" name="csrf" value=(s.csrf);
                                span.who { (s.human) }
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                    main {
                        h1 { (title) }
                        (body)
                    }
                }
            }
        }
    }
}

pub(crate) fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

pub(crate) fn html_response(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

pub(crate) fn message(
    c: &Console,
    status: StatusCode,
    session: Option<&Session>,
    title: &str,
    text: &str,
) -> Response {
    html_response(
        status,
        c.page(title, session, html! { p.error role="alert" { (text) } }),
    )
}

fn forbidden(c: &Console, session: Option<&Session>, text: &str) -> Response {
    message(c, StatusCode::FORBIDDEN, session, "Refused", text)
}

pub(crate) fn failed(
    c: &Console,
    session: &Session,
    what: &str,
    e: impl std::fmt::Display,
) -> Response {
    tracing::warn!("console: {what}: {e}");
    message(
        c,
        StatusCode::INTERNAL_SERVER_ERROR,
        Some(session),
        "Something failed",
        &format!("{what}: {e}"),
    )
}

pub(crate) fn time(t: &aios_core::Timestamp) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn status_class(status: &RunStatus) -> &'static str {
    match status {
        RunStatus::Running => "running",
        RunStatus::Parked { .. } => "parked",
        RunStatus::Paused => "paused",
        RunStatus::Completed => "completed",
        RunStatus::Failed { .. } => "failed",
        RunStatus::Cancelled => "cancelled",
    }
}

fn status_text(status: &RunStatus) -> String {
    match status {
        RunStatus::Parked { approvals } => format!(
            "parked ({} approval{})",
            approvals.len(),
            plural(approvals.len())
        ),
        RunStatus::Failed { reason } => format!("failed: {reason}"),
        other => status_class(other).to_string(),
    }
}

pub(crate) fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The page `page` (from 1) of `items`, and how many pages there are.
fn paginate<T>(items: &[T], page: usize, size: usize) -> (&[T], usize, usize) {
    let pages = items.len().div_ceil(size).max(1);
    let page = page.clamp(1, pages);
    let from = (page - 1) * size;
    let to = (from + size).min(items.len());
    (&items[from.min(items.len())..to], page, pages)
}

/// Links to the pages around `page`; `newest_first` says which way the list runs.
fn pager(
    c: &Console,
    path: &str,
    extra: &str,
    (page, pages): (usize, usize),
    newest_first: bool,
) -> Markup {
    let link = |p: usize| format!("{}?{extra}page={p}", c.url(path));
    let (back, on) = if newest_first {
        ("‹ newer", "older ›")
    } else {
        ("‹ older", "newer ›")
    };
    html! {
        @if pages > 1 {
            nav.pager aria-label="pages" {
                @if page > 1 { a href=(link(page - 1)) rel="prev" { (back) } }
                span { "page " (page) " of " (pages) }
                @if page < pages { a href=(link(page + 1)) rel="next" { (on) } }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// login

pub(crate) async fn home(State(c): S, headers: HeaderMap) -> Response {
    match c.session(&headers) {
        Some(_) => redirect(&c.url("/approvals")),
        None => redirect(&c.url("/login")),
    }
}

pub(crate) async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

pub(crate) async fn not_found(State(c): S, headers: HeaderMap) -> Response {
    let s = c.session(&headers).map(|(_, s)| s);
    message(
        &c,
        StatusCode::NOT_FOUND,
        s.as_ref(),
        "Not found",
        "there is no such page",
    )
}

fn login_form(c: &Console, status: StatusCode, error: Option<&str>) -> Response {
    let csrf = match security::random_token() {
        Ok(t) => t,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    };
    let body = html! {
        @if let Some(e) = error { p.error role="alert" { (e) } }
        form.login method="post" action=(c.url("/login")) {
            input type="hidden" name="csrf" value=(csrf);
            label for="token" { "Your token (from " code { "aios humans add NAME" } ")" }
            input #token type="password" name="token" autocomplete="off" required autofocus;
            button type="submit" { "Log in" }
        }
    };
    let cookie = set_cookie(
        LOGIN_COOKIE,
        &csrf,
        &c.url("/login"),
        Some(3600),
        c.config.secure_cookies,
    );
    (
        status,
        [(header::SET_COOKIE, cookie)],
        Html(c.page("Log in", None, body).into_string()),
    )
        .into_response()
}

pub(crate) async fn login_page(State(c): S) -> Response {
    login_form(&c, StatusCode::OK, None)
}

/// The login form.
#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    csrf: Option<String>,
    token: Option<String>,
}

pub(crate) async fn login(
    State(c): S,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let bound = cookie(&headers, LOGIN_COOKIE);
    match (&bound, &form.csrf) {
        (Some(b), Some(f)) if !b.is_empty() && same_secret(b, f) => {}
        _ => {
            return forbidden(
                &c,
                None,
                "the login form's CSRF token is missing or wrong: reload the page",
            )
        }
    }
    let token = form.token.unwrap_or_default();
    let human = if token.trim().is_empty() {
        Ok(None)
    } else {
        c.auth.authenticate(token.trim())
    };
    match human {
        Ok(Some(human)) => {
            let id = match c
                .sessions
                .create(human.clone(), c.clock.now(), c.config.session_ttl)
            {
                Ok(id) => id,
                Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
            };
            tracing::info!("console: {human} logged in");
            let path = if c.config.base_path.is_empty() {
                "/".to_string()
            } else {
                c.config.base_path.clone()
            };
            let session = set_cookie(
                SESSION_COOKIE,
                &id,
                &path,
                Some(c.config.session_ttl.as_secs()),
                c.config.secure_cookies,
            );
            let gone = set_cookie(
                LOGIN_COOKIE,
                "",
                &c.url("/login"),
                Some(0),
                c.config.secure_cookies,
            );
            let mut r = redirect(&c.url("/approvals"));
            if let (Ok(a), Ok(b)) = (session.parse(), gone.parse()) {
                r.headers_mut().append(header::SET_COOKIE, a);
                r.headers_mut().append(header::SET_COOKIE, b);
            }
            r
        }
        Ok(None) => {
            // one failure at a time, each answered only after the delay
            let _turn = c.failures.lock().await;
            tokio::time::sleep(c.config.login_delay).await;
            tracing::warn!("console: a failed login");
            login_form(
                &c,
                StatusCode::UNAUTHORIZED,
                Some("that token is not valid (unknown, or its human was removed)"),
            )
        }
        Err(e) => {
            tracing::warn!("console: credentials could not be checked: {e}");
            login_form(
                &c,
                StatusCode::INTERNAL_SERVER_ERROR,
                Some(
                    "the credentials could not be checked: the store failed (see the server's log)",
                ),
            )
        }
    }
}

/// A form with only the CSRF token.
#[derive(Debug, Deserialize)]
pub(crate) struct CsrfForm {
    csrf: Option<String>,
}

pub(crate) async fn logout(
    State(c): S,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let (id, s) = match c.poster(&headers, form.csrf.as_deref()) {
        Ok(v) => v,
        Err(r) => return r,
    };
    c.sessions.remove(&id);
    tracing::info!("console: {} logged out", s.human);
    let path = if c.config.base_path.is_empty() {
        "/".to_string()
    } else {
        c.config.base_path.clone()
    };
    let gone = set_cookie(SESSION_COOKIE, "", &path, Some(0), c.config.secure_cookies);
    let mut r = redirect(&c.url("/login"));
    if let Ok(v) = gone.parse() {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

// ---------------------------------------------------------------------------------------
// approvals

/// `?page=N`.
#[derive(Debug, Deserialize)]
pub(crate) struct PageQuery {
    page: Option<usize>,
}

fn kind_name(k: &ResponseKind) -> &'static str {
    match k {
        ResponseKind::Approve => "approve",
        ResponseKind::Edit => "edit",
        ResponseKind::Reject => "reject",
    }
}

fn approval_card(c: &Console, s: &Session, p: &PendingApproval) -> Markup {
    let id = p.id.to_string();
    let may = p.may_answer.contains(&s.human);
    let proposed = serde_json::to_string_pretty(&p.proposed).unwrap_or_default();
    let input = p
        .proposed
        .get("input")
        .map(|v| serde_json::to_string_pretty(v).unwrap_or_default())
        .unwrap_or_else(|| "{}".into());
    let action_url = c.url(&format!("/approvals/{id}"));
    let allowed = |k: ResponseKind| p.allowed.contains(&k);
    html! {
        article.approval id={ "approval-" (id) } {
            h2 { (p.action) }
            dl {
                dt { "Run" }
                dd { @match p.run {
                    Some(run) => { a href=(c.url(&format!("/runs/{run}"))) { (run) } }
                    None => { "-" }
                } }
                dt { "Task" } dd { (p.task.as_deref().unwrap_or("-")) }
                dt { "Why" } dd { (p.reason.as_deref().unwrap_or("-")) }
                dt { "Asks" } dd { (p.anchor) " (who may answer: " (if p.may_answer.is_empty() { "nobody".to_string() } else { p.may_answer.join(", ") }) ")" }
                dt { "Deadline" } dd { (time(&p.expires_at)) }
                dt { "Answers" } dd { (p.allowed.iter().map(kind_name).collect::<Vec<_>>().join(", ")) }
            }
            details open {
                summary { "Proposed" }
                pre.proposed { (proposed) }
            }
            @if !may {
                p.note { "You (" (s.human) ") may not answer this request." }
            } @else {
                div.answers {
                    @if allowed(ResponseKind::Approve) {
                        form method="post" action=(action_url) {
                            input type="hidden" name="csrf" value=(s.csrf);
                            input type="hidden" name="answer" value="approve";
                            button.approve type="submit" { "Approve" }
                        }
                    }
                    @if allowed(ResponseKind::Reject) {
                        form method="post" action=(action_url) {
                            input type="hidden" name="csrf" value=(s.csrf);
                            input type="hidden" name="answer" value="reject";
                            label { "Reason " input type="text" name="reason" required; }
                            button.reject type="submit" { "Reject" }
                        }
                    }
                    @if allowed(ResponseKind::Edit) {
                        form.edit method="post" action=(action_url) {
                            input type="hidden" name="csrf" value=(s.csrf);
                            input type="hidden" name="answer" value="edit";
                            label { "Edited input (JSON)" }
                            textarea name="input" rows="6" { (input) }
                            button type="submit" { "Approve edited" }
                        }
                    }
                }
            }
        }
    }
}

/// Renders the inbox page for `s`: only the requests on the page have their runs read.
pub(crate) async fn inbox_page(c: &Console, s: &Session, page: usize) -> Response {
    let size = c.config.page_size;
    let read = |page: usize| {
        let offset = page.saturating_sub(1).saturating_mul(size);
        c.orchestrator.inbox_page(offset, size)
    };
    let mut page = page.max(1);
    let mut inbox = match read(page).await {
        Ok(i) => i,
        Err(e) => return failed(c, s, "the inbox could not be read", e),
    };
    let pages = inbox.total.div_ceil(size).max(1);
    if page > pages {
        // past the end (the inbox shrank, or a hand-made link): show the last page
        page = pages;
        inbox = match read(page).await {
            Ok(i) => i,
            Err(e) => return failed(c, s, "the inbox could not be read", e),
        };
    }
    let body = html! {
        @if inbox.total == 0 {
            p.empty { "Nothing waits for a human." }
        } @else {
            p { (inbox.total) " pending, oldest first." }
            @for p in &inbox.approvals { (approval_card(c, s, p)) }
            (pager(c, "/approvals", "", (page, pages), false))
        }
    };
    html_response(StatusCode::OK, c.page("Approvals", Some(s), body))
}

pub(crate) async fn inbox(State(c): S, headers: HeaderMap, Query(q): Query<PageQuery>) -> Response {
    let s = match c.viewer(&headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    inbox_page(&c, &s, q.page.unwrap_or(1)).await
}

/// An answer to an approval request.
#[derive(Debug, Deserialize)]
pub(crate) struct DecideForm {
    csrf: Option<String>,
    answer: Option<String>,
    input: Option<String>,
    reason: Option<String>,
}

pub(crate) async fn decide(
    State(c): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<DecideForm>,
) -> Response {
    let (_, s) = match c.poster(&headers, form.csrf.as_deref()) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let bad = |text: String| {
        message(
            &c,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(&s),
            "Not decided",
            &text,
        )
    };
    let Ok(approval) = id.parse::<ApprovalId>() else {
        return message(
            &c,
            StatusCode::NOT_FOUND,
            Some(&s),
            "Not decided",
            &format!("`{id}` is not an approval id"),
        );
    };
    let response = match form.answer.as_deref() {
        Some("approve") => ApprovalResponse::Approve,
        Some("reject") => {
            let reason = form.reason.unwrap_or_default();
            if reason.trim().is_empty() {
                return bad("a rejection needs a reason: say why in the reason field".into());
            }
            ApprovalResponse::Reject {
                reason: reason.trim().to_string(),
            }
        }
        Some("edit") => {
            let text = form.input.unwrap_or_default();
            match serde_json::from_str::<serde_json::Value>(&text) {
                // an edit changes the proposed action's input
                Ok(v) => ApprovalResponse::Edit(serde_json::json!({ "input": v })),
                Err(e) => {
                    return bad(format!(
                        "the edited input is not JSON: {e} (line {}, column {})",
                        e.line(),
                        e.column()
                    ))
                }
            }
        }
        other => {
            return bad(format!(
                "unknown answer `{}`: approve, edit or reject",
                other.unwrap_or("")
            ))
        }
    };
    let kind = kind_name(&response.kind());
    match c
        .orchestrator
        .answer_approval(approval, HumanId::from_name(&s.human), response)
        .await
    {
        Ok(run) => {
            tracing::info!("console: {} answered {approval}: {kind}", s.human);
            if let Some(hook) = &c.on_decided {
                tokio::spawn(hook(run));
            }
            redirect(&c.url(&format!("/runs/{run}?decided={kind}")))
        }
        // the request is not pending (any more): unknown, answered, used or expired. Asked
        // of the store itself, so a console does not list every pending request to check
        Err(
            aios_orchestrator::OrchestratorError::UnknownApproval(_)
            | aios_orchestrator::OrchestratorError::Approval {
                error:
                    ApprovalError::UnknownRequest { .. }
                    | ApprovalError::AlreadyDecided { .. }
                    | ApprovalError::AlreadyRedeemed { .. }
                    | ApprovalError::Expired { .. },
                ..
            },
        ) => message(
            &c,
            StatusCode::NOT_FOUND,
            Some(&s),
            "Not decided",
            &format!("no pending approval {approval} (it may have been answered or expired)"),
        ),
        Err(e) => forbidden(
            &c,
            Some(&s),
            &format!("{} may not answer {approval}: {e}", s.human),
        ),
    }
}

// ---------------------------------------------------------------------------------------
// runs

/// `?status=parked&page=N`.
#[derive(Debug, Deserialize)]
pub(crate) struct RunsQuery {
    status: Option<String>,
    page: Option<usize>,
}

const STATUSES: [&str; 6] = [
    "running",
    "parked",
    "paused",
    "completed",
    "failed",
    "cancelled",
];

pub(crate) async fn runs(State(c): S, headers: HeaderMap, Query(q): Query<RunsQuery>) -> Response {
    let s = match c.viewer(&headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let filter = q.status.filter(|f| !f.is_empty() && f != "all");
    if let Some(f) = &filter {
        if !STATUSES.contains(&f.as_str()) {
            return message(
                &c,
                StatusCode::BAD_REQUEST,
                Some(&s),
                "Runs",
                &format!("unknown status `{f}`: one of {}", STATUSES.join(", ")),
            );
        }
    }
    let mut all = match c.orchestrator.checkpoint_store().list(false).await {
        Ok(a) => a,
        Err(e) => return failed(&c, &s, "the runs could not be listed", e),
    };
    if let Some(f) = &filter {
        all.retain(|r| status_class(&r.status) == f);
    }
    // ids are time-ordered: newest first
    all.sort_unstable_by_key(|r| std::cmp::Reverse(r.run));
    let (shown, page, pages) = paginate(&all, q.page.unwrap_or(1), c.config.page_size);
    let extra = filter
        .as_ref()
        .map(|f| format!("status={f}&"))
        .unwrap_or_default();
    let body = html! {
        form.filter method="get" action=(c.url("/runs")) {
            label for="status" { "Status " }
            select #status name="status" {
                option value="all" { "all" }
                @for st in STATUSES {
                    option value=(st) selected[filter.as_deref() == Some(st)] { (st) }
                }
            }
            button type="submit" { "Filter" }
        }
        @if all.is_empty() {
            p.empty { "No runs." }
        } @else {
            p { (all.len()) " run" (plural(all.len())) ", newest first." }
            table.runs {
                thead { tr { th { "Run" } th { "Workflow" } th { "Status" } th { "Checkpoint" } } }
                tbody {
                    @for r in shown {
                        tr {
                            td { a href=(c.url(&format!("/runs/{}", r.run))) { code { (r.run) } } }
                            td { (r.workflow) }
                            td { span class={ "status " (status_class(&r.status)) } { (status_text(&r.status)) } }
                            td { (r.seq) }
                        }
                    }
                }
            }
            (pager(&c, "/runs", &extra, (page, pages), true))
        }
    };
    html_response(StatusCode::OK, c.page("Runs", Some(&s), body))
}

/// `?decided=approve` after an answer, `?controlled=pause` after a control.
#[derive(Debug, Deserialize)]
pub(crate) struct RunQuery {
    decided: Option<String>,
    controlled: Option<String>,
}

/// The controls offered for a run in `status`: (value, label).
fn run_controls(status: &RunStatus) -> &'static [(&'static str, &'static str)] {
    match status {
        s if s.is_terminal() => &[],
        RunStatus::Paused => &[("resume", "resume"), ("stop", "stop (cancel for good)")],
        _ => &[("pause", "pause"), ("stop", "stop (cancel for good)")],
    }
}

fn run_control_form(c: &Console, s: &Session, run: RunId, status: &RunStatus) -> Markup {
    let offered = run_controls(status);
    html! {
        @if !offered.is_empty() {
            h2 { "Control this run" }
            form.control method="post" action=(c.url(&format!("/runs/{run}/control"))) {
                input type="hidden" name="csrf" value=(s.csrf);
                label { "Action " select name="action" {
                    @for (value, label) in offered { option value=(value) { (label) } }
                } }
                label { "Reason " input type="text" name="reason" required; }
                button type="submit" { "Apply" }
            }
            p.hint { "A pause or stop holds across restarts and is recorded with your name and reason; a running run stops at its next task boundary." }
        }
    }
}

/// A control on one run.
#[derive(Debug, Deserialize)]
pub(crate) struct RunControlForm {
    csrf: Option<String>,
    action: Option<String>,
    reason: Option<String>,
}

pub(crate) async fn control_run(
    State(c): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<RunControlForm>,
) -> Response {
    let (_, s) = match c.poster(&headers, form.csrf.as_deref()) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let refused =
        |status: StatusCode, text: String| message(&c, status, Some(&s), "Not applied", &text);
    let Ok(run) = id.parse::<RunId>() else {
        return refused(StatusCode::NOT_FOUND, format!("`{id}` is not a run id"));
    };
    let control = match form.action.as_deref() {
        Some("pause") => RunControl::Pause,
        Some("stop") => RunControl::Cancel,
        Some("resume") => RunControl::Resume,
        other => {
            return refused(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "unknown action `{}` for run {run}: pause, resume or stop",
                    other.unwrap_or("")
                ),
            )
        }
    };
    let reason = form.reason.unwrap_or_default();
    if reason.trim().is_empty() {
        return refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("a control of run {run} needs a reason: say why"),
        );
    }
    match c.orchestrator.state(run).await {
        Ok(Some(st)) if st.status.is_terminal() => {
            return refused(
                StatusCode::CONFLICT,
                format!(
                    "run {run} has ended ({}): there is nothing to control",
                    status_text(&st.status)
                ),
            )
        }
        Ok(Some(_)) => {}
        Ok(None) => return refused(StatusCode::NOT_FOUND, format!("no run {run}")),
        Err(e) => return failed(&c, &s, "the run could not be read", e),
    }
    let by = Principal::Human(HumanId::from_name(&s.human));
    match c
        .orchestrator
        .control_run(run, control, by, reason.trim())
        .await
    {
        Ok(()) => {
            let name = match control {
                RunControl::Pause => "pause",
                RunControl::Cancel => "stop",
                RunControl::Resume => "resume",
            };
            tracing::info!("console: {} applied {name} to run {run}", s.human);
            if control == RunControl::Resume {
                // the pause is lifted; the host (if it said how) drives the run on
                if let Some(hook) = &c.on_decided {
                    tokio::spawn(hook(run));
                }
            }
            redirect(&c.url(&format!("/runs/{run}?controlled={name}")))
        }
        Err(e) => refused(
            StatusCode::FORBIDDEN,
            format!("{} may not control run {run}: {e}", s.human),
        ),
    }
}

pub(crate) async fn run(
    State(c): S,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<RunQuery>,
) -> Response {
    let s = match c.viewer(&headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(run) = id.parse::<RunId>() else {
        return message(
            &c,
            StatusCode::NOT_FOUND,
            Some(&s),
            "Run",
            &format!("`{id}` is not a run id"),
        );
    };
    let state = match c.orchestrator.state(run).await {
        Ok(Some(st)) => st,
        Ok(None) => {
            return message(
                &c,
                StatusCode::NOT_FOUND,
                Some(&s),
                "Run",
                &format!("no run {run}"),
            )
        }
        Err(e) => return failed(&c, &s, "the run could not be read", e),
    };
    let budget = match crate::budgets::run_budget(&c, run).await {
        Ok(b) => b,
        Err(e) => return failed(&c, &s, "the run's budget could not be read", e),
    };
    let transcript = match c.orchestrator.transcript(run).await {
        Ok(t) => t,
        Err(e) => format!("(the transcript could not be read: {e})"),
    };
    let decided = q
        .decided
        .filter(|d| ["approve", "edit", "reject"].contains(&d.as_str()));
    let controlled = q
        .controlled
        .filter(|d| ["pause", "stop", "resume"].contains(&d.as_str()));
    let body = html! {
        @if let Some(d) = decided {
            p.notice role="status" { "Your answer (" (d) ") is recorded; the run goes on when its worker picks it up." }
        }
        @if let Some(d) = controlled {
            p.notice role="status" { @match d.as_str() {
                "resume" => { "The pause is lifted; the run goes on when its host resumes it." }
                other => { "Applied: " (other) "." }
            } }
        }
        dl.run {
            dt { "Run" } dd { code { (state.run) } }
            dt { "Workflow" } dd { (state.workflow) }
            dt { "Status" } dd { span #run-status class={ "status " (status_class(&state.status)) } { (status_text(&state.status)) } }
            dt { "Started" } dd { (time(&state.started_at)) }
            dt { "Governance" } dd { "version " (state.governance_version) }
        }
        @if matches!(state.status, RunStatus::Parked { .. }) {
            p { a href=(c.url("/approvals")) { "Answer its approvals in the inbox" } }
        }
        (budget)
        (run_control_form(&c, &s, run, &state.status))
        h2 { "Tasks" }
        table.tasks {
            thead { tr { th { "Task" } th { "Status" } th { "Calls" } th { "Note" } } }
            tbody {
                @for t in &state.tasks {
                    tr {
                        td { (t.spec.name) }
                        td { (format!("{:?}", t.status).to_lowercase()) }
                        td { (t.journal.len()) }
                        td { (t.error.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        h2 { "Transcript" }
        pre #transcript .transcript { (transcript) }
    };
    html_response(
        StatusCode::OK,
        c.page(&format!("Run {}", short(&run.to_string())), Some(&s), body),
    )
}

fn short(id: &str) -> String {
    id.chars().take(8).collect()
}

// ---------------------------------------------------------------------------------------
// the audit chain

/// `?verify=1`.
#[derive(Debug, Deserialize)]
pub(crate) struct AuditQuery {
    verify: Option<String>,
}

pub(crate) async fn audit(
    State(c): S,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Response {
    let s = match c.viewer(&headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let log = c.orchestrator.audit_log();
    let head = match log.head().await {
        Ok(h) => h,
        Err(e) => return failed(&c, &s, "the audit head could not be read", e),
    };
    let report = if q.verify.is_some() {
        match aios_core::verify_with_progress(log.as_ref(), None, None, |_| {}).await {
            Ok(r) => Some(r),
            Err(e) => return failed(&c, &s, "the audit chain could not be verified", e),
        }
    } else {
        None
    };
    let anchor = format!("{}:{}", head.len, head.hash);
    let body = html! {
        dl {
            dt { "Entries" } dd { (head.len) }
            dt { "Head" } dd { code #head { (anchor) } }
        }
        p.hint { "Keep the head somewhere else (a note, a ticket, another machine): "
            code { "aios audit verify --anchor HEAD" } " then proves nothing before it was changed." }
        @match &report {
            None => { p { a href=(c.url("/audit?verify=1")) { "Verify the whole chain now" } } }
            Some(r) if r.is_intact() => { p.ok #chain { "Intact: " (r.checked) " entries verified." } }
            Some(r) => {
                p.error #chain { "BROKEN: " (r.problems.len()) " problem" (plural(r.problems.len())) " in " (r.checked) " entries." }
                ul { @for p in r.problems.iter().take(100) { li { code { (serde_json::to_string(p).unwrap_or_default()) } } } }
            }
        }
    };
    html_response(StatusCode::OK, c.page("Audit chain", Some(&s), body))
}

// ---------------------------------------------------------------------------------------
// operator controls

pub(crate) async fn controls(State(c): S, headers: HeaderMap) -> Response {
    let s = match c.viewer(&headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    controls_page(&c, &s, StatusCode::OK, None)
}

fn controls_page(c: &Console, s: &Session, status: StatusCode, error: Option<&str>) -> Response {
    let Some(controls) = &c.controls else {
        return message(
            c,
            StatusCode::NOT_FOUND,
            Some(s),
            "Controls",
            "this console was mounted without operator controls",
        );
    };
    let snapshot = controls.snapshot();
    let name = |t: &aios_governance::ControlTarget| {
        c.targets
            .get(&t.to_string())
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| t.to_string())
    };
    let mut history = controls.history();
    history.reverse();
    let body = html! {
        @if let Some(e) = error { p.error role="alert" { (e) } }
        h2 { "In force" }
        @let halted: Vec<_> = c.targets.values().filter_map(|(n, t)| snapshot.halt(*t).map(|h| (n, h))).collect();
        @if halted.is_empty() {
            p #in-force { "Nothing is paused or stopped." }
        } @else {
            ul #in-force { @for (n, h) in &halted { li { strong { (format!("{h:?}").to_lowercase()) } ": " (n) } } }
        }
        h2 { "Apply a control" }
        form.control method="post" action=(c.url("/controls")) {
            input type="hidden" name="csrf" value=(s.csrf);
            label { "Target " select name="target" {
                @for (key, (n, _)) in &c.targets { option value=(key) { (n) } }
            } }
            label { "Action " select name="action" {
                option value="pause" { "pause" }
                option value="resume" { "resume" }
                option value="stop" { "stop" }
            } }
            label { "Reason " input type="text" name="reason" required; }
            button type="submit" { "Apply" }
        }
        @if !history.is_empty() {
            h2 { "History" }
            table {
                thead { tr { th { "At" } th { "Action" } th { "Target" } th { "By" } th { "Reason" } } }
                tbody { @for r in history.iter().take(200) { tr {
                    td { (time(&r.at)) }
                    td { (r.command.action.name()) }
                    td { (name(&r.command.target)) }
                    td { (principal(c, &r.command.by)) }
                    td { (r.command.reason) }
                } } }
            }
        }
    };
    html_response(status, c.page("Operator controls", Some(s), body))
}

fn principal(c: &Console, p: &Principal) -> String {
    let key = p.to_string();
    c.humans.get(&key).cloned().unwrap_or(key)
}

/// A control to apply.
#[derive(Debug, Deserialize)]
pub(crate) struct ControlForm {
    csrf: Option<String>,
    target: Option<String>,
    action: Option<String>,
    reason: Option<String>,
}

pub(crate) async fn apply_control(
    State(c): S,
    headers: HeaderMap,
    Form(form): Form<ControlForm>,
) -> Response {
    let (_, s) = match c.poster(&headers, form.csrf.as_deref()) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(controls) = &c.controls else {
        return message(
            &c,
            StatusCode::NOT_FOUND,
            Some(&s),
            "Controls",
            "this console was mounted without operator controls",
        );
    };
    let given = form.target.unwrap_or_default();
    let Some((target_name, target)) = c.targets.get(&given).cloned() else {
        return controls_page(
            &c,
            &s,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(&format!("unknown target `{given}`")),
        );
    };
    let action = match form.action.as_deref() {
        Some("pause") => ControlAction::Pause,
        Some("resume") => ControlAction::Resume,
        Some("stop") => ControlAction::Stop,
        other => {
            return controls_page(
                &c,
                &s,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(&format!(
                    "unknown action `{}`: pause, resume or stop",
                    other.unwrap_or("")
                )),
            )
        }
    };
    let reason = form.reason.unwrap_or_default();
    if reason.trim().is_empty() {
        return controls_page(
            &c,
            &s,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("a control needs a reason: say why"),
        );
    }
    let command = ControlCommand {
        target,
        action: action.clone(),
        by: Principal::Human(HumanId::from_name(&s.human)),
        reason: reason.trim().to_string(),
        until: None,
    };
    match controls.apply(command).await {
        Ok(_) => {
            tracing::info!(
                "console: {} applied {} to {target_name}",
                s.human,
                action.name()
            );
            redirect(&c.url("/controls"))
        }
        Err(e) => controls_page(
            &c,
            &s,
            StatusCode::FORBIDDEN,
            Some(&format!("refused: {e}")),
        ),
    }
}

// ---------------------------------------------------------------------------------------
// memory

/// `?q=TEXT`.
#[derive(Debug, Deserialize)]
pub(crate) struct MemoryQuery {
    q: Option<String>,
}

pub(crate) async fn memory(
    State(c): S,
    headers: HeaderMap,
    Query(q): Query<MemoryQuery>,
) -> Response {
    let s = match c.viewer(&headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(memory) = &c.memory else {
        return message(
            &c,
            StatusCode::NOT_FOUND,
            Some(&s),
            "Memory",
            "this console was mounted without memory",
        );
    };
    let query = q.q.unwrap_or_default();
    let hits = if query.trim().is_empty() {
        None
    } else {
        match memory
            .recall(
                &RecallQuery::text(query.trim())
                    .k(25)
                    .mode(RecallMode::Keyword),
            )
            .await
        {
            Ok(h) => Some(h),
            Err(e) => return failed(&c, &s, "memory could not be searched", e),
        }
    };
    let body = html! {
        form.search method="get" action=(c.url("/memory")) {
            input type="search" name="q" value=(query) placeholder="words to find";
            button type="submit" { "Search" }
        }
        @if let Some(hits) = &hits {
            @if hits.is_empty() {
                p.empty { "Nothing found for “" (query) "”." }
            } @else {
                ol.hits { @for h in hits { li {
                    p.content { (h.record.content) }
                    p.meta { code { (h.record.id) } " v" (h.record.version) " · " (h.record.scope.to_string()) " · score " (format!("{:.3}", h.score.total)) " · recorded " (time(&h.record.recorded_at)) }
                } } }
            }
        }
    };
    html_response(StatusCode::OK, c.page("Memory", Some(&s), body))
}

// ---------------------------------------------------------------------------------------
// the operations report

fn pct(r: Option<f64>) -> String {
    r.map(|r| format!("{:.0}%", r * 100.0))
        .unwrap_or_else(|| "-".into())
}

fn ms(v: Option<u64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v < 1_000 => format!("{v} ms"),
        Some(v) if v < 120_000 => format!("{:.1} s", v as f64 / 1000.0),
        Some(v) if v < 7_200_000 => format!("{:.1} min", v as f64 / 60_000.0),
        Some(v) => format!("{:.1} h", v as f64 / 3_600_000.0),
    }
}

/// The report's charts, from an [`aios_workspace::OpsReport`].
pub(crate) fn report_body(report: &aios_workspace::OpsReport) -> Markup {
    let t = &report.total;
    let mut groups: Vec<(String, &aios_workspace::Stats)> = vec![("everything".into(), t)];
    groups.extend(
        report
            .pathways
            .iter()
            .map(|(k, v)| (format!("pathway {k}"), v)),
    );
    let autonomy: Vec<Bar> = groups
        .iter()
        .filter_map(|(n, st)| {
            st.autonomy_rate.map(|r| Bar {
                label: n.clone(),
                value: r * 100.0,
                text: pct(Some(r)),
            })
        })
        .collect();
    let mut latency = Vec::new();
    for (n, st) in &groups {
        if let Some(v) = st.approval_latency_p50_ms {
            latency.push(Bar {
                label: format!("{n} p50"),
                value: v as f64,
                text: ms(Some(v)),
            });
        }
        if let Some(v) = st.approval_latency_p95_ms {
            latency.push(Bar {
                label: format!("{n} p95"),
                value: v as f64,
                text: ms(Some(v)),
            });
        }
    }
    let cost: Vec<Bar> = report
        .pathways
        .iter()
        .map(|(k, st)| Bar {
            label: format!("pathway {k}"),
            value: st.cost.minor().max(0) as f64,
            text: st.cost.to_string(),
        })
        .collect();
    let days: Vec<String> = report
        .series
        .iter()
        .map(|b| b.start.format("%d %b").to_string())
        .collect();
    let autonomy_days = report
        .series
        .iter()
        .map(|b| b.autonomy_rate.map(|r| r * 100.0))
        .collect();
    let latency_days = [
        Series {
            name: "median".into(),
            values: report
                .series
                .iter()
                .map(|b| b.approval_latency_p50_ms.map(|v| v as f64))
                .collect(),
        },
        Series {
            name: "95th percentile".into(),
            values: report
                .series
                .iter()
                .map(|b| b.approval_latency_p95_ms.map(|v| v as f64))
                .collect(),
        },
    ];
    let cost_days = report
        .series
        .iter()
        .map(|b| b.cost_per_completed_run.map(|m| m.minor() as f64))
        .collect();
    html! {
        section.figures {
            dl {
                dt { "Entries counted" } dd { (report.entries_counted) }
                dt { "Decisions" } dd { (t.actions) }
                dt { "Approvals asked" } dd { (t.approvals_requested) }
                dt { "Runs completed" } dd { (t.runs_completed) }
                dt { "Cost" } dd { (t.cost.to_string()) }
                dt { "Cost per completed run" } dd { (t.cost_per_completed_run.map(|m| m.to_string()).unwrap_or_else(|| "-".into())) }
            }
        }
        h2 { "Budget burn" }
        p.hint { "Cost in the window against the organisation's spend limit." }
        (gauge("budget burn", t.budget_burn))
        h2 { "Over time" }
        p.hint { "Per day (UTC), by when each thing happened; days without a figure are gaps." }
        h3 { "Autonomy rate" }
        (line_chart("autonomy rate per day", &days, &[Series { name: "autonomy".into(), values: autonomy_days }], Some(100.0), &|v| format!("{v:.0}%")))
        h3 { "Approval latency" }
        (line_chart("approval latency per day", &days, &latency_days, None, &|v| ms(Some(v as u64))))
        h3 { "Cost per completed run" }
        (line_chart("cost per completed run per day", &days, &[Series { name: "cost per run".into(), values: cost_days }], None, &|v| Money::from_minor(v as i64).to_string()))
        h2 { "Autonomy rate" }
        p.hint { "Of the actions that went ahead or went to a human, the share no human was needed for (denials left out)." }
        (bar_chart("autonomy rate", &autonomy, Some(100.0)))
        h2 { "Approval latency" }
        p.hint { "From the request to the answer, median and 95th percentile." }
        (bar_chart("approval latency", &latency, None))
        h2 { "Cost by pathway" }
        (bar_chart("cost by pathway", &cost, None))
    }
}

pub(crate) async fn report(State(c): S, headers: HeaderMap) -> Response {
    let s = match c.viewer(&headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(source) = &c.report else {
        return message(
            &c,
            StatusCode::NOT_FOUND,
            Some(&s),
            "Report",
            "this console was mounted without the operations report",
        );
    };
    match source().await {
        Ok(r) => html_response(
            StatusCode::OK,
            c.page("Operations report", Some(&s), report_body(&r)),
        ),
        Err(e) => failed(&c, &s, "the report could not be built", e),
    }
}
