//! Waiting for a condition with a deadline, instead of sleeping and hoping.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Polls `check` every 20 ms until it returns `Ok(true)`, fails with its last error, or
/// `timeout` passes. `what` names the condition in the timeout error.
pub fn until(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = check();
        match last {
            Ok(true) => return Ok(()),
            Ok(false) if Instant::now() < deadline => {}
            Ok(false) => bail!("timed out after {timeout:?} waiting for {what}"),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
            }
            Err(e) => {
                return Err(e.context(format!("timed out after {timeout:?} waiting for {what}")));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
