//! The tamper-evident audit log: typed, versioned events in a SHA-256 hash chain.

use std::sync::Arc;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    AgentId, AnchorId, ApprovalId, ConnectorId, EffectClass, HumanId, IdempotencyKey, MemoryId,
    ModelId, Money, PathwayId, Principal, RoleId, RunId, StoreError, TaskId, Timestamp, TokenUsage,
};

/// The version of the entry format written by this build. Entries of a newer version are
/// reported by [`verify_chain`] instead of being misread.
pub const AUDIT_SCHEMA_VERSION: u16 = 1;

/// Errors of the audit log are storage errors.
pub type AuditError = StoreError;

/// How something ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It worked.
    Succeeded,
    /// It failed.
    Failed,
    /// It was cancelled or stopped.
    Cancelled,
    /// It is waiting for a human.
    Parked,
    /// The result came from the journal; the backend was not called again.
    Replayed,
}

/// The verdict of a governance decision, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// The agent may act alone.
    Allow,
    /// The action is refused.
    Deny,
    /// A human must approve first.
    RequireApproval,
    /// A human must take over or be told.
    Escalate,
}

/// How an approval request ended, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalOutcome {
    /// Approved as requested.
    Approved,
    /// Approved with an edited action.
    Edited,
    /// Rejected.
    Rejected,
    /// Nobody answered in time; treated as a rejection.
    Expired,
}

/// Everything AIOS records. Typed so that reports can be computed from the log; the enum is
/// tagged by `type` in its serialised form and grows only by adding variants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditEvent {
    /// A run started under a governance model version.
    RunStarted {
        /// The run.
        run: RunId,
        /// The workflow's name.
        workflow: String,
        /// The governance model version the run is pinned to.
        governance_version: u64,
    },
    /// A run ended (or parked).
    RunFinished {
        /// The run.
        run: RunId,
        /// How.
        outcome: Outcome,
        /// Why, in words.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// A task started.
    TaskStarted {
        /// The run.
        run: RunId,
        /// The task.
        task: TaskId,
        /// The role it runs under.
        role: RoleId,
        /// The agent executing it.
        agent: AgentId,
    },
    /// A task ended.
    TaskFinished {
        /// The run.
        run: RunId,
        /// The task.
        task: TaskId,
        /// How.
        outcome: Outcome,
        /// Why, in words.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// A model was called.
    ModelCalled {
        /// The run.
        run: RunId,
        /// The task.
        task: TaskId,
        /// The model.
        model: ModelId,
        /// Which attempt (1-based).
        attempt: u32,
        /// Tokens consumed.
        usage: TokenUsage,
        /// What it cost.
        cost: Money,
        /// How it ended.
        outcome: Outcome,
        /// Why this model was chosen or why the call failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        /// How long the call waited in the model scheduler's queue, in milliseconds, over all
        /// its attempts (absent without a scheduler, and in entries written before it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queued_ms: Option<u64>,
    },
    /// A connector was invoked: a side effect.
    ConnectorInvoked {
        /// The run.
        run: RunId,
        /// The task.
        task: TaskId,
        /// The connector.
        connector: ConnectorId,
        /// The operation.
        operation: String,
        /// Its effect class.
        effect: EffectClass,
        /// The key it carried.
        idempotency_key: IdempotencyKey,
        /// Which attempt (1-based).
        attempt: u32,
        /// How it ended.
        outcome: Outcome,
        /// What it cost.
        cost: Money,
    },
    /// Governance decided on an action.
    DecisionMade {
        /// The run, if the action belongs to one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<RunId>,
        /// The pathway the action was requested on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pathway: Option<PathwayId>,
        /// The action.
        action: String,
        /// The verdict.
        decision: DecisionKind,
        /// The rules that fired.
        rules: Vec<String>,
        /// The governance model version that decided.
        model_version: u64,
    },
    /// A human approval was requested.
    ApprovalRequested {
        /// The request.
        approval: ApprovalId,
        /// The anchor asked.
        anchor: AnchorId,
        /// The run waiting, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<RunId>,
        /// The action to approve.
        action: String,
        /// When the request expires (and is treated as rejected).
        expires_at: Timestamp,
    },
    /// A human answered an approval request, or it expired.
    ApprovalDecided {
        /// The request.
        approval: ApprovalId,
        /// Who answered (absent when it expired).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<HumanId>,
        /// The answer.
        outcome: ApprovalOutcome,
        /// The reason given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Work was escalated to an accountable anchor.
    Escalated {
        /// The run, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<RunId>,
        /// The anchor.
        anchor: AnchorId,
        /// Why.
        reason: String,
    },
    /// A budget crossed an alert threshold.
    BudgetAlert {
        /// The budget's name.
        budget: String,
        /// The dimension (`cost`, `tokens`, ...).
        dimension: String,
        /// The threshold crossed, in percent.
        threshold_percent: u32,
        /// Used (committed plus reserved) after the operation.
        used: i64,
        /// The limit.
        limit: i64,
    },
    /// An operator control was applied (pause, resume, stop, override).
    ControlApplied {
        /// What it applies to (`agent:...`, `pathway:...`, `organisation`).
        target: String,
        /// Which control.
        control: String,
        /// Why.
        reason: String,
        /// Until when, for time-limited controls.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<Timestamp>,
    },
    /// A memory record was written, revised or retracted.
    MemoryWritten {
        /// The record lineage.
        memory: MemoryId,
        /// The version written.
        version: u32,
        /// Its scope.
        scope: String,
        /// `remember`, `revise`, `retract`, `prune`, ...
        operation: String,
        /// The run it was written in, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<RunId>,
        /// The task it was written in, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<TaskId>,
    },
    /// An agent recalled memory during a run.
    MemoryRecalled {
        /// The run.
        run: RunId,
        /// The task.
        task: TaskId,
        /// The record versions returned, best first, as `(lineage, version)`.
        hits: Vec<(MemoryId, u32)>,
    },
    /// A free-form note.
    Note {
        /// The text.
        text: String,
    },
    /// An event type defined by the host or an extension.
    Custom {
        /// Its kind.
        kind: String,
        /// Its data.
        data: serde_json::Value,
    },
}

/// What a caller appends: who did what, when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When it happened (from the caller's [`crate::Clock`]).
    pub at: Timestamp,
    /// Who did it.
    pub actor: Principal,
    /// What happened.
    pub event: AuditEvent,
}

impl AuditRecord {
    /// A record at the Unix epoch; set [`AuditRecord::at`] or use [`AuditRecord::at`] builder.
    pub fn new(actor: Principal, event: AuditEvent) -> Self {
        Self {
            at: Timestamp::UNIX_EPOCH,
            actor,
            event,
        }
    }

    /// Sets when it happened.
    pub fn at(mut self, at: Timestamp) -> Self {
        self.at = at;
        self
    }
}

/// A SHA-256 digest, written as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EntryHash(pub [u8; 32]);

impl EntryHash {
    /// The hash before the first entry.
    pub const GENESIS: EntryHash = EntryHash([0; 32]);
}

impl std::fmt::Debug for EntryHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", hex::encode(&self.0[..8]))
    }
}

impl std::fmt::Display for EntryHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for EntryHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for EntryHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(EntryHash(out))
    }
}

/// An HMAC-SHA256 over an entry's hash under an [`AuditKey`], written as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryMac(pub [u8; 32]);

impl std::fmt::Debug for EntryMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", hex::encode(&self.0[..8]))
    }
}

impl std::fmt::Display for EntryMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::str::FromStr for EntryMac {
    type Err = hex::FromHexError;

    /// Parses 64 hex digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)?;
        Ok(EntryMac(out))
    }
}

impl Serialize for EntryMac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for EntryMac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditKeyError {
    /// Too few bytes to be a key.
    #[error("audit key is {len} bytes long; at least {min} are required")]
    TooShort {
        /// The length given.
        len: usize,
        /// The shortest length accepted ([`AuditKey::MIN_LEN`]).
        min: usize,
    },
}

/// The secret key that seals audit entries: each entry appended under it carries an
/// HMAC-SHA256 ([`EntryMac`]) over the bytes `aios-audit-mac` followed by the entry's hash.
///
/// The hash chain alone proves that entries were not changed, removed or reordered relative
/// to each other, but anyone who can write the store can append entries that chain correctly.
/// The MAC proves that an entry was appended by a holder of the key: verification with the
/// key ([`verify_chain_keyed`], [`AuditLogExt::verify_keyed`]) reports every entry whose MAC
/// is missing or wrong. It does not detect entries cut off the end; anchor the head for that.
///
/// Secret material: built from bytes, no `Serialize`, and `Debug` shows nothing of it.
///
/// ```
/// use aios_core::{AuditEvent, AuditKey, AuditLogExt, AuditRecord, InMemoryAuditLog, Principal};
/// let key = AuditKey::from_bytes(&[42u8; 32])?;
/// let log = InMemoryAuditLog::with_key(key.clone());
/// log.append_sync(AuditRecord::new(Principal::System, AuditEvent::Note { text: "hi".into() }))
///     .unwrap();
/// assert!(log.verify_sync_keyed(None, &key).is_intact());
/// assert_eq!(format!("{key:?}"), "AuditKey(<redacted>)");
/// # Ok::<(), aios_core::AuditKeyError>(())
/// ```
#[derive(Clone)]
pub struct AuditKey {
    mac: Hmac<Sha256>,
}

impl AuditKey {
    /// The shortest key accepted, in bytes: the size of the SHA-256 output (RFC 2104).
    pub const MIN_LEN: usize = 32;

    /// A key from secret bytes (at least [`AuditKey::MIN_LEN`]; draw them from a proper
    /// source of randomness and keep them outside the store).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AuditKeyError> {
        if bytes.len() < Self::MIN_LEN {
            return Err(AuditKeyError::TooShort {
                len: bytes.len(),
                min: Self::MIN_LEN,
            });
        }
        let mac = Hmac::<Sha256>::new_from_slice(bytes).map_err(|_| AuditKeyError::TooShort {
            len: bytes.len(),
            min: Self::MIN_LEN,
        })?;
        Ok(Self { mac })
    }

    fn keyed(&self, hash: &EntryHash) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(b"aios-audit-mac");
        mac.update(&hash.0);
        mac
    }

    /// The MAC of an entry with this hash.
    pub fn mac(&self, hash: &EntryHash) -> EntryMac {
        EntryMac(self.keyed(hash).finalize().into_bytes().into())
    }

    /// Whether `mac` is this key's MAC of `hash` (compared in constant time).
    pub fn check(&self, hash: &EntryHash, mac: &EntryMac) -> bool {
        self.keyed(hash).verify_slice(&mac.0).is_ok()
    }
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(<redacted>)")
    }
}

/// One link of the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Entry format version.
    pub v: u16,
    /// Position in the log, from 0, without gaps.
    pub seq: u64,
    /// When it happened.
    pub at: Timestamp,
    /// Who did it.
    pub actor: Principal,
    /// What happened.
    pub event: AuditEvent,
    /// The hash of the previous entry ([`EntryHash::GENESIS`] for the first).
    pub prev: EntryHash,
    /// The hash of this entry: SHA-256 over the bytes `aios-audit`, the version (u16
    /// big-endian), `prev`, `seq` (u64 big-endian), `at` (seconds i64 and nanoseconds u32,
    /// big-endian) and the canonical binary encoding of `(actor, event)`: an injective, tagged
    /// serde encoding with field and variant names, ids as 16 raw bytes (specified in the
    /// source, `canonical.rs`). See [`AuditEntry::compute_hash`].
    pub hash: EntryHash,
    /// The [`AuditKey`]'s MAC over `hash`, when the entry was appended under a key. Not
    /// covered by the hash: it seals the hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<EntryMac>,
}

impl AuditEntry {
    /// Seals `record` as entry `seq` after `prev`.
    pub fn seal(seq: u64, prev: EntryHash, record: AuditRecord) -> Result<Self, AuditError> {
        let mut buf = Vec::with_capacity(256);
        let hash = hash_parts(
            &mut buf,
            AUDIT_SCHEMA_VERSION,
            seq,
            &prev,
            &record.at,
            &record.actor,
            &record.event,
        )?;
        Ok(Self {
            v: AUDIT_SCHEMA_VERSION,
            seq,
            at: record.at,
            actor: record.actor,
            event: record.event,
            prev,
            hash,
            mac: None,
        })
    }

    /// Seals `record` as entry `seq` after `prev`, with `key`'s MAC over its hash.
    pub fn seal_keyed(
        seq: u64,
        prev: EntryHash,
        record: AuditRecord,
        key: &AuditKey,
    ) -> Result<Self, AuditError> {
        let mut entry = Self::seal(seq, prev, record)?;
        entry.mac = Some(key.mac(&entry.hash));
        Ok(entry)
    }

    /// Recomputes this entry's hash from its content (using `buf` as scratch space).
    pub fn compute_hash(&self, buf: &mut Vec<u8>) -> Result<EntryHash, AuditError> {
        hash_parts(
            buf,
            self.v,
            self.seq,
            &self.prev,
            &self.at,
            &self.actor,
            &self.event,
        )
    }

    /// The chain head just after this entry.
    pub fn head(&self) -> ChainHead {
        ChainHead {
            len: self.seq + 1,
            hash: self.hash,
        }
    }
}

/// A stored entry this build cannot read: a newer format version, or content that does not
/// decode. Reported by its position instead of being misread or failing the whole read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadableEntry {
    /// Its position in the log.
    pub seq: u64,
    /// The format version it was stored with (saturated at `u16::MAX`).
    pub version: u16,
    /// Its hash, if the store could still tell it: verification then checks that the next
    /// entry links to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<EntryHash>,
    /// The hash it links to, if the store could still tell it: verification then checks
    /// its link to the entry before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<EntryHash>,
    /// Its MAC, if it has one and the store could still tell it: verification with the key
    /// then checks it against `hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<EntryMac>,
    /// Why it cannot be read, naming where it is stored.
    pub detail: String,
}

impl UnreadableEntry {
    /// The error for a caller that needs this entry:
    /// [`StoreError::UnsupportedVersion`] for a newer format, [`StoreError::Corrupt`]
    /// otherwise; both name the entry's position.
    pub fn to_error(&self) -> StoreError {
        let location = format!("audit entry {}", self.seq);
        if is_supported(self.version) {
            StoreError::Corrupt {
                location,
                detail: self.detail.clone(),
            }
        } else {
            StoreError::UnsupportedVersion {
                location,
                found: u32::from(self.version),
                supported: u32::from(AUDIT_SCHEMA_VERSION),
            }
        }
    }
}

/// One position of the log as [`AuditLog::read`] returns it: the entry, or why this build
/// cannot read it.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredEntry {
    /// An entry this build reads.
    Entry(AuditEntry),
    /// An entry this build cannot read.
    Unreadable(UnreadableEntry),
}

impl StoredEntry {
    /// The position in the log.
    pub fn seq(&self) -> u64 {
        match self {
            StoredEntry::Entry(e) => e.seq,
            StoredEntry::Unreadable(u) => u.seq,
        }
    }

    /// The entry, if it could be read.
    pub fn entry(&self) -> Option<&AuditEntry> {
        match self {
            StoredEntry::Entry(e) => Some(e),
            StoredEntry::Unreadable(_) => None,
        }
    }

    /// The entry, or the error naming why it cannot be read ([`UnreadableEntry::to_error`]).
    pub fn into_entry(self) -> Result<AuditEntry, AuditError> {
        match self {
            StoredEntry::Entry(e) => Ok(e),
            StoredEntry::Unreadable(u) => Err(u.to_error()),
        }
    }
}

impl From<AuditEntry> for StoredEntry {
    /// An entry of a format version this build does not know (newer, or 0) becomes
    /// [`StoredEntry::Unreadable`]: its fields may mean something else in that format.
    fn from(e: AuditEntry) -> Self {
        if is_supported(e.v) {
            StoredEntry::Entry(e)
        } else {
            StoredEntry::Unreadable(UnreadableEntry {
                seq: e.seq,
                version: e.v,
                hash: Some(e.hash),
                prev: Some(e.prev),
                mac: e.mac,
                detail: format!(
                    "audit entry {} has format version {}; this build reads 1 to {}",
                    e.seq, e.v, AUDIT_SCHEMA_VERSION
                ),
            })
        }
    }
}

fn is_supported(v: u16) -> bool {
    (1..=AUDIT_SCHEMA_VERSION).contains(&v)
}

fn hash_parts(
    buf: &mut Vec<u8>,
    v: u16,
    seq: u64,
    prev: &EntryHash,
    at: &Timestamp,
    actor: &Principal,
    event: &AuditEvent,
) -> Result<EntryHash, AuditError> {
    buf.clear();
    buf.extend_from_slice(b"aios-audit");
    buf.extend_from_slice(&v.to_be_bytes());
    buf.extend_from_slice(&prev.0);
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&at.timestamp().to_be_bytes());
    buf.extend_from_slice(&at.timestamp_subsec_nanos().to_be_bytes());
    crate::canonical::encode(&(actor, event), buf).map_err(|e| StoreError::Corrupt {
        location: format!("audit entry {seq}"),
        detail: e.to_string(),
    })?;
    Ok(EntryHash(Sha256::digest(buf.as_slice()).into()))
}

/// The length and last hash of a chain. Anchor it outside the log (print it, sign it, store
/// it elsewhere) to detect truncation later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ChainHead {
    /// Number of entries.
    pub len: u64,
    /// Hash of the last entry ([`EntryHash::GENESIS`] when empty).
    pub hash: EntryHash,
}

/// One thing wrong with a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum ChainProblem {
    /// The entry's content does not match its hash: it was changed.
    ContentChanged {
        /// The entry's position.
        seq: u64,
    },
    /// The entry does not link to the one before it: an entry was removed, inserted or moved,
    /// or a changed entry's hash was recomputed.
    BrokenLink {
        /// The entry's position.
        seq: u64,
    },
    /// Sequence numbers are not consecutive.
    SequenceGap {
        /// The sequence number expected.
        expected: u64,
        /// The one found.
        found: u64,
    },
    /// The entry uses a format this build does not know.
    UnsupportedVersion {
        /// The entry's position.
        seq: u64,
        /// Its version.
        version: u16,
    },
    /// The chain is shorter than the anchored head: entries were cut off the end.
    Truncated {
        /// Length of the anchored head.
        anchored: u64,
        /// Length found.
        found: u64,
    },
    /// The entry at the anchored position does not have the anchored hash: the chain was
    /// rewritten.
    AnchorMismatch {
        /// The anchored position.
        seq: u64,
    },
    /// Verification with a key: the entry carries no MAC, so it was not appended under the
    /// key (it may have been appended by someone who can write the store but has no key).
    MacMissing {
        /// The entry's position.
        seq: u64,
    },
    /// Verification with a key: the entry's MAC does not match its hash under the key: it
    /// was forged, changed, or sealed under another key.
    MacMismatch {
        /// The entry's position.
        seq: u64,
    },
    /// The entry could not be read or hashed.
    Unreadable {
        /// The entry's position.
        seq: u64,
        /// Why.
        detail: String,
    },
}

/// The result of verifying a chain: a value, not an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainReport {
    /// Entries checked.
    pub checked: u64,
    /// The head of the chain as found.
    pub head: ChainHead,
    /// Everything wrong, in order of position.
    pub problems: Vec<ChainProblem>,
}

impl ChainReport {
    /// `true` when nothing is wrong.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verifies a chain incrementally; [`verify_chain`] is the one-shot form.
#[derive(Debug)]
pub(crate) struct ChainVerifier {
    buf: Vec<u8>,
    expected_seq: u64,
    prev: EntryHash,
    checked: u64,
    problems: Vec<ChainProblem>,
    anchor: Option<ChainHead>,
    /// The previous entry was unreadable and its hash unknown: the next link cannot be
    /// checked (the unreadable entry is already reported).
    prev_unknown: bool,
    /// With a key, every entry's MAC is checked too.
    key: Option<AuditKey>,
}

impl ChainVerifier {
    pub(crate) fn new(anchor: Option<ChainHead>, key: Option<AuditKey>) -> Self {
        Self {
            buf: Vec::with_capacity(512),
            expected_seq: 0,
            prev: EntryHash::GENESIS,
            checked: 0,
            problems: Vec::new(),
            anchor,
            prev_unknown: false,
            key,
        }
    }

    fn check_mac(&mut self, seq: u64, hash: Option<EntryHash>, mac: Option<EntryMac>) {
        let (Some(key), Some(hash)) = (&self.key, hash) else {
            return;
        };
        match mac {
            None => self.problems.push(ChainProblem::MacMissing { seq }),
            Some(mac) if !key.check(&hash, &mac) => {
                self.problems.push(ChainProblem::MacMismatch { seq })
            }
            Some(_) => {}
        }
    }

    pub(crate) fn push_stored(&mut self, e: &StoredEntry) {
        match e {
            StoredEntry::Entry(e) => self.push(e),
            StoredEntry::Unreadable(u) => self.push_unreadable(u),
        }
    }

    fn check_seq(&mut self, seq: u64) {
        self.checked += 1;
        if seq != self.expected_seq {
            self.problems.push(ChainProblem::SequenceGap {
                expected: self.expected_seq,
                found: seq,
            });
        }
    }

    fn check_link(&mut self, seq: u64, prev: Option<EntryHash>) {
        if let Some(prev) = prev {
            if !self.prev_unknown && prev != self.prev {
                self.problems.push(ChainProblem::BrokenLink { seq });
            }
        }
    }

    fn check_anchor(&mut self, seq: u64, hash: Option<EntryHash>) {
        if let (Some(anchor), Some(hash)) = (self.anchor, hash) {
            if anchor.len > 0 && seq == anchor.len - 1 && hash != anchor.hash {
                self.problems.push(ChainProblem::AnchorMismatch { seq });
            }
        }
    }

    fn advance(&mut self, seq: u64, hash: Option<EntryHash>) {
        self.expected_seq = seq.wrapping_add(1);
        match hash {
            Some(h) => {
                self.prev = h;
                self.prev_unknown = false;
            }
            None => self.prev_unknown = true,
        }
    }

    /// An entry that could not be read: reported by position, and linked to its neighbours
    /// as far as its stored hashes allow.
    pub(crate) fn push_unreadable(&mut self, u: &UnreadableEntry) {
        self.check_seq(u.seq);
        self.check_link(u.seq, u.prev);
        self.problems.push(if is_supported(u.version) {
            ChainProblem::Unreadable {
                seq: u.seq,
                detail: u.detail.clone(),
            }
        } else {
            ChainProblem::UnsupportedVersion {
                seq: u.seq,
                version: u.version,
            }
        });
        self.check_mac(u.seq, u.hash, u.mac);
        self.check_anchor(u.seq, u.hash);
        self.advance(u.seq, u.hash);
    }

    pub(crate) fn push(&mut self, e: &AuditEntry) {
        self.check_seq(e.seq);
        self.check_link(e.seq, Some(e.prev));
        if !is_supported(e.v) {
            self.problems.push(ChainProblem::UnsupportedVersion {
                seq: e.seq,
                version: e.v,
            });
        } else {
            match e.compute_hash(&mut self.buf) {
                Ok(h) if h == e.hash => {}
                Ok(_) => self
                    .problems
                    .push(ChainProblem::ContentChanged { seq: e.seq }),
                Err(err) => self.problems.push(ChainProblem::Unreadable {
                    seq: e.seq,
                    detail: err.to_string(),
                }),
            }
        }
        self.check_mac(e.seq, Some(e.hash), e.mac);
        self.check_anchor(e.seq, Some(e.hash));
        self.advance(e.seq, Some(e.hash));
    }

    pub(crate) fn finish(mut self) -> ChainReport {
        if let Some(anchor) = self.anchor {
            if anchor.len > self.checked {
                self.problems.push(ChainProblem::Truncated {
                    anchored: anchor.len,
                    found: self.checked,
                });
            }
        }
        ChainReport {
            checked: self.checked,
            head: ChainHead {
                len: self.checked,
                hash: self.prev,
            },
            problems: self.problems,
        }
    }
}

/// Verifies that `entries` form an intact chain from the genesis, and, if `anchor` is given,
/// that the chain still contains the anchored head (detecting truncation and rewrites).
///
/// Detects every changed, removed, reordered or inserted entry. It checks the hash chain
/// only: entries appended by anyone who can write the store, with correctly computed hashes,
/// pass. To detect those, seal the log with an [`AuditKey`] and use [`verify_chain_keyed`].
pub fn verify_chain<'a>(
    entries: impl IntoIterator<Item = &'a AuditEntry>,
    anchor: Option<ChainHead>,
) -> ChainReport {
    let mut v = ChainVerifier::new(anchor, None);
    for e in entries {
        v.push(e);
    }
    v.finish()
}

/// [`verify_chain`], and also that every entry carries `key`'s MAC over its hash: an entry
/// without one is [`ChainProblem::MacMissing`], one with a wrong one (forged, or sealed under
/// another key) [`ChainProblem::MacMismatch`], each by position in order, so the first such
/// problem names the first entry not appended under the key.
pub fn verify_chain_keyed<'a>(
    entries: impl IntoIterator<Item = &'a AuditEntry>,
    anchor: Option<ChainHead>,
    key: &AuditKey,
) -> ChainReport {
    let mut v = ChainVerifier::new(anchor, Some(key.clone()));
    for e in entries {
        v.push(e);
    }
    v.finish()
}

/// An append-only, hash-chained log of audit events.
///
/// Contract: `append` assigns the next sequence number and seals the entry atomically (no
/// two entries share a sequence number, none is skipped) and returns the new head; entries are
/// never changed or removed through this trait; `read` returns stored positions in sequence
/// order.
///
/// One unreadable entry does not make the log unreadable: `read` returns it as
/// [`StoredEntry::Unreadable`] (its position, its version, its stored hashes where the
/// backend still knows them) between the entries it can read. An entry of a format version
/// this build does not know is always unreadable, never decoded as if it were current
/// ([`StoredEntry::from`] classifies). [`AuditLogExt::verify`] reports it as
/// [`ChainProblem::UnsupportedVersion`] or [`ChainProblem::Unreadable`] by its sequence
/// number and goes on checking the rest of the chain, across it where its hashes are known;
/// [`AuditLogExt::entries`], for callers that need every entry, fails naming the first
/// unreadable one. `Err` from `read` is reserved for failures of the read itself (the
/// backend is unavailable, its index is damaged).
#[async_trait]
pub trait AuditLog: Send + Sync + std::fmt::Debug {
    /// Appends one record and returns the new head.
    async fn append(&self, record: AuditRecord) -> Result<ChainHead, AuditError>;

    /// Up to `limit` stored positions starting at sequence number `from`, each an entry or
    /// the finding that it cannot be read.
    async fn read(&self, from: u64, limit: usize) -> Result<Vec<StoredEntry>, AuditError>;

    /// The current head.
    async fn head(&self) -> Result<ChainHead, AuditError>;
}

/// Conveniences over any [`AuditLog`].
#[async_trait]
pub trait AuditLogExt: AuditLog {
    /// Every entry, in order; fails naming the first entry that cannot be read
    /// ([`UnreadableEntry::to_error`]). Use [`AuditLog::read`] to get past it.
    async fn entries(&self) -> Result<Vec<AuditEntry>, AuditError> {
        let mut out = Vec::new();
        loop {
            let page = self.read(out.len() as u64, 4096).await?;
            if page.is_empty() {
                return Ok(out);
            }
            for e in page {
                out.push(e.into_entry()?);
            }
        }
    }

    /// Whether some readable entry's event satisfies `matches`, looking from the newest entry
    /// back, a page at a time (unreadable entries are skipped). For the rare checks of a
    /// write repeated after an interruption ("was it audited?"); its cost grows with the log.
    async fn any_event<F>(&self, matches: F) -> Result<bool, AuditError>
    where
        F: Fn(&AuditEvent) -> bool + Send + Sync,
    {
        const PAGE: u64 = 1024;
        let mut end = self.head().await?.len;
        while end > 0 {
            let from = end.saturating_sub(PAGE);
            let page = self.read(from, (end - from) as usize).await?;
            if page
                .iter()
                .rev()
                .any(|e| e.entry().is_some_and(|e| matches(&e.event)))
            {
                return Ok(true);
            }
            end = from;
        }
        Ok(false)
    }

    /// Verifies the whole chain page by page (see [`verify_chain`]); an unreadable entry is
    /// one of the problems reported, not an error. This checks the hash chain only, even on a
    /// log that seals its entries with a key: use [`AuditLogExt::verify_keyed`] to check the
    /// MACs.
    async fn verify(&self, anchor: Option<ChainHead>) -> Result<ChainReport, AuditError> {
        verify_log(self, anchor, None).await
    }

    /// Verifies the whole chain and every entry's MAC under `key` (see
    /// [`verify_chain_keyed`]).
    async fn verify_keyed(
        &self,
        anchor: Option<ChainHead>,
        key: &AuditKey,
    ) -> Result<ChainReport, AuditError> {
        verify_log(self, anchor, Some(key.clone())).await
    }
}

impl<T: AuditLog + ?Sized> AuditLogExt for T {}

async fn verify_log<L: AuditLog + ?Sized>(
    log: &L,
    anchor: Option<ChainHead>,
    key: Option<AuditKey>,
) -> Result<ChainReport, AuditError> {
    verify_with_progress(log, anchor, key.as_ref(), |_| {}).await
}

/// Verifies `log` as [`AuditLogExt::verify`] does (and its MACs under `key`, when given, as
/// [`AuditLogExt::verify_keyed`] does), calling `progress` with the number of entries checked
/// so far after each page: for an operator's progress bar over a long log.
///
/// ```
/// use aios_core::{verify_with_progress, AuditEvent, AuditLog, AuditRecord, InMemoryAuditLog, Principal};
/// # futures::executor::block_on(async {
/// let log = InMemoryAuditLog::new();
/// log.append(AuditRecord::new(Principal::System, AuditEvent::Custom {
///     kind: "note".into(), data: serde_json::json!({}) })).await?;
/// let mut seen = 0;
/// let report = verify_with_progress(&log, None, None, |checked| seen = checked).await?;
/// assert!(report.is_intact());
/// assert_eq!(seen, 1);
/// # Ok::<(), aios_core::AuditError>(())
/// # }).unwrap();
/// ```
pub async fn verify_with_progress<L: AuditLog + ?Sized>(
    log: &L,
    anchor: Option<ChainHead>,
    key: Option<&AuditKey>,
    mut progress: impl FnMut(u64),
) -> Result<ChainReport, AuditError> {
    let mut v = ChainVerifier::new(anchor, key.cloned());
    let mut from = 0u64;
    loop {
        let page = log.read(from, 4096).await?;
        if page.is_empty() {
            return Ok(v.finish());
        }
        from += page.len() as u64;
        for e in &page {
            v.push_stored(e);
        }
        progress(from);
    }
}

/// Entries per chunk: the log grows by chunks, so appends never move earlier entries.
const CHUNK: usize = 4096;

#[derive(Debug, Default)]
struct LogState {
    chunks: Vec<Vec<AuditEntry>>,
    len: usize,
    buf: Vec<u8>,
}

impl LogState {
    fn last(&self) -> Option<&AuditEntry> {
        self.chunks.last().and_then(|c| c.last())
    }

    fn iter(&self) -> impl Iterator<Item = &AuditEntry> {
        self.chunks.iter().flatten()
    }

    fn push(&mut self, entry: AuditEntry) {
        match self.chunks.last_mut() {
            Some(c) if c.len() < CHUNK => c.push(entry),
            _ => {
                let mut c = Vec::with_capacity(CHUNK);
                c.push(entry);
                self.chunks.push(c);
            }
        }
        self.len += 1;
    }

    fn range(&self, start: usize, end: usize) -> Vec<AuditEntry> {
        let mut out = Vec::with_capacity(end.saturating_sub(start));
        let mut i = start;
        while i < end {
            let (c, o) = (i / CHUNK, i % CHUNK);
            let take = (CHUNK - o).min(end - i);
            out.extend_from_slice(&self.chunks[c][o..o + take]);
            i += take;
        }
        out
    }
}

/// An audit log in process memory. Clones share the log.
///
/// [`InMemoryAuditLog::tamper`] gives tests raw access to the entries to simulate an attacker.
#[derive(Debug, Clone, Default)]
pub struct InMemoryAuditLog {
    state: Arc<RwLock<LogState>>,
    key: Option<AuditKey>,
}

impl InMemoryAuditLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty log whose appends carry `key`'s MAC (see [`AuditKey`]).
    pub fn with_key(key: AuditKey) -> Self {
        Self {
            state: Arc::default(),
            key: Some(key),
        }
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.state.read().len
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends synchronously (the async [`AuditLog::append`] calls this).
    pub fn append_sync(&self, record: AuditRecord) -> Result<ChainHead, AuditError> {
        let mut st = self.state.write();
        let st = &mut *st;
        let seq = st.len as u64;
        let prev = st.last().map(|e| e.hash).unwrap_or(EntryHash::GENESIS);
        let hash = hash_parts(
            &mut st.buf,
            AUDIT_SCHEMA_VERSION,
            seq,
            &prev,
            &record.at,
            &record.actor,
            &record.event,
        )?;
        st.push(AuditEntry {
            v: AUDIT_SCHEMA_VERSION,
            seq,
            at: record.at,
            actor: record.actor,
            event: record.event,
            prev,
            hash,
            mac: self.key.as_ref().map(|k| k.mac(&hash)),
        });
        Ok(ChainHead { len: seq + 1, hash })
    }

    /// Verifies the chain in place without copying it (the hash chain only, see
    /// [`verify_chain`]).
    pub fn verify_sync(&self, anchor: Option<ChainHead>) -> ChainReport {
        verify_chain(self.state.read().iter(), anchor)
    }

    /// Verifies the chain and every entry's MAC under `key` in place (see
    /// [`verify_chain_keyed`]).
    pub fn verify_sync_keyed(&self, anchor: Option<ChainHead>, key: &AuditKey) -> ChainReport {
        verify_chain_keyed(self.state.read().iter(), anchor, key)
    }

    /// Raw mutable access to the entries, for tests that simulate tampering. Nothing in AIOS
    /// calls it.
    pub fn tamper<R>(&self, f: impl FnOnce(&mut Vec<AuditEntry>) -> R) -> R {
        let mut st = self.state.write();
        let mut all: Vec<AuditEntry> = std::mem::take(&mut st.chunks)
            .into_iter()
            .flatten()
            .collect();
        let out = f(&mut all);
        st.len = 0;
        for e in all {
            st.push(e);
        }
        out
    }
}

#[async_trait]
impl AuditLog for InMemoryAuditLog {
    async fn append(&self, record: AuditRecord) -> Result<ChainHead, AuditError> {
        self.append_sync(record)
    }

    async fn read(&self, from: u64, limit: usize) -> Result<Vec<StoredEntry>, AuditError> {
        let st = self.state.read();
        let start = usize::try_from(from).unwrap_or(usize::MAX).min(st.len);
        let end = start.saturating_add(limit).min(st.len);
        Ok(st
            .range(start, end)
            .into_iter()
            .map(StoredEntry::from)
            .collect())
    }

    async fn head(&self) -> Result<ChainHead, AuditError> {
        Ok(self
            .state
            .read()
            .last()
            .map(|e| e.head())
            .unwrap_or_default())
    }
}
