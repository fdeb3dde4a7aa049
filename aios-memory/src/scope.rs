//! Hierarchical scopes and memory tiers.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::MemoryError;

/// A hierarchical path naming where a memory belongs: `org/acme/project-x/customer-7`.
///
/// Segments are non-empty and made of ASCII letters, digits, `-`, `_`, `.` and `:`; they are
/// separated by `/`. The empty scope (the root) contains every other scope. A scope *is
/// within* a prefix when the prefix's segments are its first segments (`org/acme` is within
/// `org` but `org/acme-2` is not within `org/acme`).
///
/// ```
/// use aios_memory::Scope;
/// let s = Scope::parse("org/acme/project-x")?;
/// assert!(s.is_within(&Scope::parse("org/acme")?));
/// assert!(!Scope::parse("org/acme-2")?.is_within(&Scope::parse("org/acme")?));
/// assert_eq!(s.child("task-1")?.as_str(), "org/acme/project-x/task-1");
/// # Ok::<(), aios_memory::MemoryError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Scope(String);

impl Scope {
    /// The root scope, which contains every scope.
    pub fn root() -> Self {
        Self(String::new())
    }

    /// Parses a `/`-separated path; leading and trailing `/` are ignored.
    pub fn parse(path: &str) -> Result<Self, MemoryError> {
        let trimmed = path.trim_matches('/');
        if trimmed.is_empty() {
            return Ok(Self::root());
        }
        for seg in trimmed.split('/') {
            if seg.is_empty() {
                return Err(MemoryError::InvalidInput {
                    field: "scope".into(),
                    detail: format!("empty segment in `{path}`"),
                });
            }
            if let Some(c) = seg
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
            {
                return Err(MemoryError::InvalidInput {
                    field: "scope".into(),
                    detail: format!("character `{c}` not allowed in `{path}`"),
                });
            }
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// The path as text (empty for the root).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the root scope.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The segments, outermost first.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|s| !s.is_empty())
    }

    /// How many segments deep this scope is (0 for the root).
    pub fn depth(&self) -> usize {
        self.segments().count()
    }

    /// The enclosing scope, or `None` for the root.
    pub fn parent(&self) -> Option<Scope> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.rfind('/') {
            Some(i) => Self(self.0[..i].to_owned()),
            None => Self::root(),
        })
    }

    /// A scope one segment deeper.
    pub fn child(&self, segment: &str) -> Result<Scope, MemoryError> {
        if segment.contains('/') || segment.is_empty() {
            return Err(MemoryError::InvalidInput {
                field: "scope".into(),
                detail: format!("`{segment}` is not a single segment"),
            });
        }
        if self.is_root() {
            Self::parse(segment)
        } else {
            Self::parse(&format!("{}/{segment}", self.0))
        }
    }

    /// Whether `prefix` is this scope or one of its ancestors.
    pub fn is_within(&self, prefix: &Scope) -> bool {
        if prefix.is_root() {
            return true;
        }
        match self.0.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            f.write_str("/")
        } else {
            f.write_str(&self.0)
        }
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({:?})", self.0)
    }
}

impl TryFrom<String> for Scope {
    type Error = MemoryError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Scope> for String {
    fn from(s: Scope) -> Self {
        s.0
    }
}

impl std::str::FromStr for Scope {
    type Err = MemoryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// How long-lived a memory is. Context assembly packs `Working` first; consolidation moves
/// working memory into `Project` and `LongTerm`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// The scratchpad of a run or conversation.
    #[default]
    Working,
    /// Knowledge about one project.
    Project,
    /// Durable knowledge of the organisation.
    LongTerm,
}

impl Tier {
    /// Every tier, in packing order.
    pub const ALL: [Tier; 3] = [Tier::Working, Tier::Project, Tier::LongTerm];

    /// A stable index (0, 1, 2) used for bit masks.
    pub fn index(self) -> usize {
        match self {
            Tier::Working => 0,
            Tier::Project => 1,
            Tier::LongTerm => 2,
        }
    }

    pub(crate) fn bit(self) -> u8 {
        1 << self.index()
    }

    pub(crate) fn mask_of(tiers: &[Tier]) -> u8 {
        if tiers.is_empty() {
            0b111
        } else {
            tiers.iter().fold(0, |m, t| m | t.bit())
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Working => "working",
            Tier::Project => "project",
            Tier::LongTerm => "long_term",
        })
    }
}

/// What kind of statement a memory is. A closed set of common kinds plus [`MemoryKind::Other`]
/// for host-defined ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MemoryKind {
    /// A statement about the world (`the invoice is due on friday`).
    #[default]
    Fact,
    /// Something that happened (a conversation turn, a tool result).
    Episode,
    /// A preference of a person or the organisation.
    Preference,
    /// A standing instruction.
    Instruction,
    /// A summary derived from other memories.
    Summary,
    /// A host-defined kind.
    Other(String),
}

impl fmt::Display for MemoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryKind::Fact => f.write_str("fact"),
            MemoryKind::Episode => f.write_str("episode"),
            MemoryKind::Preference => f.write_str("preference"),
            MemoryKind::Instruction => f.write_str("instruction"),
            MemoryKind::Summary => f.write_str("summary"),
            MemoryKind::Other(k) => write!(f, "other:{k}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_nest() {
        let cases: &[(&str, Option<&str>)] = &[
            ("org/acme", Some("org/acme")),
            ("/org/acme/", Some("org/acme")),
            ("", Some("")),
            ("org//acme", None),
            ("org/ac me", None),
            ("org/a_b.c:d-e", Some("org/a_b.c:d-e")),
        ];
        for (input, want) in cases {
            let got = Scope::parse(input).ok().map(|s| s.as_str().to_owned());
            assert_eq!(got.as_deref(), *want, "parse {input:?}");
        }
        let s = Scope::parse("a/b/c").unwrap();
        assert_eq!(s.parent().unwrap().as_str(), "a/b");
        assert_eq!(Scope::parse("a").unwrap().parent(), Some(Scope::root()));
        assert_eq!(Scope::root().parent(), None);
        assert!(s.is_within(&Scope::root()));
        assert!(s.is_within(&s));
        assert!(!Scope::parse("a/bc")
            .unwrap()
            .is_within(&Scope::parse("a/b").unwrap()));
        assert_eq!(s.depth(), 3);
        assert!(Scope::root().child("x/y").is_err());
    }

    #[test]
    fn tiers_mask() {
        assert_eq!(Tier::mask_of(&[]), 0b111);
        assert_eq!(Tier::mask_of(&[Tier::Project]), 0b010);
    }
}
