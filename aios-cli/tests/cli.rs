//! The `aios` binary on a temporary store: each command's output and exit code, `--json`
//! parsed, against a host that runs the workspace's workflows on the same SQLite file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use aios_core::{
    Connector, CredentialHandle, CredentialVault, EffectClass, InMemoryVault, OperationSpec,
    RecordingConnector, RunId, Secret,
};
use aios_orchestrator::{Agent, ConnectorRequest, FnAgent, Orchestrator, RunStatus, WorkOptions};
use aios_sqlite::SqliteStore;
use aios_workspace::{Plan, ValidateOptions};
use serde_json::Value;

const AIOS: &str = env!("CARGO_BIN_EXE_aios");

/// A temporary folder with a workspace manifest and a store path.
struct Dir {
    path: PathBuf,
}

impl Dir {
    fn new(name: &str) -> Dir {
        let path = std::env::temp_dir().join(format!("aios-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Dir { path }
    }
    fn store(&self) -> PathBuf {
        self.path.join("aios.sqlite")
    }
    fn workspace(&self) -> PathBuf {
        self.path.join("aios.toml")
    }
    /// Runs `aios ARGS` in the folder with `token` as AIOS_TOKEN.
    fn aios(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = Command::new(AIOS);
        cmd.current_dir(&self.path)
            .env_remove("AIOS_TOKEN")
            .env_remove("AIOS_TOKEN_FILE")
            .env_remove("AIOS_STORE")
            .env_remove("AIOS_WORKSPACE")
            .args(args);
        if let Some(t) = token {
            cmd.env("AIOS_TOKEN", t);
        }
        cmd.output().unwrap()
    }
}

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

/// What the host's outreach agent proposes to send: it carries markup, shown as text.
const HOSTILE: &str = "<script>alert('x')</script> Dear client";

fn plan(workspace: &Path) -> Plan {
    let loaded = aios_workspace::load(workspace).unwrap();
    aios_workspace::plan(&loaded, &ValidateOptions::default()).unwrap()
}

fn agent_for(role: &str) -> Arc<dyn Agent> {
    if role == "outreach" {
        Arc::new(FnAgent::new(|ctx, _input| {
            Box::pin(async move {
                let out = ctx
                    .call(ConnectorRequest::new(
                        "mail",
                        "send",
                        serde_json::json!({ "to": "client@example.com", "body": HOSTILE }),
                    ))
                    .await?;
                Ok(out.output)
            })
        }))
    } else {
        Arc::new(FnAgent::new(|_, _| {
            Box::pin(async { Ok(serde_json::json!({ "text": "done" })) })
        }))
    }
}

/// The host application: the workspace's roles and connectors on the store.
async fn host(dir: &Dir, mail: &RecordingConnector) -> Orchestrator {
    let plan = plan(&dir.workspace());
    let store = SqliteStore::open(dir.store()).unwrap();
    let mut b = store.orchestrator(plan.governor().unwrap()).await.unwrap();
    let vault = InMemoryVault::new();
    for c in &plan.connectors {
        let connector: Arc<dyn Connector> = if c.key == "mail" {
            Arc::new(mail.clone())
        } else {
            let mut k = RecordingConnector::new(c.key.clone(), EffectClass::Irreversible);
            for (op, effect) in &c.operations {
                k = k.with_operation(OperationSpec::new(op.clone(), *effect));
            }
            Arc::new(k)
        };
        b = b.connector(connector);
        if let Some(name) = c.credentials.first() {
            vault
                .put(CredentialHandle::new(name.clone()), Secret::new("s3cret"))
                .await
                .unwrap();
            b = b.credential(&c.key, CredentialHandle::new(name.clone()));
        }
    }
    for role in plan.roles(&mut |r| agent_for(&r.key)) {
        b = b.role(role);
    }
    b.vault(Arc::new(vault)).build().unwrap()
}

fn mail_connector(plan: &Plan) -> RecordingConnector {
    let decl = plan.connectors.iter().find(|c| c.key == "mail").unwrap();
    let mut k = RecordingConnector::new("mail", EffectClass::Irreversible).not_idempotent();
    for (op, effect) in &decl.operations {
        k = k.with_operation(OperationSpec::new(op.clone(), *effect));
    }
    k
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
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

#[test]
fn a_parked_run_is_approved_by_an_authenticated_human_and_finishes() {
    let dir = Dir::new("approve");
    init(&dir);
    let (run, mail) = start_proposal(&dir);
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
    let list = json(&dir.aios(None, &["humans", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    // only the hash is stored
    let conn = rusqlite::Connection::open(dir.store()).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM aios_humans WHERE token_sha256 = ?1",
            [&alice],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0);

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
    // used once: a second answer finds nothing pending
    let out = dir.aios(Some(&alice), &["approve", &id[id.len() - 8..]]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert_eq!(
        mail.effects().len(),
        0,
        "the command line does not run the call"
    );

    // the host's worker picks the run up: the mail goes out once
    work(&dir, &mail);
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
    assert!(export.contains("human_credential"));
    assert!(!export.contains(&alice), "a token never reaches the record");

    // the operations report counts the approval
    let report = dir.aios(None, &["report", "--json"]);
    assert_eq!(code(&report), 0, "{}", stderr(&report));
    let report = json(&report);
    assert!(report.to_string().contains("approv"), "{report}");
    let bad = dir.aios(None, &["report", "--since", "soon"]);
    assert_eq!(code(&bad), 5);
    assert!(stderr(&bad).contains("--since"), "{}", stderr(&bad));

    // a removed human's token no longer works
    let out = dir.aios(Some(&alice), &["humans", "remove", "alice"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = dir.aios(Some(&alice), &["stop", "--all", "--reason", "x"]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
}

#[test]
fn a_rejection_and_an_edit_reach_the_run() {
    let dir = Dir::new("reject");
    init(&dir);
    let (_run, mail) = start_proposal(&dir);
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
    work(&dir, &mail);
    assert_eq!(mail.effects().len(), 0, "a rejected mail is never sent");

    // an edit: the edited input is what goes out
    let (_run2, mail2) = start_proposal(&dir);
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
    work(&dir, &mail2);
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

#[test]
fn controls_stop_and_resume_with_a_reason() {
    let dir = Dir::new("controls");
    init(&dir);
    let (_run, _mail) = start_proposal(&dir);
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

#[test]
fn edited_bytes_on_disk_break_the_chain_and_a_loose_token_file_is_refused() {
    let dir = Dir::new("tamper");
    init(&dir);
    let (_run, _mail) = start_proposal(&dir);
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
    // change one recorded event in the file
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
    drop(conn);
    let out = dir.aios(None, &["audit", "verify", "--json"]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert_eq!(json(&out)["intact"], false);
}

#[test]
fn no_store_is_a_clear_error_and_listings_are_empty_json() {
    let dir = Dir::new("empty");
    init(&dir);
    let out = dir.aios(None, &["runs"]);
    assert_eq!(code(&out), 5);
    assert!(stderr(&out).contains("aios.sqlite"), "{}", stderr(&out));
    let out = dir.aios(None, &["--store", "postgres://localhost/aios", "runs"]);
    assert_eq!(code(&out), 5);
    assert!(stderr(&out).contains("PostgreSQL"), "{}", stderr(&out));
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

#[test]
fn serve_runs_the_console_on_loopback_over_the_store() {
    use std::io::BufRead;
    let dir = Dir::new("serve");
    init(&dir);
    let (_run, _mail) = start_proposal(&dir);
    let alice = stdout(&dir.aios(None, &["humans", "add", "alice"]))
        .trim()
        .to_string();
    // the default address is loopback
    let help = stdout(&dir.aios(None, &["serve", "--help"]));
    assert!(help.contains("127.0.0.1:8080"), "{help}");
    let bad = dir.aios(None, &["serve", "--listen", "localhost"]);
    assert_eq!(code(&bad), 2, "{}", stderr(&bad));

    let mut child = Command::new(AIOS)
        .current_dir(&dir.path)
        .env_remove("AIOS_TOKEN")
        .args(["serve", "--listen", "127.0.0.1:0"])
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
    child.kill().unwrap();
    child.wait().unwrap();
}
