//! A throwaway PostgreSQL server on loopback, for the hand-off tests.
//!
//! Each test gets its own server: `initdb` into a temporary directory, then
//! `postgres` as a child process of the test, on a free port. PostgreSQL
//! refuses to run as root, so when the tests run as root the server runs as
//! the `postgres` system user (Debian's `postgresql` package creates it).
//! The binaries are taken from `$INFLIGHT_TEST_PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin`, else `$PATH`. If none is found the test
//! fails and says how to install it: these tests never skip.
//!
//! [`Postgres::start_tls`] starts one that takes TCP connections only over
//! TLS (`hostssl` in `pg_hba.conf`, no `host` line), presenting a certificate
//! the test made: a sink that connects at all proves it spoke TLS. The
//! harness itself then connects through the Unix socket.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait::{free_port, wait_for};

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    child: Option<Child>,
    /// (uid, gid) to run as, when the tests run as root.
    run_as: Option<(u32, u32)>,
    /// TCP only over TLS: the harness connects through the socket.
    tls: bool,
}

fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("INFLIGHT_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(dir) = versions.pop() {
        return dir;
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|d| d.join("initdb").exists() && d.join("postgres").exists());
    on_path.unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries (initdb, postgres) not found: install Debian's \
             `postgresql` package (apt-get install postgresql) or set INFLIGHT_TEST_PG_BIN"
        )
    })
}

fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns a pointer to static storage or null; read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root, and there is no `postgres` user to run PostgreSQL as \
         (install Debian's `postgresql` package)"
    );
    // SAFETY: checked non-null above.
    unsafe { Some(((*pw).pw_uid, (*pw).pw_gid)) }
}

fn chown(path: &Path, ids: Option<(u32, u32)>) {
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown for postgres");
    }
}

impl Postgres {
    /// Creates and starts a server, and waits until it accepts connections.
    pub async fn start() -> Postgres {
        Postgres::create(None).await
    }

    /// As [`Postgres::start`], but TCP connections must use TLS, and the
    /// server presents `cert`.
    pub async fn start_tls(cert: &crate::ca::ServerCert) -> Postgres {
        Postgres::create(Some(cert)).await
    }

    async fn create(tls: Option<&crate::ca::ServerCert>) -> Postgres {
        let bin = bin_dir();
        let run_as = postgres_user();
        let dir = tempfile::Builder::new()
            .prefix("inflight-pg-")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        chown(dir.path(), run_as);
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = run_as {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(cert) = tls {
            let data = dir.path().join("data");
            for (name, pem) in [
                ("server.crt", &cert.cert_pem),
                ("server.key", &cert.key_pem),
            ] {
                let path = data.join(name);
                std::fs::write(&path, pem).expect("write the server certificate");
                // PostgreSQL refuses a key others can read.
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .expect("chmod");
                chown(&path, run_as);
            }
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .expect("write pg_hba.conf");
        }
        let mut pg = Postgres {
            dir,
            bin,
            port: free_port(),
            child: None,
            run_as,
            tls: tls.is_some(),
        };
        pg.resume().await;
        pg
    }

    /// Its TCP URL (with no `sslmode`; a TLS server wants one added).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// What the harness connects with: the TCP URL, or for a TLS server
    /// the Unix socket.
    fn harness_url(&self) -> String {
        if self.tls {
            format!(
                "host={} port={} user=postgres dbname=postgres",
                self.dir.path().display(),
                self.port
            )
        } else {
            self.url()
        }
    }

    /// (Re)starts the server on the same data and port, and waits until it
    /// accepts connections.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "postgres is already running");
        let log = std::fs::File::create(self.dir.path().join(format!(
            "postgres-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        )))
        .expect("postgres log");
        let mut cmd = Command::new(self.bin.join("postgres"));
        if self.tls {
            cmd.args(["-c", "ssl=on"]);
        }
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        self.child = Some(cmd.spawn().expect("start postgres"));
        let url = self.harness_url();
        wait_for(
            Duration::from_secs(30),
            "postgres to accept connections",
            || {
                let url = url.clone();
                async move { connect(&url).await.ok().map(|_| ()) }
            },
        )
        .await;
    }

    /// Stops the server (fast shutdown: open connections are cut).
    pub fn pause(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGINT);
            }
            let _ = c.wait();
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.harness_url())
            .await
            .expect("connect to test postgres")
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
