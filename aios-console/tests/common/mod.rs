//! A host for the console's tests: the `solo_consultancy` workspace on a SQLite file, fake
//! connectors, and an outreach agent whose mail (with markup in it) needs approval.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use aios_console::Authenticator;
use aios_core::{RecordingConnector, RunId};
use aios_orchestrator::{Orchestrator, RunStatus};
use aios_sqlite::SqliteStore;
use aios_workspace::{Plan, ValidateOptions};

mod host;
#[allow(unused_imports)] // each test binary uses some of them
pub use host::{mail_connector, wire, HOSTILE};

/// alice's token (alice holds the anchor the mail asks).
pub const ALICE: &str = "aios_alice_token_0123456789";

/// A temporary folder with the store file.
pub struct Dir {
    pub path: PathBuf,
}

impl Dir {
    pub fn new(name: &str) -> Dir {
        let path = std::env::temp_dir().join(format!("aios-console-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Dir { path }
    }
    pub fn store(&self) -> PathBuf {
        self.path.join("aios.sqlite")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub fn plan() -> Plan {
    plan_of(aios_workspace::SOLO_CONSULTANCY_TOML)
}

/// The plan of a workspace manifest.
pub fn plan_of(toml: &str) -> Plan {
    let loaded = aios_workspace::parse("aios.toml", toml).unwrap();
    aios_workspace::plan(&loaded, &ValidateOptions::default()).unwrap()
}

/// Tokens to names.
pub struct Tokens(pub HashMap<String, String>);

impl Authenticator for Tokens {
    fn authenticate(&self, token: &str) -> Result<Option<String>, String> {
        Ok(self.0.get(token).cloned())
    }
}

pub fn tokens() -> Arc<dyn Authenticator> {
    Arc::new(Tokens(HashMap::from([(
        ALICE.to_string(),
        "alice".to_string(),
    )])))
}

/// The host application: the workspace's roles and connectors on the store.
pub async fn host(store: &SqliteStore, mail: &RecordingConnector) -> Orchestrator {
    host_with(store, mail, &plan()).await
}

/// The host application of another workspace (`plan`) on the store.
pub async fn host_with(
    store: &SqliteStore,
    mail: &RecordingConnector,
    plan: &Plan,
) -> Orchestrator {
    let b = store.orchestrator(plan.governor().unwrap()).await.unwrap();
    wire(b, mail, plan).await
}

/// Starts the proposal workflow; it parks on the mail to the client.
pub async fn start_proposal(o: &Orchestrator) -> RunId {
    let workflow = plan().workflows["proposal"].clone();
    let outcome = o.start(workflow).await.unwrap();
    assert!(
        matches!(outcome.status, RunStatus::Parked { .. }),
        "{:?}",
        outcome.status
    );
    outcome.run
}
