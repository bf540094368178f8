//! The web console: static files from `ui/`, embedded at compile time and served under `/ui/`
//! (`/` redirects there), plus the security headers every answer of the API carries.
//!
//! The files are plain ES modules and CSS: `cargo build` is the whole build. They are public
//! (no token, not paced — they are constant and cheap, and the login page must load before
//! there is a token); everything the page shows comes from `/api/v1` with the user's token.
//!
//! Caching: `index.html` names the other files with `?v=<hash of every file>`, substituted
//! when first served, so the files themselves can be cached for good (`immutable`) while
//! `index.html` is revalidated on each load (`no-cache` with an ETag answered by 304): a
//! reload costs one small request, and a new build is picked up at once.

use std::sync::OnceLock;

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::Response;

use super::{bytes_response, Body};

/// Content-Security-Policy of every answer: only this origin's files and API, no inline
/// script or style, no plugins, no framing (clickjacking), no `<base>` hijack.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' \
     data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// The placeholder in the files replaced by the assets' version.
const VERSION_MARK: &str = "__V__";

/// (path below `/ui/`, content type, bytes).
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../ui/index.html"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../ui/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/app.js"),
    ),
    (
        "views.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/views.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../../ui/favicon.svg"),
    ),
];

/// Bytes of the embedded console files (what the console adds to the binary, before the
/// version substitution).
pub fn embedded_size() -> usize {
    FILES.iter().map(|(_, _, b)| b.len()).sum()
}

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: Bytes,
    etag: HeaderValue,
}

struct Assets {
    files: Vec<Asset>,
}

fn assets() -> &'static Assets {
    static A: OnceLock<Assets> = OnceLock::new();
    A.get_or_init(|| {
        let mut h = blake3::Hasher::new();
        for (p, _, b) in FILES {
            h.update(p.as_bytes());
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        }
        let version = h.finalize().to_hex()[..16].to_owned();
        let files = FILES
            .iter()
            .map(|(path, ct, raw)| {
                let body = if ct.starts_with("text/") {
                    Bytes::from(
                        String::from_utf8_lossy(raw)
                            .replace(VERSION_MARK, &version)
                            .into_bytes(),
                    )
                } else {
                    Bytes::from_static(raw)
                };
                let tag = blake3::hash(&body).to_hex()[..20].to_owned();
                let etag = HeaderValue::from_str(&format!("\"{tag}\""))
                    .expect("hex is a valid header value");
                Asset {
                    path,
                    content_type: ct,
                    body,
                    etag,
                }
            })
            .collect();
        Assets { files }
    })
}

/// Whether `path` is one the console serves (public and not paced).
pub fn is_console_path(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/") || path == "/favicon.ico"
}

/// Answers a console path: `/` and `/ui` redirect to `/ui/`, `/ui/` is `index.html`,
/// `/ui/<file>` the file; anything else below `/ui/` is 404, other methods than GET and HEAD
/// 405.
pub fn serve(
    method: &hyper::Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<Response<Body>, super::ApiError> {
    if method != hyper::Method::GET && method != hyper::Method::HEAD {
        return Err(super::ApiError::method_not_allowed(format!(
            "{path} supports GET only"
        )));
    }
    if path == "/" || path == "/ui" {
        return Ok(redirect("/ui/"));
    }
    let name = match path {
        "/ui/" => "index.html",
        "/favicon.ico" => "favicon.svg",
        p => p.strip_prefix("/ui/").unwrap_or(p),
    };
    let Some(a) = assets().files.iter().find(|a| a.path == name) else {
        return Err(super::ApiError::not_found(format!(
            "no such console file {path}"
        )));
    };
    let immutable = name != "index.html";
    let matches = headers
        .get(hyper::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == a.etag.to_str().unwrap_or(""))
        });
    let mut r = if matches {
        let mut r = bytes_response(304, a.content_type, Bytes::new());
        r.headers_mut().remove(hyper::header::CONTENT_TYPE);
        r
    } else {
        // HEAD too: hyper sends the headers (with the full length) and drops the body.
        bytes_response(200, a.content_type, a.body.clone())
    };
    let h = r.headers_mut();
    h.insert(hyper::header::ETAG, a.etag.clone());
    h.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static(if immutable {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }),
    );
    Ok(r)
}

fn redirect(to: &'static str) -> Response<Body> {
    let mut r = bytes_response(302, "text/plain; charset=utf-8", Bytes::from_static(b""));
    r.headers_mut()
        .insert(hyper::header::LOCATION, HeaderValue::from_static(to));
    r
}

/// Adds the security headers to an answer (every answer: JSON gets them too, since a browser
/// could be pointed at any URL of this origin).
pub fn security_headers(h: &mut HeaderMap) {
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, inm: Option<&str>) -> Response<Body> {
        let mut h = HeaderMap::new();
        if let Some(v) = inm {
            h.insert(
                hyper::header::IF_NONE_MATCH,
                HeaderValue::from_str(v).unwrap(),
            );
        }
        serve(&hyper::Method::GET, path, &h).unwrap()
    }

    #[test]
    fn root_redirects_and_index_names_versioned_files() {
        let r = get("/", None);
        assert_eq!(r.status(), 302);
        assert_eq!(r.headers()["location"], "/ui/");
        let r = get("/ui/", None);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(r.headers()["cache-control"], "no-cache");
        let index = &assets().files[0];
        let text = String::from_utf8_lossy(&index.body);
        assert!(
            !text.contains(VERSION_MARK),
            "placeholder left in index.html"
        );
        assert!(text.contains("app.js?v="), "{text}");
    }

    #[test]
    fn files_have_types_etags_and_304() {
        let r = get("/ui/app.js", None);
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
        assert!(r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable"));
        let etag = r.headers()["etag"].to_str().unwrap().to_owned();
        let r = get("/ui/app.js", Some(&etag));
        assert_eq!(r.status(), 304);
        assert_eq!(
            get("/ui/app.css", None).headers()["content-type"],
            "text/css; charset=utf-8"
        );
        let e = serve(&hyper::Method::GET, "/ui/../Cargo.toml", &HeaderMap::new()).unwrap_err();
        assert_eq!(e.status, 404);
        let e = serve(&hyper::Method::POST, "/ui/", &HeaderMap::new()).unwrap_err();
        assert_eq!(e.status, 405);
    }

    #[test]
    fn no_inline_script_or_style_in_the_page() {
        // The CSP forbids them; a page relying on them would be broken, not insecure.
        for (p, _, b) in FILES.iter().filter(|(p, _, _)| p.ends_with(".html")) {
            let t = String::from_utf8_lossy(b).to_lowercase();
            assert!(!t.contains("<style"), "{p}: inline <style>");
            assert!(!t.contains(" style="), "{p}: style attribute");
            let handler = t.match_indices(" on").any(|(i, _)| {
                let rest = &t[i + 3..];
                let name_len = rest.chars().take_while(char::is_ascii_lowercase).count();
                name_len > 0 && rest[name_len..].starts_with('=')
            });
            assert!(!handler, "{p}: inline event handler");
            let scripts = t.matches("<script").count();
            let external = t.matches("<script type=\"module\" src=").count();
            assert_eq!(scripts, external, "{p}: inline <script>");
        }
    }

    #[test]
    fn the_console_adds_less_than_a_mebibyte() {
        assert!(embedded_size() < 1 << 20, "{} bytes", embedded_size());
    }
}
