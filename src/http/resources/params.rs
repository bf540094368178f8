//! Request parameters: percent-decoding of path segments and query strings, a query reader
//! that refuses what a call does not take (a typo such as `?patient=` must not silently widen
//! a search to everything), and a JSON body reader whose errors name the field.

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;

use super::{DEFAULT_LIMIT, MAX_LIMIT};
use crate::http::{ApiError, MAX_BODY};

/// Percent-decodes `s` (`+` is a space when `plus_is_space`, as in query strings); the result
/// must be UTF-8.
fn decode(s: &str, plus_is_space: bool) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => {
                        out.push(u8::try_from(h * 16 + l).expect("two hex digits fit a byte"));
                        i += 3;
                    }
                    _ => return Err(format!("bad percent-escape in {s:?}")),
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8 text"))
}

/// Percent-decodes one path segment (`%2F` stays inside the segment: it never splits a path).
pub fn decode_segment(s: &str) -> Result<String, String> {
    decode(s, false)
}

/// The query string of a request, read parameter by parameter; [`Query::finish`] refuses the
/// parameters nobody took.
#[derive(Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
    taken: Vec<&'static str>,
}

impl Query {
    /// Parses `?a=1&b=x`; 400 for a bad escape or a parameter given twice.
    pub fn parse(uri: &hyper::Uri) -> Result<Self, ApiError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let k = decode(k, true).map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
            let v = decode(v, true)
                .map_err(|e| ApiError::bad_request(format!("query parameter {k}: {e}")))?;
            if pairs.iter().any(|(x, _)| *x == k) {
                return Err(ApiError::bad_request(format!(
                    "query parameter {k} is given more than once"
                )));
            }
            pairs.push((k, v));
        }
        Ok(Self {
            pairs,
            taken: Vec::new(),
        })
    }

    /// Parameter `name` (an empty value counts as absent, as from an empty form field).
    pub fn text(&mut self, name: &'static str) -> Option<String> {
        self.taken.push(name);
        let i = self.pairs.iter().position(|(k, _)| k == name)?;
        let (_, v) = self.pairs.remove(i);
        (!v.is_empty()).then_some(v)
    }

    /// Parameter `name` as a non-negative integer; 400 naming it otherwise.
    pub fn number(&mut self, name: &'static str) -> Result<Option<u64>, ApiError> {
        self.text(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "query parameter {name}: {v:?} is not a non-negative integer"
                    ))
                })
            })
            .transpose()
    }

    /// For calls that take only `offset` and `limit`: parses, pages and refuses anything else.
    pub fn page_only(uri: &hyper::Uri) -> Result<(u64, usize), ApiError> {
        let mut q = Self::parse(uri)?;
        let page = q.page()?;
        q.finish()?;
        Ok(page)
    }

    /// `offset` (default 0) and `limit` (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]).
    pub fn page(&mut self) -> Result<(u64, usize), ApiError> {
        let offset = self.number("offset")?.unwrap_or(0);
        let limit = match self.number("limit")? {
            None => DEFAULT_LIMIT,
            Some(n) if n <= MAX_LIMIT as u64 => usize::try_from(n).unwrap_or(MAX_LIMIT),
            Some(n) => {
                return Err(ApiError::bad_request(format!(
                    "query parameter limit: {n} is more than the maximum of {MAX_LIMIT}"
                )))
            }
        };
        Ok((offset, limit))
    }

    /// 400 naming any parameter the call does not take (and those it does).
    pub fn finish(self) -> Result<(), ApiError> {
        if self.pairs.is_empty() {
            return Ok(());
        }
        let unknown: Vec<&str> = self.pairs.iter().map(|(k, _)| k.as_str()).collect();
        Err(ApiError::bad_request(format!(
            "unknown query parameter{} {} (this call takes: {})",
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join(", "),
            if self.taken.is_empty() {
                "none".to_owned()
            } else {
                self.taken.join(", ")
            }
        )))
    }
}

/// Reads a JSON body (at most [`MAX_BODY`] bytes).
pub async fn read_value(req: hyper::Request<Incoming>) -> Result<serde_json::Value, ApiError> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("request body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))
}

/// Reads a JSON object body (at most [`MAX_BODY`] bytes) into `T`.
pub async fn read_body<T: DeserializeOwned>(req: hyper::Request<Incoming>) -> Result<T, ApiError> {
    object_body(&read_value(req).await?)
}

/// Parses a JSON object body into `T`; a 400 otherwise that names the field at fault.
///
/// serde's own message names the field for a missing or unknown one, but for a value of the
/// wrong type it gives only a line and column. So the body is parsed as JSON first (syntax
/// errors are reported as such), then re-encoded one top-level field per line and decoded
/// into `T` from that text: the line of a type error then tells which top-level field holds
/// the bad value.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
    object_body(&v)
}

/// `v` into `T`, if `v` is an object (serde would also take a struct from a list).
fn object_body<T: DeserializeOwned>(v: &serde_json::Value) -> Result<T, ApiError> {
    if !v.is_object() {
        return Err(ApiError::bad_request("request body: must be a JSON object"));
    }
    from_value(v).map_err(|m| ApiError::bad_request(format!("request body: {m}")))
}

/// Decodes `v` into `T`; the error message names the top-level field at fault (see
/// [`parse_body`]).
pub fn from_value<T: DeserializeOwned>(v: &serde_json::Value) -> Result<T, String> {
    let pretty = serde_json::to_string_pretty(v).unwrap_or_default();
    serde_json::from_str(&pretty).map_err(|e| {
        let full = e.to_string();
        let msg = full.split(" at line ").next().unwrap_or(&full);
        let field = if msg.starts_with("missing field") || msg.starts_with("unknown field") {
            None
        } else {
            top_level_key(&pretty, e.line())
        };
        match field {
            Some(k) => format!("field {k}: {msg}"),
            None => msg.to_owned(),
        }
    })
}

/// The top-level key whose value spans line `line` (1-based) of a pretty-printed object.
fn top_level_key(pretty: &str, line: usize) -> Option<String> {
    pretty
        .lines()
        .take(line)
        .filter(|l| l.starts_with("  \"") && !l.starts_with("   "))
        .last()
        .and_then(|l| {
            let mut de = serde_json::Deserializer::from_str(l.trim_start());
            serde::Deserialize::deserialize(&mut de).ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Result<Query, ApiError> {
        Query::parse(&format!("/x?{s}").parse().unwrap())
    }

    #[test]
    fn decodes_and_takes_parameters() {
        let mut x = q("patient_name=DOE%5E*&limit=5&offset=&a+b=c+d").unwrap();
        assert_eq!(x.text("patient_name").as_deref(), Some("DOE^*"));
        assert_eq!(x.page().unwrap(), (0, 5));
        assert_eq!(x.text("a b").as_deref(), Some("c d"));
        x.finish().unwrap();
        assert_eq!(q("").unwrap().page().unwrap(), (0, DEFAULT_LIMIT));
    }

    #[test]
    fn refuses_bad_parameters_naming_them() {
        let e = q("limit=1001").unwrap().page().unwrap_err();
        assert!(e.status == 400 && e.message.contains("limit"), "{e}");
        let e = q("offset=-1").unwrap().page().unwrap_err();
        assert!(e.message.contains("offset"), "{e}");
        let e = q("a=1&a=2").unwrap_err();
        assert!(e.message.contains("a is given more than once"), "{e}");
        let e = q("x=%G1").unwrap_err();
        assert!(e.message.contains("x"), "{e}");
        let mut x = q("patient=1&limit=2").unwrap();
        x.page().unwrap();
        let e = x.finish().unwrap_err();
        assert!(
            e.message.contains("patient") && e.message.contains("offset, limit"),
            "{e}"
        );
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        destination: String,
        job: Option<u64>,
        nested: Option<Vec<u32>>,
    }

    #[test]
    fn body_errors_name_the_field() {
        let e = |b: &str| parse_body::<Body>(b.as_bytes()).unwrap_err().message;
        assert!(e(r#"{"destination": 7}"#).contains("field destination: invalid type"));
        assert!(e(r#"{"destination": "a", "job": "one"}"#).contains("field job:"));
        assert!(e(r#"{"destination": "a", "nested": [1, "x"]}"#).contains("field nested:"));
        assert!(e(r#"{"job": 1}"#).contains("missing field `destination`"));
        assert!(e(r#"{"destination": "a", "jobs": 1}"#).contains("unknown field `jobs`"));
        assert!(e(r#"{"destination": "#).contains("not valid JSON"));
        assert!(e("").contains("not valid JSON"));
        assert!(e(r#"["a", 1]"#).contains("must be a JSON object"));
        let ok: Body = parse_body(br#"{"destination": "a", "job": 3}"#).unwrap();
        assert_eq!((ok.destination.as_str(), ok.job), ("a", Some(3)));
    }

    #[test]
    fn segments_keep_encoded_slashes_inside() {
        assert_eq!(decode_segment("a%2Fb+c").unwrap(), "a/b+c");
        assert!(decode_segment("%").is_err());
        assert!(decode_segment("%C3").is_err());
    }
}
