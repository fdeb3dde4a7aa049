//! The web console for AIOS: an axum [`Router`] a host mounts.
//!
//! Server-rendered pages, no JavaScript: login with a human's token, the approvals inbox
//! (approve, edit the proposed input as JSON, reject with a reason), the runs list with a
//! status filter and pagination, a run's page (tasks, status, the transcript, pause,
//! resume and stop of that run), the audit
//! chain's status and head (to anchor elsewhere), the budgets with their burn, operator controls (pause, resume, stop a
//! pathway, a role, an agent or everything, with a reason), memory search, and the
//! operations report with charts drawn as SVG on the server.
//!
//! ```no_run
//! # async fn host(orchestrator: aios_orchestrator::Orchestrator,
//! #               auth: std::sync::Arc<dyn aios_console::Authenticator>) {
//! let console = aios_console::Console::builder(orchestrator, auth).build();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.unwrap();
//! axum::serve(listener, console.router()).await.unwrap();
//! # }
//! ```
//!
//! Deciding an approval only records the decision
//! ([`Orchestrator::answer_approval`](aios_orchestrator::Orchestrator::answer_approval)); a
//! host that wants the run to go on at once passes [`ConsoleBuilder::on_decided`], otherwise
//! its worker picks the run up.
//!
//! Security: sessions are server-side, named by 32 random bytes in a cookie that is
//! `HttpOnly` and `SameSite=Strict` (and `Secure` when [`ConsoleConfig::secure_cookies`]);
//! every form carries a CSRF token bound to the session (the login form one bound to a
//! cookie of its own), checked on every POST before anything is done; every value is
//! escaped by the templates; every response carries a `Content-Security-Policy` that allows
//! no script at all; a failed login is answered only after [`ConsoleConfig::login_delay`],
//! one failure at a time; tokens are never rendered or logged.

mod budgets;
mod charts;
mod pages;
mod security;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aios_core::{Clock, RunId};
use aios_governance::{BudgetLedger, ControlTarget, Controls};
use aios_memory::Memory;
use aios_orchestrator::Orchestrator;
use aios_workspace::OpsReport;
use axum::routing::{get, post};
use axum::Router;
use futures::future::BoxFuture;

pub use charts::{bar_chart, burn_chart, gauge, line_chart, Bar, BurnRow, Series};
pub use security::{CONTENT_SECURITY_POLICY, SESSION_COOKIE};

/// Checks a human's credential: the human's key in the governance model, or `None` when the
/// token is not valid. An error is a failure of the store, not a wrong token.
pub trait Authenticator: Send + Sync {
    /// The human whose token this is.
    fn authenticate(&self, token: &str) -> Result<Option<String>, String>;
}

/// Called, on a task of its own, after an approval of `run` is decided in the console, or
/// an operator lifted a pause on it: a host that embeds the console resumes the run here.
pub type DecidedHook = Arc<dyn Fn(RunId) -> BoxFuture<'static, ()> + Send + Sync>;

/// Builds the operations report when the report page is opened.
pub type ReportSource =
    Arc<dyn Fn() -> BoxFuture<'static, Result<OpsReport, String>> + Send + Sync>;

/// How the console behaves.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// How long a failed login waits before it is answered (failures are answered one at a
    /// time, so guesses in parallel wait in turn). Default 1 s.
    pub login_delay: Duration,
    /// How long a session lasts after login. Default 8 hours.
    pub session_ttl: Duration,
    /// Rows per page of the runs list and the inbox. Default 50.
    pub page_size: usize,
    /// Whether cookies are marked `Secure` (only sent over HTTPS). Default `false`: the
    /// console listens on loopback over plain HTTP unless a host puts TLS in front.
    pub secure_cookies: bool,
    /// The path the router is mounted under (`""` at the root, or `"/console"`), used in
    /// links and redirects.
    pub base_path: String,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            login_delay: Duration::from_secs(1),
            session_ttl: Duration::from_secs(8 * 3600),
            page_size: 50,
            secure_cookies: false,
            base_path: String::new(),
        }
    }
}

/// Everything the pages show and act on.
pub struct Console {
    pub(crate) orchestrator: Orchestrator,
    pub(crate) auth: Arc<dyn Authenticator>,
    pub(crate) controls: Option<Arc<Controls>>,
    pub(crate) budgets: Option<Arc<dyn BudgetLedger>>,
    pub(crate) memory: Option<Memory>,
    pub(crate) report: Option<ReportSource>,
    pub(crate) targets: BTreeMap<String, (String, ControlTarget)>,
    pub(crate) humans: BTreeMap<String, String>,
    pub(crate) on_decided: Option<DecidedHook>,
    pub(crate) config: ConsoleConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) sessions: security::Sessions,
    pub(crate) failures: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("config", &self.config)
            .field("targets", &self.targets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Console`].
pub struct ConsoleBuilder {
    console: Console,
}

impl std::fmt::Debug for ConsoleBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.console.fmt(f)
    }
}

impl Console {
    /// A console over `orchestrator` (runs, approvals, the audit log, transcripts), logging
    /// humans in with `auth`.
    pub fn builder(orchestrator: Orchestrator, auth: Arc<dyn Authenticator>) -> ConsoleBuilder {
        let clock = orchestrator.clock().clone();
        ConsoleBuilder {
            console: Console {
                orchestrator,
                auth,
                controls: None,
                budgets: None,
                memory: None,
                report: None,
                targets: BTreeMap::new(),
                humans: BTreeMap::new(),
                on_decided: None,
                config: ConsoleConfig::default(),
                clock,
                sessions: security::Sessions::default(),
                failures: tokio::sync::Mutex::new(()),
            },
        }
    }

    /// The router: mount it at the root or nest it under [`ConsoleConfig::base_path`].
    pub fn router(self) -> Router {
        let state = Arc::new(self);
        Router::new()
            .route("/", get(pages::home))
            .route("/console.css", get(pages::stylesheet))
            .route("/login", get(pages::login_page).post(pages::login))
            .route("/logout", post(pages::logout))
            .route("/approvals", get(pages::inbox))
            .route("/approvals/{id}", post(pages::decide))
            .route("/runs", get(pages::runs))
            .route("/runs/{id}", get(pages::run))
            .route("/runs/{id}/control", post(pages::control_run))
            .route("/audit", get(pages::audit))
            .route("/budgets", get(budgets::budgets))
            .route("/controls", get(pages::controls).post(pages::apply_control))
            .route("/memory", get(pages::memory))
            .route("/report", get(pages::report))
            .fallback(pages::not_found)
            .layer(axum::middleware::from_fn(security::headers))
            .with_state(state)
    }
}

impl ConsoleBuilder {
    /// Operator controls: the page lists what is in force and applies new controls.
    pub fn controls(mut self, controls: Arc<Controls>) -> Self {
        self.console.controls = Some(controls);
        self
    }

    /// The budget ledger the orchestrator draws on (the same store), for the budgets page:
    /// every budget of the current governance model with its limits, what is used and
    /// reserved now, and where the period stands by the console's [clock](Self::clock).
    pub fn budgets(mut self, ledger: Arc<dyn BudgetLedger>) -> Self {
        self.console.budgets = Some(ledger);
        self
    }

    /// A target operators may pause, resume and stop, under the name the page shows
    /// (`pathway sales`). [`ControlTarget::Organisation`] ("everything") is always offered.
    pub fn control_target(mut self, name: impl Into<String>, target: ControlTarget) -> Self {
        let name = name.into();
        self.console
            .targets
            .insert(target.to_string(), (name, target));
        self
    }

    /// A human's key in the governance model, so that the pages show who acted by name.
    pub fn human(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        let key = aios_core::Principal::Human(aios_core::HumanId::from_name(&name)).to_string();
        self.console.humans.insert(key, name);
        self
    }

    /// Memory, for the search page.
    pub fn memory(mut self, memory: Memory) -> Self {
        self.console.memory = Some(memory);
        self
    }

    /// The operations report, for the report page and its charts.
    pub fn report(mut self, source: ReportSource) -> Self {
        self.console.report = Some(source);
        self
    }

    /// Called after an approval is decided (see [`DecidedHook`]).
    pub fn on_decided(mut self, hook: DecidedHook) -> Self {
        self.console.on_decided = Some(hook);
        self
    }

    /// The configuration.
    pub fn config(mut self, config: ConsoleConfig) -> Self {
        self.console.config = config;
        self
    }

    /// The clock sessions expire by and budget periods are placed on (default the
    /// orchestrator's).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.console.clock = clock;
        self
    }

    /// The console.
    pub fn build(mut self) -> Console {
        let everything = ControlTarget::Organisation;
        self.console
            .targets
            .entry(everything.to_string())
            .or_insert_with(|| ("everything".into(), everything));
        if self.console.config.page_size == 0 {
            self.console.config.page_size = ConsoleConfig::default().page_size;
        }
        let base = self
            .console
            .config
            .base_path
            .trim_end_matches('/')
            .to_string();
        self.console.config.base_path = base;
        self.console
    }
}
