//! A real PostgreSQL server for the installation-store tests: `initdb` into a temporary
//! folder and `postgres` on a free loopback port, password authentication (SCRAM) on
//! TCP, stopped (`-m immediate`, like a crash) and started again on demand.
//!
//! The binaries are found in `AUDIT_RELAY_PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin` (Debian's `postgresql` package; `scripts/test` installs
//! it when missing), else on `PATH`. PostgreSQL refuses to run as root: as root the
//! server runs as the `postgres` user the package creates.

#![allow(dead_code)]

use super::moto::free_port;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The superuser the tests (and relays) connect as, and its password.
pub const USER: &str = "audit";
pub const PASSWORD: &str = "test-password-7c1e";
pub const DATABASE: &str = "postgres";

/// Where `initdb`, `pg_ctl` and `postgres` are.
pub fn bin_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("AUDIT_RELAY_PG_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    debian.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(p) = debian.pop() {
        return p;
    }
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !p.is_empty() {
            return PathBuf::from(p).parent().unwrap().to_path_buf();
        }
    }
    panic!("PostgreSQL is not installed (no initdb): set AUDIT_RELAY_PG_BIN or install Debian's postgresql package (scripts/test does it)");
}

/// A running server.
pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_user: Option<(u32, u32)>,
    /// Server settings beyond the harness's own (`-c name=value` each).
    settings: Vec<String>,
}

fn ids_of(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, user]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

impl Postgres {
    /// `initdb` and start a server on a free port.
    pub fn start() -> Postgres {
        Postgres::start_with(&[])
    }

    /// Like [`Postgres::start`], with more server settings (`name=value`), e.g. the
    /// benchmarks' production-like `shared_buffers`.
    pub fn start_with(settings: &[&str]) -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("audit-relay-pg")
            .tempdir()
            .expect("temp dir");
        let is_root = effective_uid() == 0;
        let as_user = if is_root {
            Some(ids_of("postgres").expect(
                "running as root needs the postgres user (Debian's postgresql package creates it)",
            ))
        } else {
            None
        };
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if let Some((uid, gid)) = as_user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
        }
        let pg = Postgres {
            port: free_port(),
            dir,
            bin,
            as_user,
            settings: settings.iter().map(|s| s.to_string()).collect(),
        };
        let data = pg.data_dir();
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                USER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--no-instructions"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        pg.start_again();
        pg
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A command of the server's binaries, as the server's user.
    fn command(&self, name: &str) -> Command {
        let exe = self.bin.join(name);
        match self.as_user {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={gid}"),
                    "--clear-groups",
                ])
                .arg(exe);
                c.current_dir(self.dir.path());
                c
            }
            None => Command::new(exe),
        }
    }

    /// Starts the server (again) on its port; waits until it accepts connections.
    pub fn start_again(&self) {
        let mut opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=on -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        for s in &self.settings {
            opts.push_str(" -c ");
            opts.push_str(s);
        }
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-o", &opts, "-l"])
            .arg(self.log_path())
            .args(["-w", "-t", "60", "start"])
            .output()
            .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.log_path()).unwrap_or_default()
        );
    }

    /// Turns TLS on with this certificate and key (PEM) and restarts the server.
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str) {
        use std::os::unix::fs::PermissionsExt;
        let data = self.data_dir();
        let (cert, key) = (data.join("server.crt"), data.join("server.key"));
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Some((uid, gid)) = self.as_user {
            for f in [&cert, &key] {
                std::os::unix::fs::chown(f, Some(uid), Some(gid)).unwrap();
            }
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).unwrap();
        self.stop_immediate();
        self.start_again();
    }

    /// Turns TLS on with a server certificate for 127.0.0.1 signed by a new CA, and
    /// restarts the server; returns the CA's file (for `postgres.ca_file`).
    pub fn enable_tls_with_new_ca(&self) -> PathBuf {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        self.enable_tls(&server.pem(), &server_key.serialize_pem());
        let ca_file = self.dir().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        ca_file
    }

    /// Puts `line` first in `pg_hba.conf` (the first matching line decides) and reloads.
    pub fn hba_first(&self, line: &str) {
        let hba = self.data_dir().join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(&hba, format!("{line}\n{text}")).unwrap();
        let loaded = |c: &mut postgres::Client| -> String {
            c.query_one("SELECT pg_conf_load_time()::text", &[])
                .unwrap()
                .get(0)
        };
        let before = loaded(&mut self.client());
        self.client()
            .batch_execute("SELECT pg_reload_conf()")
            .expect("reload pg_hba.conf");
        // The postmaster reloads on its own time; new backends then say so.
        for _ in 0..200 {
            if loaded(&mut self.client()) != before {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!(
            "pg_hba.conf was not reloaded:\n{}",
            std::fs::read_to_string(self.log_path()).unwrap_or_default()
        );
    }

    /// Stops the server the way a crash does (`pg_ctl stop -m immediate`).
    pub fn stop_immediate(&self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }

    /// `postgres://audit@127.0.0.1:PORT/postgres` (no password: it goes in a file).
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// A file holding the password, for `postgres.password_file`.
    pub fn password_file(&self) -> PathBuf {
        let p = self.dir.path().join("password");
        if !p.exists() {
            std::fs::write(&p, format!("{PASSWORD}\n")).unwrap();
        }
        p
    }

    /// The `[postgres]` section for a relay, plus `extra` lines.
    pub fn config_section(&self, relay_id: &str, extra: &[&str]) -> String {
        let mut s = format!(
            "\n[postgres]\nurl = {:?}\npassword_file = {:?}\nsslmode = \"disable\"\nrelay_id = {relay_id:?}\n",
            self.url(),
            self.password_file().display().to_string()
        );
        for l in extra {
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    /// A blocking client (the tests' own look into the store).
    pub fn client(&self) -> postgres::Client {
        let mut last = None;
        for _ in 0..100 {
            match postgres::Config::new()
                .host("127.0.0.1")
                .port(self.port)
                .user(USER)
                .password(PASSWORD)
                .dbname(DATABASE)
                .connect(postgres::NoTls)
            {
                Ok(c) => return c,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("cannot connect to the test PostgreSQL: {last:?}");
    }

    /// One value of a query, e.g. `count(*)`.
    pub fn query_i64(&self, sql: &str) -> i64 {
        self.client().query_one(sql, &[]).expect(sql).get(0)
    }

    /// Like [`Postgres::query_i64`], `None` on any error (the schema does not exist yet).
    pub fn try_i64(&self, sql: &str) -> Option<i64> {
        self.client().query_one(sql, &[]).ok().map(|r| r.get(0))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop_immediate();
    }
}

fn effective_uid() -> u32 {
    // The test harness may not use libc; /proc tells the effective uid.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .and_then(|u| u.parse().ok())
        .unwrap_or(0)
}
