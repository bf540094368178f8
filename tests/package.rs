//! The appliance package (issue 16): the systemd units' sandbox (`systemd-analyze security`),
//! the Prometheus alert rules (`promtool check rules`, `promtool test rules`), the Grafana
//! dashboard against a live `/metrics` scrape, and the Debian package itself: built by
//! `packaging/build-deb.sh` (a release build: reused while newer than the sources), its
//! contents and maintainer scripts (`dpkg-deb -c`/`-I`), lintian, then installed on this
//! machine (`dpkg -i`; only as root under `CI=true`), `check-config`, the unit's `ExecStart`
//! run as the service user with systemd's readiness protocol, a C-STORE, an upgrade (config
//! and data kept), removal and purge (data kept).

mod util;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use util::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Whether `tool` is on PATH; if not, fails under `CI=true` (`.ci/run` installs it) and
/// otherwise prints why the test is skipped.
fn have(tool: &str, package: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        assert!(
            !ci(),
            "{tool} is missing (Debian package {package}) and CI=true"
        );
        eprintln!("SKIPPED: {tool} not found (install the Debian package {package})");
    }
    found
}

fn run(cmd: &mut Command) -> std::process::Output {
    let desc = format!("{cmd:?}");
    let (out, timed_out) = run_timeout(cmd, Duration::from_secs(600));
    assert!(!timed_out, "{desc} timed out");
    out
}

#[track_caller]
fn run_ok(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{desc}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn packaging() -> PathBuf {
    Path::new(ROOT).join("packaging")
}

/// `systemd-analyze security --offline=true` ≤ 1.6 for both units, and the settings the
/// issue asks for are there (readiness, watchdog, one capability, limits, setpriority allowed).
#[test]
fn both_units_are_sandboxed_with_exposure_at_most_1_6() {
    if !have("systemd-analyze", "systemd") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let all = std::fs::read_to_string(packaging().join("dicom-gw.service")).unwrap();
    let template = std::fs::read_to_string(packaging().join("dicom-gw@.service")).unwrap();
    // The template is analysed as the instances it is used as.
    let units = [
        ("dicom-gw.service", &all),
        ("dicom-gw@store.service", &template),
        ("dicom-gw@worklist.service", &template),
    ];
    for (name, text) in units {
        for want in [
            "Type=notify",
            "WatchdogSec=",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE\n",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n",
            "TasksMax=",
            "MemoryMax=",
            "LimitNOFILE=",
            "User=dicom-gw",
        ] {
            assert!(text.contains(want), "{name} lacks {want:?}");
        }
        for line in text.lines() {
            if let Some(deny) = line.strip_prefix("SystemCallFilter=~") {
                assert!(
                    !deny.split_whitespace().any(|s| s == "@resources" || s == "setpriority"),
                    "{name} denies setpriority, which lowers the API and worklist threads' priority: {line}"
                );
            }
        }
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = run(Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&path));
        let text_out = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let level: f64 = text_out
            .lines()
            .find_map(|l| {
                let rest = l.split("Overall exposure level for ").nth(1)?;
                rest.split(": ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no exposure level for {name} in:\n{text_out}"));
        eprintln!("{name}: exposure {level}");
        assert!(level <= 1.6, "{name}: exposure {level} > 1.6\n{text_out}");
    }
    let i = template
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .unwrap();
    assert!(i.contains("--only %i"), "{i}");
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    if !have("promtool", "prometheus") {
        return;
    }
    run_ok(
        Command::new("promtool")
            .args(["check", "rules", "prometheus-alerts.yml"])
            .current_dir(packaging()),
    );
    let out = run_ok(
        Command::new("promtool")
            .args(["test", "rules", "prometheus-alerts.test.yml"])
            .current_dir(packaging()),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Every metric name in the rules' and the dashboard's expressions.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("dicomgw_") {
        let start = i + pos;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        out.insert(text[start..end].to_owned());
        i = end;
    }
    out
}

#[test]
fn every_metric_the_dashboard_and_alerts_use_is_in_a_live_scrape() {
    require_dcmtk();
    let dash_text = std::fs::read_to_string(packaging().join("grafana-dashboard.json")).unwrap();
    let dash: Value = serde_json::from_str(&dash_text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    fn collect(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        _ => collect(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    collect(&dash["panels"], &mut exprs);
    assert!(exprs.len() >= 15, "panels with queries: {}", exprs.len());
    let mut used = metric_names(&exprs.join("\n"));
    let rules = std::fs::read_to_string(packaging().join("prometheus-alerts.yml")).unwrap();
    used.extend(metric_names(&rules));
    for want in [
        "dicomgw_instances_received_total",
        "dicomgw_cstore_total",
        "dicomgw_cstore_duration_seconds_bucket",
        "dicomgw_commit_batch_objects_sum",
        "dicomgw_queue_jobs",
        "dicomgw_forward_duration_seconds_bucket",
        "dicomgw_worklist_find_total",
        "dicomgw_disk_free_bytes",
        "dicomgw_ready",
    ] {
        assert!(used.contains(want), "the dashboard shows {want}");
    }

    // A daemon that received objects and forwarded them, and answered a worklist query.
    let tmp = tempfile::tempdir().unwrap();
    let pacs = Storescp::start(tmp.path().join("pacs"), &[]);
    let toml = dest_block("pacs", pacs.port, "") + &route_block("all", "", &["pacs"]);
    let data = tmp.path().join("data");
    let mut gw = start_gw(tmp.path(), &data, &toml, &[]);
    let files: Vec<PathBuf> = (1..=3)
        .map(|i| {
            let f = tmp.path().join(format!("{i}.dcm"));
            gen_part10(&f, &ObjSpec::new(i)).unwrap();
            f
        })
        .collect();
    storescu(gw.port, &files, &[]).assert_all_ok(&files);
    pacs.wait_for_files(3, Duration::from_secs(60));
    let (out, _) = run_timeout(
        Command::new("findscu").args([
            "-W",
            "-aec",
            "DICOM_GW",
            "-k",
            "PatientName",
            "127.0.0.1",
            &gw.worklist_port.to_string(),
        ]),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "findscu: {out:?}");
    let scrape = wait_for(
        "forwarding and worklist metrics",
        Duration::from_secs(30),
        || {
            let (code, body) = http_json(gw.http_port, "GET", "/metrics", None, None);
            let text = body.as_str().unwrap_or_default().to_owned();
            if code == 200 && text.contains("dicomgw_forward_duration_seconds_bucket{") {
                Ok(text)
            } else {
                Err(text)
            }
        },
    );
    let exposed: std::collections::BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = used
        .iter()
        .filter(|m| !exposed.contains(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics used by the dashboard or the alerts but not exposed: {missing:?}\n{scrape}"
    );
    assert!(scrape.contains("\ndicomgw_ready 1\n"), "{scrape}");
    assert!(
        scrape.contains("\ndicomgw_disk_high_water_ratio 0.95\n"),
        "{scrape}"
    );
    gw.stop();
}

// ---------------------------------------------------------------------------------------
// The Debian package.

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join("target"))
}

fn newest_mtime(dir: &Path, newest: &mut SystemTime) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(md) = e.metadata() else { continue };
        if md.is_dir() {
            newest_mtime(&p, newest);
        } else if let Ok(m) = md.modified() {
            *newest = (*newest).max(m);
        }
    }
}

/// Builds the .deb with `packaging/build-deb.sh` unless one newer than every source exists.
fn deb_path() -> PathBuf {
    let cargo = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap();
    let version = cargo
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("the package version")
        .to_owned();
    let arch = run_ok(Command::new("dpkg").arg("--print-architecture"))
        .trim()
        .to_owned();
    let deb = target_dir()
        .join("debian")
        .join(format!("dicom-gw_{version}_{arch}.deb"));
    let mut newest = SystemTime::UNIX_EPOCH;
    for d in ["src", "packaging"] {
        newest_mtime(&Path::new(ROOT).join(d), &mut newest);
    }
    for f in [
        "Cargo.toml",
        "Cargo.lock",
        "README.md",
        "docs/operations.md",
    ] {
        if let Ok(m) = std::fs::metadata(Path::new(ROOT).join(f)).and_then(|m| m.modified()) {
            newest = newest.max(m);
        }
    }
    let fresh = std::fs::metadata(&deb)
        .and_then(|m| m.modified())
        .is_ok_and(|m| m > newest);
    if fresh {
        eprintln!("reusing {} (newer than the sources)", deb.display());
    } else {
        let t = Instant::now();
        run_ok(Command::new(Path::new(ROOT).join("packaging/build-deb.sh")).current_dir(ROOT));
        eprintln!(
            "built {} in {:.0} s (release build included)",
            deb.display(),
            t.elapsed().as_secs_f64()
        );
    }
    assert!(deb.is_file(), "{} was not built", deb.display());
    deb
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// Splits a unit's command line (no quoting is used in ours; checked).
fn exec_start(unit: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    assert!(!line.contains(['"', '\'', '%', '$']), "{line}");
    line.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn the_debian_package_builds_installs_runs_upgrades_and_purges() {
    if !have("dpkg-deb", "dpkg") {
        return;
    }
    require_dcmtk();
    let deb = deb_path();

    // Contents: every file where Debian and the units expect it, owned by root.
    let listing = run_ok(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for want in [
        "./usr/bin/dicom-gw",
        "./etc/dicom-gw/dicom-gw.toml",
        "./etc/dicom-gw/dicom-gw@store.toml",
        "./etc/dicom-gw/dicom-gw@worklist.toml",
        "./lib/systemd/system/dicom-gw.service",
        "./lib/systemd/system/dicom-gw@.service",
        "./usr/lib/sysusers.d/dicom-gw.conf",
        "./usr/lib/tmpfiles.d/dicom-gw.conf",
        "./usr/share/man/man1/dicom-gw.1.gz",
        "./usr/share/dicom-gw/grafana-dashboard.json",
        "./usr/share/dicom-gw/prometheus-alerts.yml",
        "./usr/share/doc/dicom-gw/copyright",
        "./usr/share/doc/dicom-gw/changelog.gz",
        "./usr/share/doc/dicom-gw/operations.md",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!(" {want}"))),
            "{want} is not in the package:\n{listing}"
        );
    }
    for l in listing.lines() {
        assert!(l.contains(" root/root "), "not owned by root: {l}");
    }
    assert!(
        !listing.contains("./var/lib/dicom-gw"),
        "the data directory comes from tmpfiles.d, not the package"
    );
    let info = run_ok(Command::new("dpkg-deb").arg("-I").arg(&deb));
    for want in [
        "Package: dicom-gw",
        "Depends: libc6",
        " postinst",
        " prerm",
        " postrm",
        " conffiles",
    ] {
        assert!(info.contains(want), "dpkg-deb -I lacks {want:?}:\n{info}");
    }
    let field = |f: &str| run_ok(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg(f));
    assert_eq!(field("Package").trim(), "dicom-gw");
    let conffiles = run_ok(
        Command::new("dpkg-deb")
            .arg("-I")
            .arg(&deb)
            .arg("conffiles"),
    );
    assert!(
        conffiles
            .lines()
            .any(|l| l == "/etc/dicom-gw/dicom-gw.toml"),
        "{conffiles}"
    );
    let postinst = run_ok(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("postinst"));
    assert!(postinst.contains("systemd-sysusers /usr/lib/sysusers.d/dicom-gw.conf"));
    assert!(
        postinst.contains("try-restart"),
        "an upgrade restarts what runs"
    );
    let postrm = run_ok(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("postrm"));
    assert!(
        postrm.contains("DICOM_GW_PURGE_DATA"),
        "purge keeps the data unless asked"
    );

    if have("lintian", "lintian") {
        let out = run(Command::new("lintian")
            .args(["--fail-on", "error"])
            .arg(&deb));
        let text = String::from_utf8_lossy(&out.stdout);
        eprintln!("lintian:\n{text}");
        assert!(out.status.success(), "lintian reports errors:\n{text}");
        assert!(!text.lines().any(|l| l.starts_with("E: ")), "{text}");
    }

    if !(is_root() && ci()) {
        eprintln!(
            "SKIPPED: installing the package needs root and CI=true (it runs dpkg -i on this \
             machine); contents, maintainer scripts and lintian were checked"
        );
        return;
    }
    install_run_and_purge(&deb);
}

fn install_run_and_purge(deb: &Path) {
    let data = Path::new("/var/lib/dicom-gw");
    // A previous run's leftovers (this test's own; purge keeps data).
    let _ = run(Command::new("dpkg").args(["--purge", "dicom-gw"]));
    let _ = std::fs::remove_dir_all(data);

    run_ok(Command::new("dpkg").arg("-i").arg(deb));
    let pw = run_ok(Command::new("getent").args(["passwd", "dicom-gw"]));
    let uid: u32 = pw.split(':').nth(2).unwrap().parse().unwrap();
    assert_ne!(uid, 0);
    assert!(pw.contains(":/var/lib/dicom-gw:"), "{pw}");
    let md = std::fs::metadata(data).expect("tmpfiles.d made the data directory");
    assert_eq!((md.uid(), md.mode() & 0o7777), (uid, 0o750));
    for cfg in [
        "dicom-gw.toml",
        "dicom-gw@store.toml",
        "dicom-gw@worklist.toml",
    ] {
        run_ok(
            Command::new("/usr/bin/dicom-gw")
                .arg("check-config")
                .arg(format!("/etc/dicom-gw/{cfg}")),
        );
    }

    // Run the unit's ExecStart as the service user with only CAP_NET_BIND_SERVICE (what
    // User= and AmbientCapabilities= do), speaking systemd's readiness protocol.
    let unit = std::fs::read_to_string("/lib/systemd/system/dicom-gw.service").unwrap();
    let mut argv = exec_start(&unit);
    assert!(
        port_free(104),
        "port 104 is taken on this machine: the packaged store port cannot be checked"
    );
    let mut overridden = Vec::new();
    for (port, flag) in [(4243, "--worklist-listen"), (8080, "--http-listen")] {
        if !port_free(port) {
            // Another process on this shared machine holds it: the test cannot use it.
            overridden.push(port);
            argv.push(flag.into());
            argv.push("127.0.0.1:0".into());
        }
    }
    if !overridden.is_empty() {
        eprintln!("NOTE: ports {overridden:?} are taken on this machine; ExecStart got overrides");
    }
    let sock_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(sock_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let notify_path = sock_dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o777)).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut child = Command::new("setpriv")
        .args([
            "--reuid=dicom-gw",
            "--regid=dicom-gw",
            "--init-groups",
            "--inh-caps=-all,+net_bind_service",
            "--ambient-caps=-all,+net_bind_service",
            "--bounding-set=-all,+net_bind_service",
            "--",
        ])
        .args(&argv)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "1000000")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv");
    let pid = child.id();
    let (stderr, _h) = drain(child.stderr.take().unwrap());
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let lines =
        std::thread::spawn(move || stdout.lines().map_while(Result::ok).collect::<Vec<_>>());
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !got.iter().any(|m: &String| m.starts_with("READY=1")) {
        assert!(
            Instant::now() < deadline,
            "no READY=1 within 60 s; got {got:?}\n{}",
            String::from_utf8_lossy(&stderr.lock().unwrap())
        );
        match notify.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) => panic!(
                "no notification: {e}; got {got:?}\n{}",
                String::from_utf8_lossy(&stderr.lock().unwrap())
            ),
        }
    }
    let ready = got.iter().find(|m| m.starts_with("READY=1")).unwrap();
    assert!(ready.contains(&format!("MAINPID={pid}")), "{ready}");
    // Then watchdog pings (WatchdogSec / 2).
    let n = notify.recv(&mut buf).expect("a watchdog ping");
    assert_eq!(&buf[..n], b"WATCHDOG=1");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|u| u == uid.to_string()),
        "runs as dicom-gw: {uid_line}"
    );

    // Store an object on the packaged port 104 (bound through the ambient capability).
    let store_port = 104;
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("a.dcm");
    let spec = ObjSpec::new(1);
    gen_part10(&f, &spec).unwrap();
    storescu(store_port, &[&f], &[]).assert_all_ok(&[&f]);
    let stored = spec.settled_path(data);
    let md = std::fs::metadata(&stored).expect("the object is stored");
    assert_eq!((md.uid(), md.mode() & 0o777), (uid, 0o640));
    // The CLI reaches it as root through the control socket.
    let token = run_ok(Command::new("/usr/bin/dicom-gw").args([
        "token",
        "create",
        "--data-dir",
        "/var/lib/dicom-gw",
        "--role",
        "viewer",
    ]));
    assert!(token.contains("dgw_"), "{token}");

    // SIGTERM: a clean stop, announced.
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let st = wait_timeout(&mut child, Duration::from_secs(60)).expect("the daemon stops");
    assert!(
        st.success(),
        "{st}\n{}",
        String::from_utf8_lossy(&stderr.lock().unwrap())
    );
    let out_lines = lines.join().unwrap();
    assert!(
        out_lines
            .iter()
            .any(|l| l.starts_with("dicom-gw: store listening on ")),
        "{out_lines:?}"
    );
    let mut rest = Vec::new();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while let Ok(n) = notify.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(rest.iter().any(|m| m == "STOPPING=1"), "{rest:?}");

    // Upgrade to a newer version (the same program, packaged as version+upgrade1): the
    // operator's config and the data are kept.
    let conf = Path::new("/etc/dicom-gw/dicom-gw.toml");
    let mut edited = std::fs::read_to_string(conf).unwrap();
    edited.push_str("# edited by the operator\n");
    std::fs::write(conf, &edited).unwrap();
    let old_version = run_ok(Command::new("dpkg-query").args(["-W", "-f=${Version}", "dicom-gw"]));
    let new_version = format!("{old_version}+upgrade1");
    let up_dir = tempfile::tempdir().unwrap();
    let up_bin = up_dir.path().join("dicom-gw");
    std::fs::copy("/usr/bin/dicom-gw", &up_bin).unwrap();
    let built = run_ok(
        Command::new(packaging().join("build-deb.sh"))
            .arg("--binary")
            .arg(&up_bin)
            .env("CARGO_TARGET_DIR", up_dir.path())
            .env("DICOM_GW_DEB_VERSION", &new_version)
            .current_dir(ROOT),
    );
    let up_deb = PathBuf::from(built.lines().last().unwrap().trim());
    let out = run_ok(Command::new("dpkg").arg("-i").arg(&up_deb));
    assert!(
        out.contains(&format!(
            "Unpacking dicom-gw ({new_version}) over ({old_version})"
        )),
        "{out}"
    );
    let now = run_ok(Command::new("dpkg-query").args(["-W", "-f=${Version}", "dicom-gw"]));
    assert_eq!(now, new_version);
    assert_eq!(
        std::fs::read_to_string(conf).unwrap(),
        edited,
        "config kept"
    );
    assert!(stored.exists(), "data kept across the upgrade");
    assert_eq!(std::fs::metadata(&stored).unwrap().uid(), uid, "owner kept");

    // Remove: the program goes, config and data stay.
    run_ok(Command::new("dpkg").args(["-r", "dicom-gw"]));
    assert!(!Path::new("/usr/bin/dicom-gw").exists());
    assert!(conf.exists(), "remove keeps conffiles");
    assert!(stored.exists(), "remove keeps the data");
    // Purge: the config goes, the data stays (unless DICOM_GW_PURGE_DATA=yes).
    let out = run(Command::new("dpkg").args(["--purge", "dicom-gw"]));
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was kept"),
        "purge says where the data is: {out:?}"
    );
    assert!(!conf.exists(), "purge removes the config");
    assert!(stored.exists(), "purge keeps the patient data");
    // This test's own data.
    std::fs::remove_dir_all(data).unwrap();
}
