//! Role templates (researcher, scheduler, editor, sales outreach, bookkeeper) and their
//! resolution: a manifest role is its template with every field it sets put over it.

use std::sync::OnceLock;

use aios_governance::{AutonomyLimits, EscalationRule};
use serde::Deserialize;

use crate::manifest::{Dur, FallbackDecl, GrantDecl, RetryDecl, RoleDecl};

/// The text of the built-in role templates (`templates/roles.toml` of this crate).
pub const ROLE_TEMPLATES_TOML: &str = include_str!("../templates/roles.toml");

/// The solo consultancy workspace template (`templates/solo_consultancy.toml`).
pub const SOLO_CONSULTANCY_TOML: &str = include_str!("../templates/solo_consultancy.toml");

/// The newsletter publisher workspace template (`templates/newsletter.toml`).
pub const NEWSLETTER_TOML: &str = include_str!("../templates/newsletter.toml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    roles: Vec<RoleDecl>,
}

/// The built-in role templates, by key in file order. Empty only if the embedded file were
/// broken, which a test rules out.
pub fn role_templates() -> &'static [RoleDecl] {
    static TEMPLATES: OnceLock<Vec<RoleDecl>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        toml::from_str::<TemplateFile>(ROLE_TEMPLATES_TOML)
            .map(|f| f.roles)
            .unwrap_or_default()
    })
}

/// The template with this key.
pub fn role_template(key: &str) -> Option<&'static RoleDecl> {
    role_templates().iter().find(|t| t.key == key)
}

/// A role with every field known: its template (if any) with the manifest's fields over it.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleSpec {
    /// The role's key.
    pub key: String,
    /// The template it came from.
    pub template: Option<String>,
    /// What it does.
    pub description: String,
    /// Its agent's instructions.
    pub instructions: String,
    /// Its default pathway's key.
    pub pathway: String,
    /// The anchor of a made pathway (the final authority when `None`).
    pub anchor: Option<String>,
    /// Connector keys its agent may call.
    pub connectors: Vec<String>,
    /// Memory grants.
    pub grants: Vec<GrantDecl>,
    /// Retry and timeouts, every field set.
    pub retry: RetryDecl,
    /// What a failure does to the run.
    pub fallback: FallbackDecl,
    /// Calls per task at most.
    pub max_calls: u32,
    /// Limits of a made pathway.
    pub limits: AutonomyLimits,
    /// Escalation of a made pathway.
    pub escalation: Vec<EscalationRule>,
}

fn default_retry() -> RetryDecl {
    let d = aios_orchestrator::RetryPolicy::default();
    RetryDecl {
        max_attempts: Some(d.max_attempts),
        base_delay: Some(Dur(d.base_delay)),
        max_delay: Some(Dur(d.max_delay)),
        attempt_timeout: d.attempt_timeout.map(Dur),
        overall_timeout: d.overall_timeout.map(Dur),
    }
}

fn over(base: RetryDecl, top: Option<RetryDecl>) -> RetryDecl {
    let Some(t) = top else { return base };
    RetryDecl {
        max_attempts: t.max_attempts.or(base.max_attempts),
        base_delay: t.base_delay.or(base.base_delay),
        max_delay: t.max_delay.or(base.max_delay),
        attempt_timeout: t.attempt_timeout.or(base.attempt_timeout),
        overall_timeout: t.overall_timeout.or(base.overall_timeout),
    }
}

/// Resolves a manifest role over its template, field by field. Errors name the unknown
/// template and the known ones.
pub fn resolve_role(decl: &RoleDecl) -> Result<RoleSpec, String> {
    let empty = RoleDecl::default();
    let t = match decl.template.as_deref() {
        None => &empty,
        Some(name) => role_template(name).ok_or_else(|| {
            let known: Vec<String> = role_templates()
                .iter()
                .map(|t| format!("`{}`", t.key))
                .collect();
            format!(
                "unknown role template `{name}` (known: {})",
                known.join(", ")
            )
        })?,
    };
    let pick = |a: &Option<String>, b: &Option<String>| {
        a.clone().or_else(|| b.clone()).unwrap_or_default()
    };
    Ok(RoleSpec {
        key: decl.key.clone(),
        template: decl.template.clone(),
        description: pick(&decl.description, &t.description),
        instructions: pick(&decl.instructions, &t.instructions),
        pathway: decl.pathway.clone().unwrap_or_else(|| decl.key.clone()),
        anchor: decl.anchor.clone(),
        connectors: decl
            .connectors
            .clone()
            .or_else(|| t.connectors.clone())
            .unwrap_or_default(),
        grants: decl
            .grants
            .clone()
            .or_else(|| t.grants.clone())
            .unwrap_or_default(),
        retry: over(over(default_retry(), t.retry), decl.retry),
        fallback: decl
            .fallback
            .or(t.fallback)
            .unwrap_or(FallbackDecl::FailRun),
        max_calls: decl.max_calls.or(t.max_calls).unwrap_or(32),
        limits: decl
            .limits
            .clone()
            .or_else(|| t.limits.clone())
            .unwrap_or_default(),
        escalation: decl
            .escalation
            .clone()
            .or_else(|| t.escalation.clone())
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_five_templates_parse() {
        let keys: Vec<&str> = role_templates().iter().map(|t| t.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "researcher",
                "scheduler",
                "editor",
                "sales_outreach",
                "bookkeeper"
            ]
        );
        for t in role_templates() {
            assert!(
                !t.instructions.clone().unwrap_or_default().is_empty(),
                "{}",
                t.key
            );
            assert!(
                !t.escalation.clone().unwrap_or_default().is_empty(),
                "{}",
                t.key
            );
            assert!(
                t.retry.is_some() && t.fallback.is_some() && t.grants.is_some(),
                "{}",
                t.key
            );
        }
    }

    #[test]
    fn fields_override_one_by_one() {
        let decl = RoleDecl {
            key: "ana".into(),
            template: Some("researcher".into()),
            max_calls: Some(5),
            retry: Some(RetryDecl {
                max_attempts: Some(7),
                ..RetryDecl::default()
            }),
            ..RoleDecl::default()
        };
        let spec = resolve_role(&decl).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(spec.max_calls, 5);
        assert_eq!(spec.retry.max_attempts, Some(7));
        // the rest of the retry stays the template's
        assert_eq!(spec.retry.base_delay, Dur::parse("1s").ok());
        assert_eq!(spec.fallback, FallbackDecl::Skip);
        assert_eq!(spec.pathway, "ana");
        assert!(spec.instructions.starts_with("You are the researcher"));
    }

    #[test]
    fn an_unknown_template_is_named() {
        let decl = RoleDecl {
            key: "x".into(),
            template: Some("astrologer".into()),
            ..RoleDecl::default()
        };
        let err = resolve_role(&decl).err().unwrap_or_default();
        assert!(
            err.contains("`astrologer`") && err.contains("`bookkeeper`"),
            "{err}"
        );
    }
}
