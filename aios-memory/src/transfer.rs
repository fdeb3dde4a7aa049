//! Export and import in a line-per-record format, and schema migration.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use aios_core::{MemoryId, StoreError};
use serde::{Deserialize, Serialize};

use crate::{Memory, MemoryError, MemoryRecord, MEMORY_SCHEMA_VERSION};

/// One upgrade step: turns a record of schema `n` (as JSON) into schema `n + 1`. The step
/// need not set the `schema` field; the [`Migrator`] does.
pub type MigrationStep =
    Arc<dyn Fn(serde_json::Value) -> Result<serde_json::Value, String> + Send + Sync>;

/// Registered upgrade steps between schema versions, applied to records read from older
/// exports or stores. Records are data: a step transforms JSON, nothing is executed from it.
///
/// ```
/// use aios_memory::{Migrator, MEMORY_SCHEMA_VERSION};
/// // schema 0 called the text `body`
/// let m = Migrator::new().step(0, |mut v| {
///     let body = v.as_object_mut().and_then(|o| o.remove("body")).ok_or("no `body`")?;
///     v["content"] = body;
///     Ok(v)
/// });
/// let up = m.upgrade(serde_json::json!({"schema": 0, "body": "hi"}))?;
/// assert_eq!(up["content"], "hi");
/// assert_eq!(up["schema"], MEMORY_SCHEMA_VERSION);
/// # Ok::<(), aios_memory::MemoryError>(())
/// ```
#[derive(Clone, Default)]
pub struct Migrator {
    steps: BTreeMap<u32, MigrationStep>,
}

impl fmt::Debug for Migrator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migrator")
            .field("steps_from", &self.steps.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Migrator {
    /// No steps: only current-schema records are accepted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the step from schema `from` to `from + 1`.
    pub fn step(
        mut self,
        from: u32,
        f: impl Fn(serde_json::Value) -> Result<serde_json::Value, String> + Send + Sync + 'static,
    ) -> Self {
        self.steps.insert(from, Arc::new(f));
        self
    }

    /// Upgrades one record to [`MEMORY_SCHEMA_VERSION`]. A missing `schema` field means 0.
    /// Fails on a newer schema than this build reads and on a gap in the steps.
    pub fn upgrade(&self, mut value: serde_json::Value) -> Result<serde_json::Value, MemoryError> {
        let mut schema = match value.get("schema") {
            None => 0,
            Some(s) => s
                .as_u64()
                .and_then(|s| u32::try_from(s).ok())
                .ok_or_else(|| MemoryError::invalid("schema", format!("`{s}` is not a version")))?,
        };
        if schema > MEMORY_SCHEMA_VERSION {
            return Err(StoreError::UnsupportedVersion {
                location: "memory record".into(),
                found: schema,
                supported: MEMORY_SCHEMA_VERSION,
            }
            .into());
        }
        while schema < MEMORY_SCHEMA_VERSION {
            let step = self
                .steps
                .get(&schema)
                .ok_or_else(|| MemoryError::Migration {
                    from: schema,
                    to: MEMORY_SCHEMA_VERSION,
                    detail: format!("no step registered from schema {schema}"),
                })?;
            value = step(value).map_err(|detail| MemoryError::Migration {
                from: schema,
                to: schema + 1,
                detail,
            })?;
            schema += 1;
            match value.as_object_mut() {
                Some(o) => {
                    o.insert("schema".into(), schema.into());
                }
                None => {
                    return Err(MemoryError::Migration {
                        from: schema - 1,
                        to: schema,
                        detail: "the step did not return an object".into(),
                    })
                }
            }
        }
        Ok(value)
    }

    /// Parses one exported line, upgrading it first. Returns the record and whether it was
    /// migrated (a migrated record needs its checksum recomputed).
    pub fn read_line(&self, line: &str) -> Result<(MemoryRecord, bool), MemoryError> {
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| MemoryError::invalid("line", format!("not json: {e}")))?;
        let before = value.get("schema").and_then(|s| s.as_u64());
        let value = self.upgrade(value)?;
        let migrated = before != Some(u64::from(MEMORY_SCHEMA_VERSION));
        let record: MemoryRecord = serde_json::from_value(value)
            .map_err(|e| MemoryError::invalid("line", format!("not a memory record: {e}")))?;
        Ok((record, migrated))
    }
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImportReport {
    /// Lineages written.
    pub imported: usize,
    /// Record versions written.
    pub records: usize,
    /// Lineages skipped because the memory already holds them.
    pub skipped: Vec<MemoryId>,
    /// Record versions upgraded from an older schema (their checksums were recomputed).
    pub migrated: usize,
}

impl Memory {
    /// Every record version, one JSON object per line, in id then version order.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use aios_core::{ManualClock, Principal};
    /// use aios_memory::{Memory, Migrator, NewMemory, Scope, Tier};
    /// # futures::executor::block_on(async {
    /// let clock = Arc::new(ManualClock::default());
    /// let a = Memory::builder(clock.clone()).open().await?;
    /// a.remember(NewMemory::new(Scope::parse("a")?, Tier::LongTerm, "keep this", Principal::System)).await?;
    /// let lines = a.export().await?;
    /// let b = Memory::builder(clock).open().await?;
    /// let report = b.import(&lines, &Migrator::new()).await?;
    /// assert_eq!(report.imported, 1);
    /// assert_eq!(b.export().await?, lines);
    /// # Ok::<(), aios_memory::MemoryError>(())
    /// # }).unwrap();
    /// ```
    pub async fn export(&self) -> Result<String, MemoryError> {
        let mut out = String::new();
        let mut after = None;
        loop {
            let page = self.store().scan(after, 512).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for r in &page {
                let line = serde_json::to_string(r).map_err(|e| StoreError::Corrupt {
                    location: format!("memory {} version {}", r.id, r.version),
                    detail: e.to_string(),
                })?;
                out.push_str(&line);
                out.push('\n');
            }
        }
        Ok(out)
    }

    /// Imports lines written by [`Memory::export`] (possibly by an older schema, upgraded
    /// through `migrator`). Every line is checked before anything is written: current-schema
    /// records must match their checksums and every lineage must be a complete, linked chain
    /// of versions. Lineages already present are skipped. If writing fails midway, the
    /// lineages written by this import are removed again.
    pub async fn import(
        &self,
        lines: &str,
        migrator: &Migrator,
    ) -> Result<ImportReport, MemoryError> {
        let mut report = ImportReport::default();
        let mut lineages: BTreeMap<MemoryId, Vec<(MemoryRecord, bool)>> = BTreeMap::new();
        for (n, line) in lines.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (record, migrated) = migrator.read_line(line).map_err(|e| match e {
                MemoryError::InvalidInput { detail, .. } => MemoryError::InvalidInput {
                    field: format!("line {}", n + 1),
                    detail,
                },
                e => e,
            })?;
            if migrated {
                report.migrated += 1;
            } else if !record.checksum_ok() {
                return Err(StoreError::Corrupt {
                    location: format!(
                        "line {} (memory {} version {})",
                        n + 1,
                        record.id,
                        record.version
                    ),
                    detail: "checksum mismatch".into(),
                }
                .into());
            }
            lineages
                .entry(record.id)
                .or_default()
                .push((record, migrated));
        }
        for (id, versions) in lineages.iter_mut() {
            versions.sort_by_key(|(r, _)| r.version);
            let mut prev: Option<String> = None;
            let mut relinked = false;
            for (i, (r, migrated)) in versions.iter_mut().enumerate() {
                if r.version != i as u32 + 1 {
                    return Err(MemoryError::invalid(
                        "version",
                        format!("memory `{id}` has no version {} in the import", i + 1),
                    ));
                }
                r.retired_at = None;
                if *migrated || relinked {
                    // a migrated record's checksum changes, so every later link changes too
                    r.prev_checksum = prev.clone();
                    r.seal();
                    relinked = true;
                } else if r.prev_checksum != prev {
                    return Err(StoreError::Corrupt {
                        location: format!("memory {id} version {}", r.version),
                        detail: "does not link to the checksum of the previous version".into(),
                    }
                    .into());
                }
                prev = Some(r.checksum.clone());
            }
        }
        let existing: Vec<MemoryId> = {
            let index = self.inner().index.read();
            lineages
                .keys()
                .filter(|id| index.latest(id).is_some())
                .copied()
                .collect()
        };
        let mut written: Vec<MemoryId> = Vec::new();
        for (id, versions) in lineages {
            if existing.contains(&id) {
                report.skipped.push(id);
                continue;
            }
            let n = versions.len();
            let mut result = Ok(());
            written.push(id);
            for (r, _) in versions {
                let expected = r.version.checked_sub(1).filter(|v| *v > 0);
                result = self.put_raw(r, expected).await;
                if result.is_err() {
                    break;
                }
            }
            if let Err(e) = result {
                for id in written {
                    // best effort: the original error is what the caller needs
                    let _ = self.delete(id).await;
                }
                return Err(e);
            }
            report.imported += 1;
            report.records += n;
        }
        Ok(report)
    }
}
