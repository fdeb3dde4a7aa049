//! What each command does.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    AuditLog, ChainHead, Clock, EntryHash, HumanId, MemoryId, Principal, RunId, SystemClock,
};
use aios_governance::{ApprovalResponse, ControlAction, ControlCommand, ControlTarget, Controls};
use aios_memory::{PrunePolicy, RecallQuery};
use aios_orchestrator::{CallRecord, Orchestrator, OrchestratorError, RunControl, RunStatus};
use aios_workspace::{Loaded, Plan, ValidateOptions};
use serde_json::json;

use crate::cli::{
    AuditCommand, Cli, Command, ControlArgs, GovernanceCommand, HumansCommand, MemoryCommand,
    RunCommand, StatusFilter,
};
use crate::humans::{self, Humans};
use crate::output::{print_json, short, Table};
use crate::store::{Location, Store};
use crate::CliError;

struct Ctx {
    store: String,
    workspace: PathBuf,
    json: bool,
    token_file: Option<PathBuf>,
}

pub(crate) async fn run(cli: Cli) -> Result<(), CliError> {
    let ctx = Ctx {
        store: cli.store,
        workspace: cli.workspace,
        json: cli.json,
        token_file: cli.token_file,
    };
    match cli.command {
        Command::Init { template, force } => init(&ctx, &template, force),
        Command::Check => check(&ctx),
        Command::Assess => assess(&ctx).await,
        Command::Runs { status } => runs(&ctx, status).await,
        Command::Run { what } => match what {
            RunCommand::Show { run } => run_show(&ctx, &run).await,
            RunCommand::Transcript { run } => run_transcript(&ctx, &run).await,
        },
        Command::Approvals => approvals(&ctx).await,
        Command::Approve { id } => decide(&ctx, &id, ApprovalResponse::Approve).await,
        Command::Edit { id, input } => {
            let edited = read_json(&input)?;
            // an edit changes the proposed action's input
            decide(
                &ctx,
                &id,
                ApprovalResponse::Edit(json!({ "input": edited })),
            )
            .await
        }
        Command::Reject { id, reason } => {
            decide(&ctx, &id, ApprovalResponse::Reject { reason }).await
        }
        Command::Pause(args) => control(&ctx, ControlAction::Pause, args).await,
        Command::Resume(args) => control(&ctx, ControlAction::Resume, args).await,
        Command::Stop(args) => control(&ctx, ControlAction::Stop, args).await,
        Command::Controls => controls(&ctx).await,
        Command::Audit { what } => match what {
            AuditCommand::Verify { anchor } => audit_verify(&ctx, anchor.as_deref()).await,
            AuditCommand::Head => audit_head(&ctx).await,
            AuditCommand::Export => audit_export(&ctx).await,
        },
        Command::Memory { what } => match what {
            MemoryCommand::Search { query, limit } => memory_search(&ctx, &query, limit).await,
            MemoryCommand::History { id } => memory_history(&ctx, &id).await,
            MemoryCommand::Verify => memory_verify(&ctx).await,
            MemoryCommand::Prune { apply } => memory_prune(&ctx, apply).await,
        },
        Command::Report { since } => report(&ctx, since.as_deref()).await,
        Command::Governance { what } => match what {
            GovernanceCommand::Versions => governance_versions(&ctx).await,
            GovernanceCommand::Diff { old, new } => governance_diff(&ctx, &old, &new),
        },
        Command::Humans { what } => match what {
            HumansCommand::Add { name } => humans_add(&ctx, &name).await,
            HumansCommand::List => humans_list(&ctx).await,
            HumansCommand::Remove { name } => humans_remove(&ctx, &name).await,
        },
        Command::Serve { listen } => serve(&ctx, listen).await,
    }
}

// ---------------------------------------------------------------------------------------
// opening things

impl Ctx {
    /// What `--store` names.
    fn location(&self) -> Result<Location, CliError> {
        Location::parse(&self.store)
    }

    /// The store, which must exist unless `create` (a SQLite file; a PostgreSQL database
    /// must always exist).
    async fn open_store(&self, create: bool) -> Result<Store, CliError> {
        self.location()?.open(create).await
    }

    fn load(&self) -> Result<Loaded, CliError> {
        aios_workspace::load(&self.workspace).map_err(|e| {
            CliError::Failed(format!(
                "workspace `{}`: {e} (pass --workspace FILE, or `aios init` writes one)",
                self.workspace.display()
            ))
        })
    }

    fn plan(&self) -> Result<Plan, CliError> {
        Ok(self.load_and_plan()?.1)
    }

    /// The manifest and its plan, from one read of the workspace.
    fn load_and_plan(&self) -> Result<(Loaded, Plan), CliError> {
        let loaded = self.load()?;
        let plan = aios_workspace::plan(&loaded, &ValidateOptions::default()).map_err(|e| {
            CliError::Failed(format!(
                "workspace `{}`: {e} (`aios check` lists the findings)",
                self.workspace.display()
            ))
        })?;
        Ok((loaded, plan))
    }

    async fn orchestrator(&self, store: &Store, plan: &Plan) -> Result<Orchestrator, CliError> {
        let governor = plan.governor().map_err(|report| {
            CliError::Failed(format!(
                "workspace `{}`: the governance model does not compile:\n{}",
                self.workspace.display(),
                report
            ))
        })?;
        store
            .orchestrator(governor)
            .await
            .map_err(CliError::failed)?
            .build()
            .map_err(|e| CliError::failed(format!("workspace `{}`: {e}", self.workspace.display())))
    }

    /// The authenticated human: from `--token-file` or `$AIOS_TOKEN`.
    async fn human(&self, store: &Store) -> Result<String, CliError> {
        let token = match &self.token_file {
            Some(path) => {
                humans::read_token_file(path).map_err(|e| CliError::Refused(e.to_string()))?
            }
            None => match std::env::var("AIOS_TOKEN") {
                Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
                _ => {
                    return Err(CliError::Refused(
                        "no credential: set AIOS_TOKEN or pass --token-file FILE \
                         (`aios humans add NAME` gives a human one)"
                            .into(),
                    ))
                }
            },
        };
        match store
            .humans()?
            .authenticate(&token)
            .await
            .map_err(CliError::failed)?
        {
            Some(name) => Ok(name),
            None => {
                // slow down guessing
                tokio::time::sleep(Duration::from_millis(750)).await;
                Err(CliError::Refused(
                    "the credential is not valid (unknown, or its human was removed)".into(),
                ))
            }
        }
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, CliError> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::failed(format!("standard input: {e}")))?;
    } else {
        text = std::fs::read_to_string(path)
            .map_err(|e| CliError::failed(format!("`{}`: {e}", path.display())))?;
    }
    serde_json::from_str(&text)
        .map_err(|e| CliError::Failed(format!("`{}` is not JSON: {e}", path.display())))
}

/// The one candidate whose id is `given`, starts with it or ends with it.
fn resolve<T: Copy + std::fmt::Display>(
    what: &str,
    given: &str,
    candidates: impl IntoIterator<Item = T>,
) -> Result<T, CliError> {
    let given = given.trim().to_ascii_lowercase();
    if given.is_empty() {
        return Err(CliError::NotFound(format!("no {what} given")));
    }
    let matching: Vec<T> = candidates
        .into_iter()
        .filter(|c| {
            let id = c.to_string().to_ascii_lowercase();
            id.starts_with(&given) || id.ends_with(&given)
        })
        .collect();
    match matching.as_slice() {
        [one] => Ok(*one),
        [] => Err(CliError::NotFound(format!("no {what} `{given}`"))),
        many => Err(CliError::NotFound(format!(
            "`{given}` names {} {what}s: give more of the id",
            many.len()
        ))),
    }
}

fn status_name(status: &RunStatus) -> String {
    match status {
        RunStatus::Running => "running".into(),
        RunStatus::Parked { approvals } => format!(
            "parked ({} approval{})",
            approvals.len(),
            plural(approvals.len())
        ),
        RunStatus::Paused => "paused".into(),
        RunStatus::Completed => "completed".into(),
        RunStatus::Failed { reason } => format!("failed: {reason}"),
        RunStatus::Cancelled => "cancelled".into(),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn matches(filter: StatusFilter, status: &RunStatus) -> bool {
    matches!(
        (filter, status),
        (StatusFilter::Running, RunStatus::Running)
            | (StatusFilter::Parked, RunStatus::Parked { .. })
            | (StatusFilter::Paused, RunStatus::Paused)
            | (StatusFilter::Completed, RunStatus::Completed)
            | (StatusFilter::Failed, RunStatus::Failed { .. })
            | (StatusFilter::Cancelled, RunStatus::Cancelled)
    )
}

// ---------------------------------------------------------------------------------------
// the workspace

fn init(ctx: &Ctx, template: &str, force: bool) -> Result<(), CliError> {
    let text = match template {
        "solo_consultancy" | "solo-consultancy" => aios_workspace::SOLO_CONSULTANCY_TOML,
        "newsletter" => aios_workspace::NEWSLETTER_TOML,
        other => {
            return Err(CliError::NotFound(format!(
                "no template `{other}`: the templates are `solo_consultancy` and `newsletter`"
            )))
        }
    };
    if ctx.workspace.exists() && !force {
        return Err(CliError::Failed(format!(
            "`{}` exists: pass --force to overwrite it",
            ctx.workspace.display()
        )));
    }
    std::fs::write(&ctx.workspace, text)
        .map_err(|e| CliError::failed(format!("`{}`: {e}", ctx.workspace.display())))?;
    if ctx.json {
        print_json(&json!({ "written": ctx.workspace, "template": template }));
    } else {
        println!(
            "wrote `{}` from the `{template}` template; `aios check` validates it",
            ctx.workspace.display()
        );
    }
    Ok(())
}

fn check(ctx: &Ctx) -> Result<(), CliError> {
    let loaded = ctx.load()?;
    let report = aios_workspace::validate(&loaded, &ValidateOptions::default());
    let errors = report.errors().count();
    if ctx.json {
        print_json(&json!({
            "ok": report.is_ok(),
            "hash": loaded_hash(&loaded),
            "findings": report.findings,
        }));
    } else if report.findings.is_empty() {
        println!("`{}`: no findings", ctx.workspace.display());
    } else {
        for f in &report.findings {
            println!("{}: {:?} {}: {}", f.file, f.severity, f.path, f.message);
        }
        println!(
            "{} finding{}, {errors} error{}",
            report.findings.len(),
            plural(report.findings.len()),
            plural(errors)
        );
    }
    if errors > 0 {
        return Err(CliError::Problems(format!(
            "`{}` has {errors} error{}",
            ctx.workspace.display(),
            plural(errors)
        )));
    }
    Ok(())
}

fn loaded_hash(loaded: &Loaded) -> String {
    aios_workspace::content_hash(&loaded.manifest).0
}

async fn assess(ctx: &Ctx) -> Result<(), CliError> {
    let loaded = ctx.load()?;
    let options = ValidateOptions::default();
    // the store's record is the evidence, when there is a store and the manifest plans
    let evidence = match (
        ctx.location()?.exists(),
        aios_workspace::plan(&loaded, &options),
    ) {
        (true, Ok(plan)) => Some(ops_report(ctx, &loaded, &plan, None).await?),
        _ => None,
    };
    let assessment = aios_workspace::assess(&loaded, &options, evidence.as_ref());
    if ctx.json {
        print_json(&assessment);
    } else {
        print!("{}", assessment.to_markdown());
    }
    Ok(())
}

async fn ops_report(
    ctx: &Ctx,
    loaded: &Loaded,
    plan: &Plan,
    since: Option<Duration>,
) -> Result<aios_workspace::OpsReport, CliError> {
    let store = ctx.open_store(false).await?;
    let log = store.audit_log();
    let builder = report_builder(loaded, plan, since)?;
    let head = log.head().await.map_err(CliError::failed)?;
    let bar = crate::output::progress(head.len, "reading the audit record");
    let report =
        aios_workspace::report_with_progress(log.as_ref(), builder, |n| bar.set_position(n))
            .await
            .map_err(CliError::failed);
    bar.finish_and_clear();
    report
}

/// A report builder for the workspace's targets and organisation budget, over the last
/// `since` (or everything).
fn report_builder(
    loaded: &Loaded,
    plan: &Plan,
    since: Option<Duration>,
) -> Result<aios_workspace::ReportBuilder, CliError> {
    let mut window = aios_workspace::Window::all();
    if let Some(since) = since {
        let now = SystemClock.now();
        let back = chrono::Duration::from_std(since)
            .map_err(|_| CliError::Failed("--since is too long".into()))?;
        window.from = now - back;
    }
    let targets = loaded
        .manifest
        .operations
        .as_ref()
        .map(|o| o.targets)
        .unwrap_or_default();
    let budget = plan
        .model
        .budgets
        .iter()
        .find(|b| matches!(b.scope, aios_governance::BudgetScope::Organisation))
        .and_then(|b| b.limits.cost);
    Ok(aios_workspace::ReportBuilder::new(
        window,
        targets,
        budget,
        aios_workspace::Names::from_ids(&plan.ids),
    ))
}

/// `30d`, `12h`, `2w`, `90m`.
fn parse_since(text: &str) -> Result<Duration, CliError> {
    let bad = || {
        CliError::Failed(format!(
            "--since `{text}`: give a number and a unit, e.g. 30d, 12h, 2w or 90m"
        ))
    };
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(secs).map(Duration::from_secs).ok_or_else(bad)
}

async fn report(ctx: &Ctx, since: Option<&str>) -> Result<(), CliError> {
    let since = since.map(parse_since).transpose()?;
    let (loaded, plan) = ctx.load_and_plan()?;
    let report = ops_report(ctx, &loaded, &plan, since).await?;
    if ctx.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_markdown());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// runs

async fn runs(ctx: &Ctx, status: Option<StatusFilter>) -> Result<(), CliError> {
    let store = ctx.open_store(false).await?;
    let mut all = store
        .checkpoints()
        .list(false)
        .await
        .map_err(CliError::failed)?;
    if let Some(filter) = status {
        all.retain(|r| matches(filter, &r.status));
    }
    // ids are time-ordered: newest first
    all.sort_by_key(|r| std::cmp::Reverse(r.run));
    if ctx.json {
        print_json(&all);
        return Ok(());
    }
    if all.is_empty() {
        println!("no runs");
        return Ok(());
    }
    let mut table = Table::new(["RUN", "WORKFLOW", "STATUS", "CHECKPOINT", "LEASE"]);
    let now = SystemClock.now();
    for r in &all {
        let lease = match &r.lease {
            Some(l) if l.expires_at > now => format!("held by {}", l.owner),
            Some(_) => "lapsed".into(),
            None => "-".into(),
        };
        table.row([
            short(&r.run.to_string()),
            r.workflow.clone(),
            status_name(&r.status),
            r.seq.to_string(),
            lease,
        ]);
    }
    table.print();
    Ok(())
}

async fn find_run(store: &Store, given: &str) -> Result<RunId, CliError> {
    let all = store
        .checkpoints()
        .list(false)
        .await
        .map_err(CliError::failed)?;
    resolve("run", given, all.iter().map(|r| r.run))
}

async fn run_show(ctx: &Ctx, given: &str) -> Result<(), CliError> {
    let store = ctx.open_store(false).await?;
    let run = find_run(&store, given).await?;
    let state = store
        .checkpoints()
        .latest(run)
        .await
        .map_err(CliError::failed)?
        .map(|c| c.state)
        .ok_or_else(|| CliError::NotFound(format!("run {run} has no checkpoint")))?;
    if ctx.json {
        print_json(&state);
        return Ok(());
    }
    let names: BTreeMap<aios_core::RoleId, String> = ctx
        .plan()
        .map(|p| p.ids.roles.iter().map(|(k, v)| (*v, k.clone())).collect())
        .unwrap_or_default();
    println!("run {}", state.run);
    println!("  workflow    {}", state.workflow);
    println!("  status      {}", status_name(&state.status));
    println!("  started     {}", state.started_at.to_rfc3339());
    println!("  governance  version {}", state.governance_version);
    if let Some((from, seq)) = state.forked_from {
        println!("  forked from {from} at checkpoint {seq}");
    }
    let mut table = Table::new(["TASK", "ROLE", "STATUS", "CALLS", "COST", "NOTE"]);
    let mut total = aios_core::Money::ZERO;
    for t in &state.tasks {
        let mut cost = aios_core::Money::ZERO;
        let mut approvals = Vec::new();
        for j in &t.journal {
            cost += record_cost(&j.record);
            if let Some(a) = awaiting(&j.record) {
                approvals.push(short(&a.to_string()));
            }
        }
        total += cost;
        let note = match (&t.error, approvals.is_empty()) {
            (Some(e), _) => e.clone(),
            (None, false) => format!("approval {}", approvals.join(", ")),
            _ => String::new(),
        };
        table.row([
            t.spec.name.to_string(),
            names
                .get(&t.spec.role)
                .cloned()
                .unwrap_or_else(|| t.spec.role.to_string()),
            format!("{:?}", t.status).to_lowercase(),
            t.journal.len().to_string(),
            cost.to_string(),
            note,
        ]);
    }
    table.print();
    println!(
        "total cost {total}; `aios run transcript {}` for the full record",
        short(&run.to_string())
    );
    Ok(())
}

/// What a journaled call cost.
fn record_cost(record: &CallRecord) -> aios_core::Money {
    match record {
        CallRecord::Model(r) => r.cost,
        CallRecord::Connector(o) => o.cost,
        CallRecord::Approved {
            result: Some(record),
            ..
        } => record_cost(record),
        _ => aios_core::Money::ZERO,
    }
}

fn awaiting(record: &CallRecord) -> Option<aios_core::ApprovalId> {
    match record {
        CallRecord::AwaitingApproval { approval } => Some(*approval),
        _ => None,
    }
}

async fn run_transcript(ctx: &Ctx, given: &str) -> Result<(), CliError> {
    let store = ctx.open_store(false).await?;
    let run = find_run(&store, given).await?;
    let plan = ctx.plan()?;
    let orchestrator = ctx.orchestrator(&store, &plan).await?;
    let text = orchestrator
        .transcript(run)
        .await
        .map_err(CliError::failed)?;
    if ctx.json {
        print_json(&json!({ "run": run, "transcript": text }));
    } else {
        print!("{text}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// approvals

async fn approvals(ctx: &Ctx) -> Result<(), CliError> {
    let store = ctx.open_store(false).await?;
    let plan = ctx.plan()?;
    let orchestrator = ctx.orchestrator(&store, &plan).await?;
    let inbox = orchestrator.inbox().await.map_err(CliError::failed)?;
    if ctx.json {
        print_json(&inbox);
        return Ok(());
    }
    if inbox.is_empty() {
        println!("nothing waits for a human");
        return Ok(());
    }
    for p in &inbox {
        println!(
            "{}  {}{}",
            short(&p.id.to_string()),
            p.action,
            p.task
                .as_deref()
                .map(|t| format!("  (task {t})"))
                .unwrap_or_default()
        );
        if let Some(reason) = &p.reason {
            println!("    why       {reason}");
        }
        println!("    proposed  {}", p.proposed);
        println!(
            "    asks      {} (who may answer: {})",
            p.anchor,
            if p.may_answer.is_empty() {
                "nobody".to_string()
            } else {
                p.may_answer.join(", ")
            }
        );
        println!(
            "    answers   {}; deadline {}",
            p.allowed
                .iter()
                .map(|k| format!("{k:?}").to_lowercase())
                .collect::<Vec<_>>()
                .join(", "),
            p.expires_at.to_rfc3339()
        );
    }
    println!(
        "{} pending; `aios approve ID`, `aios edit ID --input FILE`, `aios reject ID --reason TEXT`",
        inbox.len()
    );
    Ok(())
}

async fn decide(ctx: &Ctx, given: &str, response: ApprovalResponse) -> Result<(), CliError> {
    let store = ctx.open_store(false).await?;
    let human = ctx.human(&store).await?;
    let plan = ctx.plan()?;
    let orchestrator = ctx.orchestrator(&store, &plan).await?;
    let pending = orchestrator
        .pending_approvals()
        .await
        .map_err(CliError::failed)?;
    let id = match resolve("pending approval", given, pending.iter().map(|r| r.id)) {
        Ok(id) => id,
        Err(not_pending) => {
            // a whole id of a request that is no longer pending: say so, as when two
            // answers race and this one lost
            if let Some(done) = decided_already(&store, given).await? {
                return Err(done);
            }
            return Err(not_pending);
        }
    };
    let kind = format!("{:?}", response.kind()).to_lowercase();
    let run = orchestrator
        .answer_approval(id, HumanId::from_name(&human), response)
        .await
        .map_err(|e| match e {
            OrchestratorError::Approval {
                error: aios_governance::ApprovalError::AlreadyDecided { .. },
                ..
            } => already_decided(id),
            e => CliError::Refused(format!("{human} may not answer {id}: {e}")),
        })?;
    if ctx.json {
        print_json(&json!({ "approval": id, "run": run, "by": human, "answer": kind }));
    } else {
        println!(
            "{kind}: {} by {human}; run {} goes on when its worker picks it up",
            short(&id.to_string()),
            short(&run.to_string())
        );
    }
    Ok(())
}

/// The refusal of an answer to a request answered before.
fn already_decided(id: aios_core::ApprovalId) -> CliError {
    CliError::Refused(format!(
        "approval {id} was answered already (an approval is answered once): nothing changed"
    ))
}

/// The refusal for `given` if it is the whole id of a request that is no longer pending.
async fn decided_already(store: &Store, given: &str) -> Result<Option<CliError>, CliError> {
    let Ok(id) = given.trim().parse::<aios_core::ApprovalId>() else {
        return Ok(None);
    };
    let request = store.approvals().get(id).await.map_err(CliError::failed)?;
    Ok(match request.map(|r| r.state) {
        Some(aios_governance::ApprovalState::Decided { .. })
        | Some(aios_governance::ApprovalState::Redeemed { .. }) => Some(already_decided(id)),
        Some(aios_governance::ApprovalState::Expired { .. }) => Some(CliError::Refused(format!(
            "approval {id} expired before it was answered: nothing changed"
        ))),
        _ => None,
    })
}

// ---------------------------------------------------------------------------------------
// operator controls

async fn open_controls(store: &Store) -> Result<Controls, CliError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    Controls::open(store.control_store(), clock, store.audit_log())
        .await
        .map_err(CliError::failed)
}

async fn control(ctx: &Ctx, action: ControlAction, args: ControlArgs) -> Result<(), CliError> {
    let store = ctx.open_store(false).await?;
    let human = ctx.human(&store).await?;
    let by = Principal::Human(HumanId::from_name(&human));
    let t = &args.target;
    if let Some(given) = &t.run {
        let run = find_run(&store, given).await?;
        let plan = ctx.plan()?;
        let orchestrator = ctx.orchestrator(&store, &plan).await?;
        let control = match action {
            ControlAction::Pause => RunControl::Pause,
            ControlAction::Stop => RunControl::Cancel,
            _ => RunControl::Resume,
        };
        orchestrator
            .control_run(run, control, by, &args.reason)
            .await
            .map_err(|e| CliError::Refused(e.to_string()))?;
        let done = json!({ "target": format!("run {run}"), "action": action.name(), "by": human });
        return done_control(ctx, done);
    }
    let target = if t.all {
        ControlTarget::Organisation
    } else {
        let plan = ctx.plan()?;
        if let Some(name) = &t.agent {
            known_name(ctx, "agent", name, plan.ids.agents.keys())?;
            ControlTarget::Agent(plan.ids.agents[name])
        } else if let Some(name) = &t.role {
            known_name(ctx, "role", name, plan.ids.roles.keys())?;
            ControlTarget::Role(plan.ids.roles[name])
        } else if let Some(name) = &t.pathway {
            known_name(ctx, "pathway", name, plan.ids.pathways.keys())?;
            ControlTarget::Pathway(plan.ids.pathways[name])
        } else {
            return Err(CliError::Failed(
                "name a target: --all, --agent, --role, --pathway or --run".into(),
            ));
        }
    };
    let controls = open_controls(&store).await?;
    controls
        .apply(ControlCommand {
            target,
            action: action.clone(),
            by,
            reason: args.reason.clone(),
            until: None,
        })
        .await
        .map_err(|e| CliError::Refused(e.to_string()))?;
    let shown = t
        .agent
        .as_ref()
        .map(|n| format!("agent {n}"))
        .or(t.role.as_ref().map(|n| format!("role {n}")))
        .or(t.pathway.as_ref().map(|n| format!("pathway {n}")))
        .unwrap_or_else(|| "everything".into());
    done_control(
        ctx,
        json!({ "target": shown, "action": action.name(), "by": human }),
    )
}

/// `Ok` if `name` is among `known`, else a `NotFound` listing them.
fn known_name<'a>(
    ctx: &Ctx,
    kind: &str,
    name: &str,
    known: impl Iterator<Item = &'a String>,
) -> Result<(), CliError> {
    let known: Vec<&String> = known.collect();
    if known.iter().any(|k| k.as_str() == name) {
        Ok(())
    } else {
        Err(CliError::NotFound(format!(
            "no {kind} `{name}` in `{}` (known: {})",
            ctx.workspace.display(),
            known
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

fn done_control(ctx: &Ctx, done: serde_json::Value) -> Result<(), CliError> {
    if ctx.json {
        print_json(&done);
    } else {
        println!(
            "{}: {} (by {}; recorded in the audit log)",
            done["action"].as_str().unwrap_or_default(),
            done["target"].as_str().unwrap_or_default(),
            done["by"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

async fn controls(ctx: &Ctx) -> Result<(), CliError> {
    let store = ctx.open_store(false).await?;
    let controls = open_controls(&store).await?;
    let names = ctx
        .plan()
        .ok()
        .map(|p| target_names(&p))
        .unwrap_or_default();
    let name = |t: &ControlTarget| {
        names
            .get(&t.to_string())
            .cloned()
            .unwrap_or_else(|| t.to_string())
    };
    let history = controls.history();
    let snapshot = controls.snapshot();
    // each target once, in the order it was first controlled, if a halt is in force on it
    let mut seen = BTreeSet::new();
    let in_force: Vec<(String, String)> = history
        .iter()
        .map(|r| r.command.target)
        .filter(|t| seen.insert(t.to_string()))
        .filter_map(|t| {
            snapshot
                .halt(t)
                .map(|halt| (name(&t), format!("{halt:?}").to_lowercase()))
        })
        .collect();
    if ctx.json {
        print_json(&json!({
            "in_force": in_force.iter().map(|(n, h)| json!({ "target": n, "halt": h })).collect::<Vec<_>>(),
            "history": history,
        }));
        return Ok(());
    }
    if in_force.is_empty() {
        println!("nothing is paused or stopped");
    } else {
        for (n, h) in &in_force {
            println!("{h}: {n}");
        }
    }
    if !history.is_empty() {
        println!();
        let mut table = Table::new(["AT", "ACTION", "TARGET", "BY", "REASON"]);
        for r in &history {
            table.row([
                r.at.to_rfc3339(),
                r.command.action.name().to_string(),
                name(&r.command.target),
                principal_name(&r.command.by, &names),
                r.command.reason.clone(),
            ]);
        }
        table.print();
    }
    Ok(())
}

/// A principal as the workspace names it.
fn principal_name(p: &Principal, names: &BTreeMap<String, String>) -> String {
    names
        .get(&p.to_string())
        .cloned()
        .unwrap_or_else(|| p.to_string())
}

/// Control targets and humans as the workspace names them, by their displayed ids.
fn target_names(plan: &Plan) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for a in &plan.model.anchors {
        for h in a.holders.iter().chain(a.deputy.iter()) {
            out.insert(
                Principal::Human(HumanId::from_name(h)).to_string(),
                h.clone(),
            );
        }
    }
    for (n, id) in &plan.ids.agents {
        out.insert(ControlTarget::Agent(*id).to_string(), format!("agent {n}"));
    }
    for (n, id) in &plan.ids.roles {
        out.insert(ControlTarget::Role(*id).to_string(), format!("role {n}"));
    }
    for (n, id) in &plan.ids.pathways {
        out.insert(
            ControlTarget::Pathway(*id).to_string(),
            format!("pathway {n}"),
        );
    }
    out
}

// ---------------------------------------------------------------------------------------
// the audit record

fn parse_anchor(text: &str) -> Result<ChainHead, CliError> {
    let bad = || {
        CliError::Failed(format!(
            "--anchor `{text}`: give a head as `aios audit head` prints it, LEN:HASH"
        ))
    };
    let (len, hash) = text.trim().split_once(':').ok_or_else(bad)?;
    let len: u64 = len.parse().map_err(|_| bad())?;
    let bytes = hex::decode(hash).map_err(|_| bad())?;
    let hash: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
    Ok(ChainHead {
        len,
        hash: EntryHash(hash),
    })
}

async fn audit_verify(ctx: &Ctx, anchor: Option<&str>) -> Result<(), CliError> {
    let anchor = anchor.map(parse_anchor).transpose()?;
    let store = ctx.open_store(false).await?;
    let log = store.audit_log();
    let head = log.head().await.map_err(CliError::failed)?;
    let bar = crate::output::progress(head.len, "verifying the audit chain");
    let report =
        aios_core::verify_with_progress(log.as_ref(), anchor, None, |n| bar.set_position(n))
            .await
            .map_err(CliError::failed)?;
    bar.finish_and_clear();
    if ctx.json {
        print_json(&json!({
            "intact": report.is_intact(),
            "checked": report.checked,
            "head": head_text(&report.head),
            "problems": report.problems,
        }));
    } else if report.is_intact() {
        println!(
            "intact: {} entries, head {}",
            report.checked,
            head_text(&report.head)
        );
    } else {
        println!(
            "BROKEN: {} problem{} in {} entries",
            report.problems.len(),
            plural(report.problems.len()),
            report.checked
        );
        for p in &report.problems {
            println!("  {}", serde_json::to_string(p).unwrap_or_default());
        }
    }
    if report.is_intact() {
        Ok(())
    } else {
        Err(CliError::Problems("the audit chain does not verify".into()))
    }
}

fn head_text(head: &ChainHead) -> String {
    format!("{}:{}", head.len, head.hash)
}

async fn audit_head(ctx: &Ctx) -> Result<(), CliError> {
    let store = ctx.open_store(false).await?;
    let head = store.audit_log().head().await.map_err(CliError::failed)?;
    if ctx.json {
        print_json(&json!({ "len": head.len, "hash": head.hash, "anchor": head_text(&head) }));
    } else {
        println!("{}", head_text(&head));
    }
    Ok(())
}

async fn audit_export(ctx: &Ctx) -> Result<(), CliError> {
    let store = ctx.open_store(false).await?;
    let log = store.audit_log();
    let head = log.head().await.map_err(CliError::failed)?;
    let bar = crate::output::progress(head.len, "exporting the audit record");
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut from = 0u64;
    let mut unreadable = 0u64;
    loop {
        let page = log.read(from, 4096).await.map_err(CliError::failed)?;
        if page.is_empty() {
            break;
        }
        from += page.len() as u64;
        for stored in &page {
            match stored.entry() {
                Some(e) => {
                    let line = serde_json::to_string(e).map_err(CliError::failed)?;
                    writeln!(out, "{line}").map_err(CliError::failed)?;
                }
                None => unreadable += 1,
            }
        }
        bar.set_position(from);
    }
    out.flush().map_err(CliError::failed)?;
    bar.finish_and_clear();
    if unreadable > 0 {
        return Err(CliError::Problems(format!(
            "{unreadable} entr{} could not be read (`aios audit verify` says which)",
            if unreadable == 1 { "y" } else { "ies" }
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// memory

async fn memory(ctx: &Ctx) -> Result<aios_memory::Memory, CliError> {
    let store = ctx.open_store(false).await?;
    store.memory().await.map_err(CliError::failed)
}

async fn memory_search(ctx: &Ctx, query: &str, limit: usize) -> Result<(), CliError> {
    let memory = memory(ctx).await?;
    let hits = memory
        .recall(
            &RecallQuery::text(query)
                .k(limit)
                .mode(aios_memory::RecallMode::Keyword),
        )
        .await
        .map_err(CliError::failed)?;
    if ctx.json {
        let out: Vec<_> = hits
            .iter()
            .map(|h| {
                json!({
                    "id": h.record.id, "version": h.record.version, "scope": h.record.scope,
                    "content": h.record.content, "score": h.score.total,
                    "provenance": h.record.provenance, "recorded_at": h.record.recorded_at,
                })
            })
            .collect();
        print_json(&out);
        return Ok(());
    }
    if hits.is_empty() {
        println!("nothing found for `{query}`");
        return Ok(());
    }
    for h in &hits {
        println!(
            "{} v{}  [{}]  {:.3}\n    {}",
            h.record.id, h.record.version, h.record.scope, h.score.total, h.record.content
        );
    }
    Ok(())
}

async fn memory_history(ctx: &Ctx, given: &str) -> Result<(), CliError> {
    let id: MemoryId = given
        .trim()
        .parse()
        .map_err(|_| CliError::NotFound(format!("`{given}` is not a memory id")))?;
    let memory = memory(ctx).await?;
    let versions = memory
        .history(id)
        .await
        .map_err(|e| CliError::NotFound(format!("memory {id}: {e}")))?;
    if ctx.json {
        print_json(&versions);
        return Ok(());
    }
    for r in &versions {
        println!(
            "v{}  recorded {}  valid {} .. {}\n    {}",
            r.version,
            r.recorded_at.to_rfc3339(),
            r.valid_from
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| "-".into()),
            r.valid_to
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| "-".into()),
            r.content
        );
    }
    Ok(())
}

async fn memory_verify(ctx: &Ctx) -> Result<(), CliError> {
    let memory = memory(ctx).await?;
    let bar = crate::output::spinner("verifying memory");
    let report = memory.verify().await.map_err(CliError::failed);
    bar.finish_and_clear();
    let report = report?;
    if ctx.json {
        print_json(&report);
    } else if report.is_intact() {
        println!(
            "intact: {} records in {} lineages",
            report.records, report.lineages
        );
    } else {
        println!(
            "DAMAGED: {} finding{}",
            report.findings.len(),
            plural(report.findings.len())
        );
        for f in &report.findings {
            println!("  {}", serde_json::to_string(f).unwrap_or_default());
        }
    }
    if report.is_intact() {
        Ok(())
    } else {
        Err(CliError::Problems("memory does not verify".into()))
    }
}

async fn memory_prune(ctx: &Ctx, apply: bool) -> Result<(), CliError> {
    let memory = memory(ctx).await?;
    let mut policy = PrunePolicy::expired_only();
    if !apply {
        policy = policy.dry_run();
    }
    let bar = crate::output::spinner("pruning memory");
    let report = memory.prune(&policy).await.map_err(CliError::failed);
    bar.finish_and_clear();
    let report = report?;
    if ctx.json {
        print_json(&report);
    } else {
        println!(
            "{} {} of {} records{}",
            if apply { "pruned" } else { "would prune" },
            report.pruned.len(),
            report.examined,
            if apply {
                ""
            } else {
                " (dry run: --apply removes them)"
            }
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// governance versions

async fn governance_versions(ctx: &Ctx) -> Result<(), CliError> {
    let plan = ctx.plan()?;
    // runs per governance version, from the store when there is one
    let mut runs: BTreeMap<u64, usize> = BTreeMap::new();
    if ctx.location()?.exists() {
        let store = ctx.open_store(false).await?;
        let checkpoints = store.checkpoints();
        for r in checkpoints.list(false).await.map_err(CliError::failed)? {
            if let Some(c) = checkpoints.latest(r.run).await.map_err(CliError::failed)? {
                *runs.entry(c.state.governance_version).or_default() += 1;
            }
        }
    }
    let log = &plan.model.changelog;
    if ctx.json {
        print_json(&json!({
            "current": plan.model.version,
            "changelog": log,
            "runs_per_version": runs,
        }));
        return Ok(());
    }
    println!(
        "current version {} (`{}`)",
        plan.model.version,
        ctx.workspace.display()
    );
    let mut table = Table::new(["VERSION", "DATE", "AUTHOR", "RUNS", "CHANGE"]);
    for e in log {
        table.row([
            e.version.to_string(),
            e.date.clone().unwrap_or_default(),
            e.author.clone().unwrap_or_default(),
            runs.get(&e.version).copied().unwrap_or(0).to_string(),
            e.summary.clone(),
        ]);
    }
    for (v, n) in &runs {
        if !log.iter().any(|e| e.version == *v) {
            table.row([
                v.to_string(),
                String::new(),
                String::new(),
                n.to_string(),
                "(no change-log entry)".into(),
            ]);
        }
    }
    table.print();
    Ok(())
}

fn governance_diff(ctx: &Ctx, old: &Path, new: &Path) -> Result<(), CliError> {
    let model = |path: &Path| -> Result<aios_governance::GovernanceModel, CliError> {
        let loaded = aios_workspace::load(path)
            .map_err(|e| CliError::Failed(format!("workspace `{}`: {e}", path.display())))?;
        aios_workspace::plan(&loaded, &ValidateOptions::default())
            .map(|p| p.model)
            .map_err(|e| CliError::Failed(format!("workspace `{}`: {e}", path.display())))
    };
    let diff = aios_governance::diff(&model(old)?, &model(new)?);
    if ctx.json {
        print_json(&diff);
    } else if diff.is_empty() {
        println!(
            "no change between version {} and {}",
            diff.from_version, diff.to_version
        );
    } else {
        print!("{diff}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// humans

async fn humans_add(ctx: &Ctx, name: &str) -> Result<(), CliError> {
    let name = name.trim();
    let plan = ctx.plan()?;
    let known: BTreeSet<&str> = plan
        .model
        .anchors
        .iter()
        .flat_map(|a| a.holders.iter().chain(a.deputy.iter()))
        .map(String::as_str)
        .collect();
    if !known.contains(name) {
        return Err(CliError::NotFound(format!(
            "`{name}` holds no anchor in `{}` (holders and deputies: {})",
            ctx.workspace.display(),
            known.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    // the first human needs write access to the store (the file, or the database's
    // credentials); every later one a human's token
    let store = ctx.open_store(true).await?;
    let humans = store.humans()?;
    let by = if humans.is_empty().await.map_err(CliError::failed)? {
        None
    } else {
        Some(ctx.human(&store).await?)
    };
    let token = humans.add(name, by.as_deref()).await.map_err(|e| match e {
        humans::HumansError::Exists(_) => CliError::Failed(e.to_string()),
        humans::HumansError::NotAllowed(_) => CliError::Refused(e.to_string()),
        other => CliError::failed(other),
    })?;

    if ctx.json {
        print_json(&json!({ "human": name, "token": token }));
    } else {
        println!("{token}");
        eprintln!(
            "the token of {name}, shown this once (only its hash is kept): give it to {name}, \
             who sets AIOS_TOKEN or keeps it in a file only they can read (--token-file)"
        );
    }
    Ok(())
}

async fn humans_list(ctx: &Ctx) -> Result<(), CliError> {
    let store = ctx.open_store(false).await?;
    let list = store.humans()?.list().await.map_err(CliError::failed)?;
    if ctx.json {
        print_json(&list);
        return Ok(());
    }
    if list.is_empty() {
        println!("no human has a credential: `aios humans add NAME`");
        return Ok(());
    }
    let mut table = Table::new(["HUMAN", "SINCE", "ADDED BY"]);
    for h in &list {
        table.row([
            h.name.clone(),
            h.added_at.clone(),
            h.added_by.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    table.print();
    Ok(())
}

async fn humans_remove(ctx: &Ctx, name: &str) -> Result<(), CliError> {
    let store = ctx.open_store(false).await?;
    let by = ctx.human(&store).await?;
    let removed = store
        .humans()?
        .remove(name, &by)
        .await
        .map_err(CliError::failed)?;
    if !removed {
        return Err(CliError::NotFound(format!("`{name}` has no credential")));
    }
    if ctx.json {
        print_json(&json!({ "removed": name, "by": by }));
    } else {
        println!("{name}'s credential is removed (by {by})");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// the web console

/// Logs the console's humans in with the store's credentials (on PostgreSQL through
/// `block_in_place`: `aios serve` runs on a multi-threaded runtime).
struct StoreHumans(Humans);

impl aios_console::Authenticator for StoreHumans {
    fn authenticate(&self, token: &str) -> Result<Option<String>, String> {
        self.0
            .authenticate_blocking(token)
            .map_err(|e| e.to_string())
    }
}

async fn serve(ctx: &Ctx, listen: std::net::SocketAddr) -> Result<(), CliError> {
    let store = ctx.open_store(false).await?;
    let (loaded, plan) = ctx.load_and_plan()?;
    let orchestrator = ctx.orchestrator(&store, &plan).await?;
    let controls = Arc::new(open_controls(&store).await?);
    let memory = store.memory().await.map_err(CliError::failed)?;
    let auth = Arc::new(StoreHumans(store.humans()?));
    let mut b = aios_console::Console::builder(orchestrator, auth)
        .controls(controls)
        .budgets(store.budget_ledger(Arc::new(SystemClock)))
        .memory(memory);
    for (n, id) in &plan.ids.pathways {
        b = b.control_target(format!("pathway {n}"), ControlTarget::Pathway(*id));
    }
    for (n, id) in &plan.ids.roles {
        b = b.control_target(format!("role {n}"), ControlTarget::Role(*id));
    }
    for (n, id) in &plan.ids.agents {
        b = b.control_target(format!("agent {n}"), ControlTarget::Agent(*id));
    }
    for a in &plan.model.anchors {
        for h in a.holders.iter().chain(a.deputy.iter()) {
            b = b.human(h.clone());
        }
    }
    let builder = report_builder(&loaded, &plan, None)?;
    let log: Arc<dyn AuditLog> = store.audit_log();
    let source: aios_console::ReportSource = Arc::new(move || {
        let (log, builder) = (log.clone(), builder.clone());
        Box::pin(async move {
            aios_workspace::report_from_log(log.as_ref(), builder)
                .await
                .map_err(|e| e.to_string())
        })
    });
    let router = b.report(source).build().router();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::Failed(format!("cannot listen on {listen}: {e}")))?;
    let bound = listener.local_addr().map_err(CliError::failed)?;
    if !bound.ip().is_loopback() {
        eprintln!(
            "aios: the console listens on {bound}, beyond this machine: its cookies and tokens \
             travel in clear unless TLS is in front of it"
        );
    }
    eprintln!(
        "the console is at http://{bound}/ (log in with a token from `aios humans add NAME`)"
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| CliError::Failed(format!("the console stopped: {e}")))
}
