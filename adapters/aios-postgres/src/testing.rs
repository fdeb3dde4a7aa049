//! A throwaway PostgreSQL server for tests and benchmarks (feature `testing`).
//!
//! [`TestServer::shared`] gives every test of a process the same server: the one at
//! `AIOS_PG_URL` if that is set (a URL with rights to create databases), otherwise a new
//! cluster made with `initdb` in a temporary directory and started with `pg_ctl` on a free
//! loopback port (`listen_addresses=127.0.0.1`, its socket in the same directory). A watcher
//! process stops the server and removes the directory when the test process exits.
//! [`TestServer::start`] starts a server owned by the caller, stopped when it is dropped
//! (for tests that stop it on purpose). [`TestServer::fresh_database`] creates an empty
//! database per test, so tests run in parallel.
//!
//! The binaries are looked for in `AIOS_PG_BIN`, then `/usr/lib/postgresql/15/bin` (and
//! other versions there), then `PATH`. PostgreSQL refuses to run as root: as root, the
//! server runs as user `postgres` (through `su`), which the Debian package creates (and
//! this module, with `useradd`, if it is missing), in a directory under `/tmp`.
//!
//! ```no_run
//! use aios_postgres::testing::TestServer;
//! use aios_postgres::PgStore;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), aios_core::StoreError> {
//! let url = TestServer::shared()?.fresh_database().await?;
//! let store = PgStore::connect(&url).await?;
//! assert_eq!(store.schema_version().await?, aios_postgres::SCHEMA_VERSION);
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use aios_core::StoreError;

/// The password of the test cluster's superuser `aios` (a throwaway, loopback-only server).
pub const TEST_PASSWORD: &str = "aios-test-secret";

/// How a test server is started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerOptions {
    /// Whether commits are fsynced (`fsync` and `synchronous_commit` on, as in production).
    /// Off by default: tests do not need to survive a power loss. Benchmarks, and tests
    /// that stop the server ([`TestServer::stop`] stops it at once, so a non-durable server
    /// may lose its last commits), turn it on.
    pub durable: bool,
}

impl ServerOptions {
    /// Sets whether commits are fsynced.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }
}

/// A running PostgreSQL server to make test databases in.
#[derive(Debug)]
pub struct TestServer {
    /// A URL of database `postgres` with the superuser's password.
    admin_url: String,
    host: String,
    port: u16,
    owned: Option<Owned>,
}

/// A cluster this process started.
#[derive(Debug)]
struct Owned {
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
}

fn fail(detail: impl Into<String>) -> StoreError {
    StoreError::Backend {
        detail: detail.into(),
    }
}

fn bin_dir() -> Result<PathBuf, StoreError> {
    if let Some(dir) = std::env::var_os("AIOS_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut candidates = vec![PathBuf::from("/usr/lib/postgresql/15/bin")];
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut more: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .collect();
        more.sort();
        more.reverse();
        candidates.extend(more);
    }
    for dir in candidates {
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let found = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match found {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()),
        _ => Err(fail(
            "no postgresql binaries: install postgresql-15 or set AIOS_PG_BIN or AIOS_PG_URL",
        )),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs `script` with `sh`, as user `postgres` when this process is root.
fn run(as_postgres: bool, script: &str) -> Result<(), StoreError> {
    let mut cmd = if as_postgres {
        let mut c = Command::new("su");
        c.args(["postgres", "-s", "/bin/sh", "-c", script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    };
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("cannot run `{script}`: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(format!(
            "`{script}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

fn free_port() -> Result<u16, StoreError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| fail(format!("no free loopback port: {e}")))
}

static NEXT: AtomicU64 = AtomicU64::new(0);

impl TestServer {
    /// The server every test of this process shares (see the module docs); started on first
    /// use.
    pub fn shared() -> Result<&'static TestServer, StoreError> {
        static SHARED: OnceLock<Result<TestServer, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let server = match std::env::var("AIOS_PG_URL") {
                    Ok(url) if !url.is_empty() => Self::external(url),
                    _ => Self::start_watched(ServerOptions::default()),
                };
                server.map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| fail(e.clone()))
    }

    /// Starts a new cluster owned by the returned value: stopped and removed when it is
    /// dropped (and when this process exits).
    pub fn start(options: ServerOptions) -> Result<TestServer, StoreError> {
        Self::start_watched(options)
    }

    fn external(url: String) -> Result<TestServer, StoreError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| fail(format!("AIOS_PG_URL is not a postgres url: {e}")))?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".to_string(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        Ok(TestServer {
            admin_url: url,
            host,
            port,
            owned: None,
        })
    }

    fn start_watched(options: ServerOptions) -> Result<TestServer, StoreError> {
        let bin = bin_dir()?;
        let as_postgres = is_root();
        if as_postgres && run(false, "id postgres >/dev/null 2>&1").is_err() {
            // no Debian package made the user: make an unprivileged one
            run(
                false,
                "useradd --system --no-create-home --shell /bin/sh postgres",
            )?;
        }
        // as root, under /tmp, which user `postgres` can reach whatever TMPDIR says
        let base = if as_postgres {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "aios-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("cannot create {dir:?}: {e}")))?;
        let d = dir.display().to_string();
        if as_postgres {
            run(false, &format!("chown postgres {d} && chmod 700 {d}"))?;
        }
        std::fs::write(dir.join("pwfile"), TEST_PASSWORD)
            .map_err(|e| fail(format!("cannot write the password file: {e}")))?;
        if as_postgres {
            run(false, &format!("chown postgres {d}/pwfile"))?;
        }
        let b = bin.display().to_string();
        run(
            as_postgres,
            &format!(
                "{b}/initdb -D {d}/data -U aios --pwfile={d}/pwfile --auth=scram-sha-256 \
                 --encoding=UTF8 --locale=C >{d}/initdb.log 2>&1"
            ),
        )?;
        let port = free_port()?;
        let durability = if options.durable {
            ""
        } else {
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        };
        let owned = Owned {
            dir: dir.clone(),
            bin,
            as_postgres,
        };
        run(
            as_postgres,
            &format!(
                "{b}/pg_ctl -D {d}/data -l {d}/server.log -w -t 60 \
                 -o \"-p {port} -k {d} -c listen_addresses=127.0.0.1 -c max_connections=300{durability}\" start >/dev/null"
            ),
        )?;
        // stops the server when this process is gone, however it ends
        let me = std::process::id();
        let stop = owned.stop_script();
        let watcher =
            format!("while kill -0 {me} 2>/dev/null; do sleep 1; done; {stop}; rm -rf {d}");
        // as root the watcher stays root (so it may remove the directory) and stops the
        // server as postgres through `su`
        Command::new("sh")
            .args(["-c", &watcher])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| fail(format!("cannot start the server's watcher: {e}")))?;
        Ok(TestServer {
            admin_url: format!("postgres://aios:{TEST_PASSWORD}@127.0.0.1:{port}/postgres"),
            host: "127.0.0.1".into(),
            port,
            owned: Some(owned),
        })
    }

    /// A URL of the server's `postgres` database, with the superuser's credentials.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The server's host and port.
    pub fn address(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    /// A URL of database `db` with the admin URL's credentials.
    pub fn url_of(&self, db: &str) -> String {
        match self.admin_url.rfind('/') {
            Some(i) if !self.admin_url[i..].contains('@') => {
                let (base, rest) = self.admin_url.split_at(i);
                let query = rest.find('?').map_or("", |q| &rest[q..]);
                format!("{base}/{db}{query}")
            }
            _ => format!("{}/{db}", self.admin_url),
        }
    }

    /// Creates an empty database with a fresh name and returns its URL.
    pub async fn fresh_database(&self) -> Result<String, StoreError> {
        let name = format!(
            "aios_t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.admin_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        Ok(self.url_of(&name))
    }

    /// Runs `sql` on the admin database (for tests that tamper with a database or end
    /// connections).
    pub async fn admin_execute(&self, sql: &str) -> Result<(), StoreError> {
        Self::execute_on(&self.admin_url, sql).await
    }

    /// Runs `sql` on the database at `url`, over a connection of its own.
    pub async fn execute_on(url: &str, sql: &str) -> Result<(), StoreError> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| fail(format!("cannot connect to the test server: {e}")))?;
        let work = async {
            client
                .batch_execute(sql)
                .await
                .map_err(|e| match e.as_db_error() {
                    Some(db) => fail(format!("`{sql}` failed: {}", db.message())),
                    None => fail(format!("`{sql}` failed: {e}")),
                })
        };
        futures::pin_mut!(work);
        match futures::future::select(work, connection).await {
            futures::future::Either::Left((out, _)) => out,
            futures::future::Either::Right((Err(e), _)) => {
                Err(fail(format!("the test server connection failed: {e}")))
            }
            futures::future::Either::Right((Ok(()), _)) => {
                Err(fail("the test server closed the connection"))
            }
        }
    }

    /// Stops the server now (an owned one only): for tests of a server going away.
    pub fn stop(&self) -> Result<(), StoreError> {
        match &self.owned {
            Some(o) => o.stop(),
            None => Err(fail("cannot stop a server this process did not start")),
        }
    }

    /// Starts an owned server again after [`TestServer::stop`], on the same port.
    pub fn restart(&self) -> Result<(), StoreError> {
        let Some(o) = &self.owned else {
            return Err(fail("cannot start a server this process did not start"));
        };
        let (b, d, port) = (o.bin.display(), o.dir.display(), self.port);
        run(
            o.as_postgres,
            &format!(
                "{b}/pg_ctl -D {d}/data -l {d}/server.log -w -t 60 \
                 -o \"-p {port} -k {d} -c listen_addresses=127.0.0.1 -c max_connections=300\" start >/dev/null"
            ),
        )
    }
}

impl Owned {
    fn stop_script(&self) -> String {
        let (b, d) = (self.bin.display(), self.dir.display());
        let cmd = format!("{b}/pg_ctl -D {d}/data -m immediate -w stop");
        if self.as_postgres {
            format!("su postgres -s /bin/sh -c '{cmd}' >/dev/null 2>&1")
        } else {
            format!("{cmd} >/dev/null 2>&1")
        }
    }

    fn stop(&self) -> Result<(), StoreError> {
        run(false, &self.stop_script())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(o) = &self.owned {
            let _ = o.stop();
            let _ = std::fs::remove_dir_all(&o.dir);
        }
    }
}
