//! Vital components: threads the daemon cannot serve without (the journal writer, the
//! materializer, the core threads), and the ingest journal itself. If one ends while it should
//! still run — a panic, an exhausted resource — or the journal failed a write, the failure is
//! recorded here: `/readyz` reports it at once and the daemon stops with a non-zero
//! exit status, so its supervisor restarts it. A daemon that answers every C-STORE with 0110
//! while `/readyz` says 200 is worse than one that is down (audit C2).

use std::sync::{Mutex, OnceLock};

/// Where failures are recorded: the daemon's one [`global`] registry, or a test's own.
#[derive(Debug, Default)]
pub struct Registry {
    failed: Mutex<Option<String>>,
    notify: tokio::sync::Notify,
}

/// The daemon's registry.
pub fn global() -> &'static Registry {
    static G: OnceLock<Registry> = OnceLock::new();
    G.get_or_init(Registry::default)
}

impl Registry {
    /// Records that `component` failed (the first failure is kept).
    pub fn fail(&self, component: &str, why: &str) {
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            tracing::error!(
                component,
                why,
                "a vital component failed: the daemon is not ready and will stop"
            );
            *f = Some(format!("{component}: {why}"));
        }
        drop(f);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// The first recorded failure, if any.
    pub fn failed(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Resolves once a failure is recorded.
    pub async fn wait_failure(&self) -> String {
        loop {
            let woken = self.notify.notified();
            if let Some(f) = self.failed() {
                return f;
            }
            woken.await;
        }
    }
}

#[cfg(test)]
impl Registry {
    /// Waits (at most `within`) until a failure is recorded, and asserts that it is
    /// `component`'s (recorded as `component: why`).
    pub fn assert_fails_within(&self, component: &str, within: std::time::Duration) {
        let deadline = std::time::Instant::now() + within;
        while self.failed().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let failed = self.failed();
        assert!(
            failed
                .as_deref()
                .and_then(|f| f.strip_prefix(component))
                .is_some_and(|why| why.starts_with(": ")),
            "expected a vital failure of {component}, recorded: {failed:?}"
        );
    }
}

/// Records that `component` failed, in the daemon's registry.
pub fn fail(component: &str, why: &str) {
    global().fail(component, why);
}

/// The daemon's first recorded failure, if any.
pub fn failed() -> Option<String> {
    global().failed()
}

/// Resolves once the daemon records a failure.
pub async fn wait_failure() -> String {
    global().wait_failure().await
}

/// Held by a vital thread for as long as it must run; if it is dropped without
/// [`Vital::done`] (the thread returned early or is unwinding from a panic), the component is
/// recorded as failed.
#[derive(Debug)]
pub struct Vital {
    component: &'static str,
    registry: &'static Registry,
    done: bool,
}

impl Vital {
    /// Guards `component`, recording into the daemon's registry.
    pub fn new(component: &'static str) -> Self {
        Vital::in_registry(component, global())
    }

    /// Guards `component`, recording into `registry`.
    pub fn in_registry(component: &'static str, registry: &'static Registry) -> Self {
        Vital {
            component,
            registry,
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
            self.registry.fail(self.component, why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> &'static Registry {
        Box::leak(Box::default())
    }

    #[test]
    fn an_orderly_stop_is_not_a_failure() {
        let r = registry();
        Vital::in_registry("committer", r).done();
        assert_eq!(r.failed(), None);
    }

    #[test]
    fn a_thread_that_ends_early_or_panics_is_recorded_and_wakes_the_waiter() {
        let r = registry();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let waiter = std::thread::spawn(move || {
            rt.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(10), r.wait_failure()).await
            })
            .expect("the waiter was woken")
        });
        let t = std::thread::spawn(move || {
            let _vital = Vital::in_registry("committer", r);
            panic!("boom");
        });
        assert!(t.join().is_err());
        assert_eq!(waiter.join().unwrap(), "committer: panicked");
        // The first failure is kept.
        drop(Vital::in_registry("core thread", r));
        assert_eq!(r.failed().as_deref(), Some("committer: panicked"));
        let r2 = registry();
        drop(Vital::in_registry("core thread", r2));
        assert_eq!(
            r2.failed().as_deref(),
            Some("core thread: stopped unexpectedly")
        );
    }
}
