//! Waiting for a condition with a deadline, instead of sleeping and hoping.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// An error [`until`] returns at once instead of retrying: the condition can no longer become
/// true (say, the process it waits for exited).
#[derive(Debug)]
pub struct GiveUp(pub String);

impl std::fmt::Display for GiveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GiveUp {}

/// Polls `check` every 20 ms until it returns `Ok(true)`, fails with its last error, or
/// `timeout` passes. `what` names the condition in the timeout error. Errors are retried
/// (the thing polled may not be up yet) unless they are [`GiveUp`].
pub fn until(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = check();
        match last {
            Ok(true) => return Ok(()),
            Ok(false) if Instant::now() < deadline => {}
            Ok(false) => bail!("timed out after {timeout:?} waiting for {what}"),
            Err(e) if e.is::<GiveUp>() => return Err(e.context(format!("waiting for {what}"))),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn give_up_ends_the_wait_at_once_other_errors_are_retried() {
        let mut calls = 0;
        let r = until("a dead thing", Duration::from_mins(1), || {
            calls += 1;
            Err(GiveUp("it exited".into()).into())
        });
        let e = r.unwrap_err();
        assert_eq!(calls, 1);
        assert!(format!("{e:#}").contains("it exited"), "{e:#}");

        let mut calls = 0;
        until("a slow thing", Duration::from_mins(1), || {
            calls += 1;
            if calls == 1 {
                bail!("not up yet");
            }
            Ok(calls >= 3)
        })
        .unwrap();
        assert_eq!(calls, 3);
    }
}
