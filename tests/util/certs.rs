//! Test certificates for DICOM TLS, made with the `openssl` CLI into a directory: a CA, a server
//! certificate for `127.0.0.1` / `localhost` signed by it, a client certificate signed by it, and
//! a second, untrusted CA with a client certificate of its own (for "unknown CA" refusals).
//!
//! Shared by the integration tests (`tests/tls.rs`) and, through `#[path]`, by the unit tests of
//! `src/tls.rs`, so both use the same certificate shapes.
#![allow(dead_code)] // each test crate uses a part

use std::path::{Path, PathBuf};
use std::process::Command;

/// Paths of the PEM files [`make`] wrote.
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// CA certificate that signed `server_*` and `client_*`.
    pub ca: PathBuf,
    /// Server certificate (SAN IP:127.0.0.1, DNS:localhost; EKU serverAuth).
    pub server_cert: PathBuf,
    /// Server private key (PKCS#8).
    pub server_key: PathBuf,
    /// Client certificate (CN=dicom-client; EKU clientAuth).
    pub client_cert: PathBuf,
    /// Client private key.
    pub client_key: PathBuf,
    /// A second CA, trusted by nobody.
    pub other_ca: PathBuf,
    /// A server certificate for 127.0.0.1 signed by `other_ca`.
    pub other_server_cert: PathBuf,
    /// Its key.
    pub other_server_key: PathBuf,
    /// A client certificate signed by `other_ca`.
    pub other_client_cert: PathBuf,
    /// Its key.
    pub other_client_key: PathBuf,
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl runs (apt-get install openssl): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ec` P-256 keys: quick to make, and accepted by rustls and DCMTK (OpenSSL 3).
const NEWKEY: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

fn ca(dir: &Path, name: &str) {
    let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
    let subj = format!("/CN=dicom-gw test {name}");
    let mut a = vec!["req", "-x509"];
    a.extend(NEWKEY);
    a.extend([
        "-nodes",
        "-days",
        "2",
        "-subj",
        &subj,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        &key,
        "-out",
        &pem,
    ]);
    openssl(&a, dir);
}

fn leaf(dir: &Path, name: &str, ca: &str, cn: &str, ext: &str) {
    let (key, csr, pem, cnf) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&cnf), ext).unwrap();
    let subj = format!("/CN={cn}");
    let mut a = vec!["req"];
    a.extend(NEWKEY);
    a.extend(["-nodes", "-subj", &subj, "-keyout", &key, "-out", &csr]);
    openssl(&a, dir);
    let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &cnf,
            "-out",
            &pem,
        ],
        dir,
    );
}

const SERVER_EXT: &str = "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
                          keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n";
const CLIENT_EXT: &str = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                          extendedKeyUsage=clientAuth\n";

/// Makes every certificate of [`TestCerts`] in `dir` (panics with openssl's message on failure).
pub fn make(dir: &Path) -> TestCerts {
    ca(dir, "ca");
    leaf(dir, "server", "ca", "localhost", SERVER_EXT);
    leaf(dir, "client", "ca", "dicom-client", CLIENT_EXT);
    ca(dir, "other-ca");
    leaf(dir, "other-server", "other-ca", "localhost", SERVER_EXT);
    leaf(dir, "other-client", "other-ca", "dicom-client", CLIENT_EXT);
    let p = |f: &str| dir.join(f);
    TestCerts {
        ca: p("ca.pem"),
        server_cert: p("server.pem"),
        server_key: p("server.key"),
        client_cert: p("client.pem"),
        client_key: p("client.key"),
        other_ca: p("other-ca.pem"),
        other_server_cert: p("other-server.pem"),
        other_server_key: p("other-server.key"),
        other_client_cert: p("other-client.pem"),
        other_client_key: p("other-client.key"),
    }
}
