//! Memory of `verify --cloudwatch`'s comparison, at growing spool sizes.
//!
//! ```text
//! cargo bench --bench verify_memory -- [--events N,M,...]
//! ```
//!
//! For each size N (default 1,000,000 and 2,000,000) it fills a fresh spool with N events
//! (a checkpoint every 10,000, as the relay writes them) through the library, then runs
//! the comparison in a child process of its own (so the fill does not count): every row
//! rendered as the forwarder renders it is fed in as CloudWatch's copy, and the spool is
//! checked against it. Prints the child's peak RSS (VmHWM) and time; the comparison must
//! find everything matched. The CloudWatch reads themselves are left out: they stream page
//! by page and keep nothing.

mod support;

use audit_relay::forward::message::MessageFormat;
use audit_relay::spool::Spool;
use audit_relay::verify::cloudwatch::Comparison;
use audit_relay::verify::Options;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn compare(dir: &Path) {
    let spool = Spool::open_read_only(dir).unwrap();
    let started = Instant::now();
    let format = MessageFormat::new(&Default::default(), 1 << 20);
    let mut cmp = Comparison::new("/gitpod/audit", &["bench".to_string()]).unwrap();
    let (mut after, mut rows) = (0i64, 0u64);
    loop {
        let page = spool.read_after(after, 10_000).unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in &page {
            let (message, _) = format.render(&r.body, r.ts_ms);
            cmp.add_message("bench", r.ts_ms, &message).unwrap();
            rows += 1;
        }
    }
    let fed = started.elapsed();
    let report = cmp
        .finish(&spool, &Options::default(), &format, after)
        .unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.matched + report.checkpoints, rows);
    println!(
        "rows={rows} matched={} vm_hwm_kib={} feed_s={:.1} total_s={:.1}",
        report.matched,
        support::status_kib(std::process::id(), "VmHWM:"),
        fed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--compare") {
        compare(Path::new(&args[i + 1]));
        return;
    }
    let sizes: Vec<u64> = args
        .iter()
        .position(|a| a == "--events")
        .map(|i| {
            args[i + 1]
                .split(',')
                .map(|n| n.replace('_', "").parse().expect("--events N,M"))
                .collect()
        })
        .unwrap_or_else(|| vec![1_000_000, 2_000_000]);
    println!("verify --cloudwatch comparison: peak RSS of a process that only compares");
    for n in sizes {
        let dir = tempfile::tempdir().unwrap();
        support::fill_spool_with(dir.path(), n, support::now_ms(), Some(10_000));
        let out = Command::new(std::env::current_exe().unwrap())
            .arg("--compare")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("events={n} {}", String::from_utf8_lossy(&out.stdout));
    }
}
