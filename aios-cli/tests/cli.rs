//! The `aios` binary on a temporary store: each command's output and exit code, `--json`
//! parsed, against a host that runs the workspace's workflows on the same store. Most
//! tests run twice, on a SQLite file and on a fresh PostgreSQL database of the test server
//! of `aios_postgres::testing` (named by `$AIOS_STORE`, a URL with a password, which no
//! output of any command may show).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// without the `postgres` feature only the SQLite half of each test runs
#![cfg_attr(not(feature = "postgres"), allow(dead_code))]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aios_core::{RecordingConnector, RunId};
use aios_orchestrator::{Orchestrator, RunStatus, WorkOptions};
use aios_postgres::testing::TestServer;
use aios_postgres::PgStore;
use aios_sqlite::SqliteStore;
use aios_workspace::{Plan, ValidateOptions};
use serde_json::Value;

#[path = "../../aios-console/tests/common/host.rs"]
mod host;
use host::{mail_connector, wire};

const AIOS: &str = env!("CARGO_BIN_EXE_aios");

/// Which store a test's commands work on.
enum Kind {
    /// `aios.sqlite` in the folder (the default `--store`).
    Sqlite,
    /// A fresh PostgreSQL database, passed as `$AIOS_STORE`.
    Postgres {
        /// Its URL, with the password.
        url: String,
        /// The password in the URL, which no output may show.
        password: String,
    },
}

/// A temporary folder with a workspace manifest, and a store.
struct Dir {
    path: PathBuf,
    kind: Kind,
}

/// A store the test itself opens, as the host application would.
enum TestStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl TestStore {
    async fn orchestrator(
        &self,
        governor: aios_governance::Governor,
    ) -> aios_orchestrator::OrchestratorBuilder {
        match self {
            TestStore::Sqlite(s) => s.orchestrator(governor).await.unwrap(),
            TestStore::Postgres(s) => s.orchestrator(governor).await.unwrap(),
        }
    }
    async fn memory(&self) -> aios_memory::Memory {
        match self {
            TestStore::Sqlite(s) => s.memory().await.unwrap(),
            TestStore::Postgres(s) => s.memory().await.unwrap(),
        }
    }
}

impl Dir {
    fn new(name: &str) -> Dir {
        Dir::sqlite(name)
    }
    fn folder(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("aios-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        path
    }
    /// A folder whose store is the SQLite file in it.
    fn sqlite(name: &str) -> Dir {
        Dir {
            path: Dir::folder(&format!("{name}-sqlite")),
            kind: Kind::Sqlite,
        }
    }
    /// A folder whose store is a fresh database on the test server.
    fn postgres(name: &str) -> Dir {
        let url = rt().block_on(async {
            TestServer::shared()
                .expect("a test postgres server")
                .fresh_database()
                .await
                .unwrap()
        });
        let password = url::Url::parse(&url)
            .ok()
            .and_then(|u| u.password().map(str::to_string))
            .expect("the test server's URL has a password");
        assert!(password.len() >= 4, "a password to look for in outputs");
        Dir {
            path: Dir::folder(&format!("{name}-pg")),
            kind: Kind::Postgres { url, password },
        }
    }
    fn store(&self) -> PathBuf {
        self.path.join("aios.sqlite")
    }
    fn workspace(&self) -> PathBuf {
        self.path.join("aios.toml")
    }
    /// Opens the store as a host would.
    async fn open(&self) -> TestStore {
        match &self.kind {
            Kind::Sqlite => TestStore::Sqlite(SqliteStore::open(self.store()).unwrap()),
            Kind::Postgres { url, .. } => TestStore::Postgres(PgStore::connect(url).await.unwrap()),
        }
    }
    /// The stored hashes of the humans' tokens, read from the table itself.
    fn stored_hashes(&self) -> Vec<String> {
        match &self.kind {
            Kind::Sqlite => rusqlite::Connection::open(self.store())
                .unwrap()
                .prepare("SELECT token_sha256 FROM aios_humans")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap(),
            Kind::Postgres { url, .. } => rt().block_on(async {
                let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                let conn = tokio::spawn(conn);
                let rows = client
                    .query("SELECT token_sha256 FROM aios_humans", &[])
                    .await
                    .unwrap();
                drop(client);
                let _ = conn.await;
                rows.iter().map(|r| r.get(0)).collect()
            }),
        }
    }
    /// A command `aios ARGS` in the folder with `token` as AIOS_TOKEN, on the test's store.
    fn command(&self, token: Option<&str>, args: &[&str]) -> Command {
        let mut cmd = Command::new(AIOS);
        cmd.current_dir(&self.path)
            .env_remove("AIOS_TOKEN")
            .env_remove("AIOS_TOKEN_FILE")
            .env_remove("AIOS_STORE")
            .env_remove("AIOS_WORKSPACE")
            .args(args);
        if let Kind::Postgres { url, .. } = &self.kind {
            cmd.env("AIOS_STORE", url);
        }
        if let Some(t) = token {
            cmd.env("AIOS_TOKEN", t);
        }
        cmd
    }
    /// Runs `aios ARGS`; on PostgreSQL, checks that nothing it printed shows the password.
    fn aios(&self, token: Option<&str>, args: &[&str]) -> Output {
        let out = self.command(token, args).output().unwrap();
        self.no_password_in(&out, args);
        out
    }
    /// Panics if `out` shows the store's password.
    fn no_password_in(&self, out: &Output, args: &[&str]) {
        if let Kind::Postgres { password, .. } = &self.kind {
            for (what, text) in [("stdout", stdout(out)), ("stderr", stderr(out))] {
                assert!(
                    !text.contains(password.as_str()),
                    "`aios {}` shows the password on {what}: {text}",
                    args.join(" ")
                );
            }
        }
    }
}

/// Runs a test function once on a SQLite file and once on PostgreSQL: `mod NAME { fn
/// sqlite; fn postgres }`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sqlite() {
                    super::$name(&super::Dir::sqlite(stringify!($name)));
                }
                #[cfg(feature = "postgres")]
                #[test]
                fn postgres() {
                    super::$name(&super::Dir::postgres(stringify!($name)));
                }
            }
        )*
    };
}

on_both_stores!(
    a_parked_run_is_approved_by_an_authenticated_human_and_finishes,
    a_rejection_and_an_edit_reach_the_run,
    controls_stop_and_resume_with_a_reason,
    edited_bytes_break_the_chain_and_a_loose_token_file_is_refused,
    serve_runs_the_console_on_loopback_over_the_store,
    two_answers_to_one_approval_race_and_one_wins,
    memory_search_finds_what_the_host_remembered,
    two_first_humans_race_and_one_is_added,
    an_audit_record_that_cannot_be_written_leaves_no_credential,
);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", stdout(out), stderr(out)))
}

fn plan(workspace: &Path) -> Plan {
    let loaded = aios_workspace::load(workspace).unwrap();
    aios_workspace::plan(&loaded, &ValidateOptions::default()).unwrap()
}

/// The host application: the workspace's roles and connectors on the store.
async fn host(dir: &Dir, mail: &RecordingConnector) -> Orchestrator {
    let plan = plan(&dir.workspace());
    let store = dir.open().await;
    let b = store.orchestrator(plan.governor().unwrap()).await;
    wire(b, mail, &plan).await
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Starts the proposal workflow; it parks on the mail to the client.
fn start_proposal(dir: &Dir) -> (RunId, RecordingConnector) {
    let mail = mail_connector(&plan(&dir.workspace()));
    let run = rt().block_on(async {
        let o = host(dir, &mail).await;
        let workflow = plan(&dir.workspace()).workflows["proposal"].clone();
        let outcome = o.start(workflow).await.unwrap();
        assert!(
            matches!(outcome.status, RunStatus::Parked { .. }),
            "{:?}",
            outcome.status
        );
        outcome.run
    });
    (run, mail)
}

/// The host's worker drains what is runnable.
fn work(dir: &Dir, mail: &RecordingConnector) {
    rt().block_on(async {
        let o = host(dir, mail).await;
        let stop = futures::future::pending::<()>();
        o.work(WorkOptions::until_idle(), stop).await.unwrap();
    });
}

fn init(dir: &Dir) {
    let out = dir.aios(None, &["init", "--template", "solo_consultancy"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(dir.workspace().exists());
}

#[test]
fn init_check_and_assess() {
    let dir = Dir::new("init");
    init(&dir);
    // a second init does not overwrite
    let again = dir.aios(None, &["init"]);
    assert_eq!(code(&again), 5);
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    let unknown = dir.aios(None, &["init", "--template", "bakery", "--force"]);
    assert_eq!(code(&unknown), 3);
    assert!(
        stderr(&unknown).contains("newsletter"),
        "{}",
        stderr(&unknown)
    );

    let check = dir.aios(None, &["check", "--json"]);
    assert_eq!(code(&check), 0, "{}", stderr(&check));
    let v = json(&check);
    assert_eq!(v["ok"], true);
    assert_eq!(v["hash"].as_str().unwrap().len(), 64);

    // a workflow task naming an unknown role: an error with its place, exit 1
    let text = std::fs::read_to_string(dir.workspace()).unwrap();
    let broken = text.replacen(
        "role = \"editor\", after",
        "role = \"ghostwriter\", after",
        1,
    );
    assert_ne!(broken, text);
    std::fs::write(dir.workspace(), broken).unwrap();
    let check = dir.aios(None, &["check"]);
    assert_eq!(code(&check), 1, "{}", stdout(&check));
    assert!(stdout(&check).contains("ghostwriter"), "{}", stdout(&check));
    assert!(
        stdout(&check).contains("architecture.workflows.proposal"),
        "{}",
        stdout(&check)
    );
    let v = json(&dir.aios(None, &["check", "--json"]));
    assert_eq!(v["ok"], false);
    assert!(!v["findings"].as_array().unwrap().is_empty());

    // assess names a level per line and works without a store
    std::fs::write(dir.workspace(), text).unwrap();
    let assess = dir.aios(None, &["assess", "--json"]);
    assert_eq!(code(&assess), 0, "{}", stderr(&assess));
    let v = json(&assess);
    assert!(v.to_string().contains("foundation"), "{v}");

    // no manifest: a clear error naming it
    let missing = dir.aios(None, &["--workspace", "nope.toml", "check"]);
    assert_eq!(code(&missing), 5);
    assert!(
        stderr(&missing).contains("nope.toml"),
        "{}",
        stderr(&missing)
    );
}

fn a_parked_run_is_approved_by_an_authenticated_human_and_finishes(dir: &Dir) {
    init(dir);
    let (run, mail) = start_proposal(dir);
    let run_s = run.to_string();

    // the first human needs no token; later ones need one
    let alice = dir.aios(None, &["humans", "add", "alice"]);
    assert_eq!(code(&alice), 0, "{}", stderr(&alice));
    let alice = stdout(&alice).trim().to_string();
    assert!(alice.starts_with("aios_"));
    let bob = dir.aios(None, &["humans", "add", "bob"]);
    assert_eq!(code(&bob), 4, "{}", stderr(&bob));
    let mallory = dir.aios(Some(&alice), &["humans", "add", "mallory"]);
    assert_eq!(code(&mallory), 3, "{}", stderr(&mallory));
    assert!(stderr(&mallory).contains("holds no anchor"));
    // alice adds her deputy; the list says who added whom
    let bob = dir.aios(Some(&alice), &["humans", "add", "bob", "--json"]);
    assert_eq!(code(&bob), 0, "{}", stderr(&bob));
    let bob = json(&bob)["token"].as_str().unwrap().to_string();
    assert_ne!(bob, alice);
    let again = dir.aios(Some(&alice), &["humans", "add", "bob"]);
    assert_eq!(code(&again), 5, "{}", stderr(&again));
    assert!(stderr(&again).contains("has a credential already"));
    let list = json(&dir.aios(None, &["humans", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert_eq!(list[0]["name"], "alice");
    assert_eq!(list[0]["added_by"], Value::Null);
    assert_eq!(list[1]["name"], "bob");
    assert_eq!(list[1]["added_by"], "alice");
    // only the hashes are stored
    let hashes = dir.stored_hashes();
    assert_eq!(hashes.len(), 2);
    assert!(hashes.iter().all(|h| !bob.contains(h.as_str())));
    assert!(hashes
        .iter()
        .all(|h| h.len() == 64 && !alice.contains(h.as_str())));

    // the run is listed as parked
    let runs = json(&dir.aios(None, &["runs", "--status", "parked", "--json"]));
    assert_eq!(runs.as_array().unwrap().len(), 1);
    assert_eq!(runs[0]["run"], run_s);
    let none = json(&dir.aios(None, &["runs", "--status", "completed", "--json"]));
    assert!(none.as_array().unwrap().is_empty());

    // the inbox: task, action, who may answer; the payload shown as text
    let inbox = dir.aios(None, &["approvals", "--json"]);
    assert_eq!(code(&inbox), 0, "{}", stderr(&inbox));
    let inbox = json(&inbox);
    assert_eq!(inbox.as_array().unwrap().len(), 1);
    let id = inbox[0]["id"].as_str().unwrap().to_string();
    assert_eq!(inbox[0]["task"], "send");
    assert!(inbox[0]["may_answer"].to_string().contains("alice"));
    let text = stdout(&dir.aios(None, &["approvals"]));
    assert!(text.contains("send") && text.contains("<script>"), "{text}");

    // no credential, a wrong one: refused, nothing decided
    let out = dir.aios(None, &["approve", &id[id.len() - 8..]]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    let out = dir.aios(Some("aios_0000"), &["approve", &id[id.len() - 8..]]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert_eq!(
        json(&dir.aios(None, &["approvals", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // a name on the command line is not a credential
    let out = dir.aios(None, &["approve", &id[id.len() - 8..], "--by", "alice"]);
    assert_eq!(code(&out), 2);
    // an unknown id
    let out = dir.aios(Some(&alice), &["approve", "ffffffff"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));

    // alice approves by a prefix
    let out = dir.aios(Some(&alice), &["approve", &id[id.len() - 8..], "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["by"], "alice");
    assert_eq!(v["run"], run_s);
    // used once: a second answer finds nothing pending; by its whole id, it is refused as
    // answered already
    let out = dir.aios(Some(&alice), &["approve", &id[id.len() - 8..]]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let out = dir.aios(
        Some(&alice),
        &["reject", &id, "--reason", "changed my mind"],
    );
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("answered already"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        mail.effects().len(),
        0,
        "the command line does not run the call"
    );

    // the host's worker picks the run up: the mail goes out once
    work(dir, &mail);
    assert_eq!(mail.effects().len(), 1);
    let runs = json(&dir.aios(None, &["runs", "--status", "completed", "--json"]));
    assert_eq!(runs.as_array().unwrap().len(), 1);

    // the run's timeline and transcript
    let show = dir.aios(None, &["run", "show", &run_s[run_s.len() - 8..]]);
    assert_eq!(code(&show), 0, "{}", stderr(&show));
    let show = stdout(&show);
    assert!(
        show.contains("completed") && show.contains("send") && show.contains("outreach"),
        "{show}"
    );
    let state = json(&dir.aios(None, &["run", "show", &run_s, "--json"]));
    assert_eq!(state["workflow"], "proposal");
    let transcript = dir.aios(None, &["run", "transcript", &run_s[run_s.len() - 8..]]);
    assert_eq!(code(&transcript), 0, "{}", stderr(&transcript));
    assert!(
        stdout(&transcript).contains("mail"),
        "{}",
        stdout(&transcript)
    );

    // the record verifies; the head anchors it
    let verify = dir.aios(None, &["audit", "verify", "--json"]);
    assert_eq!(code(&verify), 0, "{}", stderr(&verify));
    assert_eq!(json(&verify)["intact"], true);
    let head = stdout(&dir.aios(None, &["audit", "head"]))
        .trim()
        .to_string();
    let verify = dir.aios(None, &["audit", "verify", "--anchor", &head]);
    assert_eq!(code(&verify), 0, "{}", stdout(&verify));
    let export = stdout(&dir.aios(None, &["audit", "export"]));
    let lines: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let len: u64 = head.split(':').next().unwrap().parse().unwrap();
    assert_eq!(lines.len() as u64, len);
    // who added whom: the first human by the system, bob by alice
    let added: Vec<&Value> = lines
        .iter()
        .filter(|l| l.to_string().contains("human_credential"))
        .collect();
    assert_eq!(added.len(), 2, "{added:?}");
    assert_eq!(added[0]["actor"]["type"], "system", "{}", added[0]);
    assert_eq!(added[0]["event"]["data"]["human"], "alice");
    assert_eq!(added[1]["event"]["data"]["human"], "bob");
    assert_eq!(
        added[1]["actor"]["id"],
        aios_core::HumanId::from_name("alice").to_string(),
        "{}",
        added[1]
    );
    assert!(!export.contains(&alice), "a token never reaches the record");

    // the operations report counts the approval
    let report = dir.aios(None, &["report", "--json"]);
    assert_eq!(code(&report), 0, "{}", stderr(&report));
    let report = json(&report);
    assert!(report.to_string().contains("approv"), "{report}");
    let bad = dir.aios(None, &["report", "--since", "soon"]);
    assert_eq!(code(&bad), 5);
    assert!(stderr(&bad).contains("--since"), "{}", stderr(&bad));
    // the store's record as the assessment's evidence; runs per governance version
    let assess = dir.aios(None, &["assess", "--json"]);
    assert_eq!(code(&assess), 0, "{}", stderr(&assess));
    assert!(json(&assess).to_string().contains("operations"));
    let versions = json(&dir.aios(None, &["governance", "versions", "--json"]));
    assert_eq!(versions["runs_per_version"]["1"], 1, "{versions}");

    // a removed human's token no longer works
    let out = dir.aios(Some(&alice), &["humans", "remove", "alice"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = dir.aios(Some(&alice), &["stop", "--all", "--reason", "x"]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
}

fn a_rejection_and_an_edit_reach_the_run(dir: &Dir) {
    init(dir);
    let (_run, mail) = start_proposal(dir);
    let alice = stdout(&dir.aios(None, &["humans", "add", "alice"]))
        .trim()
        .to_string();
    let id = json(&dir.aios(None, &["approvals", "--json"]))[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = dir.aios(
        Some(&alice),
        &["reject", &id, "--reason", "not this client"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    work(dir, &mail);
    assert_eq!(mail.effects().len(), 0, "a rejected mail is never sent");

    // an edit: the edited input is what goes out
    let (_run2, mail2) = start_proposal(dir);
    let id = json(&dir.aios(None, &["approvals", "--json"]))[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let edited = dir.path.join("edited.json");
    std::fs::write(
        &edited,
        r#"{ "to": "client@example.com", "body": "Dear client, edited" }"#,
    )
    .unwrap();
    let bad = dir.path.join("bad.json");
    std::fs::write(&bad, "{ not json").unwrap();
    let out = dir.aios(
        Some(&alice),
        &["edit", &id, "--input", bad.to_str().unwrap()],
    );
    assert_eq!(code(&out), 5);
    assert!(stderr(&out).contains("bad.json"), "{}", stderr(&out));
    let out = dir.aios(
        Some(&alice),
        &["edit", &id, "--input", edited.to_str().unwrap()],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    work(dir, &mail2);
    let runs = stdout(&dir.aios(None, &["runs"]));
    let effects = mail2.effects();
    assert_eq!(effects.len(), 1, "{runs}");
    assert_eq!(effects.len(), 1);
    assert!(
        format!("{:?}", effects[0]).contains("edited"),
        "{:?}",
        effects[0]
    );
}

fn controls_stop_and_resume_with_a_reason(dir: &Dir) {
    init(dir);
    let (_run, _mail) = start_proposal(dir);
    let alice = stdout(&dir.aios(None, &["humans", "add", "alice"]))
        .trim()
        .to_string();
    let out = dir.aios(
        Some(&alice),
        &["stop", "--pathway", "outreach", "--reason", "incident 42"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = json(&dir.aios(None, &["controls", "--json"]));
    assert_eq!(v["in_force"][0]["target"], "pathway outreach");
    assert_eq!(v["in_force"][0]["halt"], "stopped");
    let text = stdout(&dir.aios(None, &["controls"]));
    assert!(
        text.contains("incident 42") && text.contains("alice"),
        "{text}"
    );
    // two targets, or none: a usage error
    assert_eq!(
        code(&dir.aios(
            Some(&alice),
            &["pause", "--all", "--pathway", "outreach", "--reason", "x"]
        )),
        2
    );
    assert_eq!(
        code(&dir.aios(Some(&alice), &["pause", "--reason", "x"])),
        2
    );
    // an unknown name says which are known
    let out = dir.aios(
        Some(&alice),
        &["pause", "--pathway", "payroll", "--reason", "x"],
    );
    assert_eq!(code(&out), 3);
    assert!(stderr(&out).contains("outreach"), "{}", stderr(&out));
    let out = dir.aios(
        Some(&alice),
        &["resume", "--pathway", "outreach", "--reason", "closed"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v = json(&dir.aios(None, &["controls", "--json"]));
    assert!(v["in_force"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(v["history"].as_array().unwrap().len(), 2);
}

fn edited_bytes_break_the_chain_and_a_loose_token_file_is_refused(dir: &Dir) {
    init(dir);
    let (_run, _mail) = start_proposal(dir);
    let alice = stdout(&dir.aios(None, &["humans", "add", "alice"]))
        .trim()
        .to_string();

    // a token file others can read is refused; 0600 is accepted
    let file = dir.path.join("token");
    std::fs::write(&file, format!("{alice}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = dir.aios(
            None,
            &[
                "--token-file",
                file.to_str().unwrap(),
                "pause",
                "--all",
                "--reason",
                "x",
            ],
        );
        assert_eq!(code(&out), 4, "{}", stderr(&out));
        assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = dir.aios(
        None,
        &[
            "--token-file",
            file.to_str().unwrap(),
            "pause",
            "--all",
            "--reason",
            "x",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    assert_eq!(code(&dir.aios(None, &["audit", "verify"])), 0);
    tamper_with_the_first_audit_entry(dir);
    let out = dir.aios(None, &["audit", "verify", "--json"]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert_eq!(json(&out)["intact"], false);
}

/// Changes one recorded event where the store keeps it, as someone with write access to
/// the file or the database could.
fn tamper_with_the_first_audit_entry(dir: &Dir) {
    if let Kind::Postgres { url, .. } = &dir.kind {
        rt().block_on(TestServer::execute_on(
            url,
            "UPDATE aios_audit_entries SET entry = replace(entry, 'proposal', 'proposat')
              WHERE seq = (SELECT min(seq) FROM aios_audit_entries)",
        ))
        .unwrap();
        return;
    }
    let conn = rusqlite::Connection::open(dir.store()).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%audit%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!tables.is_empty());
    let table = &tables[0];
    let columns: Vec<String> = conn
        .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let body = columns
        .iter()
        .find(|c| ["entry", "body", "data", "json", "record"].contains(&c.as_str()))
        .unwrap_or_else(|| panic!("audit columns: {columns:?}"));
    let seq = columns
        .iter()
        .find(|c| c.as_str() == "seq")
        .expect("a seq column");
    let changed = conn
        .execute(
            &format!("UPDATE {table} SET {body} = replace({body}, 'proposal', 'proposat') WHERE {seq} = 0"),
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
}

#[test]
fn no_store_is_a_clear_error_and_listings_are_empty_json() {
    let dir = Dir::new("empty");
    init(&dir);
    let out = dir.aios(None, &["runs"]);
    assert_eq!(code(&out), 5);
    assert!(stderr(&out).contains("aios.sqlite"), "{}", stderr(&out));
    // an empty store
    SqliteStore::open(dir.store()).unwrap();
    assert_eq!(
        json(&dir.aios(None, &["runs", "--json"])),
        serde_json::json!([])
    );
    assert_eq!(
        json(&dir.aios(None, &["approvals", "--json"])),
        serde_json::json!([])
    );
    let versions = json(&dir.aios(None, &["governance", "versions", "--json"]));
    assert_eq!(versions["current"], 1);
    let _ = BTreeMap::<u8, u8>::new();
}

/// `aios ARGS` with `$AIOS_STORE` set to `store` (or `--store STORE` when `flag`).
fn with_store(dir: &Dir, store: &str, flag: bool, args: &[&str]) -> Output {
    let mut cmd = dir.command(None, &[]);
    if flag {
        cmd.args(["--store", store]);
    } else {
        cmd.env("AIOS_STORE", store);
    }
    cmd.args(args).output().unwrap()
}

#[cfg(not(feature = "postgres"))]
#[test]
fn without_the_feature_a_postgres_url_is_refused_naming_it() {
    let dir = Dir::sqlite("nofeature");
    init(&dir);
    let out = with_store(
        &dir,
        "postgres://aios:Sup3r-s3cret-pw@127.0.0.1/aios",
        true,
        &["runs"],
    );
    assert_eq!(code(&out), 5);
    let e = stderr(&out);
    assert!(
        e.contains("feature `postgres`") && e.contains("postgres://aios:***@"),
        "{e}"
    );
    assert!(!e.contains("Sup3r-s3cret-pw"), "{e}");
}

#[cfg(feature = "postgres")]
#[test]
fn a_postgres_store_that_cannot_be_used_is_named_without_its_password() {
    let dir = Dir::sqlite("badstores");
    init(&dir);
    let server = TestServer::shared().unwrap();
    let (host, port) = server.address();
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let secret = "Sup3r-s3cret-pw";
    let missing_db = server.url_of("aios_no_such_database");
    let missing_pw = url::Url::parse(&missing_db)
        .unwrap()
        .password()
        .unwrap()
        .to_string();
    let cases = [
        // nothing listens there
        (
            format!("postgres://aios:{secret}@127.0.0.1:{free}/aios"),
            secret.to_string(),
            vec!["cannot reach", "postgres://aios:***@127.0.0.1"],
        ),
        // the server is there, the password is wrong
        (
            format!("postgres://aios:{secret}@{host}:{port}/postgres"),
            secret.to_string(),
            vec!["authentication", "postgres://aios:***@"],
        ),
        // the right password, a database that does not exist
        (
            missing_db.clone(),
            missing_pw,
            vec!["aios_no_such_database", "not found"],
        ),
        // neither a file nor postgres
        (
            format!("mysql://aios:{secret}@{host}/aios"),
            secret.to_string(),
            vec![
                "`mysql` is not a kind of store",
                "postgres://user:password@host",
            ],
        ),
        // a URL that does not parse
        (
            format!("postgresql://aios:{secret}@{host}:notaport/aios"),
            secret.to_string(),
            vec!["invalid postgres url"],
        ),
        // a key-value string
        (
            format!("host={host} password={secret} dbname=aios"),
            secret.to_string(),
            vec!["key-value", "password=***"],
        ),
    ];
    for (store, password, expected) in &cases {
        for flag in [false, true] {
            for args in [
                &["runs"][..],
                &["approvals", "--json"],
                &["audit", "verify"],
            ] {
                let out = with_store(&dir, store, flag, args);
                let (o, e) = (stdout(&out), stderr(&out));
                assert_eq!(code(&out), 5, "{store} {args:?}: {e}");
                for x in expected {
                    assert!(e.contains(x), "{store} {args:?}: `{x}` not in: {e}");
                }
                assert!(
                    !o.contains(password.as_str()) && !e.contains(password.as_str()),
                    "the password shows: {o}{e}"
                );
            }
        }
    }

    // a good URL by --store as by $AIOS_STORE; help never shows the variable's value
    let url = rt().block_on(server.fresh_database()).unwrap();
    let password = url::Url::parse(&url)
        .unwrap()
        .password()
        .unwrap()
        .to_string();
    for flag in [false, true] {
        let out = with_store(&dir, &url, flag, &["runs", "--json"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(json(&out), serde_json::json!([]));
    }
    for args in [&["--help"][..], &["runs", "--help"], &["serve", "--help"]] {
        let out = with_store(&dir, &url, false, args);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert!(stdout(&out).contains("postgres://"), "{}", stdout(&out));
        assert!(!stdout(&out).contains(&password), "{}", stdout(&out));
    }
    // an empty database: empty listings, an intact empty chain
    for (args, expected) in [
        (&["approvals", "--json"][..], serde_json::json!([])),
        (&["humans", "list", "--json"], serde_json::json!([])),
    ] {
        let out = with_store(&dir, &url, false, args);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(json(&out), expected);
    }
    let out = with_store(&dir, &url, false, &["audit", "verify", "--json"]);
    assert_eq!(json(&out)["intact"], true);
}

/// Two `aios approve ID` processes started together on one approval: exactly one wins,
/// the other is refused (exit 4) saying it was answered already; the approval is decided
/// once and the chain verifies.
fn two_answers_to_one_approval_race_and_one_wins(dir: &Dir) {
    init(dir);
    let (run, mail) = start_proposal(dir);
    let alice = stdout(&dir.aios(None, &["humans", "add", "alice"]))
        .trim()
        .to_string();
    let id = json(&dir.aios(None, &["approvals", "--json"]))[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let args = ["approve", id.as_str(), "--json"];
    let children: Vec<_> = (0..2)
        .map(|_| {
            dir.command(Some(&alice), &args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for out in &outs {
        dir.no_password_in(out, &args);
    }
    let mut codes: Vec<i32> = outs.iter().map(code).collect();
    codes.sort();
    assert_eq!(
        codes,
        [0, 4],
        "{:?}",
        outs.iter().map(stderr).collect::<Vec<_>>()
    );
    let winner = outs.iter().find(|o| code(o) == 0).unwrap();
    let loser = outs.iter().find(|o| code(o) == 4).unwrap();
    assert_eq!(json(winner)["by"], "alice");
    assert_eq!(json(winner)["run"], run.to_string());
    assert!(
        stderr(loser).contains("answered already") && stderr(loser).contains(&id),
        "{}",
        stderr(loser)
    );
    // decided once: nothing pending, one decision in the record, the chain intact
    assert_eq!(
        json(&dir.aios(None, &["approvals", "--json"])),
        serde_json::json!([])
    );
    let export = stdout(&dir.aios(None, &["audit", "export"]));
    let decisions = export
        .lines()
        .filter(|l| l.contains("approval_decided") && l.contains(&id))
        .count();
    assert_eq!(decisions, 1, "{export}");
    let verify = dir.aios(None, &["audit", "verify", "--json"]);
    assert_eq!(code(&verify), 0, "{}", stdout(&verify));
    assert_eq!(json(&verify)["intact"], true);
    // and the run goes on once
    work(dir, &mail);
    assert_eq!(mail.effects().len(), 1);
}

/// What the host remembered is found by `aios memory search`, with its history; memory
/// verifies.
fn memory_search_finds_what_the_host_remembered(dir: &Dir) {
    use aios_memory::{NewMemory, Scope, Tier};
    init(dir);
    let id = rt().block_on(async {
        let memory = dir.open().await.memory().await;
        let scope = Scope::parse("org/acme").unwrap();
        let author = aios_core::Principal::System;
        memory
            .remember(NewMemory::new(
                scope.clone(),
                Tier::Project,
                "the client prefers email",
                author,
            ))
            .await
            .unwrap();
        memory
            .remember(NewMemory::new(
                scope,
                Tier::Project,
                "the invoice for acme is due on friday",
                author,
            ))
            .await
            .unwrap()
            .id
    });
    let out = dir.aios(None, &["memory", "search", "invoice", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let hits = json(&out);
    assert_eq!(hits.as_array().unwrap().len(), 1, "{hits}");
    assert_eq!(hits[0]["id"], id.to_string());
    assert!(hits[0]["content"].as_str().unwrap().contains("invoice"));
    let text = stdout(&dir.aios(None, &["memory", "search", "invoice"]));
    assert!(text.contains("due on friday"), "{text}");
    let none = stdout(&dir.aios(None, &["memory", "search", "zebra"]));
    assert!(none.contains("nothing found"), "{none}");
    let history = dir.aios(None, &["memory", "history", &id.to_string(), "--json"]);
    assert_eq!(code(&history), 0, "{}", stderr(&history));
    assert_eq!(json(&history).as_array().unwrap().len(), 1);
    let verify = dir.aios(None, &["memory", "verify"]);
    assert_eq!(code(&verify), 0, "{}", stdout(&verify));
    assert!(stdout(&verify).contains("intact"), "{}", stdout(&verify));
    // nothing has expired: a dry run and a real prune remove nothing
    for args in [
        &["memory", "prune", "--json"][..],
        &["memory", "prune", "--apply", "--json"],
    ] {
        let out = dir.aios(None, args);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(
            json(&out)["pruned"],
            serde_json::json!([]),
            "{}",
            stdout(&out)
        );
    }
    let hits = json(&dir.aios(None, &["memory", "search", "acme", "--json"]));
    assert_eq!(hits.as_array().unwrap().len(), 1, "{hits}");
}

/// One HTTP/1.1 request over a plain socket: the status line and headers, and the body.
fn http(addr: &str, request: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.to_string(), body.to_string())
}

fn serve_runs_the_console_on_loopback_over_the_store(dir: &Dir) {
    use std::io::BufRead;
    init(dir);
    let (_run, _mail) = start_proposal(dir);
    let alice = stdout(&dir.aios(None, &["humans", "add", "alice"]))
        .trim()
        .to_string();
    // the default address is loopback
    let help = stdout(&dir.aios(None, &["serve", "--help"]));
    assert!(help.contains("127.0.0.1:8080"), "{help}");
    let bad = dir.aios(None, &["serve", "--listen", "localhost"]);
    assert_eq!(code(&bad), 2, "{}", stderr(&bad));

    let mut child = dir
        .command(None, &["serve", "--listen", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no address in `{line}`"))
        .to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");

    let (head, body) = http(
        &addr,
        &format!("GET /login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head
        .to_ascii_lowercase()
        .contains("content-security-policy: default-src 'none'"));
    let csrf_at = body.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = &body[csrf_at..csrf_at + 64];
    let cookie = head
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: aios_login=")
        })
        .unwrap()
        .split_once(": ")
        .unwrap()
        .1
        .split(';')
        .next()
        .unwrap()
        .to_string();
    // alice's token from the store logs in; the inbox shows the parked mail, escaped
    let form = format!("csrf={csrf}&token={alice}");
    let (head, _) = http(
        &addr,
        &format!(
            "POST /login HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        ),
    );
    assert!(head.starts_with("HTTP/1.1 303"), "{head}");
    let session = head
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: aios_session=")
        })
        .unwrap()
        .split_once(": ")
        .unwrap()
        .1
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (head, body) = http(
        &addr,
        &format!("GET /approvals HTTP/1.1\r\nHost: {addr}\r\nCookie: {session}\r\nConnection: close\r\n\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        body.contains("mail.send") && body.contains("&lt;script&gt;"),
        "{body}"
    );
    assert!(!body.contains(&alice));
    let (head, body) = http(
        &addr,
        &format!("GET /report HTTP/1.1\r\nHost: {addr}\r\nCookie: {session}\r\nConnection: close\r\n\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        body.contains("<svg") && body.contains("Autonomy rate"),
        "{body}"
    );
    // the budgets page reads the store's ledger: the workspace's monthly company budget
    let (head, body) = http(
        &addr,
        &format!("GET /budgets HTTP/1.1\r\nHost: {addr}\r\nCookie: {session}\r\nConnection: close\r\n\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        body.contains("company") && body.contains("monthly") && body.contains("of 50.00"),
        "{body}"
    );
    // a wrong token does not log in; alice's no longer does once she is removed
    let login = |token: &str| {
        let form = format!("csrf={csrf}&token={token}");
        http(
            &addr,
            &format!(
                "POST /login HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
                form.len()
            ),
        )
        .0
    };
    let head = login("aios_0000");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let head = login(&alice);
    assert!(head.starts_with("HTTP/1.1 303"), "{head}");
    let out = dir.aios(Some(&alice), &["humans", "remove", "alice"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let head = login(&alice);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    child.kill().unwrap();
    child.wait().unwrap();
    // nothing the console wrote shows the store's password
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    if let Kind::Postgres { password, .. } = &dir.kind {
        for l in std::iter::once(&line).chain(&rest) {
            assert!(!l.contains(password.as_str()), "{l}");
        }
    }
}

/// Makes the store refuse (`refuse`) or accept again every audit append, with a trigger.
fn refuse_audit_appends(dir: &Dir, refuse: bool) {
    match &dir.kind {
        Kind::Postgres { url, .. } => {
            let sql = if refuse {
                "CREATE OR REPLACE FUNCTION aios_t_refuse() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN RAISE EXCEPTION 'the audit log is read-only'; END $$;
                 CREATE TRIGGER aios_t_refuse BEFORE INSERT ON aios_audit_entries
                   FOR EACH ROW EXECUTE FUNCTION aios_t_refuse();"
            } else {
                "DROP TRIGGER aios_t_refuse ON aios_audit_entries"
            };
            rt().block_on(TestServer::execute_on(url, sql)).unwrap();
        }
        Kind::Sqlite => {
            let conn = rusqlite::Connection::open(dir.store()).unwrap();
            let table: String = conn
                .query_row(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%audit%'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            let sql = if refuse {
                format!(
                    "CREATE TRIGGER aios_t_refuse BEFORE INSERT ON {table}
                     BEGIN SELECT RAISE(ABORT, 'the audit log is read-only'); END;"
                )
            } else {
                "DROP TRIGGER aios_t_refuse".to_string()
            };
            conn.execute_batch(&sql).unwrap();
        }
    }
}

/// No credential without its audit record: a record the store refuses takes the addition
/// back (and prints no token), and leaves a removal undone (a change and its record are one
/// transaction, on both stores).
fn an_audit_record_that_cannot_be_written_leaves_no_credential(dir: &Dir) {
    init(dir);
    rt().block_on(dir.open());
    refuse_audit_appends(dir, true);
    let out = dir.aios(None, &["humans", "add", "alice"]);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    assert!(stderr(&out).contains("read-only"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "no token: {}", stdout(&out));
    let list = json(&dir.aios(None, &["humans", "list", "--json"]));
    assert_eq!(list, serde_json::json!([]));
    assert!(dir.stored_hashes().is_empty());

    refuse_audit_appends(dir, false);
    let alice = dir.aios(None, &["humans", "add", "alice"]);
    assert_eq!(code(&alice), 0, "{}", stderr(&alice));
    let alice = stdout(&alice).trim().to_string();
    refuse_audit_appends(dir, true);
    let out = dir.aios(Some(&alice), &["humans", "remove", "alice"]);
    assert_eq!(code(&out), 5, "{}", stderr(&out));
    assert!(stderr(&out).contains("read-only"), "{}", stderr(&out));
    let left = json(&dir.aios(None, &["humans", "list", "--json"]));
    assert_eq!(
        left.as_array().unwrap().len(),
        1,
        "the removal is undone: {left}"
    );
    refuse_audit_appends(dir, false);
    let verify = dir.aios(None, &["audit", "verify", "--json"]);
    assert_eq!(json(&verify)["intact"], true, "{}", stdout(&verify));
}

/// How many server processes of the database at `url` wait in `pg_sleep`.
async fn sleeping(url: &str) -> i64 {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event = 'PgSleep'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    drop(client);
    let _ = conn.await;
    n
}

/// `aios humans add` killed with SIGKILL while its audit record is being written (held in
/// a trigger that sleeps): the server rolls the transaction back, so there is neither the
/// credential nor its record, and the next first human can be added.
#[cfg(feature = "postgres")]
#[test]
fn a_credential_added_by_a_process_killed_mid_way_is_not_there() {
    let dir = Dir::postgres("killed");
    let Kind::Postgres { url, .. } = &dir.kind else {
        unreachable!()
    };
    init(&dir);
    let rt = rt();
    rt.block_on(dir.open());
    rt.block_on(TestServer::execute_on(
        url,
        "CREATE FUNCTION aios_t_slow() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_sleep(2); RETURN NEW; END $$;
         CREATE TRIGGER aios_t_slow BEFORE INSERT ON aios_audit_entries
           FOR EACH ROW EXECUTE FUNCTION aios_t_slow();",
    ))
    .unwrap();
    let mut child = dir
        .command(None, &["humans", "add", "alice"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // wait (bounded) until its audit insert is inside the trigger, then kill it
    let mut inside = false;
    for _ in 0..400 {
        if rt.block_on(sleeping(url)) > 0 {
            inside = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(inside, "the addition never reached its audit record");
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(stdout(&out).is_empty(), "no token was printed");
    // the server finishes the statement, finds the client gone and rolls back
    for _ in 0..1000 {
        if rt.block_on(sleeping(url)) == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    rt.block_on(TestServer::execute_on(
        url,
        "DROP TRIGGER aios_t_slow ON aios_audit_entries",
    ))
    .unwrap();
    assert!(
        dir.stored_hashes().is_empty(),
        "the credential was rolled back"
    );
    let head = json(&dir.aios(None, &["audit", "head", "--json"]));
    assert_eq!(head["len"], 0, "and its record: {head}");
    let alice = dir.aios(None, &["humans", "add", "alice"]);
    assert_eq!(code(&alice), 0, "{}", stderr(&alice));
    assert_eq!(
        json(&dir.aios(None, &["audit", "verify", "--json"]))["intact"],
        true
    );
}

/// Two `aios humans add` at once on a store with no human: exactly one becomes the first
/// human; the other is refused (exit 4) and nothing of it is written.
fn two_first_humans_race_and_one_is_added(dir: &Dir) {
    init(dir);
    let children: Vec<_> = ["alice", "bob"]
        .iter()
        .map(|name| {
            dir.command(None, &["humans", "add", name])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for out in &outs {
        dir.no_password_in(out, &["humans", "add"]);
    }
    let mut codes: Vec<i32> = outs.iter().map(code).collect();
    codes.sort();
    assert_eq!(
        codes,
        [0, 4],
        "{:?}",
        outs.iter().map(stderr).collect::<Vec<_>>()
    );
    let loser = outs.iter().find(|o| code(o) == 4).unwrap();
    assert!(stdout(loser).is_empty(), "no token for the loser");
    let list = json(&dir.aios(None, &["humans", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let export = stdout(&dir.aios(None, &["audit", "export"]));
    assert_eq!(export.matches("human_credential").count(), 1, "{export}");
}
