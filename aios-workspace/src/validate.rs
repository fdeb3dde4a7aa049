//! Validation across the five levels: every finding with its file and TOML path.

use std::collections::{BTreeMap, BTreeSet};

use aios_governance::{ChangeLogEntry, Charter, GovernanceModel, ManifestRole, Pathway, Severity};
use serde::{Deserialize, Serialize};

use crate::load::Loaded;
use crate::manifest::Manifest;
use crate::templates::{resolve_role, RoleSpec};

/// The five levels of the operating model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Intent, outcomes, boundaries, authority.
    Foundation,
    /// Roles, connectors, memory, workflows.
    Architecture,
    /// Anchors, pathways, budgets.
    Governance,
    /// Phases, owners, dependencies, entry criteria.
    Implementation,
    /// Targets, review, recalibration.
    Operations,
}

impl Level {
    /// All five, in order.
    pub const ALL: [Level; 5] = [
        Level::Foundation,
        Level::Architecture,
        Level::Governance,
        Level::Implementation,
        Level::Operations,
    ];

    /// The level's table name in the manifest.
    pub fn key(self) -> &'static str {
        match self {
            Level::Foundation => "foundation",
            Level::Architecture => "architecture",
            Level::Governance => "governance",
            Level::Implementation => "implementation",
            Level::Operations => "operations",
        }
    }

    fn of_path(path: &str) -> Level {
        Level::ALL
            .into_iter()
            .find(|l| path.starts_with(l.key()))
            .unwrap_or(Level::Foundation)
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key())
    }
}

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FindingKind {
    /// A finding of the governance model's own validation.
    Governance(aios_governance::FindingKind),
    /// Two entities of one kind share a key.
    DuplicateKey,
    /// An entity without a key or a required text left empty.
    Empty,
    /// A reference to a role that is not defined.
    UnknownRole,
    /// A role names a template that does not exist.
    UnknownTemplate,
    /// A reference to a connector that is not defined.
    UnknownConnector,
    /// A connector credential whose name is not in the vault.
    UnknownCredential,
    /// A task waits for a task its workflow does not have.
    UnknownTask,
    /// Tasks of a workflow wait for each other in a circle.
    TaskCycle,
    /// A scope that cannot be parsed, or is outside the declared scopes.
    InvalidScope,
    /// A reference to an anchor that is not defined.
    UnknownAnchor,
    /// A reference to a pathway that is not defined.
    UnknownPathway,
    /// A reference to a workflow that is not defined.
    UnknownWorkflow,
    /// A reference to a phase that is not defined.
    UnknownPhase,
    /// Phases depend on each other in a circle (or one on itself).
    PhaseCycle,
    /// A phase is entered while one it depends on is not.
    PhaseOrder,
    /// An outcome without a target, or a target without a metric.
    MissingTarget,
    /// A number out of range or a criterion that says nothing.
    InvalidValue,
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FindingKind::Governance(k) => write!(f, "{k}"),
            other => {
                let s = serde_json::to_value(other)
                    .ok()
                    .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
                    .unwrap_or_default();
                f.write_str(&s)
            }
        }
    }
}

/// One thing wrong with a manifest, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The level it belongs to.
    pub level: Level,
    /// The file (`workspace.toml`, or an included file).
    pub file: String,
    /// The TOML path (`architecture.workflows.weekly.tasks[2].role`).
    pub path: String,
    /// What kind of problem.
    pub kind: FindingKind,
    /// How serious: an error refuses the bootstrap.
    pub severity: Severity,
    /// What is wrong, in words, with the offending values in backticks.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(
            f,
            "{sev}: {}: {}: {} ({})",
            self.file, self.path, self.message, self.kind
        )
    }
}

/// Every finding of a validation, in level order. A value, not an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The findings.
    pub findings: Vec<Finding>,
}

impl Report {
    /// `true` when there is no error.
    pub fn is_ok(&self) -> bool {
        !self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    /// The findings of one level.
    pub fn of_level(&self, level: Level) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.level == level)
    }

    /// The error findings.
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for finding in &self.findings {
            writeln!(f, "{finding}")?;
        }
        Ok(())
    }
}

/// What validation may check beyond the manifest itself.
#[derive(Debug, Clone, Default)]
pub struct ValidateOptions {
    /// The credential names the vault holds; when given, a connector credential not among
    /// them is an error. (Names only: the vault's values are never needed.)
    pub vault_names: Option<BTreeSet<String>>,
}

/// The manifest turned into the parts that run: resolved roles and the governance model.
#[derive(Debug, Clone)]
pub struct Composed {
    /// Every role, resolved over its template (a role whose template is unknown is left
    /// out; validation reports it).
    pub roles: Vec<RoleSpec>,
    /// The governance model: the charter from the foundation, the roles from the
    /// architecture, the governance level's anchors, pathways and budgets, and a pathway made
    /// from each role whose pathway the governance level does not define.
    pub model: GovernanceModel,
    /// For each pathway of the model, the TOML path it came from.
    pathway_origin: Vec<(String, bool)>,
    /// For each role of the model, its index among the manifest's roles.
    role_origin: Vec<usize>,
}

/// Builds the governance model and resolves the roles (see [`Composed`]).
pub fn compose(m: &Manifest) -> Composed {
    let f = m.foundation.clone().unwrap_or_default();
    let g = m.governance.clone().unwrap_or_default();
    let arch = m.architecture.clone().unwrap_or_default();
    let mut roles = Vec::new();
    let mut role_origin = Vec::new();
    for (i, decl) in arch.roles.iter().enumerate() {
        if let Ok(spec) = resolve_role(decl) {
            roles.push(spec);
            role_origin.push(i);
        }
    }
    let mut pathways = g.pathways.clone();
    let mut pathway_origin: Vec<(String, bool)> = (0..pathways.len())
        .map(|i| (format!("governance.pathways[{i}]"), false))
        .collect();
    for (spec, &i) in roles.iter().zip(&role_origin) {
        if pathways.iter().any(|p| p.key == spec.pathway) {
            continue;
        }
        pathways.push(Pathway {
            key: spec.pathway.clone(),
            description: spec.description.clone(),
            anchor: spec.anchor.clone().or_else(|| f.final_authority.clone()),
            delegate: Some(spec.key.clone()),
            limits: spec.limits.clone(),
            escalation: spec.escalation.clone(),
        });
        pathway_origin.push((format!("architecture.roles[{i}]"), true));
    }
    let mut changelog: Vec<ChangeLogEntry> = g.changelog.clone();
    if changelog.is_empty() {
        changelog.push(ChangeLogEntry {
            version: g.version,
            summary: format!(
                "bootstrapped from workspace `{}` v{}",
                m.workspace.name, m.workspace.version
            ),
            author: None,
            date: None,
        });
    }
    let model = GovernanceModel {
        schema: aios_governance::MODEL_SCHEMA_VERSION,
        version: g.version,
        changelog,
        charter: Charter {
            intent: f.intent.clone(),
            non_negotiables: f.non_negotiables.clone(),
            boundaries: f.boundaries.clone(),
            final_authority: f.final_authority.clone(),
        },
        anchors: g.anchors.clone(),
        roles: roles
            .iter()
            .map(|r| ManifestRole {
                key: r.key.clone(),
                description: r.description.clone(),
            })
            .collect(),
        pathways,
        budgets: g.budgets.clone(),
    };
    Composed {
        roles,
        model,
        pathway_origin,
        role_origin,
    }
}

impl Composed {
    /// Maps a path of the governance model to the manifest's.
    fn place(&self, path: &str) -> String {
        let (head, rest) = split_index(path);
        match head {
            Some(("pathways", i)) => match self.pathway_origin.get(i) {
                Some((origin, true)) => {
                    // a made pathway: its parts are the role's fields
                    let rest = match rest {
                        r if r.starts_with(".key") || r.starts_with(".delegate") => {
                            ".pathway".to_string()
                        }
                        r => r.to_string(),
                    };
                    format!("{origin}{rest}")
                }
                Some((origin, false)) => format!("{origin}{rest}"),
                None => format!("governance.{path}"),
            },
            Some(("roles", i)) => match self.role_origin.get(i) {
                Some(j) => format!("architecture.roles[{j}]{rest}"),
                None => "architecture.roles".into(),
            },
            _ => {
                if let Some(r) = path.strip_prefix("charter") {
                    format!("foundation{r}")
                } else {
                    format!("governance.{path}")
                }
            }
        }
    }
}

fn split_index(path: &str) -> (Option<(&str, usize)>, &str) {
    let Some(open) = path.find('[') else {
        return (None, path);
    };
    let Some(close) = path[open..].find(']').map(|c| c + open) else {
        return (None, path);
    };
    match path[open + 1..close].parse() {
        Ok(i) => (Some((&path[..open], i)), &path[close + 1..]),
        Err(_) => (None, path),
    }
}

struct Out<'a> {
    loaded: &'a Loaded,
    findings: Vec<Finding>,
}

impl Out<'_> {
    fn push(&mut self, severity: Severity, kind: FindingKind, path: String, message: String) {
        self.findings.push(Finding {
            level: Level::of_path(&path),
            file: self.loaded.sources.file_of(&path).to_string(),
            path,
            kind,
            severity,
            message,
        });
    }
    fn error(&mut self, kind: FindingKind, path: String, message: String) {
        self.push(Severity::Error, kind, path, message);
    }
    fn warn(&mut self, kind: FindingKind, path: String, message: String) {
        self.push(Severity::Warning, kind, path, message);
    }
    fn keys<'k>(&mut self, what: &str, keys: impl Iterator<Item = &'k str>) {
        let mut seen = BTreeSet::new();
        for (i, k) in keys.enumerate() {
            if k.trim().is_empty() {
                self.error(
                    FindingKind::Empty,
                    format!("{what}[{i}].key"),
                    "the key is empty".into(),
                );
            } else if !seen.insert(k) {
                self.error(
                    FindingKind::DuplicateKey,
                    format!("{what}[{i}].key"),
                    format!("key `{k}` is used twice"),
                );
            }
        }
    }
}

/// Validates a loaded manifest across all five levels.
pub fn validate(loaded: &Loaded, options: &ValidateOptions) -> Report {
    let m = &loaded.manifest;
    let mut out = Out {
        loaded,
        findings: vec![],
    };
    let composed = compose(m);
    if m.workspace.name.trim().is_empty() {
        out.error(
            FindingKind::Empty,
            "workspace.name".into(),
            "the workspace has no name".into(),
        );
    }

    // level 1
    if let Some(f) = &m.foundation {
        if f.intent.trim().is_empty() {
            out.error(
                FindingKind::Empty,
                "foundation.intent".into(),
                "the intent is empty".into(),
            );
        }
        out.keys(
            "foundation.outcomes",
            f.outcomes.iter().map(|o| o.key.as_str()),
        );
        for (i, o) in f.outcomes.iter().enumerate() {
            let at = format!("foundation.outcomes[{i}]");
            if o.metric.as_deref().map_or(true, |s| s.trim().is_empty()) {
                out.error(
                    FindingKind::MissingTarget,
                    format!("{at}.metric"),
                    format!("outcome `{}` has no measurable metric", o.key),
                );
            }
            match o.target {
                None => out.error(
                    FindingKind::MissingTarget,
                    format!("{at}.target"),
                    format!("outcome `{}` has no target", o.key),
                ),
                Some(b) if b.at_least.is_none() && b.at_most.is_none() => out.error(
                    FindingKind::MissingTarget,
                    format!("{at}.target"),
                    format!(
                        "the target of outcome `{}` sets neither `at_least` nor `at_most`",
                        o.key
                    ),
                ),
                Some(b) => {
                    if let (Some(l), Some(u)) = (b.at_least, b.at_most) {
                        if l > u {
                            out.error(
                                FindingKind::InvalidValue,
                                format!("{at}.target"),
                                format!(
                                    "`at_least` {l} is above `at_most` {u}: no value can meet it"
                                ),
                            );
                        }
                    }
                }
            }
        }
    }

    // level 2
    let arch = m.architecture.clone().unwrap_or_default();
    let role_keys: BTreeSet<&str> = arch.roles.iter().map(|r| r.key.as_str()).collect();
    let connector_keys: BTreeSet<&str> = arch.connectors.iter().map(|c| c.key.as_str()).collect();
    out.keys(
        "architecture.roles",
        arch.roles.iter().map(|r| r.key.as_str()),
    );
    out.keys(
        "architecture.connectors",
        arch.connectors.iter().map(|c| c.key.as_str()),
    );
    let scopes: Vec<String> = arch
        .memory
        .as_ref()
        .map(|l| l.scopes.clone())
        .unwrap_or_default();
    let check_scope = |out: &mut Out<'_>, path: String, scope: &str| {
        if let Err(e) = aios_memory::Scope::parse(scope) {
            out.error(
                FindingKind::InvalidScope,
                path,
                format!("scope `{scope}`: {e}"),
            );
        } else if !scopes.is_empty()
            && !scopes.iter().any(|s| {
                scope == s
                    || scope.starts_with(&format!("{s}/"))
                    || s.starts_with(&format!("{scope}/"))
            })
        {
            out.error(
                FindingKind::InvalidScope,
                path,
                format!(
                    "scope `{scope}` is not under any declared scope ({})",
                    scopes.join(", ")
                ),
            );
        }
    };
    for (i, r) in arch.roles.iter().enumerate() {
        let at = format!("architecture.roles[{i}]");
        let spec = match resolve_role(r) {
            Ok(s) => s,
            Err(e) => {
                out.error(FindingKind::UnknownTemplate, format!("{at}.template"), e);
                continue;
            }
        };
        for (ci, c) in spec.connectors.iter().enumerate() {
            if !connector_keys.contains(c.as_str()) {
                out.error(
                    FindingKind::UnknownConnector,
                    format!("{at}.connectors[{ci}]"),
                    format!(
                        "role `{}` uses connector `{c}`, which is not defined",
                        r.key
                    ),
                );
            }
        }
        for (gi, g) in spec.grants.iter().enumerate() {
            check_scope(&mut out, format!("{at}.grants[{gi}].scope"), &g.scope);
        }
        let retry = spec.retry;
        if retry.max_attempts == Some(0) {
            out.error(
                FindingKind::InvalidValue,
                format!("{at}.retry.max_attempts"),
                "`0` attempts: the role could never act (1 means no retry)".into(),
            );
        }
        if let (Some(b), Some(mx)) = (retry.base_delay, retry.max_delay) {
            if b > mx {
                out.error(
                    FindingKind::InvalidValue,
                    format!("{at}.retry.base_delay"),
                    format!("`{b}` is above `max_delay` `{mx}`"),
                );
            }
        }
        if spec.max_calls == 0 {
            out.error(
                FindingKind::InvalidValue,
                format!("{at}.max_calls"),
                "`0` calls per task: the role could never act".into(),
            );
        }
    }
    let max_effect = m.foundation.as_ref().and_then(|f| f.boundaries.max_effect);
    for (i, c) in arch.connectors.iter().enumerate() {
        let at = format!("architecture.connectors[{i}]");
        if c.operations.is_empty() {
            out.warn(
                FindingKind::Empty,
                format!("{at}.operations"),
                format!(
                    "connector `{}` declares no operation and effect class",
                    c.key
                ),
            );
        }
        for (op, effect) in &c.operations {
            if let Some(max) = max_effect {
                if *effect > max {
                    out.warn(
                        FindingKind::InvalidValue,
                        format!("{at}.operations.{op}"),
                        format!("`{op}` is `{effect}`, wider than the charter's `{max}`: every call will be denied"),
                    );
                }
            }
        }
        for (ki, name) in c.credentials.iter().enumerate() {
            if name.trim().is_empty() {
                out.error(
                    FindingKind::Empty,
                    format!("{at}.credentials[{ki}]"),
                    "empty credential name".into(),
                );
            } else if let Some(vault) = &options.vault_names {
                if !vault.contains(name) {
                    out.error(
                        FindingKind::UnknownCredential,
                        format!("{at}.credentials[{ki}]"),
                        format!(
                            "credential `{name}` of connector `{}` is not in the vault",
                            c.key
                        ),
                    );
                }
            }
        }
    }
    if let Some(layout) = &arch.memory {
        for (i, s) in layout.scopes.iter().enumerate() {
            if let Err(e) = aios_memory::Scope::parse(s) {
                out.error(
                    FindingKind::InvalidScope,
                    format!("architecture.memory.scopes[{i}]"),
                    format!("scope `{s}`: {e}"),
                );
            }
        }
        out.keys(
            "architecture.memory.seeds",
            layout.seeds.iter().map(|s| s.key.as_str()),
        );
        for (i, s) in layout.seeds.iter().enumerate() {
            let at = format!("architecture.memory.seeds[{i}]");
            check_scope(&mut out, format!("{at}.scope"), &s.scope);
            if s.content.trim().is_empty() {
                out.error(
                    FindingKind::Empty,
                    format!("{at}.content"),
                    format!("seed `{}` has no content", s.key),
                );
            }
        }
    }
    for (name, wf) in &arch.workflows {
        let at = format!("architecture.workflows.{name}");
        if wf.tasks.is_empty() {
            out.warn(
                FindingKind::Empty,
                format!("{at}.tasks"),
                format!("workflow `{name}` has no task"),
            );
        }
        let mut names = BTreeMap::new();
        for (i, t) in wf.tasks.iter().enumerate() {
            if names.contains_key(t.name.as_str()) {
                out.error(
                    FindingKind::DuplicateKey,
                    format!("{at}.tasks[{i}].name"),
                    format!("task `{}` is defined twice", t.name),
                );
            } else {
                names.insert(t.name.as_str(), i);
            }
        }
        for (i, t) in wf.tasks.iter().enumerate() {
            if !role_keys.contains(t.role.as_str()) {
                out.error(
                    FindingKind::UnknownRole,
                    format!("{at}.tasks[{i}].role"),
                    format!(
                        "task `{}` names role `{}`, which is not defined",
                        t.name, t.role
                    ),
                );
            }
            for (di, d) in t.after.iter().enumerate() {
                if !names.contains_key(d.as_str()) {
                    out.error(
                        FindingKind::UnknownTask,
                        format!("{at}.tasks[{i}].after[{di}]"),
                        format!(
                            "task `{}` waits for `{d}`, which workflow `{name}` does not have",
                            t.name
                        ),
                    );
                }
            }
        }
        let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for t in &wf.tasks {
            // a duplicated name keeps the dependencies of both (the duplicate is reported)
            edges
                .entry(t.name.as_str())
                .or_default()
                .extend(t.after.iter().map(String::as_str));
        }
        for cycle in cycles(&edges) {
            let i = names.get(cycle[0]).copied().unwrap_or(0);
            out.error(
                FindingKind::TaskCycle,
                format!("{at}.tasks[{i}].after"),
                format!(
                    "tasks wait for each other in a circle: {}",
                    cycle.join(" -> ")
                ),
            );
        }
    }

    // level 3: the governance model's own validation, placed in the manifest
    if m.governance.is_some() || !arch.roles.is_empty() {
        for f in composed.model.validate().findings {
            let path = composed.place(&f.path);
            out.push(f.severity, FindingKind::Governance(f.kind), path, f.message);
            // a governance finding belongs to the governance level wherever it is placed
            // (a made pathway's limits are written on its role)
            if let Some(last) = out.findings.last_mut() {
                last.level = Level::Governance;
            }
        }
    }

    // level 4
    let model = &composed.model;
    if let Some(imp) = &m.implementation {
        out.keys(
            "implementation.phases",
            imp.phases.iter().map(|p| p.key.as_str()),
        );
        let phases: BTreeMap<&str, usize> = imp
            .phases
            .iter()
            .enumerate()
            .map(|(i, p)| (p.key.as_str(), i))
            .collect();
        let mut enabled_by: BTreeMap<&str, &str> = BTreeMap::new();
        for (i, p) in imp.phases.iter().enumerate() {
            let at = format!("implementation.phases[{i}]");
            match p.owner.as_deref() {
                None => out.error(
                    FindingKind::UnknownAnchor,
                    format!("{at}.owner"),
                    format!("phase `{}` has no owner anchor", p.key),
                ),
                Some(o) if model.anchor(o).is_none() => out.error(
                    FindingKind::UnknownAnchor,
                    format!("{at}.owner"),
                    format!(
                        "phase `{}` is owned by anchor `{o}`, which is not defined",
                        p.key
                    ),
                ),
                Some(_) => {}
            }
            for (di, d) in p.depends_on.iter().enumerate() {
                match phases.get(d.as_str()) {
                    None => out.error(
                        FindingKind::UnknownPhase,
                        format!("{at}.depends_on[{di}]"),
                        format!("phase `{}` depends on `{d}`, which is not defined", p.key),
                    ),
                    Some(&j) => {
                        let dep = &imp.phases[j];
                        if p.status.is_entered() && !dep.status.is_entered() && d != &p.key {
                            out.error(
                                FindingKind::PhaseOrder,
                                format!("{at}.status"),
                                format!(
                                    "phase `{}` is {} but `{d}`, which it depends on, is {}",
                                    p.key, p.status, dep.status
                                ),
                            );
                        }
                    }
                }
            }
            for (pi, pw) in p.enables.pathways.iter().enumerate() {
                if model.pathway(pw).is_none() {
                    out.error(
                        FindingKind::UnknownPathway,
                        format!("{at}.enables.pathways[{pi}]"),
                        format!(
                            "phase `{}` enables pathway `{pw}`, which is not defined",
                            p.key
                        ),
                    );
                }
                if let Some(other) = enabled_by.insert(pw.as_str(), p.key.as_str()) {
                    out.warn(FindingKind::DuplicateKey, format!("{at}.enables.pathways[{pi}]"), format!("pathway `{pw}` is also enabled by phase `{other}`: both must be entered"));
                }
            }
            for (wi, w) in p.enables.workflows.iter().enumerate() {
                if !arch.workflows.contains_key(w) {
                    out.error(
                        FindingKind::UnknownWorkflow,
                        format!("{at}.enables.workflows[{wi}]"),
                        format!(
                            "phase `{}` enables workflow `{w}`, which is not defined",
                            p.key
                        ),
                    );
                }
            }
            for (ei, e) in p.entry.iter().enumerate() {
                let ep = format!("{at}.entry[{ei}]");
                match (&e.pathway, &e.workflow) {
                    (Some(_), Some(_)) | (None, None) => out.error(
                        FindingKind::InvalidValue,
                        ep.clone(),
                        "an entry criterion names exactly one `pathway` or `workflow`".into(),
                    ),
                    (Some(pw), None) if model.pathway(pw).is_none() => out.error(
                        FindingKind::UnknownPathway,
                        format!("{ep}.pathway"),
                        format!("pathway `{pw}` is not defined"),
                    ),
                    (None, Some(w)) if !arch.workflows.contains_key(w) => out.error(
                        FindingKind::UnknownWorkflow,
                        format!("{ep}.workflow"),
                        format!("workflow `{w}` is not defined"),
                    ),
                    _ => {}
                }
                if e.min_actions.is_none()
                    && e.min_completed_runs.is_none()
                    && e.max_rejections.is_none()
                    && e.max_failures.is_none()
                {
                    out.error(
                        FindingKind::InvalidValue,
                        ep,
                        "the entry criterion sets no threshold".into(),
                    );
                }
            }
        }
        let edges: BTreeMap<&str, Vec<&str>> = imp
            .phases
            .iter()
            .map(|p| {
                (
                    p.key.as_str(),
                    p.depends_on.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        for cycle in cycles(&edges) {
            let i = phases.get(cycle[0]).copied().unwrap_or(0);
            let message = if cycle.len() == 2 {
                format!("phase `{}` depends on itself", cycle[0])
            } else {
                format!(
                    "phases depend on each other in a circle: {}",
                    cycle.join(" -> ")
                )
            };
            out.error(
                FindingKind::PhaseCycle,
                format!("implementation.phases[{i}].depends_on"),
                message,
            );
        }
    }

    // level 5
    if let Some(ops) = &m.operations {
        let t = &ops.targets;
        for (name, v) in [
            ("min_autonomy_rate", t.min_autonomy_rate),
            ("max_escalation_rate", t.max_escalation_rate),
            ("max_rejection_rate", t.max_rejection_rate),
            ("max_failure_rate", t.max_failure_rate),
        ] {
            if let Some(v) = v {
                if !(0.0..=1.0).contains(&v) {
                    out.error(
                        FindingKind::InvalidValue,
                        format!("operations.targets.{name}"),
                        format!("`{v}` is a share and must be within 0.0..=1.0"),
                    );
                }
            }
        }
        if let Some(v) = t.max_budget_burn {
            if !(0.0..=10.0).contains(&v) || v.is_nan() {
                out.error(
                    FindingKind::InvalidValue,
                    "operations.targets.max_budget_burn".into(),
                    format!("`{v}` must be a share of the budget (1.0 = all of it)"),
                );
            }
        }
        if let Some(r) = &ops.recalibration {
            if r.max_step_percent == 0 || r.max_step_percent > 100 {
                out.error(
                    FindingKind::InvalidValue,
                    "operations.recalibration.max_step_percent".into(),
                    format!("`{}` must be within 1..=100", r.max_step_percent),
                );
            }
            if r.min_evidence == 0 {
                out.warn(
                    FindingKind::InvalidValue,
                    "operations.recalibration.min_evidence".into(),
                    "`0`: suggestions would be made without evidence".into(),
                );
            }
            if r.window.0.is_zero() {
                out.error(
                    FindingKind::InvalidValue,
                    "operations.recalibration.window".into(),
                    "the window is empty".into(),
                );
            }
        }
    }
    out.findings.sort_by_key(|f| f.level);
    Report {
        findings: out.findings,
    }
}

/// Each elementary circle of a dependency graph once, as the names along it with the first
/// repeated at the end (`a -> b -> a`), found by depth-first search in key order.
fn cycles<'a>(edges: &BTreeMap<&'a str, Vec<&'a str>>) -> Vec<Vec<&'a str>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit<'a>(
        n: &'a str,
        edges: &BTreeMap<&'a str, Vec<&'a str>>,
        marks: &mut BTreeMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
        out: &mut Vec<Vec<&'a str>>,
    ) {
        marks.insert(n, Mark::Open);
        stack.push(n);
        for &d in edges.get(n).map(Vec::as_slice).unwrap_or(&[]) {
            match marks.get(d).copied() {
                None => {} // unknown: reported elsewhere
                Some(Mark::New) => visit(d, edges, marks, stack, out),
                Some(Mark::Open) => {
                    if let Some(pos) = stack.iter().position(|&s| s == d) {
                        let mut c = stack[pos..].to_vec();
                        c.push(d);
                        out.push(c);
                    }
                }
                Some(Mark::Done) => {}
            }
        }
        stack.pop();
        marks.insert(n, Mark::Done);
    }
    let mut marks: BTreeMap<&str, Mark> = edges.keys().map(|&k| (k, Mark::New)).collect();
    let mut out = Vec::new();
    for &n in edges.keys() {
        if marks.get(n) == Some(&Mark::New) {
            visit(n, edges, &mut marks, &mut Vec::new(), &mut out);
        }
    }
    out
}
