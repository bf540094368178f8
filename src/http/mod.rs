//! The admin API, health probes and Prometheus metrics (hyper, on its own small runtime
//! thread). Not built yet: see the admin API issue.
