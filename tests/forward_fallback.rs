//! Transfer syntax fallback when forwarding (issue 14, item 3): a destination that refuses the
//! syntax an object was received in gets it converted losslessly, per destination
//! (`transcode = "lossless"`, the default), and `transcode = "never"` dead-letters it with the
//! reason. The destinations are DCMTK `storescp +xi` (Implicit VR LE only) and a default
//! `storescp` (uncompressed syntaxes only); the objects are Explicit VR LE, Explicit VR BE,
//! deflated, RLE and JPEG lossless, made with DCMTK. What arrives is compared with pydicom:
//! every element's decoded value equals the original's, and the pixel data equals DCMTK's own
//! decompression of the original.

mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use util::*;

const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
const RLE: &str = "1.2.840.10008.1.2.5";
const JPEG_LOSSLESS_SV1: &str = "1.2.840.10008.1.2.4.70";

/// One test object in one transfer syntax.
struct Obj {
    uid: String,
    ts: &'static str,
    /// The file sent to the gateway.
    file: PathBuf,
    /// The same object with native pixel data as DCMTK decompresses it (the file itself for
    /// the uncompressed syntaxes).
    native: PathBuf,
}

/// Runs a DCMTK tool; panics with its output on failure.
fn tool(prog: &str, args: &[&Path]) {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e} (apt-get install dcmtk)"));
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The five objects, each its own SOP instance (16-bit CT, 64×64, with a patient name and
/// the usual attributes), made from one generated Explicit VR LE file per object.
fn make_objects(dir: &Path) -> Vec<Obj> {
    std::fs::create_dir_all(dir).unwrap();
    let mut objs = Vec::new();
    for (i, ts) in [EXPLICIT_LE, EXPLICIT_BE, DEFLATED, RLE, JPEG_LOSSLESS_SV1]
        .into_iter()
        .enumerate()
    {
        let spec = ObjSpec::new(14_000 + i as u32).patient("Fallback^Test", "PID14");
        let raw = dir.join(format!("{i}.raw.dcm"));
        gen_part10(&raw, &spec).unwrap();
        let file = dir.join(format!("{i}.dcm"));
        match ts {
            EXPLICIT_LE => {
                std::fs::copy(&raw, &file).unwrap();
            }
            EXPLICIT_BE => {
                convert_ts(&raw, &file, Ts::ExplicitBE);
            }
            DEFLATED => {
                convert_ts(&raw, &file, Ts::Deflated);
            }
            RLE => tool("dcmcrle", &[&raw, &file]),
            _ => {
                convert_ts(&raw, &file, Ts::JpegLossless);
            }
        }
        assert_eq!(meta_ts(&file), ts, "{}", file.display());
        let native = match ts {
            RLE => {
                let n = dir.join(format!("{i}.native.dcm"));
                tool("dcmdrle", &[&file, &n]);
                n
            }
            JPEG_LOSSLESS_SV1 => {
                let n = dir.join(format!("{i}.native.dcm"));
                tool("dcmdjpeg", &[&file, &n]);
                n
            }
            _ => file.clone(),
        };
        objs.push(Obj {
            uid: spec.sop_instance_uid.clone(),
            ts,
            file,
            native,
        });
    }
    objs
}

/// storescu flags proposing exactly the object's syntax (so it is sent verbatim).
fn storescu_flag(ts: &str) -> &'static str {
    match ts {
        EXPLICIT_LE => "-xe",
        EXPLICIT_BE => "-xb",
        DEFLATED => "-xd",
        RLE => "-xr",
        _ => "-xs",
    }
}

/// Compares two Part-10 files with pydicom: every element of `original` outside group 0002
/// and Pixel Data has the same decoded value in `delivered` (recursively through sequences)
/// and `delivered` has no other element; Pixel Data, as little-endian samples, equals
/// `native`'s. Prints "SAME" or the differences.
const COMPARE_PY: &str = r#"
import sys, array
import pydicom
from pydicom.tag import Tag

PIXEL = Tag(0x7FE0, 0x0010)

def norm_pixels(ds):
    data = bytes(ds.PixelData)
    if not ds.is_little_endian and int(ds.BitsAllocated) == 16:
        a = array.array('H', data)
        a.byteswap()
        data = a.tobytes()
    return data

def compare(a, b, path, out):
    ta = {e.tag for e in a if e.tag != PIXEL}
    tb = {e.tag for e in b if e.tag != PIXEL}
    for t in sorted(ta - tb):
        out.append(f"{path}{t} missing")
    for t in sorted(tb - ta):
        out.append(f"{path}{t} added")
    for t in sorted(ta & tb):
        ea, eb = a[t], b[t]
        if ea.VR == 'SQ' or eb.VR == 'SQ':
            if len(ea.value) != len(eb.value):
                out.append(f"{path}{t} has {len(eb.value)} items, not {len(ea.value)}")
                continue
            for k, (ia, ib) in enumerate(zip(ea.value, eb.value)):
                compare(ia, ib, f"{path}{t}[{k}].", out)
        elif ea.value != eb.value:
            out.append(f"{path}{t} {ea.value!r} became {eb.value!r}")

original, native, delivered = (pydicom.dcmread(p) for p in sys.argv[1:4])
out = []
compare(original, delivered, "", out)
if norm_pixels(native) != norm_pixels(delivered):
    out.append(f"pixel data differs ({len(native.PixelData)} vs {len(delivered.PixelData)} bytes)")
print("SAME" if not out else "\n".join(out))
"#;

fn compare_with_pydicom(script: &Path, obj: &Obj, delivered: &Path) {
    let out = Command::new(pynetdicom_python())
        .arg(script)
        .arg(&obj.file)
        .arg(&obj.native)
        .arg(delivered)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.trim() == "SAME",
        "{} sent in {} and delivered as {} ({}): decoded values differ:\n{text}{}",
        obj.uid,
        obj.ts,
        meta_ts(delivered),
        delivered.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn refused_syntaxes_are_converted_losslessly_or_dead_lettered_with_never() {
    require_dcmtk();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let objs = make_objects(&tmp.path().join("src"));
    let script = tmp.path().join("compare.py");
    std::fs::write(&script, COMPARE_PY).unwrap();

    // Options given after storescp's `+xa` win: `+xi` accepts Implicit VR LE only, `+x=` the
    // uncompressed syntaxes (DCMTK's default).
    let implicit = DestScp::start_free(&tmp.path().join("implicit"), &["+xi"]);
    let plain = DestScp::start_free(&tmp.path().join("plain"), &["+x="]);
    let never = DestScp::start_free(&tmp.path().join("never"), &["+xi"]);
    let slow_retry = "retry_initial_seconds = 60\nretry_max_seconds = 60\n";
    let toml = dest_block("implicit", implicit.port, slow_retry)
        + &dest_block("plain", plain.port, slow_retry)
        + &dest_block(
            "never",
            never.port,
            &format!("{slow_retry}transcode = \"never\"\n"),
        )
        + &route_block("all", "", &["implicit", "plain", "never"]);
    let gw = start_gw(tmp.path(), &data, &toml, &[]);
    for o in &objs {
        storescu(
            gw.port,
            &[&o.file],
            &["-R", storescu_flag(o.ts), "-aet", "FALLBACK"],
        )
        .assert_all_ok(&[&o.file]);
    }

    wait_settled(&data, "implicit", 5, 0, Duration::from_secs(60));
    wait_settled(&data, "plain", 5, 0, Duration::from_secs(60));
    wait_settled(&data, "never", 0, 5, Duration::from_secs(60));

    // +xi: everything arrives in Implicit VR LE, with the original's values.
    let got = implicit.by_uid();
    for o in &objs {
        let files = got
            .get(&o.uid)
            .unwrap_or_else(|| panic!("{} ({}) not delivered to +xi", o.uid, o.ts));
        assert_eq!(files.len(), 1, "{} delivered {} times", o.uid, files.len());
        assert_eq!(meta_ts(&files[0]), IMPLICIT_LE, "{}", o.ts);
        compare_with_pydicom(&script, o, &files[0]);
    }
    // Default storescp: uncompressed originals it accepts go verbatim; deflated, RLE and
    // JPEG are converted to the uncompressed syntax it prefers.
    let got = plain.by_uid();
    for o in &objs {
        let files = &got[&o.uid];
        assert_eq!(files.len(), 1);
        let want = match o.ts {
            EXPLICIT_LE | EXPLICIT_BE => o.ts,
            _ => EXPLICIT_LE,
        };
        assert_eq!(meta_ts(&files[0]), want, "sent in {}", o.ts);
        if want == o.ts {
            assert!(same_dataset(&files[0], &o.file), "{} not verbatim", o.ts);
        }
        compare_with_pydicom(&script, o, &files[0]);
    }

    // transcode = "never": nothing delivered, each dead letter says why.
    assert!(never.files().is_empty(), "{:?}", never.files());
    let dead = queue_list(&data, "never", Some("dead"));
    let reasons: BTreeMap<String, String> = dead
        .iter()
        .map(|v| (json_str(v, "sop_instance_uid"), json_str(v, "last_error")))
        .collect();
    for o in &objs {
        let why = &reasons[&o.uid];
        assert!(
            why.contains("rejected the presentation context")
                && why.contains(o.ts)
                && why.contains("transcode = \"never\""),
            "{}: {why}",
            o.ts
        );
    }

    // Each conversion is counted per (from, to) and logged at INFO.
    let metric = |dest: &str, from: &str, to: &str| {
        metric_value(
            gw.http_port,
            &format!(
                "dicomgw_forward_transcoded_total{{destination=\"{dest}\",from=\"{from}\",to=\"{to}\"}}"
            ),
        )
        .unwrap_or(0.0)
    };
    for o in &objs {
        assert_eq!(metric("implicit", o.ts, IMPLICIT_LE), 1.0, "{}", o.ts);
    }
    for ts in [DEFLATED, RLE, JPEG_LOSSLESS_SV1] {
        assert_eq!(metric("plain", ts, EXPLICIT_LE), 1.0, "{ts}");
    }
    assert_eq!(metric("plain", EXPLICIT_BE, EXPLICIT_LE), 0.0);
    let log = gw.stderr();
    let transcoded = log
        .lines()
        .filter(|l| l.contains(" INFO ") && l.contains("transcoded"))
        .count();
    assert_eq!(transcoded, 8, "INFO lines for 5 + 3 conversions:\n{log}");
    let dead_lines = log.lines().filter(|l| l.contains("dead-lettered")).count();
    assert_eq!(dead_lines, 5, "{log}");
    assert_eq!(
        metric_value(
            gw.http_port,
            "dicomgw_forward_total{destination=\"never\",result=\"dead\"}"
        ),
        Some(5.0)
    );
    // The stored originals are untouched.
    for o in &objs {
        let spec_dir = data.join("objects");
        let stored: Vec<PathBuf> = list_files(&spec_dir)
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(&o.uid))
            .collect();
        assert_eq!(stored.len(), 1, "{}", o.uid);
        assert!(same_dataset(&stored[0], &o.file), "{} stored changed", o.ts);
        assert_eq!(meta_ts(&stored[0]), o.ts);
    }
    drop(gw);
}
