//! Admin API pacing: with `[http] max_requests_per_second` set low, a burst of requests beyond
//! what may wait 2 s is answered 503 `busy` naming the setting (never dropped, never an
//! error of another kind), while the health probes are never paced.

mod util;

use std::collections::BTreeMap;

use util::*;

const BIN: &str = env!("CARGO_BIN_EXE_dicom-gw");

#[test]
fn requests_beyond_the_rate_wait_or_get_503_and_probes_are_exempt() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("gw.toml");
    std::fs::write(&cfg, "[http]\nmax_requests_per_second = 1\n").unwrap();
    let cfg_arg = cfg.to_str().unwrap().to_owned();
    let mut gw = Daemon::start(
        BIN,
        tmp.path().join("data"),
        "epoll",
        &["--config", &cfg_arg],
    );
    let port = gw.http_port;
    // 40 requests at once: 20 fit the burst, about 2 more the 2 s wait, the rest are refused.
    let handles: Vec<_> = (0..40)
        .map(|_| {
            std::thread::spawn(move || http_json(port, "GET", "/api/v1/openapi.json", None, None))
        })
        .collect();
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for h in handles {
        let (code, body) = h.join().unwrap();
        if code == 503 {
            assert_eq!(body["error"]["code"], "busy", "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("max_requests_per_second"),
                "{body}"
            );
        }
        *by_status.entry(code).or_default() += 1;
    }
    assert_eq!(by_status.len(), 2, "only 200 and 503: {by_status:?}");
    assert!(by_status[&200] >= 20, "the burst is served: {by_status:?}");
    assert!(
        by_status[&503] >= 5,
        "beyond the wait: refused: {by_status:?}"
    );
    // Probes are not paced, even now.
    for _ in 0..30 {
        assert_eq!(http_json(port, "GET", "/healthz", None, None).0, 200);
    }
    gw.stop();
}
