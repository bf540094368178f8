//! The web console in a real browser: headless Chromium driven by Selenium against a running
//! daemon, with DCMTK `storescu` sending objects and DCMTK `storescp` as the destinations.
//!
//! One test walks the console the way an operator would: logs in as an admin created with
//! `dicom-gw user add`, checks the dashboard's count and the studies page after a storescu
//! load, narrows the list with a search, creates a destination (then checked through the API)
//! and echoes it, retries dead letters (a SOP class the first storescp refused) and sees them
//! delivered, then logs in as a viewer who sees no controls it may not use and whose forged
//! admin request is refused with 403. Screenshots of every page go to
//! `target/tmp/console-screens/`.

#[path = "util/browser.rs"]
mod browser;
mod util;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use util::*;

const BIN: &str = env!("CARGO_BIN_EXE_dicom-gw");
const PRIVATE_SOP_CLASS: &str = "1.2.826.0.1.3680043.10.999.77.1";
const ADMIN_PASSWORD: &str = "console admin password";
const VIEWER_PASSWORD: &str = "console viewer password";

fn user_add(data: &Path, name: &str, role: &str, password: &str) {
    let (out, timed_out) = run_timeout(
        Command::new(BIN)
            .args(["user", "add", "--data-dir"])
            .arg(data)
            .args(["--name", name, "--role", role])
            .env("DICOM_GW_PASSWORD", password),
        Duration::from_secs(60),
    );
    assert!(
        !timed_out && out.status.success(),
        "user add {name}: {out:?}"
    );
}

fn gen(dir: &Path, spec: &ObjSpec) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let f = dir.join(format!("{}.dcm", spec.sop_instance_uid));
    gen_part10(&f, spec).unwrap();
    f
}

#[test]
fn console_in_headless_chromium() {
    if !browser::require_chromium("console_in_headless_chromium") {
        return;
    }
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    // storescp without -pm refuses the private SOP class: those jobs become dead letters.
    let mut strict = DestScp::start(&tmp.path().join("pacs-strict"), port, &[]);
    let toml = format!("[store]\nextra_sop_classes = [\"{PRIVATE_SOP_CLASS}\"]\n\n")
        + &dest_block(
            "pacs",
            port,
            "max_associations = 1\nidle_release_seconds = 1\nretry_initial_seconds = 60\n\
             retry_max_seconds = 60\nmax_attempts = 20\n",
        )
        + &route_block("everything", "", &["pacs"]);
    let gw = start_gw(tmp.path(), &data, &toml, &[]);
    user_add(&data, "admin", "admin", ADMIN_PASSWORD);
    user_add(&data, "viewer", "viewer", VIEWER_PASSWORD);

    // Three patients, five instances; two of them of the private class.
    let src = tmp.path().join("src");
    let a = ObjSpec::new(1)
        .patient("ALPHA^ANNA", "PID-A")
        .modality("CT");
    let a2 = ObjSpec::new(2)
        .patient("ALPHA^ANNA", "PID-A")
        .same_series_as(&a);
    let b = ObjSpec::new(3).patient("BRAVO^BEN", "PID-B").modality("MR");
    let c1 = ObjSpec::new(4)
        .patient("CHARLIE^CORA", "PID-C")
        .sop_class(PRIVATE_SOP_CLASS);
    let c2 = ObjSpec::new(5)
        .patient("CHARLIE^CORA", "PID-C")
        .sop_class(PRIVATE_SOP_CLASS)
        .same_series_as(&c1);
    let plain: Vec<_> = [&a, &a2, &b].iter().map(|s| gen(&src, s)).collect();
    storescu(gw.port, &plain, &[]).assert_all_ok(&plain);
    let private: Vec<_> = [&c1, &c2].iter().map(|s| gen(&src, s)).collect();
    let cfg = tmp.path().join("storescu.cfg");
    std::fs::write(
        &cfg,
        format!(
            "[[TransferSyntaxes]]\n[ExplicitLE]\nTransferSyntax1 = LocalEndianExplicit\n\
             [[PresentationContexts]]\n[Priv]\nPresentationContext1 = {PRIVATE_SOP_CLASS}\\ExplicitLE\n\
             [[Profiles]]\n[Default]\nPresentationContexts = Priv\n"
        ),
    )
    .unwrap();
    storescu(
        gw.port,
        &private,
        &["-xf", cfg.to_str().unwrap(), "Default"],
    )
    .assert_all_ok(&private);
    let s = wait_settled(&data, "pacs", 3, 2, Duration::from_secs(30));
    assert_eq!(s.dead, 2, "{s:?}");

    // The destination is fixed: it now accepts any SOP class (same port).
    wait_all_closed_scp(&strict);
    strict.stop();
    let fixed = DestScp::start(&tmp.path().join("pacs-fixed"), port, &["-pm"]);

    let downloads = tmp.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let screens = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screens");
    let _ = std::fs::remove_dir_all(&screens);
    std::fs::create_dir_all(&screens).unwrap();
    let out = browser::run_browser_script(
        SCRIPT,
        tmp.path(),
        &[
            ("BASE", format!("http://127.0.0.1:{}", gw.http_port)),
            ("SCREENS", screens.display().to_string()),
            ("ADMIN_PASSWORD", ADMIN_PASSWORD.into()),
            ("VIEWER_PASSWORD", VIEWER_PASSWORD.into()),
            ("EXPECT_INSTANCES", "5".into()),
            (
                "EXPECT_PATIENTS",
                "ALPHA^ANNA,BRAVO^BEN,CHARLIE^CORA".into(),
            ),
            ("ECHO_PORT", port.to_string()),
            ("DOWNLOADS", downloads.display().to_string()),
        ],
        Duration::from_secs(240),
    );
    eprintln!("{out}");
    let result: Value = serde_json::from_str(
        out.lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .expect("the script prints its result as JSON"),
    )
    .unwrap();
    assert_eq!(result["forged_status"], 403, "{result}");
    assert_eq!(result["search_rows"], 1, "{result}");

    // The downloaded file is the stored one, byte for byte.
    let got = std::fs::read(downloads.join(format!("{}.dcm", b.sop_instance_uid)))
        .expect("the console downloaded BRAVO's instance under its SOP Instance UID");
    assert_eq!(got, std::fs::read(b.settled_path(&data)).unwrap());

    // What the console did, seen through the API and by the destination.
    let token = cli_token(BIN, &data, "admin");
    let (code, dests) = http_json(
        gw.http_port,
        "GET",
        "/api/v1/destinations",
        Some(&token),
        None,
    );
    assert_eq!(code, 200, "{dests}");
    let echo = dests["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "echo-dest")
        .unwrap_or_else(|| panic!("echo-dest not in GET /destinations: {dests}"));
    assert_eq!(echo["port"], port, "{echo}");
    assert_eq!(echo["ae_title"], "ECHOSCP", "{echo}");
    let (code, wl) = http_json(gw.http_port, "GET", "/api/v1/worklist", Some(&token), None);
    assert_eq!(code, 200, "{wl}");
    let items = wl["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{wl}");
    assert_eq!(items[0]["status"], "CANCELED", "{wl}");
    assert_eq!(
        items[0]["dataset"]["00100010"]["Value"][0]["Alphabetic"], "DELTA^DORA",
        "{wl}"
    );
    // 3 delivered at once, 2 retried from the console, 2 more from the replay of their study.
    let s = wait_settled(&data, "pacs", 7, 0, Duration::from_secs(30));
    assert_eq!(s.dead, 0, "{s:?}");
    let got = fixed.by_uid();
    let want: BTreeSet<String> = [&c1, &c2]
        .iter()
        .map(|s| s.sop_instance_uid.clone())
        .collect();
    assert_eq!(
        got.keys().cloned().collect::<BTreeSet<_>>(),
        want,
        "the retried dead letters were not delivered"
    );
    for (uid, files) in &got {
        assert_eq!(
            files.len(),
            2,
            "{uid}: retried once and replayed once: {files:?}"
        );
    }
    for page in [
        "login",
        "dashboard",
        "studies",
        "study",
        "forwarding",
        "worklist",
        "audit",
        "users",
        "viewer-forwarding",
        "dashboard-dark",
        "dashboard-tablet",
    ] {
        let f = screens.join(format!("{page}.png"));
        assert!(
            std::fs::metadata(&f).is_ok_and(|m| m.len() > 1000),
            "no screenshot {}",
            f.display()
        );
    }
    drop(gw);
}

/// The endpoints the console added and the console's files, over plain HTTP (no browser):
/// `/` redirects, files are public with their types and the security headers (which every API
/// answer carries too), the C-ECHO test against DCMTK storescp and against a closed port, the
/// ingest history after a storescu load, the audit chain check, and the roles of each.
#[test]
fn console_endpoints_and_headers() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let scp = DestScp::start_free(&tmp.path().join("scp"), &[]);
    let down = free_port();
    let toml = dest_block("scp", scp.port, "max_associations = 1\n")
        + &dest_block("down", down, "connect_timeout_seconds = 2\n");
    let gw = start_gw(tmp.path(), &data, &toml, &[]);
    let http = gw.http_port;
    let admin = cli_token(BIN, &data, "admin");
    let operator = cli_token(BIN, &data, "operator");
    let viewer = cli_token(BIN, &data, "viewer");

    // The console's files: public, typed, with the security headers.
    let r = request(http, "GET", "/", None, None);
    assert_eq!(
        (r.status, r.header("location")),
        (302, Some("/ui/")),
        "{}",
        r.text()
    );
    let r = request(http, "GET", "/ui/", None, None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert!(r.header("etag").is_some());
    let page = r.text();
    let js = page
        .split('"')
        .find(|p| p.starts_with("app.js?v="))
        .unwrap_or_else(|| panic!("index.html names no versioned app.js:\n{page}"));
    let r = request(http, "GET", &format!("/ui/{js}"), None, None);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(r
        .header("cache-control")
        .unwrap_or("")
        .contains("immutable"));
    assert!(
        !r.text().contains("__V__"),
        "version placeholder left in app.js"
    );
    assert_eq!(request(http, "GET", "/ui/nope.js", None, None).status, 404);
    assert_eq!(request(http, "POST", "/ui/", None, None).status, 405);
    let api = request(http, "GET", "/api/v1/stats", Some(&viewer), None);
    for r in [&request(http, "GET", "/ui/", None, None), &api] {
        let csp = r.header("content-security-policy").unwrap_or("");
        for part in [
            "default-src 'self'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(part), "{}: CSP {csp:?} lacks {part}", r.what);
        }
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{}", r.what);
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{}",
            r.what
        );
        assert_eq!(
            r.header("referrer-policy"),
            Some("no-referrer"),
            "{}",
            r.what
        );
    }

    // C-ECHO: operator and up; the answer says what the destination did.
    let echo = |name: &str, token: &str| {
        request(
            http,
            "POST",
            &format!("/api/v1/destinations/{name}/echo"),
            Some(token),
            None,
        )
    };
    assert_eq!(echo("scp", &viewer).status, 403);
    let ok = echo("scp", &operator).ok(200);
    assert_eq!(ok["ok"], true, "{ok}");
    assert_eq!(ok["status"], "0000", "{ok}");
    assert!(ok["error"].is_null(), "{ok}");
    assert!(ok["elapsed_ms"].is_u64(), "{ok}");
    wait_for(
        "storescp to log the C-ECHO",
        Duration::from_secs(10),
        || {
            if scp.log().contains("Received Echo Request") {
                Ok(())
            } else {
                Err(scp.log())
            }
        },
    );
    let bad = echo("down", &admin).ok(200);
    assert_eq!(bad["ok"], false, "{bad}");
    assert!(bad["status"].is_null(), "{bad}");
    assert!(
        !bad["error"].as_str().unwrap_or("").is_empty(),
        "a failed echo names its reason: {bad}"
    );
    assert_eq!(echo("nope", &admin).status, 404);
    let r = request(
        http,
        "GET",
        "/api/v1/destinations/scp/echo",
        Some(&admin),
        None,
    );
    assert_eq!(r.status, 405, "{}", r.text());

    // The ingest history: a sample at start, and a live one that counts what came in.
    let src = tmp.path().join("src");
    let files: Vec<_> = (0..3).map(|i| gen(&src, &ObjSpec::new(70 + i))).collect();
    storescu(gw.port, &files, &[]).assert_all_ok(&files);
    let h = request(http, "GET", "/api/v1/stats/history", Some(&viewer), None).ok(200);
    assert_eq!(h["interval_seconds"], 10, "{h}");
    assert_eq!(h["capacity"], 360, "{h}");
    assert_eq!(h["now"]["instances"], 3, "{h}");
    assert!(h["now"]["bytes"].as_u64().unwrap() > 0, "{h}");
    let samples = h["samples"].as_array().unwrap();
    assert!(!samples.is_empty(), "no sample taken at start: {h}");
    assert!(samples[0]["instances_per_second"].is_null(), "{h}");
    let r = request(
        http,
        "GET",
        "/api/v1/stats/history?x=1",
        Some(&viewer),
        None,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        request(http, "GET", "/api/v1/stats/history", None, None).status,
        401
    );

    // The audit chain: admin only; intact, and as long as the log.
    let r = request(http, "GET", "/api/v1/audit/verify", Some(&operator), None);
    assert_eq!(r.status, 403, "{}", r.text());
    let v = request(http, "GET", "/api/v1/audit/verify", Some(&admin), None).ok(200);
    let log = request(http, "GET", "/api/v1/audit", Some(&admin), None).ok(200);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["entries"], log["total"], "{v} vs {log}");
    assert!(v["entries"].as_u64().unwrap() >= 3, "{v}");
    assert_eq!(v["head"].as_str().unwrap().len(), 64, "{v}");
    drop(gw);
}

/// Waits until every association storescp received has ended (released or aborted), so a
/// new storescp can take its port.
fn wait_all_closed_scp(scp: &DestScp) {
    wait_for(
        "storescp associations to end",
        Duration::from_secs(20),
        || {
            let log = scp.log();
            let (a, c) = (
                scp.associations(),
                scp.releases() + log.matches("Association Aborted").count(),
            );
            if a > 0 && a == c {
                Ok(())
            } else {
                Err(format!("{a} associations, {c} ended; log:\n{log}"))
            }
        },
    );
}

/// The browser side (Selenium, Python). Prints one JSON line with what it measured; any
/// failed expectation raises, which fails the test with the traceback.
const SCRIPT: &str = r#####"
import json, os, sys, time
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait, Select
from selenium.common.exceptions import StaleElementReferenceException

BASE = os.environ["BASE"]
SCREENS = os.environ["SCREENS"]
opts = webdriver.ChromeOptions()
opts.binary_location = os.environ["CHROMIUM"]
for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
          "--window-size=1280,900", "--disable-extensions", "--no-first-run"]:
    opts.add_argument(a)
opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
opts.add_experimental_option("prefs", {"download.default_directory": os.environ["DOWNLOADS"],
                                       "download.prompt_for_download": False})
d = webdriver.Chrome(service=Service(os.environ["CHROMEDRIVER"]), options=opts)
W = lambda t=20: WebDriverWait(d, t, poll_frequency=0.2,
                               ignored_exceptions=[StaleElementReferenceException])
result = {}

def shot(name):
    # The whole page: the window grows to the document's height for the picture.
    height = d.execute_script("return document.documentElement.scrollHeight")
    d.set_window_size(1280, min(max(900, height + 140), 4000))
    d.save_screenshot(os.path.join(SCREENS, name + ".png"))
    d.set_window_size(1280, 900)

def css(sel):
    return d.find_elements(By.CSS_SELECTOR, sel)

def wait_css(sel, t=20):
    return W(t).until(lambda d: css(sel) and css(sel)[0])

def text_of(sel):
    # The page re-renders lists as they refresh: an element found may be gone when read.
    try:
        e = css(sel)
        return e[0].text if e else ""
    except StaleElementReferenceException:
        return ""

def login(user, password):
    wait_css("#login-form")
    u = d.find_element(By.NAME, "username"); u.clear(); u.send_keys(user)
    p = d.find_element(By.NAME, "password"); p.clear(); p.send_keys(password)
    d.find_element(By.ID, "login-submit").click()
    W().until(lambda d: user in text_of("#whoami"))

def go(view):
    d.execute_script("location.hash = arguments[0]", "#/" + view)
    W().until(lambda d: d.find_element(By.ID, "main").get_attribute("data-view") == view)

try:
    d.get(BASE + "/")
    W().until(lambda d: d.current_url.endswith("/ui/"))
    wait_css("#login-form")
    assert not d.find_element(By.ID, "nav").is_displayed()
    shot("login")
    # A wrong password is refused on the page.
    u = d.find_element(By.NAME, "username"); u.send_keys("admin")
    d.find_element(By.NAME, "password").send_keys("not the password")
    d.find_element(By.ID, "login-submit").click()
    W().until(lambda d: "Wrong" in text_of("#login-error"))
    login("admin", os.environ["ADMIN_PASSWORD"])

    # Dashboard: the count of instances received.
    want = os.environ["EXPECT_INSTANCES"]
    W(30).until(lambda d: text_of("#stat-instances") == want)
    W().until(lambda d: text_of("#ready-state") == "ready")
    assert text_of("#io-backend") in ("epoll", "uring"), text_of("#io-backend")
    time.sleep(0.5)
    shot("dashboard")
    # The theme toggle: auto -> light -> dark.
    while text_of("#theme") != "Theme: dark":
        d.find_element(By.ID, "theme").click()
    bg = d.execute_script("return getComputedStyle(document.body).backgroundColor")
    assert bg in ("rgb(17, 20, 24)",), bg
    shot("dashboard-dark")
    # A tablet's width (portrait): the cards reflow, nothing needs sideways scrolling.
    d.set_window_size(820, 1180)
    overflow = d.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the dashboard is {overflow} px wider than a tablet"
    d.save_screenshot(os.path.join(SCREENS, "dashboard-tablet.png"))
    d.set_window_size(1280, 900)
    while text_of("#theme") != "Theme: auto":
        d.find_element(By.ID, "theme").click()

    # Studies: every stored patient, then a search narrows the list.
    go("studies")
    wait_css("#studies-table tbody tr[data-study]")
    names = sorted({e.text for e in css("#studies-table td.patient-name")})
    assert names == sorted(os.environ["EXPECT_PATIENTS"].split(",")), names
    shot("studies")
    f = d.find_element(By.NAME, "patient_name"); f.send_keys("bra*")
    d.find_element(By.ID, "search-submit").click()
    W().until(lambda d: len(css("#studies-table tbody tr[data-study]")) == 1)
    assert text_of("#studies-table td.patient-name") == "BRAVO^BEN"
    result["search_rows"] = len(css("#studies-table tbody tr[data-study]"))
    css("#studies-table tbody tr[data-study]")[0].click()
    W().until(lambda d: "No outstanding job" in text_of("#study-jobs") or css("#study-jobs tbody tr"))
    # A series, its instances, one instance's attributes.
    wait_css("#study-detail tr.clickable").click()
    W().until(lambda d: [b for b in css("#study-detail button") if b.text == "Details"])
    [b for b in css("#study-detail button") if b.text == "Details"][0].click()
    W().until(lambda d: "sop_class_uid" in text_of("#instance-detail"))
    shot("study")
    # Download the instance (a fetch with the token, saved by the browser).
    [b for b in css("#study-detail button") if b.text == "Download"][0].click()
    W(30).until(lambda d: [f for f in os.listdir(os.environ["DOWNLOADS"]) if f.endswith(".dcm")])

    # Forwarding: create a destination, echo it, retry the dead letters.
    go("forwarding")
    wait_css("tr[data-destination='pacs']")
    d.find_element(By.CSS_SELECTOR, "#dest-create summary").click()
    for k, v in [("name", "echo-dest"), ("ae_title", "ECHOSCP"), ("host", "127.0.0.1"),
                 ("port", os.environ["ECHO_PORT"]), ("max_associations", "1")]:
        e = d.find_element(By.ID, "dest-" + k); e.clear(); e.send_keys(v)
    d.find_element(By.ID, "dest-save").click()
    wait_css("tr[data-destination='echo-dest']")
    d.find_element(By.CSS_SELECTOR, "button[data-echo='echo-dest']").click()
    W(30).until(lambda d: text_of("[data-echo-result='echo-dest']").startswith("success")
                or text_of("[data-echo-result='echo-dest']").startswith("failed"))
    assert text_of("[data-echo-result='echo-dest']").startswith("success"), text_of("[data-echo-result='echo-dest']")
    Select(d.find_element(By.ID, "jobs-destination")).select_by_value("pacs")
    W().until(lambda d: len(css("#jobs tbody tr[data-job]")) == 2)
    reasons = [e.text for e in css("#jobs td.reason")]
    assert all(r for r in reasons), reasons
    shot("forwarding")
    d.find_element(By.CSS_SELECTOR, "button[data-retry-all='pacs']").click()
    W(30).until(lambda d: len(css("#jobs tbody tr[data-job]")) == 0)
    # Pause and resume a destination.
    d.find_element(By.CSS_SELECTOR, "button[data-pause='echo-dest']").click()
    W().until(lambda d: "paused" in text_of("tr[data-destination='echo-dest']"))
    d.find_element(By.CSS_SELECTOR, "button[data-pause='echo-dest']").click()
    W().until(lambda d: "running" in text_of("tr[data-destination='echo-dest']"))

    # Replay a study to a destination from the study's page.
    go("studies"); wait_css("#studies-table tbody tr[data-study]")
    d.find_element(By.NAME, "patient_name").send_keys("charlie*")
    d.find_element(By.ID, "search-submit").click()
    W().until(lambda d: len(css("#studies-table tbody tr[data-study]")) == 1
              and text_of("#studies-table td.patient-name") == "CHARLIE^CORA")
    css("#studies-table tbody tr[data-study]")[0].click()
    W().until(lambda d: css("#replay-destination option[value='pacs']"))
    Select(d.find_element(By.ID, "replay-destination")).select_by_value("pacs")
    d.find_element(By.ID, "replay-submit").click()
    W().until(lambda d: "Replay queued" in text_of("#flash"))

    # Worklist: schedule an item, then cancel it.
    go("worklist"); wait_css("#worklist-items table")
    d.find_element(By.CSS_SELECTOR, "#wl-create summary").click()
    for k, v in [("name", "DELTA^DORA"), ("pid", "PID-D"), ("acc", "ACC-D1"), ("mod", "CT"),
                 ("ae", "CT_ROOM_1"), ("desc", "Chest CT")]:
        d.find_element(By.ID, "f-" + k).send_keys(v)
    d.execute_script("arguments[0].value = '2030-01-02'; arguments[1].value = '09:30'",
                     d.find_element(By.ID, "f-date"), d.find_element(By.ID, "f-time"))
    d.find_element(By.ID, "wl-submit").click()
    W().until(lambda d: text_of("#worklist-items td.wl-status") == "SCHEDULED")
    assert "DELTA^DORA" in text_of("#worklist-items tr[data-wl]")
    shot("worklist")
    d.find_element(By.CSS_SELECTOR, "#worklist-items button[data-cancel]").click()
    W().until(lambda d: text_of("#worklist-items td.wl-status") == "CANCELED")
    go("audit")
    W().until(lambda d: "chain intact" in text_of("#audit-verify"))
    shot("audit")
    go("users"); wait_css("#users tr[data-user='viewer']"); shot("users")

    # Viewer: no controls it may not use, and the API refuses a forged admin request.
    d.find_element(By.ID, "logout").click()
    login("viewer", os.environ["VIEWER_PASSWORD"])
    for link in ("audit", "users"):
        assert not d.find_element(By.CSS_SELECTOR, f"nav a[data-view='{link}']").is_displayed(), link
    go("forwarding")
    wait_css("tr[data-destination='pacs']")
    for sel in ("#dest-create", "[data-edit]", "[data-delete]", "[data-echo]", "[data-pause]",
                "[data-retry-all]", "[data-retry-job]", "#routes-save"):
        assert not css(sel), sel + " shown to a viewer"
    shot("viewer-forwarding")
    go("studies"); wait_css("#studies-table tbody tr[data-study]")
    css("#studies-table tbody tr[data-study]")[0].click()
    W().until(lambda d: "No outstanding job" in text_of("#study-jobs") or css("#study-jobs tbody tr"))
    buttons = [b.text for b in css("#main button")]
    assert "Replay" not in buttons, buttons
    result["forged_status"] = d.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch('/api/v1/destinations', {method: 'POST', headers: {
            'Authorization': 'Bearer ' + sessionStorage.getItem('dicom-gw.token'),
            'Content-Type': 'application/json'},
          body: JSON.stringify({name: 'forged', ae_title: 'X', host: '127.0.0.1', port: 104})})
        .then(r => done(r.status), e => done(String(e)));""")
    # The session ends (its token is revoked by an admin): the next call sends the viewer back
    # to the login page.
    revoked = d.execute_async_script("""
        const done = arguments[arguments.length - 1], password = arguments[0];
        (async () => {
          const r = await fetch('/api/v1/auth/login', {method: 'POST',
            headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({name: 'admin', password})});
          const admin = (await r.json()).token;
          const me = await (await fetch('/api/v1/auth/me', {headers: {
            Authorization: 'Bearer ' + sessionStorage.getItem('dicom-gw.token')}})).json();
          const del = await fetch('/api/v1/tokens/' + me.token_id, {method: 'DELETE',
            headers: {Authorization: 'Bearer ' + admin}});
          done(del.status);
        })().catch(e => done(String(e)));""", os.environ["ADMIN_PASSWORD"])
    assert revoked == 200, revoked
    d.execute_script("location.hash = '#/forwarding'")
    W().until(lambda d: "session has ended" in text_of("#login-error"))
    assert not d.find_element(By.ID, "nav").is_displayed()
    # Security headers on the page itself.
    hdr = d.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch('/ui/').then(r => done({csp: r.headers.get('content-security-policy'),
          xfo: r.headers.get('x-frame-options'), xcto: r.headers.get('x-content-type-options')}));""")
    assert "frame-ancestors 'none'" in hdr["csp"] and hdr["xfo"] == "DENY" and hdr["xcto"] == "nosniff", hdr
    # No CSP violation or script error in the console's log.
    errors = [l for l in d.get_log("browser") if l["level"] == "SEVERE" and "favicon" not in l["message"]
              and "401" not in l["message"] and "403" not in l["message"]]
    assert not errors, errors
    print(json.dumps(result))
except Exception:
    try:
        shot("failure")
        print(d.find_element(By.TAG_NAME, "body").text, file=sys.stderr)
        print(d.get_log("browser"), file=sys.stderr)
    except Exception:
        pass
    raise
finally:
    d.quit()
"#####;

/// utime + stime of process `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// Measurement for docs/benchmarks.md (not a pass/fail test; run it on purpose with
/// `cargo test --test console -- --ignored --nocapture`): the daemon's CPU over 60 s idle,
/// then over 60 s with one headless browser on the dashboard (auto-refresh every 10 s), and
/// the requests a page load makes (first load, then a reload with a warm cache).
#[test]
#[ignore]
fn measure_dashboard_cost() {
    if !browser::require_chromium("measure_dashboard_cost") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let gw = Daemon::start(BIN, &data, "epoll", &[]);
    user_add(&data, "admin", "admin", ADMIN_PASSWORD);
    let secs = 60.0;
    std::thread::sleep(Duration::from_secs(2));
    let before = cpu_seconds(gw.pid);
    std::thread::sleep(Duration::from_secs_f64(secs));
    let idle = cpu_seconds(gw.pid) - before;
    let out = browser::run_browser_script(
        MEASURE_SCRIPT,
        tmp.path(),
        &[
            ("BASE", format!("http://127.0.0.1:{}", gw.http_port)),
            ("ADMIN_PASSWORD", ADMIN_PASSWORD.into()),
            ("GW_PID", gw.pid.to_string()),
            ("SECONDS", secs.to_string()),
        ],
        Duration::from_secs(300),
    );
    let r: Value =
        serde_json::from_str(out.lines().rev().find(|l| l.starts_with('{')).unwrap()).unwrap();
    let busy = r["cpu_seconds"].as_f64().unwrap();
    println!(
        "daemon CPU over {secs} s: idle {idle:.2} s ({:.3} % of a core); dashboard open \
         {busy:.2} s ({:.3} % of a core); difference {:.3} % of a core",
        idle / secs * 100.0,
        busy / secs * 100.0,
        (busy - idle) / secs * 100.0
    );
    println!("page load: {}", r["requests"]);
    drop(gw);
}

const MEASURE_SCRIPT: &str = r#####"
import json, os, time
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

def cpu(pid):
    s = open(f"/proc/{pid}/stat").read()
    f = s[s.rfind(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

opts = webdriver.ChromeOptions()
opts.binary_location = os.environ["CHROMIUM"]
for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"]:
    opts.add_argument(a)
d = webdriver.Chrome(service=Service(os.environ["CHROMEDRIVER"]), options=opts)
W = WebDriverWait(d, 30, poll_frequency=0.2)
def entries():
    return d.execute_script("""return performance.getEntriesByType('navigation').concat(
        performance.getEntriesByType('resource')).map(e => ({name: e.name.replace(location.origin, ''),
        bytes: e.transferSize}))""")
try:
    d.get(os.environ["BASE"] + "/ui/")
    W.until(lambda d: d.find_elements(By.NAME, "username"))
    d.find_element(By.NAME, "username").send_keys("admin")
    d.find_element(By.NAME, "password").send_keys(os.environ["ADMIN_PASSWORD"])
    d.find_element(By.ID, "login-submit").click()
    W.until(lambda d: d.find_element(By.ID, "stat-instances").text not in ("", "…"))
    time.sleep(1)
    first = entries()
    d.refresh()
    W.until(lambda d: d.find_elements(By.ID, "stat-instances") and d.find_element(By.ID, "stat-instances").text not in ("", "…"))
    time.sleep(1)
    reload = entries()
    secs = float(os.environ["SECONDS"])
    pid = int(os.environ["GW_PID"])
    c0 = cpu(pid)
    time.sleep(secs)
    c1 = cpu(pid)
    print(json.dumps({"cpu_seconds": c1 - c0,
        "requests": {"first_load": len(first), "first_load_list": first,
                     "reload": len(reload), "reload_list": reload}}))
finally:
    d.quit()
"#####;
