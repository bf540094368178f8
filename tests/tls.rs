//! DICOM TLS (issue 11, PS3.15 Annex B) against real peers: forwarding to DCMTK `storescp
//! +tls` (server certificate only, and mutual TLS) delivers byte-identical datasets; a
//! destination whose certificate does not chain to the configured CA is retried with the reason
//! in the job; and the DICOM TLS listeners of both services serve DCMTK `echoscu +tls`,
//! `storescu +tls` and `findscu -W +tls`, refuse a client without a certificate under mutual
//! TLS, and survive a plain client on the TLS port and a TLS client on the plain port with a
//! WARN line. Certificates are made in each test with openssl (`util/certs.rs`).

mod util;

#[path = "util/certs.rs"]
mod certs;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use certs::TestCerts;
use util::*;

/// Fast retries, so a failing destination is retried within about a second.
const FAST_RETRY: &str = "retry_initial_seconds = 0.5\nretry_max_seconds = 1\n";

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Explicit VR LE objects `first..first+n`, the first one large (several TLS records and
/// P-DATA PDUs), written under `dir`.
fn gen_objs(dir: &Path, first: u32, n: u32) -> Vec<(ObjSpec, PathBuf)> {
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let spec = ObjSpec::new(first + i).pixel_bytes(if i == 0 {
                3 << 20
            } else {
                4096 + 977 * i as u64
            });
            let f = dir.join(format!("{}.dcm", spec.sop_instance_uid));
            gen_part10(&f, &spec).unwrap();
            (spec, f)
        })
        .collect()
}

/// Every object arrived once at `scp`, with the dataset bytes that were sent to the gateway.
fn assert_delivered_verbatim(scp: &DestScp, objs: &[(ObjSpec, PathBuf)]) {
    let got = scp.by_uid();
    assert_eq!(got.len(), objs.len(), "storescp log:\n{}", scp.log());
    for (spec, sent) in objs {
        let files = got.get(&spec.sop_instance_uid).unwrap_or_else(|| {
            panic!(
                "{} not received; log:\n{}",
                spec.sop_instance_uid,
                scp.log()
            )
        });
        assert_eq!(files.len(), 1, "{}: {files:?}", spec.sop_instance_uid);
        assert!(
            same_dataset(&files[0], sent),
            "{}: the dataset forwarded over TLS differs from the one sent",
            spec.sop_instance_uid
        );
    }
}

fn tls_table(ca: &Path, client: Option<(&Path, &Path)>) -> String {
    let mut t = format!("tls = {{ ca_file = {:?}", p(ca));
    if let Some((c, k)) = client {
        t += &format!(", cert_file = {:?}, key_file = {:?}", p(c), p(k));
    }
    t + " }\n"
}

/// Forwards three objects (one of 3 MiB) to `storescp +tls` with `scp_flags`, the destination
/// configured with `tls`; all must arrive byte for byte.
fn forward_over_tls(scp_flags: impl Fn(&TestCerts) -> Vec<String>, client_cert: bool) {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let k = certs::make(&tmp.path().join("certs").tap_mkdir());
    let flags = scp_flags(&k);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let scp = DestScp::start_free(&tmp.path().join("scp"), &flags);
    let client = client_cert.then_some((k.client_cert.as_path(), k.client_key.as_path()));
    let toml = dest_block(
        "secure",
        scp.port,
        &format!("{FAST_RETRY}{}", tls_table(&k.ca, client)),
    ) + &route_block("all", "", &["secure"]);
    let data = tmp.path().join("data");
    let mut gw = start_gw(tmp.path(), &data, &toml, &[]);
    let objs = gen_objs(&tmp.path().join("src"), 41_000, 3);
    let files: Vec<&PathBuf> = objs.iter().map(|(_, f)| f).collect();
    storescu(gw.port, &files, &[]).assert_all_ok(&files);
    wait_settled(&data, "secure", 3, 0, Duration::from_secs(60));
    assert_delivered_verbatim(&scp, &objs);
    let log = scp.log();
    assert!(log.contains("Association Received"), "{log}");
    gw.stop();
}

trait Mkdir {
    fn tap_mkdir(self) -> Self;
}

impl Mkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[test]
fn forwards_to_storescp_over_tls_byte_identical() {
    forward_over_tls(
        |k| {
            vec![
                "+tls".into(),
                p(&k.server_key).into(),
                p(&k.server_cert).into(),
                "-ic".into(),
            ]
        },
        false,
    );
}

#[test]
fn forwards_to_storescp_over_mutual_tls_byte_identical() {
    forward_over_tls(
        |k| {
            vec![
                "+tls".into(),
                p(&k.server_key).into(),
                p(&k.server_cert).into(),
                "+cf".into(),
                p(&k.ca).into(),
                "-rc".into(),
            ]
        },
        true,
    );
}

/// A destination whose certificate is not from the configured CA, and one that requires a
/// client certificate we do not have: nothing is delivered, the jobs end as dead letters after
/// their retries with the reason, and the daemon logs a WARN line.
#[test]
fn tls_failures_towards_a_destination_are_retried_with_the_reason() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let k = certs::make(&tmp.path().join("certs").tap_mkdir());
    // Signed by a CA the gateway does not trust.
    let stranger = DestScp::start_free(
        &tmp.path().join("stranger"),
        &[
            "+tls",
            p(&k.other_server_key),
            p(&k.other_server_cert),
            "-ic",
        ],
    );
    // Requires a client certificate; the gateway has none for it.
    let strict = DestScp::start_free(
        &tmp.path().join("strict"),
        &[
            "+tls",
            p(&k.server_key),
            p(&k.server_cert),
            "+cf",
            p(&k.ca),
            "-rc",
        ],
    );
    let attempts = "max_attempts = 2\n";
    let toml = dest_block(
        "stranger",
        stranger.port,
        &format!("{FAST_RETRY}{attempts}{}", tls_table(&k.ca, None)),
    ) + &dest_block(
        "strict",
        strict.port,
        &format!("{FAST_RETRY}{attempts}{}", tls_table(&k.ca, None)),
    ) + &route_block("all", "", &["stranger", "strict"]);
    let data = tmp.path().join("data");
    let mut gw = start_gw(tmp.path(), &data, &toml, &[]);
    let objs = gen_objs(&tmp.path().join("src"), 42_000, 2);
    let files: Vec<&PathBuf> = objs.iter().map(|(_, f)| f).collect();
    storescu(gw.port, &files, &[]).assert_all_ok(&files);
    for (dest, reason) in [
        ("stranger", "not issued by a ca we trust"),
        // TLS 1.3: the server's refusal arrives after our side of the handshake (an alert on
        // the first read); TLS 1.2: during it. Either way the reason names the certificate.
        ("strict", "certificate"),
    ] {
        wait_settled(&data, dest, 0, 2, Duration::from_secs(60));
        for v in queue_list(&data, dest, Some("dead")) {
            let why = json_str(&v, "last_error").to_lowercase();
            assert!(why.contains("tls"), "{dest}: {v}");
            assert!(
                why.contains(reason),
                "{dest}: last_error lacks {reason:?}: {v}"
            );
            assert_eq!(json_u64(&v, "attempts"), 2, "{dest}: retried: {v}");
        }
    }
    assert!(stranger.files().is_empty() && strict.files().is_empty());
    gw.stop();
    let err = gw.stderr();
    assert!(
        err.lines()
            .any(|l| l.contains("WARN") && l.contains("not issued by a CA we trust")),
        "no WARN line with the reason:\n{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// The DICOM TLS listeners (store and worklist), on both I/O backends.

/// Starts the daemon with TLS listeners on both services; `mutual`: client certificates are
/// required (tls_client_ca_file) on both.
fn start_tls_gw(dir: &Path, io: &str, k: &TestCerts, mutual: bool) -> Daemon {
    start_tls_gw_with(dir, io, k, mutual, "")
}

/// [`start_tls_gw`] with more configuration (`extra`, TOML after the listeners' sections).
fn start_tls_gw_with(dir: &Path, io: &str, k: &TestCerts, mutual: bool, extra: &str) -> Daemon {
    let ca = if mutual {
        format!("tls_client_ca_file = {:?}\n", p(&k.ca))
    } else {
        String::new()
    };
    let toml = format!(
        "[store]\ntls_cert_file = {:?}\ntls_key_file = {:?}\n{ca}[worklist]\n{ca}{extra}",
        p(&k.server_cert),
        p(&k.server_key)
    );
    let cfg = write_gw_config(dir, &toml);
    let gw = Daemon::start(
        GW_BIN,
        dir.join("data"),
        io,
        &[
            "--config",
            p(&cfg),
            "--store-tls-listen",
            "127.0.0.1:0",
            "--worklist-tls-listen",
            "127.0.0.1:0",
        ],
    );
    assert!(
        gw.tls_port != 0 && gw.worklist_tls_port != 0,
        "no TLS listener lines on stdout:\n{}",
        gw.stdout()
    );
    gw
}

/// DCMTK TLS client flags: trust our CA, and present the client certificate or none (`+tla`
/// anonymous).
fn tls_flags(k: &TestCerts, client_cert: bool) -> Vec<String> {
    let mut f: Vec<String> = if client_cert {
        vec![
            "+tls".into(),
            p(&k.client_key).into(),
            p(&k.client_cert).into(),
        ]
    } else {
        vec!["+tla".into()]
    };
    f.extend(["+cf".into(), p(&k.ca).into(), "-rc".into()]);
    f
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `findscu -W` for every worklist item (none are seeded: the query must succeed with zero
/// matches).
fn findscu_w(port: u16, extra: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("findscu");
    cmd.args(["-W", "-v", "-aec", "DICOM_GW", "-k", "PatientName="])
        .args(extra)
        .arg("127.0.0.1")
        .arg(port.to_string());
    let (out, timed_out) = run_timeout(&mut cmd, Duration::from_secs(30));
    assert!(!timed_out, "findscu timed out");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), log)
}

fn echo_ok(port: u16, extra: &[&str]) -> (bool, String) {
    let o = echoscu(port, extra);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

/// echo, store and worklist query over TLS on both services, with the client as given.
fn all_services_over_tls(gw: &Daemon, dir: &Path, flags: &[&str]) {
    for port in [gw.tls_port, gw.worklist_tls_port] {
        let (ok, log) = echo_ok(port, flags);
        assert!(
            ok,
            "echoscu +tls on port {port} failed:\n{log}\n{}",
            gw.stderr()
        );
    }
    let objs = gen_objs(dir, 43_000 + gw.tls_port as u32 % 500 * 4, 2);
    let files: Vec<&PathBuf> = objs.iter().map(|(_, f)| f).collect();
    storescu(gw.tls_port, &files, flags).assert_all_ok(&files);
    for (spec, sent) in &objs {
        assert!(
            same_dataset(spec.settled_path(&gw.data_dir), sent),
            "stored over TLS: dataset differs"
        );
    }
    let (ok, log) = findscu_w(gw.worklist_tls_port, flags);
    assert!(
        ok && log.contains("Final Find Response"),
        "findscu -W +tls failed:\n{log}"
    );
}

gwtest!(
    dcmtk_clients_over_tls_with_a_server_certificate,
    |io: &str| {
        require_dcmtk();
        let tmp = tempfile::tempdir().unwrap();
        let k = certs::make(&tmp.path().join("certs").tap_mkdir());
        let mut gw = start_tls_gw(tmp.path(), io, &k, false);
        let f = tls_flags(&k, false);
        all_services_over_tls(&gw, &tmp.path().join("src"), &strs(&f));
        // A client that does not trust the gateway's CA refuses it.
        let (ok, _) = echo_ok(gw.tls_port, &["+tla", "+cf", p(&k.other_ca), "-rc"]);
        assert!(
            !ok,
            "echoscu accepted a server certificate from an untrusted CA"
        );
        gw.stop();
    }
);

gwtest!(dcmtk_clients_over_mutual_tls, |io: &str| {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let k = certs::make(&tmp.path().join("certs").tap_mkdir());
    let mut gw = start_tls_gw(tmp.path(), io, &k, true);
    let f = tls_flags(&k, true);
    all_services_over_tls(&gw, &tmp.path().join("src"), &strs(&f));
    // Without a certificate, or with one from another CA: refused on both services.
    let anonymous = tls_flags(&k, false);
    let stranger = [
        "+tls",
        p(&k.other_client_key),
        p(&k.other_client_cert),
        "+cf",
        p(&k.ca),
        "-rc",
    ];
    for port in [gw.tls_port, gw.worklist_tls_port] {
        let (ok, log) = echo_ok(port, &strs(&anonymous));
        assert!(
            !ok,
            "a client without a certificate was served on {port}:\n{log}"
        );
        let (ok, log) = echo_ok(port, &stranger);
        assert!(
            !ok,
            "a client certificate from another CA was accepted on {port}:\n{log}"
        );
    }
    // Still serving.
    let (ok, log) = echo_ok(gw.tls_port, &strs(&f));
    assert!(ok, "{log}");
    let err = gw.stderr();
    assert!(
        err.lines()
            .any(|l| l.contains("WARN") && l.contains("TLS") && l.contains("127.0.0.1")),
        "no WARN line naming the peer for the refused handshakes:\n{err}"
    );
    gw.stop();
});

gwtest!(
    wrong_protocol_on_either_port_fails_cleanly_and_the_daemon_keeps_serving,
    |io: &str| {
        require_dcmtk();
        let tmp = tempfile::tempdir().unwrap();
        let k = certs::make(&tmp.path().join("certs").tap_mkdir());
        let mut gw = start_tls_gw(tmp.path(), io, &k, false);
        let f = tls_flags(&k, false);
        for (plain, tls) in [
            (gw.port, gw.tls_port),
            (gw.worklist_port, gw.worklist_tls_port),
        ] {
            // A plain client on the TLS port.
            let (ok, log) = echo_ok(tls, &[]);
            assert!(!ok, "plain echoscu succeeded on the TLS port {tls}:\n{log}");
            // A TLS client on the plain port.
            let (ok, log) = echo_ok(plain, &strs(&f));
            assert!(
                !ok,
                "echoscu +tls succeeded on the plain port {plain}:\n{log}"
            );
            // Both keep serving.
            let (ok, log) = echo_ok(plain, &[]);
            assert!(ok, "plain echoscu after the mix-up:\n{log}");
            let (ok, log) = echo_ok(tls, &strs(&f));
            assert!(ok, "echoscu +tls after the mix-up:\n{log}");
        }
        let err = gw.stderr();
        let warns: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("TLS"))
            .collect();
        assert!(
            warns.iter().any(|l| l.contains("ClientHello")),
            "no WARN line for the TLS ClientHello on a plain port:\n{err}"
        );
        assert!(
            warns.len() >= 4,
            "expected a WARN line per mix-up (2 per service):\n{err}"
        );
        assert!(gw.is_running());
        gw.stop();
    }
);

// ---------------------------------------------------------------------------------------------
// `dicom-gw scu … --tls`: our own SCU commands against the daemon's TLS listeners.

/// Every `scu` command speaks DICOM TLS with `--tls`: echo, store, find, get, commit on the
/// store listener and mwl on the worklist's; the peer's certificate is verified (another
/// CA, another name: exit 2 before anything is sent), a client certificate is presented
/// where the daemon requires one, and unusable flags are usage errors (exit 2).
#[test]
fn scu_commands_speak_dicom_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let k = certs::make(&tmp.path().join("certs").tap_mkdir());
    let mut gw = start_tls_gw(&tmp.path().join("one").tap_mkdir(), "epoll", &k, false);
    let tls_port = gw.tls_port.to_string();
    let wl_port = gw.worklist_tls_port.to_string();
    let host = "127.0.0.1";
    let with_ca = |ca: &Path, rest: &[&str]| -> Vec<String> {
        ["--aec", "DICOM_GW", "--tls", "--tls-ca", p(ca)]
            .iter()
            .chain(rest)
            .map(|s| (*s).to_owned())
            .collect()
    };
    let run = |cmd: &str, args: Vec<String>| {
        let mut all = vec![cmd];
        all.extend(args.iter().map(String::as_str));
        gw_scu(&all)
    };

    let (code, out, err) = run("echo", with_ca(&k.ca, &[host, &tls_port]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"0000\""), "{out}");

    // Untrusted CA, a name the certificate does not carry, plain DICOM on the TLS port.
    let (code, _, err) = run("echo", with_ca(&k.other_ca, &[host, &tls_port]));
    assert_eq!(
        code, 2,
        "an untrusted server certificate was accepted: {err}"
    );
    assert!(err.to_lowercase().contains("tls"), "{err}");
    let (code, _, err) = run(
        "echo",
        with_ca(
            &k.ca,
            &["--tls-server-name", "pacs.example", host, &tls_port],
        ),
    );
    assert_eq!(
        code, 2,
        "a certificate for another name was accepted: {err}"
    );
    let (code, _, _) = gw_scu(&["echo", "--timeout", "5", host, &tls_port]);
    assert_eq!(code, 2, "plain DICOM was answered on the TLS port");

    // store, then find and get what was stored, and commit to it.
    let objs = gen_objs(&tmp.path().join("src"), 47_000, 2);
    let files: Vec<&str> = objs.iter().map(|(_, f)| p(f)).collect();
    let mut store_args = vec![host, tls_port.as_str()];
    store_args.extend(&files);
    let (code, out, err) = run("store", with_ca(&k.ca, &store_args));
    assert_eq!(code, 0, "{out}{err}");
    for (spec, sent) in &objs {
        assert!(
            same_dataset(spec.settled_path(&gw.data_dir), sent),
            "stored over TLS by scu store: dataset differs"
        );
    }
    let study = &objs[0].0.study_instance_uid;
    let study_key = format!("StudyInstanceUID={study}");
    let level = "QueryRetrieveLevel=STUDY";
    let (code, out, err) = run(
        "find",
        with_ca(&k.ca, &["-k", level, "-k", &study_key, host, &tls_port]),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(study.as_str()), "{out}");
    let od = tmp.path().join("got").tap_mkdir();
    let (code, out, err) = run(
        "get",
        with_ca(
            &k.ca,
            &[
                "-k",
                level,
                "-k",
                &study_key,
                "--od",
                p(&od),
                host,
                &tls_port,
            ],
        ),
    );
    assert_eq!(code, 0, "{out}{err}");
    // (Each generated object has its own study.)
    let (spec, sent) = &objs[0];
    let got = od.join(format!("{}.dcm", spec.sop_instance_uid));
    assert!(same_dataset(&got, sent), "C-GET over TLS: {got:?} differs");
    let mut commit_args = vec!["--aet", "MODALITY1", host, tls_port.as_str()];
    commit_args.extend(&files);
    let (code, out, err) = run("commit", with_ca(&k.ca, &commit_args));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"via\": \"same\""), "{out}");
    let (code, out, err) = run(
        "mwl",
        with_ca(&k.ca, &["-k", "PatientName=", host, &wl_port]),
    );
    assert_eq!(code, 0, "{out}{err}");

    // Usage errors: --tls without a CA, a CA file that does not exist, a certificate
    // without its key, a TLS N-ACTION with a plain report listener.
    let (code, _, err) = gw_scu(&["echo", "--tls", host, &tls_port]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--tls-ca"), "{err}");
    let missing = tmp.path().join("no-such-ca.pem");
    let (code, _, err) = run("echo", with_ca(&missing, &[host, &tls_port]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no-such-ca.pem"), "{err}");
    let (code, _, err) = run("find", with_ca(&missing, &["-k", level, host, &tls_port]));
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(
        "echo",
        with_ca(&k.ca, &["--tls-cert", p(&k.client_cert), host, &tls_port]),
    );
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(
        "commit",
        with_ca(&k.ca, &["--port", "1", host, &tls_port, files[0]]),
    );
    assert_eq!(
        code, 2,
        "a TLS report listener without a certificate: {err}"
    );
    assert!(err.contains("--tls-cert"), "{err}");
    gw.stop();

    // Mutual TLS: refused without our certificate, served with it.
    let mut gw = start_tls_gw(&tmp.path().join("two").tap_mkdir(), "epoll", &k, true);
    let tls_port = gw.tls_port.to_string();
    let (code, _, err) = run("echo", with_ca(&k.ca, &[host, &tls_port]));
    assert_eq!(code, 2, "served without a client certificate: {err}");
    let client = [
        "--tls-cert",
        p(&k.client_cert),
        "--tls-key",
        p(&k.client_key),
        host,
        &tls_port,
    ];
    let (code, out, err) = run("echo", with_ca(&k.ca, &client));
    assert_eq!(code, 0, "{out}{err}");
    gw.stop();
}

/// `scu commit --tls --port`: the report comes on a new association over DICOM TLS; the
/// listener presents our certificate and accepts only an SCP whose client certificate chains
/// to our CA (the daemon's destination for our AE title presents one). The same daemon
/// reporting without a client certificate gets no report through.
#[test]
fn scu_commit_takes_the_report_on_a_tls_listener() {
    let tmp = tempfile::tempdir().unwrap();
    let k = certs::make(&tmp.path().join("certs").tap_mkdir());
    let objs = gen_objs(&tmp.path().join("src"), 47_100, 1);
    let file = p(&objs[0].1).to_owned();
    for (name, client_cert) in [("with", true), ("without", false)] {
        let listener = free_port();
        let client = client_cert.then_some((k.client_cert.as_path(), k.client_key.as_path()));
        let extra = format!(
            "[storage_commitment]\nreport = \"new-association\"\n\n[[destinations]]\nname = \"modality1\"\nae_title = \"MODALITY1\"\nhost = \"127.0.0.1\"\nport = {listener}\n{}",
            tls_table(&k.ca, client)
        );
        let mut gw = start_tls_gw_with(
            &tmp.path().join(name).tap_mkdir(),
            "epoll",
            &k,
            false,
            &extra,
        );
        let tls_port = gw.tls_port.to_string();
        let (code, out, err) = gw_scu(&[
            "store",
            "--aec",
            "DICOM_GW",
            "--tls",
            "--tls-ca",
            p(&k.ca),
            "127.0.0.1",
            &tls_port,
            &file,
        ]);
        assert_eq!(code, 0, "{out}{err}");
        let (code, out, err) = gw_scu(&[
            "commit",
            "--aet",
            "MODALITY1",
            "--aec",
            "DICOM_GW",
            "--timeout",
            "8",
            "--tls",
            "--tls-ca",
            p(&k.ca),
            "--tls-cert",
            p(&k.server_cert),
            "--tls-key",
            p(&k.server_key),
            "--port",
            &listener.to_string(),
            "127.0.0.1",
            &tls_port,
            &file,
        ]);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
        if client_cert {
            assert_eq!(code, 0, "{out}{err}\n{}", gw.stderr());
            assert_eq!(v["report"]["via"], "new", "{v}");
            assert_eq!(v["report"]["event_type"], 1, "{v}");
        } else {
            assert_eq!(code, 1, "{out}{err}");
            assert!(
                v["report"].is_null(),
                "a report came from an unauthenticated SCP: {v}"
            );
        }
        gw.stop();
    }
}
