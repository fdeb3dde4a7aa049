//! Newtype ids over time-ordered UUIDs (version 7).

use std::sync::Arc;

use parking_lot::Mutex;
use uuid::Uuid;

use crate::{Clock, SeededRng};

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps an existing UUID (for example one read back from storage).
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The UUID inside.
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }

            /// A short, human-friendly prefix used in `Debug` output and transcripts.
            pub const PREFIX: &'static str = $prefix;

            /// A deterministic id derived from a human-chosen name (`founder`, `outreach`),
            /// so that documents can refer to things by name: the same name always gives the
            /// same id (a UUID version 8 built from SHA-256 of the kind and the name).
            pub fn from_name(name: &str) -> Self {
                Self(crate::id::name_uuid($prefix, name))
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Display::fmt(&self.0, f)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}:{}", $prefix, self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

define_id!(
    /// One execution of a task graph.
    RunId, "run"
);
define_id!(
    /// One task inside a run.
    TaskId, "task"
);
define_id!(
    /// An AI agent.
    AgentId, "agent"
);
define_id!(
    /// A role template agents are instantiated from.
    RoleId, "role"
);
define_id!(
    /// A person.
    HumanId, "human"
);
define_id!(
    /// An accountability anchor: a human role that is formally responsible.
    AnchorId, "anchor"
);
define_id!(
    /// An execution pathway: a class of work delegated from an anchor to a role.
    PathwayId, "pathway"
);
define_id!(
    /// A memory record lineage.
    MemoryId, "mem"
);
define_id!(
    /// An event.
    EventId, "event"
);
define_id!(
    /// A request for a human approval.
    ApprovalId, "approval"
);

pub(crate) fn name_uuid(kind: &str, name: &str) -> Uuid {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"aios-id:");
    h.update(kind.as_bytes());
    h.update(b":");
    h.update(name.as_bytes());
    let digest: [u8; 32] = h.finalize().into();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// A role by its key in the governance model (`"assistant"`): the same as
/// [`RoleId::from_name`], so a task can name its role the way [`Role::new`] does.
///
/// [`Role::new`]: https://docs.rs/aios-orchestrator/latest/aios_orchestrator/struct.Role.html#method.new
///
/// ```
/// use aios_core::RoleId;
/// assert_eq!(RoleId::from("assistant"), RoleId::from_name("assistant"));
/// ```
impl From<&str> for RoleId {
    fn from(key: &str) -> Self {
        RoleId::from_name(key)
    }
}

#[derive(Debug)]
struct GenState {
    rng: SeededRng,
    last_millis: u64,
    seq: u64,
}

/// Makes time-ordered ids from an injected clock and seed.
///
/// Ids are UUID version 7: 48 bits of Unix milliseconds, then a 42-bit sequence that restarts
/// every millisecond, then 32 seeded random bits. Ids from one generator are strictly
/// increasing even if the clock stands still or steps back, and the same clock readings and
/// seed give the same ids (so tests are reproducible). Clones share state.
///
/// ```
/// use aios_core::{IdGen, ManualClock, RunId};
/// let ids = IdGen::new(ManualClock::default(), 42);
/// let a: RunId = ids.next();
/// let b: RunId = ids.next();
/// assert!(a < b);
/// ```
#[derive(Debug, Clone)]
pub struct IdGen {
    clock: Arc<dyn Clock>,
    state: Arc<Mutex<GenState>>,
}

impl IdGen {
    /// A generator reading `clock`, with randomness drawn from `seed`.
    pub fn new(clock: impl Clock + 'static, seed: u64) -> Self {
        Self::with_clock(Arc::new(clock), seed)
    }

    /// Like [`IdGen::new`] for a shared clock.
    pub fn with_clock(clock: Arc<dyn Clock>, seed: u64) -> Self {
        Self {
            clock,
            state: Arc::new(Mutex::new(GenState {
                rng: SeededRng::new(seed),
                last_millis: 0,
                seq: 0,
            })),
        }
    }

    /// The next UUID.
    pub fn next_uuid(&self) -> Uuid {
        let now = self.clock.now().timestamp_millis().max(0) as u64 & 0xFFFF_FFFF_FFFF;
        let mut st = self.state.lock();
        if now > st.last_millis {
            st.last_millis = now;
            st.seq = 0;
        } else {
            st.seq += 1;
            if st.seq >= 1 << 42 {
                st.last_millis += 1;
                st.seq = 0;
            }
        }
        let millis = st.last_millis;
        let seq = st.seq;
        let random = st.rng.next_u64() as u32;
        drop(st);
        let mut bytes = [0u8; 16];
        bytes[0..6].copy_from_slice(&millis.to_be_bytes()[2..8]);
        // version 7 and the top 12 bits of the sequence
        bytes[6] = 0x70 | ((seq >> 38) & 0x0F) as u8;
        bytes[7] = ((seq >> 30) & 0xFF) as u8;
        // variant 10 and the low 30 bits of the sequence
        bytes[8] = 0x80 | ((seq >> 24) & 0x3F) as u8;
        bytes[9] = ((seq >> 16) & 0xFF) as u8;
        bytes[10] = ((seq >> 8) & 0xFF) as u8;
        bytes[11] = (seq & 0xFF) as u8;
        bytes[12..16].copy_from_slice(&random.to_be_bytes());
        Uuid::from_bytes(bytes)
    }

    /// The next id of any kind.
    #[allow(clippy::should_implement_trait)]
    pub fn next<I: From<Uuid>>(&self) -> I {
        I::from(self.next_uuid())
    }

    /// The clock this generator reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    #[test]
    fn ids_are_v7_strictly_increasing_and_reproducible() {
        let clock = ManualClock::default();
        let a = IdGen::new(clock.clone(), 1);
        let b = IdGen::new(clock.clone(), 1);
        let mut prev = Uuid::nil();
        for i in 0..10_000 {
            if i % 1000 == 0 {
                clock.advance(std::time::Duration::from_millis(1));
            }
            let x = a.next_uuid();
            assert_eq!(x, b.next_uuid());
            assert_eq!(x.get_version_num(), 7);
            assert!(x > prev);
            prev = x;
        }
    }

    #[test]
    fn ids_stay_ordered_when_the_clock_steps_back() {
        let clock = ManualClock::default();
        let ids = IdGen::new(clock.clone(), 9);
        let first = ids.next_uuid();
        clock.set(clock.now() - chrono::Duration::seconds(10));
        assert!(ids.next_uuid() > first);
    }

    #[test]
    fn named_ids_are_stable_and_distinct_per_kind() {
        assert_eq!(
            AnchorId::from_name("founder"),
            AnchorId::from_name("founder")
        );
        assert_ne!(AnchorId::from_name("founder"), AnchorId::from_name("ops"));
        assert_ne!(
            AnchorId::from_name("x").as_uuid(),
            RoleId::from_name("x").as_uuid()
        );
        assert_eq!(
            AnchorId::from_name("founder").as_uuid().get_version_num(),
            8
        );
    }

    #[test]
    fn ids_round_trip_through_text_and_serde() {
        let ids = IdGen::new(ManualClock::default(), 3);
        let run: RunId = ids.next();
        let parsed: RunId = run.to_string().parse().unwrap();
        assert_eq!(run, parsed);
        let json = serde_json::to_string(&run).unwrap();
        assert_eq!(serde_json::from_str::<RunId>(&json).unwrap(), run);
        assert!(format!("{run:?}").starts_with("run:"));
    }
}
