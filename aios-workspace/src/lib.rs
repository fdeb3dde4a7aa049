//! The AIOS operating model: one workspace manifest over the five levels of the model
//! (Foundation, Architecture, Governance, Implementation, Operations), validated with the
//! file and TOML path of every finding.
//!
//! ```
//! let loaded = aios_workspace::parse("workspace.toml", aios_workspace::SOLO_CONSULTANCY_TOML)?;
//! let report = aios_workspace::validate(&loaded, &Default::default());
//! assert!(report.is_ok(), "{report}");
//! # Ok::<(), aios_workspace::LoadError>(())
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
    report_from_log, Check, Evidence, Names, OpsReport, ReportBuilder, Stats, Window, EVIDENCE_CAP,
};
pub use templates::{
    resolve_role, role_template, role_templates, RoleSpec, NEWSLETTER_TOML, ROLE_TEMPLATES_TOML,
    SOLO_CONSULTANCY_TOML,
};
pub use validate::{
    compose, validate, Composed, Finding, FindingKind, Level, Report, ValidateOptions,
};
