//! The `audit-relay` command line. Parses arguments and calls into the library.

#![forbid(unsafe_code)]

use anyhow::Context;
use audit_relay::config::Config;
use audit_relay::event::{format_timestamp_ms, ApiAuditLog};
use audit_relay::integrity::Signer;
use audit_relay::pipeline::{self, Ended};
use audit_relay::query::{plan, QueryRequest};
use audit_relay::spool::{LockError, Spool, SpoolLock};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Exit code for a bad configuration or bad arguments.
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "audit-relay",
    version,
    about = "Tails audit events into a durable local spool"
)]
struct Cli {
    /// Config file (TOML).
    #[arg(
        short,
        long,
        global = true,
        env = "AUDIT_RELAY_CONFIG",
        default_value = "/etc/audit-relay/audit-relay.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the sidecar) until SIGTERM or SIGINT.
    Run,
    /// Validate the config: exit 0 with a summary, or 2 with every problem.
    CheckConfig {
        /// Also connect to the installation store (`[postgres]`): address, password,
        /// TLS and schema version are checked for real.
        #[arg(long)]
        connect: bool,
    },
    /// Inspect the spool.
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
    /// Send the events of a time range to CloudWatch again (after an incident there).
    /// The forwarding cursor is not touched; run it beside the running relay.
    Replay {
        /// Start of the range, RFC 3339.
        #[arg(long)]
        from: String,
        /// End of the range, RFC 3339.
        #[arg(long)]
        to: String,
    },
    /// Inspect quarantined input.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// Check the spool against its hash chain and signed checkpoints (exit 0: all holds,
    /// 1: broken, with the first broken sequence number and what broke).
    Verify {
        /// First sequence number to check (starts at the checkpoint at or before it).
        #[arg(long)]
        from: Option<i64>,
        /// Last sequence number to check.
        #[arg(long)]
        to: Option<i64>,
        /// Public key (PEM) to check signatures with; repeat it for the keys used before
        /// a rotation. Default: the key of integrity.signing_key_file.
        #[arg(long)]
        public_key: Vec<PathBuf>,
        /// Also read the log stream(s) back from CloudWatch and check them against the spool
        /// and the checkpoints found there.
        #[arg(long)]
        cloudwatch: bool,
        /// With --cloudwatch: read every stream of the group whose name starts with this
        /// (default: cloudwatch.log_stream up to its {pod} or {hostname}, expanded, e.g.
        /// "prod/" for "{namespace}/{pod}": the streams of earlier pods too; "" for all).
        #[arg(long, requires = "cloudwatch")]
        stream_prefix: Option<String>,
        /// Check the installation store instead of the spool: every relay's chain in
        /// PostgreSQL ([postgres]) against its checkpoints, the registry and the purges.
        #[arg(long, conflicts_with_all = ["from", "to", "cloudwatch"])]
        postgres: bool,
        /// The report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// CloudWatch Logs set-up beside forwarding.
    Cloudwatch {
        #[command(subcommand)]
        command: CloudwatchCommand,
    },
    /// The checkpoint signing key.
    Integrity {
        #[command(subcommand)]
        command: IntegrityCommand,
    },
    /// Read one organization's events, newest first: from the spool, or with
    /// api.store = "postgres" from the installation store (every relay's events).
    Query {
        /// Organization id.
        #[arg(long)]
        org: String,
        /// How far back from now, e.g. 24h or 7d (instead of --from).
        #[arg(long)]
        since: Option<String>,
        /// Start of the range, RFC 3339 (default: 7 days before --to).
        #[arg(long)]
        from: Option<String>,
        /// End of the range, RFC 3339 (default: now).
        #[arg(long)]
        to: Option<String>,
        /// Only this actor.
        #[arg(long)]
        actor: Option<String>,
        /// Only this action.
        #[arg(long)]
        action: Option<String>,
        /// At most this many events (default 100, at most 1,000,000).
        #[arg(long)]
        limit: Option<u64>,
        /// One event a line, in the API's JSON form.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// Counts, oldest and newest event, bytes on disk.
    Stats {
        /// One flat JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CloudwatchCommand {
    /// Put the saved Logs Insights queries (deploy/cloudwatch/queries, built in) in the
    /// account for cloudwatch.log_group: one of the same name is updated, not doubled.
    InstallQueries {
        /// Name prefix of the saved queries (a folder in the console).
        #[arg(long, default_value = audit_relay::cloudwatch_admin::DEFAULT_PREFIX)]
        prefix: String,
    },
}

#[derive(Subcommand)]
enum IntegrityCommand {
    /// Print the public key (PEM) of integrity.signing_key_file and its key id, for
    /// auditors to verify with.
    PublicKey,
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// Quarantined records, newest first.
    List {
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("audit-relay: bad config {}:", cli.config.display());
            for p in &e.problems {
                eprintln!("  {p}");
            }
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = match cli.command {
        Command::CheckConfig { connect } => {
            let mut problems: Vec<String> = config
                .check_environment()
                .iter()
                .map(ToString::to_string)
                .collect();
            problems.extend(
                config
                    .api
                    .as_ref()
                    .map(audit_relay::api::check_files)
                    .unwrap_or_default(),
            );
            if let Some(pg) = &config.postgres {
                problems.extend(audit_relay::installation::check_blocking(pg, connect));
            }
            if let Some(path) = &config.integrity.signing_key_file {
                if let Err(e) = Signer::load(path) {
                    problems.push(e.to_string());
                }
            }
            if problems.is_empty() {
                println!("{}", config.summary());
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("audit-relay: bad config {}:", cli.config.display());
                for p in &problems {
                    eprintln!("  {p}");
                }
                Ok(ExitCode::from(EXIT_USAGE))
            }
        }
        Command::Run => run(config, cli.config.clone()),
        Command::Verify {
            from,
            to,
            public_key,
            cloudwatch,
            stream_prefix,
            postgres,
            json,
        } => {
            if postgres {
                verify_postgres(&config, public_key, json)
            } else {
                verify(
                    &config,
                    from,
                    to,
                    public_key,
                    cloudwatch,
                    stream_prefix,
                    json,
                )
            }
        }
        Command::Integrity {
            command: IntegrityCommand::PublicKey,
        } => public_key(&config),
        Command::Cloudwatch {
            command: CloudwatchCommand::InstallQueries { prefix },
        } => install_queries(&config, &prefix),
        Command::Replay { from, to } => replay(config, &from, &to),
        Command::Spool {
            command: SpoolCommand::Stats { json },
        } => stats(&config, json),
        Command::Quarantine {
            command: QuarantineCommand::List { json, limit },
        } => quarantine(&config, json, limit),
        Command::Query {
            org,
            since,
            from,
            to,
            actor,
            action,
            limit,
            json,
        } => {
            let req = QueryRequest {
                organization_id: org,
                from,
                to,
                since,
                actor_id: actor,
                action,
                limit,
            };
            query(&config, &req, json)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("audit-relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config, path: PathBuf) -> anyhow::Result<ExitCode> {
    let problems = config.check_environment();
    if !problems.is_empty() {
        eprintln!("audit-relay: cannot run with this config here:");
        for p in &problems {
            eprintln!("  {p}");
        }
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    // One writer per spool, held until the process exits: a second `run` on the same
    // spool.dir would hand out the same sequence numbers and overwrite the chain head.
    let _writer_lock = match SpoolLock::acquire(&config.spool.dir) {
        Ok(l) => l,
        Err(e @ LockError::Held { .. }) => {
            eprintln!("audit-relay: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        Err(e) => return Err(e.into()),
    };
    audit_relay::telemetry::init(&config.log);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = rt.block_on(async move {
        let shutdown = CancellationToken::new();
        // SIGHUP's default action ends the process: take it over first.
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
        let reloads = match reload_on_hangup(path, reload_tx) {
            Ok(task) => task,
            Err(e) => return Err(anyhow::Error::new(e).context("installing the SIGHUP handler")),
        };
        let signals = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                shutdown.cancel();
                tracing::info!("shutdown signal received");
            })
        };
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "audit-relay starting");
        let r = pipeline::run(config, shutdown, Some(reload_rx)).await;
        signals.abort();
        reloads.abort();
        match r {
            Ok(Ended::Signal) | Ok(Ended::SourcesDone) => Ok(ExitCode::SUCCESS),
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "audit-relay failed");
                Err(e)
            }
        }
    });
    // A blocking read of standard input cannot be interrupted; everything read is
    // committed by now, so do not wait for it.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}

fn replay(config: Config, from: &str, to: &str) -> anyhow::Result<ExitCode> {
    use audit_relay::event::parse_timestamp_ms;
    let Some(cw) = config.cloudwatch.clone().filter(|c| c.enabled) else {
        eprintln!("audit-relay: replay needs an enabled [cloudwatch] section in the config");
        return Ok(ExitCode::from(EXIT_USAGE));
    };
    let (Some(from_ms), Some(to_ms)) = (parse_timestamp_ms(from), parse_timestamp_ms(to)) else {
        eprintln!(
            "audit-relay: --from and --to must be RFC 3339 timestamps (e.g. 2024-06-24T13:00:00Z)"
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    };
    if from_ms > to_ms {
        eprintln!("audit-relay: --from must not be after --to");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    audit_relay::telemetry::init(&config.log);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let cancel = CancellationToken::new();
        let forwarders = audit_relay::forward::build_all(
            &cw,
            &config.spool.dir,
            Default::default(),
            cancel,
        )
        .await?;
        let (mut sent, mut rejected) = (0, 0);
        for (f, _) in forwarders {
            let (s, r) = f.replay(from_ms, to_ms).await;
            sent += s;
            rejected += r;
        }
        println!("replayed {sent} event(s) from {from} to {to}; {rejected} rejected by the rules or by CloudWatch");
        Ok(ExitCode::SUCCESS)
    })
}

/// On each SIGHUP, reads the config file again and hands it to the pipeline, which puts
/// the query API's keys, tokens and TLS files in use. A file with problems is logged and
/// nothing changes.
fn reload_on_hangup(
    path: PathBuf,
    to: tokio::sync::mpsc::Sender<Config>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(config = %path.display(), "SIGHUP received: reloading the JWT keys, operator tokens and TLS files");
            match Config::load(&path) {
                Ok(c) => {
                    if to.send(c).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let problems: Vec<String> =
                        e.problems.iter().map(ToString::to_string).collect();
                    tracing::error!(
                        problems = %problems.join("; "),
                        "SIGHUP: the config file has problems; nothing reloaded, the running keys stay in use"
                    );
                }
            }
        }
    }))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn install_queries(config: &Config, prefix: &str) -> anyhow::Result<ExitCode> {
    let Some(cw) = config.cloudwatch.clone().filter(|c| c.enabled) else {
        eprintln!("audit-relay: cloudwatch install-queries needs an enabled [cloudwatch] section in the config");
        return Ok(ExitCode::from(EXIT_USAGE));
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match rt.block_on(audit_relay::cloudwatch_admin::install_queries(&cw, prefix)) {
        Ok(done) => {
            for (name, what) in done {
                println!("{what} {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("audit-relay: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn public_key(config: &Config) -> anyhow::Result<ExitCode> {
    let Some(path) = &config.integrity.signing_key_file else {
        eprintln!("audit-relay: integrity.signing_key_file is not set. Create a key with\n  openssl genpkey -algorithm ed25519 -out /etc/audit-relay/signing.pem && chmod 600 /etc/audit-relay/signing.pem\nand set integrity.signing_key_file to its path.");
        return Ok(ExitCode::from(EXIT_USAGE));
    };
    let key = Signer::load(path)?.public_key();
    print!("{}", key.to_pem());
    eprintln!("key id {}", key.key_id);
    Ok(ExitCode::SUCCESS)
}

fn verify(
    config: &Config,
    from: Option<i64>,
    to: Option<i64>,
    public_key: Vec<PathBuf>,
    cloudwatch: bool,
    stream_prefix: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use audit_relay::verify;
    let public_key = match key_ring(config, &public_key) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("audit-relay: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let spool = Spool::open_read_only(&config.spool.dir)?;
    let opts = verify::Options {
        from,
        to,
        public_key,
        retention: Some(std::time::Duration::from_secs(
            config.spool.retention_days as u64 * 86_400,
        )),
        checkpoint_interval: Some(config.integrity.checkpoint_interval.0),
        now_ms: None,
    };
    let report = verify::verify_spool(&spool, &opts)?;
    let mut ok = report.ok();
    let cw_report = if cloudwatch {
        let Some(cw) = config.cloudwatch.clone().filter(|c| c.enabled) else {
            eprintln!("audit-relay: verify --cloudwatch needs an enabled [cloudwatch] section in the config");
            return Ok(ExitCode::from(EXIT_USAGE));
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?;
        let r = rt.block_on(audit_relay::verify::cloudwatch::verify(
            &cw,
            &spool,
            &opts,
            stream_prefix.as_deref(),
        ))?;
        ok &= r.ok();
        Some(r)
    } else {
        None
    };
    if json {
        println!(
            "{}",
            serde_json::json!({ "ok": ok, "spool": report, "cloudwatch": cw_report })
        );
    } else {
        print!("{report}");
        if let Some(r) = &cw_report {
            print!("{r}");
        }
        println!("{}", if ok { "OK" } else { "BROKEN" });
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The keys checkpoints must be signed with: `--public-key` files, else the key of
/// integrity.signing_key_file, else none.
fn key_ring(
    config: &Config,
    public_key: &[PathBuf],
) -> Result<Option<audit_relay::integrity::KeyRing>, audit_relay::integrity::KeyError> {
    use audit_relay::integrity::{KeyRing, PublicKey};
    match (public_key.is_empty(), &config.integrity.signing_key_file) {
        (false, _) => public_key
            .iter()
            .map(|p| PublicKey::load(p))
            .collect::<Result<Vec<_>, _>>()
            .map(|keys| Some(KeyRing::new(keys))),
        (true, Some(k)) => Signer::load(k).map(|s| Some(s.public_key().into())),
        (true, None) => Ok(None),
    }
}

/// `verify --postgres`: every relay's chain in the installation store.
fn verify_postgres(
    config: &Config,
    public_key: Vec<PathBuf>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use audit_relay::installation::{connect, verify};
    let Some(pg) = &config.postgres else {
        eprintln!("audit-relay: verify --postgres needs a [postgres] section in the config (postgres.url, postgres.password_file)");
        return Ok(ExitCode::from(EXIT_USAGE));
    };
    let public_key = match key_ring(config, &public_key) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("audit-relay: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let opts = verify::Options {
        public_key,
        retention_days: pg.retention_days,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = rt.block_on(async {
        let mut client = connect(pg).await?;
        verify::verify(&mut client, &opts).await
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("audit-relay: verify --postgres: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let ok = report.ok();
    if json {
        println!("{}", serde_json::json!({ "ok": ok, "postgres": report }));
    } else {
        print!("{report}");
        println!("{}", if ok { "OK" } else { "BROKEN" });
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn stats(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let cursors = audit_relay::forward::cursor_names(config.cloudwatch.as_ref());
    let spool = Spool::open_read_only(&config.spool.dir)?;
    let s = spool.stats_for(&cursors)?;
    // The installation store's cursor as the spool last learned it (the store's own may
    // be up to one commit ahead).
    let pg = match &config.postgres {
        Some(p) => {
            let name = audit_relay::installation::ship::PG_CURSOR.to_string();
            let p_stats = spool.stats_for(std::slice::from_ref(&name))?;
            Some(serde_json::json!({
                "relay_id": audit_relay::installation::relay_id(p).unwrap_or_else(|e| e),
                "cursor": p_stats.forwarded_seq,
                "unshipped": p_stats.unforwarded,
                "lag_seconds": p_stats.forward_lag_seconds,
            }))
        }
        None => None,
    };
    if json {
        let mut v = serde_json::to_value(&s)?;
        if let Some(pg) = &pg {
            v["postgres"] = pg.clone();
        }
        println!("{v}");
    } else {
        println!(
            "events       {} (stored; {} purged by retention)",
            s.events, s.purged
        );
        println!("quarantined  {}", s.quarantined);
        println!("skipped      {}", s.skipped);
        println!("duplicates   {}", s.duplicates);
        println!("read         {}", s.read);
        println!("last seq     {}", s.last_seq);
        println!("forwarded to {} (cursor)", s.forwarded_seq);
        println!(
            "unforwarded  {} (oldest waiting {} s)",
            s.unforwarded, s.forward_lag_seconds
        );
        println!(
            "forwarded    {} (calls accepted, re-sends included)",
            s.forwarded
        );
        println!(
            "rejected     {} (kept in the spool, not in CloudWatch)",
            s.rejected
        );
        println!(
            "held         {} (unforwarded, over 2 h in the future: sent when CloudWatch takes them)",
            s.held
        );
        println!(
            "checkpoints  {} (integrity; rows of their own, in the sequence)",
            s.checkpoints
        );
        println!("oldest       {}", s.oldest.as_deref().unwrap_or("-"));
        println!("newest       {}", s.newest.as_deref().unwrap_or("-"));
        println!("bytes        {}", s.bytes);
        if let Some(pg) = &pg {
            println!(
                "postgres     shipped to {} as relay_id {}; {} unshipped (oldest waiting {} s)",
                pg["cursor"], pg["relay_id"], pg["unshipped"], pg["lag_seconds"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn quarantine(config: &Config, json: bool, limit: usize) -> anyhow::Result<ExitCode> {
    let entries = Spool::open_read_only(&config.spool.dir)?.quarantine(limit)?;
    let mut out = std::io::stdout().lock();
    for e in entries {
        if json {
            writeln!(out, "{}", serde_json::to_string(&e)?)?;
        } else {
            let raw: String = e.raw.chars().take(120).collect();
            writeln!(
                out,
                "{} {}:{} {}\n    {raw}",
                e.at, e.source, e.offset, e.reason
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn query(config: &Config, req: &QueryRequest, json: bool) -> anyhow::Result<ExitCode> {
    let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let q = match plan(req, now, 100, 1_000_000) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("audit-relay: --{e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut print = |ts_ms: i64, body: &str, seq: i64| -> anyhow::Result<()> {
        let api = ApiAuditLog::from_body(body, ts_ms)
            .map_err(|r| anyhow::anyhow!("stored event {seq} is corrupt: {r}"))?;
        if json {
            writeln!(out, "{}", serde_json::to_string(&api)?)?;
        } else {
            writeln!(
                out,
                "{}  {}  actor={}  id={}",
                format_timestamp_ms(ts_ms),
                api.action,
                api.actor_id,
                api.id
            )?;
        }
        Ok(())
    };
    let from_store = config
        .api
        .as_ref()
        .is_some_and(|a| a.store == audit_relay::config::api::Store::Postgres);
    match config.postgres.as_ref().filter(|_| from_store) {
        // The installation store: the same rows in the same order as the query API.
        Some(pg) => {
            use audit_relay::installation::query::StoreReader;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(async {
                let reader = StoreReader::new(pg)?;
                reader
                    .each(&q, 1000, |r| print(r.ts_ms, &r.body, r.gseq))
                    .await
            })
            .context("api.store = \"postgres\": reading the installation store")?;
        }
        None => {
            let spool = Spool::open_read_only(&config.spool.dir)?;
            spool.query_each(&q, |ev| print(ev.ts_ms, &ev.body, ev.seq))?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
