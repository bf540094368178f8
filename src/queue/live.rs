//! Destinations and routes changed while the daemon runs (admin API): validated exactly like
//! the config file, applied at once (new forwarder workers; the routing table swapped
//! atomically, so an object is routed entirely by the old or entirely by the new table), and
//! persisted in the database so they survive a restart.
//!
//! Every change takes an [`AuditHook`], run inside the transaction that stores the new lists
//! (before anything is applied): the change and its audit entry commit together, and if the
//! entry cannot be written nothing is stored or applied.
//!
//! Precedence: once the API has changed the configuration, the database copy of *both* lists
//! is authoritative and the config file's `[[destinations]]` and `[[routes]]` are ignored (a
//! warning at start-up says so); an empty database copy means "use the file".

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use redb::ReadableDatabase;

use super::forwarder::Shared;
use super::routing::Routing;
use crate::audit::AuditHook;
use crate::config::{self, Destination, RawDestination, RawRoute, Route};
use crate::db;
use crate::store::index::Index;

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LiveError {
    /// The submitted value is invalid (`field` names it).
    #[error("{field}: {message}")]
    Invalid {
        /// Dotted field name, e.g. `port` or `routes[1].destinations`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No such destination.
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with the current configuration.
    #[error("{0}")]
    Conflict(String),
    /// Storing or applying it failed.
    #[error("{0}")]
    Failed(String),
}

/// The live configuration.
#[derive(Debug)]
pub struct LiveConfig {
    index: Arc<Index>,
    forwarder: Arc<Shared>,
    routing: Arc<ArcSwap<Routing>>,
    store_ae_title: String,
    /// Serialises changes (validate, persist, apply as one step).
    changing: Mutex<()>,
}

/// The destinations and routes to start with: the database copy if the API ever changed them,
/// else the config file's.
pub fn effective(
    index: &Index,
    file_destinations: Vec<Destination>,
    file_routes: Vec<Route>,
    store_ae_title: &str,
) -> Result<(Vec<Destination>, Vec<Route>, bool), String> {
    let tx = index.database().begin_read().map_err(|e| e.to_string())?;
    let t = tx.open_table(db::CONFIG).map_err(|e| e.to_string())?;
    let get = |k: &str| -> Result<Option<String>, String> {
        Ok(t.get(k)
            .map_err(|e| e.to_string())?
            .map(|g| g.value().to_owned()))
    };
    let (Some(d), Some(r)) = (get("destinations")?, get("routes")?) else {
        return Ok((file_destinations, file_routes, false));
    };
    let raw_d: Vec<RawDestination> =
        serde_json::from_str(&d).map_err(|e| format!("stored destinations: {e}"))?;
    let raw_r: Vec<RawRoute> =
        serde_json::from_str(&r).map_err(|e| format!("stored routes: {e}"))?;
    let dests = raw_d
        .into_iter()
        .map(|x| config::resolve_destination(x, store_ae_title))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|(k, m)| format!("stored destination {k}: {m}"))?;
    let routes = raw_r
        .into_iter()
        .enumerate()
        .map(|(n, x)| config::resolve_route(x, n, &dests))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|(k, m)| format!("stored route {k}: {m}"))?;
    Ok((dests, routes, true))
}

impl LiveConfig {
    /// Wraps the running forwarder and routing table.
    pub fn new(
        index: Arc<Index>,
        forwarder: Arc<Shared>,
        routing: Arc<ArcSwap<Routing>>,
        store_ae_title: String,
    ) -> Self {
        Self {
            index,
            forwarder,
            routing,
            store_ae_title,
            changing: Mutex::new(()),
        }
    }

    /// The destinations in force.
    pub fn destinations(&self) -> Vec<Destination> {
        self.forwarder.destinations()
    }

    /// The routes in force.
    pub fn routes(&self) -> Vec<Route> {
        self.routing.load().routes().to_vec()
    }

    /// Stores both lists, and the change's audit entry (`audit`, run in the same transaction
    /// before the commit; its `Err` aborts it).
    fn persist(
        &self,
        dests: &[Destination],
        routes: &[Route],
        audit: impl FnOnce(&redb::WriteTransaction) -> Result<(), String>,
    ) -> Result<(), LiveError> {
        let failed = |e: &dyn std::fmt::Display| {
            LiveError::Failed(format!("storing the configuration: {e}"))
        };
        let d: Vec<RawDestination> = dests.iter().map(RawDestination::from).collect();
        let r: Vec<RawRoute> = routes.iter().map(RawRoute::from).collect();
        let dj = serde_json::to_string(&d).map_err(|e| failed(&e))?;
        let rj = serde_json::to_string(&r).map_err(|e| failed(&e))?;
        let tx = self
            .index
            .database()
            .begin_write()
            .map_err(|e| failed(&e))?;
        {
            let mut t = tx.open_table(db::CONFIG).map_err(|e| failed(&e))?;
            t.insert("destinations", dj.as_str())
                .map_err(|e| failed(&e))?;
            t.insert("routes", rj.as_str()).map_err(|e| failed(&e))?;
        }
        audit(&tx).map_err(|e| {
            tracing::error!(error = %e, "audit entry not written; the configuration change is rolled back");
            LiveError::Failed(crate::audit::not_made(&e))
        })?;
        tx.commit().map_err(|e| failed(&e))
    }

    /// Adds a destination, audited (`audit`, given the destination) in the transaction that
    /// stores it; [`LiveError::Conflict`] if the name is taken (checked under the same lock as
    /// the change, so two concurrent creations cannot both succeed).
    pub fn create_destination(
        &self,
        raw: RawDestination,
        audit: impl AuditHook<Destination>,
    ) -> Result<Destination, LiveError> {
        self.put_destination(raw, None, true, |tx, (d, _)| audit(tx, d))
            .map(|(d, _)| d)
    }

    /// Adds or replaces a destination (`name` must match the body's name when given), audited
    /// (`audit`, given the destination and whether it existed) in the transaction that stores
    /// it.
    pub fn upsert_destination(
        &self,
        raw: RawDestination,
        name: Option<&str>,
        audit: impl AuditHook<(Destination, bool)>,
    ) -> Result<(Destination, bool), LiveError> {
        self.put_destination(raw, name, false, audit)
    }

    fn put_destination(
        &self,
        raw: RawDestination,
        name: Option<&str>,
        create_only: bool,
        audit: impl AuditHook<(Destination, bool)>,
    ) -> Result<(Destination, bool), LiveError> {
        let _g = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let raw = match (name, raw.name.as_deref()) {
            (Some(n), Some(b)) if n != b => {
                return Err(LiveError::Invalid {
                    field: "name".into(),
                    message: format!("{b:?} differs from {n:?} in the path"),
                })
            }
            (Some(n), None) => RawDestination {
                name: Some(n.to_owned()),
                ..raw
            },
            _ => raw,
        };
        let dest = config::resolve_destination(raw, &self.store_ae_title).map_err(|(k, m)| {
            LiveError::Invalid {
                field: k.to_owned(),
                message: m,
            }
        })?;
        let mut dests = self.destinations();
        let existed = dests.iter().any(|d| d.name == dest.name);
        if existed && create_only {
            return Err(LiveError::Conflict(format!(
                "name: destination {:?} already exists (PUT /api/v1/destinations/{} replaces it)",
                dest.name, dest.name
            )));
        }
        dests.retain(|d| d.name != dest.name);
        dests.push(dest.clone());
        let done = (dest, existed);
        self.persist(&dests, &self.routes(), |tx| audit(tx, &done))?;
        let (dest, existed) = done;
        self.forwarder
            .upsert_destination(dest.clone())
            .map_err(|e| LiveError::Failed(e.to_string()))?;
        tracing::info!(destination = %dest.name, existed, "destination configured through the API");
        Ok((dest, existed))
    }

    /// Removes a destination that no route uses, audited in the transaction that stores the
    /// change.
    pub fn remove_destination(
        &self,
        name: &str,
        audit: impl AuditHook<()>,
    ) -> Result<(), LiveError> {
        let _g = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let mut dests = self.destinations();
        if !dests.iter().any(|d| d.name == name) {
            return Err(LiveError::NotFound(format!("no destination {name:?}")));
        }
        let routes = self.routes();
        if let Some(r) = routes
            .iter()
            .find(|r| r.destinations.iter().any(|d| d == name))
        {
            return Err(LiveError::Conflict(format!(
                "route {:?} sends to {name:?}: change the routes first",
                r.name
            )));
        }
        dests.retain(|d| d.name != name);
        self.persist(&dests, &routes, |tx| audit(tx, &()))?;
        self.forwarder.remove_destination(name);
        tracing::info!(destination = %name, "destination removed through the API");
        Ok(())
    }

    /// Replaces the whole routing table, audited (`audit`, given the new routes) in the
    /// transaction that stores it.
    pub fn set_routes(
        &self,
        raws: Vec<RawRoute>,
        audit: impl AuditHook<Vec<Route>>,
    ) -> Result<Vec<Route>, LiveError> {
        let _g = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let dests = self.destinations();
        let routes = raws
            .into_iter()
            .enumerate()
            .map(|(n, r)| {
                config::resolve_route(r, n, &dests).map_err(|(k, m)| LiveError::Invalid {
                    field: format!("[{n}].{k}"),
                    message: m,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.persist(&dests, &routes, |tx| audit(tx, &routes))?;
        self.routing.store(Arc::new(Routing::new(routes.clone())));
        tracing::info!(routes = routes.len(), "routes replaced through the API");
        Ok(routes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::no_audit;
    use crate::queue::forwarder::Forwarder;
    use crate::queue::Queue;
    use crate::store::DataDir;

    fn raw_dest(name: &str, port: Option<u16>) -> RawDestination {
        RawDestination {
            name: Some(name.into()),
            ae_title: Some("ARCH".into()),
            host: Some("127.0.0.1".into()),
            port,
            ..Default::default()
        }
    }

    #[test]
    fn changes_are_validated_applied_and_persisted() {
        let d = tempfile::tempdir().unwrap();
        let (data, _) = DataDir::prepare(d.path()).unwrap();
        let index = Arc::new(Index::open(&data.index_path()).unwrap());
        let fwd = Forwarder::start(Queue::new(index.clone(), false), data, vec![]).unwrap();
        let routing = Arc::new(ArcSwap::from_pointee(Routing::default()));
        let live = LiveConfig::new(
            index.clone(),
            fwd.shared().clone(),
            routing.clone(),
            "GW".into(),
        );
        // Nothing stored yet: the file's lists are used.
        assert!(!effective(&index, vec![], vec![], "GW").unwrap().2);
        match live.upsert_destination(raw_dest("a", None), None, no_audit) {
            Err(LiveError::Invalid { field, .. }) => assert_eq!(field, "port"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            live.upsert_destination(raw_dest("a", Some(1)), Some("b"), no_audit),
            Err(LiveError::Invalid { .. })
        ));
        let (dest, existed) = live
            .upsert_destination(raw_dest("a", Some(1)), None, no_audit)
            .unwrap();
        assert!(!existed);
        assert_eq!(dest.calling_ae_title, "GW");
        assert_eq!(fwd.shared().names(), vec!["a"]);
        let (_, existed) = live
            .upsert_destination(raw_dest("a", Some(2)), Some("a"), no_audit)
            .unwrap();
        assert!(existed);
        assert_eq!(live.destinations()[0].port, 2);
        let route = RawRoute {
            name: Some("all".into()),
            match_: None,
            destinations: Some(vec!["a".into()]),
        };
        let bad = RawRoute {
            destinations: Some(vec!["nope".into()]),
            ..route.clone()
        };
        match live.set_routes(vec![route.clone(), bad], no_audit) {
            Err(LiveError::Invalid { field, .. }) => assert_eq!(field, "[1].destinations"),
            other => panic!("{other:?}"),
        }
        live.set_routes(vec![route], no_audit).unwrap();
        assert_eq!(routing.load().routes().len(), 1);
        assert!(matches!(
            live.remove_destination("a", no_audit),
            Err(LiveError::Conflict(_))
        ));
        assert!(matches!(
            live.remove_destination("zz", no_audit),
            Err(LiveError::NotFound(_))
        ));
        // Persisted: a restart uses these, not the file's.
        let (dests, routes, from_db) = effective(&index, vec![], vec![], "GW").unwrap();
        assert!(from_db);
        assert_eq!((dests.len(), dests[0].port, routes.len()), (1, 2, 1));
        live.set_routes(vec![], no_audit).unwrap();
        live.remove_destination("a", no_audit).unwrap();
        assert!(fwd.shared().names().is_empty());
        let (dests, routes, from_db) = effective(&index, vec![], vec![], "GW").unwrap();
        assert!(from_db && dests.is_empty() && routes.is_empty());
        fwd.stop();
    }

    fn failing<R>(_: &redb::WriteTransaction, _: &R) -> Result<(), String> {
        Err("disk on fire".into())
    }

    /// A hook appending a real audit entry naming the action.
    fn audited<R>(action: &'static str) -> impl AuditHook<R> {
        move |tx: &redb::WriteTransaction, _: &R| {
            crate::audit::append(
                tx,
                1,
                &crate::audit::AuditEvent {
                    actor: "alice",
                    source: "127.0.0.1:1",
                    action,
                    details: serde_json::json!({}),
                },
            )
            .map(drop)
        }
    }

    #[test]
    fn a_configuration_change_and_its_audit_entry_commit_together_or_not_at_all() {
        let d = tempfile::tempdir().unwrap();
        let (data, _) = DataDir::prepare(d.path()).unwrap();
        let index = Arc::new(Index::open(&data.index_path()).unwrap());
        let db = index.database();
        let fwd = Forwarder::start(Queue::new(index.clone(), false), data, vec![]).unwrap();
        let routing = Arc::new(ArcSwap::from_pointee(Routing::default()));
        let live = LiveConfig::new(
            index.clone(),
            fwd.shared().clone(),
            routing.clone(),
            "GW".into(),
        );
        let route = RawRoute {
            name: Some("all".into()),
            match_: None,
            destinations: Some(vec!["a".into()]),
        };
        let not_made = |e: LiveError| {
            assert!(
                matches!(&e, LiveError::Failed(m) if m.contains("disk on fire") && m.contains("was not made")),
                "{e}"
            );
        };

        // Each kind of change with a failing hook: neither stored nor applied.
        not_made(
            live.create_destination(raw_dest("a", Some(1)), failing)
                .unwrap_err(),
        );
        not_made(
            live.upsert_destination(raw_dest("a", Some(1)), None, failing)
                .unwrap_err(),
        );
        assert!(fwd.shared().names().is_empty());
        assert!(!effective(&index, vec![], vec![], "GW").unwrap().2);
        live.create_destination(raw_dest("a", Some(1)), audited("destination.create"))
            .unwrap();
        not_made(
            live.upsert_destination(raw_dest("a", Some(2)), None, failing)
                .unwrap_err(),
        );
        not_made(live.set_routes(vec![route.clone()], failing).unwrap_err());
        assert!(routing.load().routes().is_empty());
        not_made(live.remove_destination("a", failing).unwrap_err());
        assert_eq!(fwd.shared().names(), vec!["a"]);
        assert_eq!(live.destinations()[0].port, 1);
        let (dests, routes, _) = effective(&index, vec![], vec![], "GW").unwrap();
        assert_eq!((dests.len(), dests[0].port, routes.len()), (1, 1, 0));
        assert_eq!(crate::audit::count(db).unwrap(), 1);

        // With working hooks: every change and its entry.
        live.upsert_destination(raw_dest("a", Some(2)), None, audited("destination.update"))
            .unwrap();
        live.set_routes(vec![route], audited("routes.replace"))
            .unwrap();
        assert_eq!(routing.load().routes().len(), 1);
        live.set_routes(vec![], audited("routes.replace")).unwrap();
        live.remove_destination("a", audited("destination.delete"))
            .unwrap();
        assert!(fwd.shared().names().is_empty());
        let log = crate::audit::list(db, 0, 10).unwrap();
        let actions: Vec<_> = log.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "destination.create",
                "destination.update",
                "routes.replace",
                "routes.replace",
                "destination.delete"
            ]
        );
        assert!(crate::audit::verify(db).unwrap().ok);
        fwd.stop();
    }
}
