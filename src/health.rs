//! Vital components: threads the daemon cannot serve without (the group committer, the core
//! threads). If one ends while it should still run — a panic, an exhausted resource — the
//! failure is recorded here: `/readyz` reports it at once and the daemon stops with a non-zero
//! exit status, so its supervisor restarts it. A daemon that answers every C-STORE with 0110
//! while `/readyz` says 200 is worse than one that is down (audit C2).

use std::sync::{Mutex, OnceLock};

static FAILED: Mutex<Option<String>> = Mutex::new(None);

fn notify() -> &'static tokio::sync::Notify {
    static N: OnceLock<tokio::sync::Notify> = OnceLock::new();
    N.get_or_init(tokio::sync::Notify::new)
}

/// Records that `component` failed (the first failure is kept).
pub fn fail(component: &str, why: &str) {
    let mut f = FAILED.lock().unwrap_or_else(|p| p.into_inner());
    if f.is_none() {
        tracing::error!(
            component,
            why,
            "a vital component failed: the daemon is not ready and will stop"
        );
        *f = Some(format!("{component}: {why}"));
    }
    drop(f);
    notify().notify_waiters();
    notify().notify_one();
}

/// The first recorded failure, if any.
pub fn failed() -> Option<String> {
    FAILED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Resolves once a failure is recorded.
pub async fn wait_failure() -> String {
    loop {
        let woken = notify().notified();
        if let Some(f) = failed() {
            return f;
        }
        woken.await;
    }
}

/// Held by a vital thread for as long as it must run; if it is dropped without
/// [`Vital::done`] (the thread returned early or is unwinding from a panic), the component is
/// recorded as failed.
#[derive(Debug)]
pub struct Vital {
    component: &'static str,
    done: bool,
}

impl Vital {
    /// Guards `component`.
    pub fn new(component: &'static str) -> Self {
        Vital {
            component,
            done: false,
        }
    }

    /// The component ended as it should (an orderly stop).
    pub fn done(mut self) {
        self.done = true;
    }
}

impl Drop for Vital {
    fn drop(&mut self) {
        if !self.done {
            let why = if std::thread::panicking() {
                "panicked"
            } else {
                "stopped unexpectedly"
            };
            fail(self.component, why);
        }
    }
}
