//! The systemd notification protocol (`sd_notify(3)`) through the
//! `sd-notify` crate: `READY=1` once the programs are attached, `STATUS=`
//! lines, `STOPPING=1` on shutdown and `WATCHDOG=1` keep-alives from the
//! collector loop. Without `NOTIFY_SOCKET` (not started by systemd, or
//! `Type=` other than `notify`) every call is a no-op.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// The log target of notification failures.
const LOG_TARGET: &str = "sonde::notify";

fn send(states: &[NotifyState]) {
    // A lost notification is worth a line, never a stop: the service
    // manager's own timeout reports a missing READY=1.
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(target: LOG_TARGET, "notifying the service manager: {err}");
    }
}

/// Startup is complete: the programs are attached and the health
/// endpoints answer.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A free-form status line (`systemctl status` shows it).
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Shutdown has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

/// Sends `WATCHDOG=1` every half of the service manager's `WATCHDOG_USEC`
/// (as `sd_watchdog_enabled(3)` advises), when the caller's loop comes
/// round. Disabled when the variable is absent or names another process.
#[derive(Debug)]
pub struct Watchdog {
    every: Option<Duration>,
    last: Instant,
}

impl Watchdog {
    /// From the environment (`WATCHDOG_USEC`, `WATCHDOG_PID`).
    pub fn from_env() -> Self {
        Self::every(sd_notify::watchdog_enabled().map(|usec| usec / 2))
    }

    /// Pings every `every` (None: never).
    pub fn every(every: Option<Duration>) -> Self {
        Self {
            every: every.filter(|d| !d.is_zero()),
            last: Instant::now(),
        }
    }

    /// When the next ping is due (None: disabled).
    pub fn due(&self) -> Option<Instant> {
        self.every.map(|every| self.last + every)
    }

    /// Pings if due; returns whether it did.
    pub fn tick(&mut self) -> bool {
        match self.due() {
            Some(due) if Instant::now() >= due => {
                send(&[NotifyState::Watchdog]);
                self.last = Instant::now();
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_watchdog_is_never_due() {
        let mut w = Watchdog::every(None);
        assert_eq!(w.due(), None);
        assert!(!w.tick());
        assert_eq!(Watchdog::every(Some(Duration::ZERO)).due(), None);
    }

    #[test]
    fn watchdog_is_due_after_its_period() {
        let mut w = Watchdog::every(Some(Duration::from_millis(20)));
        assert!(!w.tick(), "not due right away");
        std::thread::sleep(Duration::from_millis(25));
        // No NOTIFY_SOCKET in unit tests: the send is a no-op.
        assert!(w.tick());
        assert!(!w.tick(), "the period restarts after a ping");
    }
}
