//! Standard input as a source (`paths = ["-"]`): no checkpoint, ends at end of input.
//! At end of input an unterminated last line counts as complete.

use super::framing::{Deframer, Resume};
use super::{Collector, WriterGone};
use crate::config::SourceConfig;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a paused reader looks again.
const PAUSE_POLL: Duration = Duration::from_millis(100);

/// Reads standard input to its end; pauses while `paused` (spool full).
pub fn run(
    cfg: &SourceConfig,
    mut out: Collector,
    cancel: &CancellationToken,
    paused: &AtomicBool,
) -> Result<(), WriterGone> {
    let mut de = Deframer::new(cfg.format, cfg.max_line_bytes.0 as usize, Resume::at(0));
    let mut chunk = vec![0u8; 64 << 10];
    let mut stdin = std::io::stdin().lock();
    while !cancel.is_cancelled() {
        if paused.load(Ordering::Relaxed) {
            // The spool is full: stop reading; the writer behind the pipe waits.
            std::thread::sleep(PAUSE_POLL);
            continue;
        }
        let n = match stdin.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "cannot read standard input");
                break;
            }
        };
        de.push(&chunk[..n], &mut |f| out.frame(f, "stdin"));
        out.send()?;
    }
    de.finish(&mut |f| out.frame(f, "stdin"));
    out.send()?;
    tracing::info!(bytes = de.read_offset(), "standard input ended");
    Ok(())
}
