//! The AIOS operating model: one workspace manifest over the five levels of the model
//! (Foundation, Architecture, Governance, Implementation, Operations), and what is done with
//! it:
//!
//! 1. **Load and validate** ([`load`], [`parse`], [`validate`]): one TOML file plus
//!    `workspace.include = [..]` of further files in its folder; every finding of every level
//!    with its file and TOML path (`workflows.toml: architecture.workflows.weekly.tasks[2].role`).
//! 2. **Role and workspace templates** ([`role_templates`], [`SOLO_CONSULTANCY_TOML`],
//!    [`NEWSLETTER_TOML`]): researcher, scheduler, editor, sales outreach and bookkeeper, each
//!    overridable field by field.
//! 3. **Bootstrap** ([`plan`], [`Plan`]): deterministic ids and content hash, the governor with
//!    the implementation level's [`PhaseGate`], a configured orchestrator builder, idempotent
//!    memory seeds, the audit record; [`update`] for a changed manifest.
//! 4. **Assess** ([`assess`]): per level missing, partial, defined or operating, and the
//!    bottleneck (the rules are a table in [`assess`]'s module docs, `src/assess.rs`).
//! 5. **Operations report** ([`ReportBuilder`], [`report_from_log`]): one streaming pass over any
//!    audit log for a window, per pathway, role, agent and workflow, against the targets.
//! 6. **Recalibrate** ([`suggest`], [`accept`]): suggestions citing audit sequence numbers,
//!    never beyond the charter; accepting publishes the next governance version.
//!
//! The crate does no I/O besides [`load`] reading the manifest and its includes.
//!
//! ```
//! use aios_workspace::{assess, parse, plan, Level, ValidateOptions};
//! let loaded = parse("workspace.toml", aios_workspace::SOLO_CONSULTANCY_TOML)?;
//! let report = aios_workspace::validate(&loaded, &ValidateOptions::default());
//! assert!(report.is_ok(), "{report}");
//!
//! let plan = plan(&loaded, &ValidateOptions::default()).map_err(|e| e.to_string())?;
//! assert_eq!(plan.roles.len(), 4);
//! // the same manifest gives the same ids and hash everywhere
//! assert_eq!(plan.ids.roles["editor"], aios_core::RoleId::from_name("editor"));
//! assert_eq!(plan.hash, aios_workspace::content_hash(&loaded.manifest));
//!
//! let assessment = assess(&loaded, &ValidateOptions::default(), None);
//! assert!(assessment.bottleneck.is_none()); // on paper every level is defined
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod assess;
mod bootstrap;
mod load;
mod manifest;
mod recalibrate;
mod report;
mod templates;
mod validate;

pub use assess::{assess, criterion_met, Assessment, Bottleneck, LevelAssessment, Status};
pub use bootstrap::{
    plan, seed_id, update, BootstrapError, BootstrapRecord, Ids, PhaseGate, Plan, SeedPlan,
    SeedReport, Update, BOOTSTRAP_EVENT,
};
pub use load::{content_hash, load, parse, parse_with, ContentHash, LoadError, Loaded, SourceMap};
pub use manifest::*;
pub use recalibrate::{
    accept, answer_record, suggest, AcceptError, Direction, ProposedChange, Suggestion, Threshold,
};
pub use report::{
    report_from_log, report_with_progress, Bucket, Check, Evidence, Interval, Names, OpsReport,
    ReportBuilder, Stats, Window, EVIDENCE_CAP, MAX_GAP_FILLED,
};
pub use templates::{
    resolve_role, role_template, role_templates, RoleSpec, NEWSLETTER_TOML, ROLE_TEMPLATES_TOML,
    SOLO_CONSULTANCY_TOML,
};
pub use validate::{
    compose, validate, Composed, Finding, FindingKind, Level, Report, ValidateOptions,
};
