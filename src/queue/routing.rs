//! Routing rules: which destinations an object goes to, decided at ingest time from the
//! association (calling and called AE titles) and the object's top-level attributes.
//!
//! A route matches when every one of its conditions does; a condition matches when the value
//! (or, for a multi-valued attribute, the whole value or any one of its values) matches one of
//! its patterns, where `*` stands for any run of characters and `?` for exactly one. An
//! attribute that is absent has the empty value, so `"*"` matches it and `"?*"` requires one.
//! An object's destinations are the union over the matching routes, in config order.

use dicom_core::Tag;

use crate::config::{MatchKey, Route};

/// What routing looks at.
#[derive(Clone, Copy)]
pub struct RouteInput<'a> {
    /// The association's calling AE title.
    pub calling_ae_title: &'a str,
    /// The association's called AE title.
    pub called_ae_title: &'a str,
    /// Attribute values (trimmed), looked up by tag; absent = empty.
    pub attribute: &'a dyn Fn(Tag) -> Option<&'a str>,
}

impl std::fmt::Debug for RouteInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteInput")
            .field("calling_ae_title", &self.calling_ae_title)
            .field("called_ae_title", &self.called_ae_title)
            .finish_non_exhaustive()
    }
}

/// The validated routing table.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    routes: Vec<Route>,
    tags: Vec<Tag>,
}

impl Routing {
    /// Builds the table from validated routes.
    pub fn new(routes: Vec<Route>) -> Self {
        let mut tags: Vec<Tag> = routes
            .iter()
            .flat_map(|r| &r.matchers)
            .filter_map(|m| match m.key {
                MatchKey::Tag(t) => Some(t),
                _ => None,
            })
            .collect();
        tags.sort();
        tags.dedup();
        Self { routes, tags }
    }

    /// The routes, in order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The attributes routes look at, so ingest extracts exactly those.
    pub fn wanted_tags(&self) -> &[Tag] {
        &self.tags
    }

    /// Whether there is any route at all.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Destination names for one object (deduplicated, in config order).
    pub fn destinations(&self, input: &RouteInput<'_>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.routes {
            let matched = r.matchers.iter().all(|m| {
                let value = match m.key {
                    MatchKey::CallingAeTitle => input.calling_ae_title,
                    MatchKey::CalledAeTitle => input.called_ae_title,
                    MatchKey::Tag(t) => (input.attribute)(t).unwrap_or(""),
                };
                m.patterns.iter().any(|p| value_matches(p, value))
            });
            if matched {
                for d in &r.destinations {
                    if !out.contains(d) {
                        out.push(d.clone());
                    }
                }
            }
        }
        out
    }
}

/// Whether `value` — whole, or one of its backslash-separated values — matches `pattern`.
pub fn value_matches(pattern: &str, value: &str) -> bool {
    wildcard(pattern.as_bytes(), value.as_bytes())
        || (value.contains('\\')
            && value
                .split('\\')
                .any(|v| wildcard(pattern.as_bytes(), v.trim().as_bytes())))
}

/// `*` / `?` matching over bytes (AE titles and attribute values are ASCII here).
pub fn wildcard(p: &[u8], v: &[u8]) -> bool {
    crate::wildcard::matches(p, v, &b'*', &b'?')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Overrides};

    fn routing(text: &str) -> Routing {
        let p = std::path::Path::new("t.toml");
        let s = parse(text, p)
            .unwrap()
            .resolve(&Overrides::default(), Some((p, text)))
            .unwrap();
        Routing::new(s.routes)
    }

    const DESTS: &str = r#"
[[destinations]]
name = "a"
ae_title = "A"
host = "127.0.0.1"
port = 1
[[destinations]]
name = "b"
ae_title = "B"
host = "127.0.0.1"
port = 2
"#;

    fn route(r: &Routing, calling: &str, attrs: &[(Tag, &str)]) -> Vec<String> {
        let lookup = |t: Tag| attrs.iter().find(|(k, _)| *k == t).map(|(_, v)| *v);
        r.destinations(&RouteInput {
            calling_ae_title: calling,
            called_ae_title: "DICOM_GW",
            attribute: &lookup,
        })
    }

    const MODALITY: Tag = Tag(0x0008, 0x0060);
    const STATION: Tag = Tag(0x0008, 0x1010);

    #[test]
    fn wildcards() {
        assert!(wildcard(b"CT", b"CT"));
        assert!(!wildcard(b"CT", b"CTX"));
        assert!(wildcard(b"C?", b"CT"));
        assert!(!wildcard(b"C?", b"C"));
        assert!(wildcard(b"*", b""));
        assert!(wildcard(b"MOD_*", b"MOD_CT1"));
        assert!(wildcard(b"*_CT*", b"MOD_CT1"));
        assert!(!wildcard(b"*_MR*", b"MOD_CT1"));
        assert!(wildcard(b"a*b*c", b"aXbYbZc"));
        assert!(!wildcard(b"?*", b""));
        assert!(value_matches("PRIMARY", "ORIGINAL\\PRIMARY\\AXIAL"));
        assert!(value_matches(
            "ORIGINAL\\PRIMARY\\AXIAL",
            "ORIGINAL\\PRIMARY\\AXIAL"
        ));
        assert!(!value_matches("SECONDARY", "ORIGINAL\\PRIMARY"));
    }

    #[test]
    fn routes_select_their_objects() {
        let r = routing(&format!(
            r#"{DESTS}
[[routes]]
name = "ct"
match = {{ Modality = "CT" }}
destinations = ["a"]
[[routes]]
name = "mr-or-us-from-mods"
match = {{ Modality = ["MR", "US"], CallingAETitle = "MOD_*" }}
destinations = ["b"]
[[routes]]
name = "station"
match = {{ "(0008,1010)" = "ROOM?" }}
destinations = ["a", "b"]
"#
        ));
        assert_eq!(r.wanted_tags(), &[MODALITY, STATION]);
        assert_eq!(route(&r, "X", &[(MODALITY, "CT")]), vec!["a"]);
        assert_eq!(route(&r, "MOD_1", &[(MODALITY, "MR")]), vec!["b"]);
        assert!(route(&r, "OTHER", &[(MODALITY, "MR")]).is_empty());
        assert!(route(&r, "MOD_1", &[(MODALITY, "CR")]).is_empty());
        assert_eq!(
            route(&r, "MOD_1", &[(MODALITY, "CT"), (STATION, "ROOM1")]),
            vec!["a", "b"]
        );
        assert!(route(&r, "X", &[(STATION, "ROOM12")]).is_empty());
    }

    #[test]
    fn a_route_without_match_takes_everything() {
        let r = routing(&format!("{DESTS}\n[[routes]]\ndestinations = [\"b\"]\n"));
        assert_eq!(route(&r, "ANY", &[]), vec!["b"]);
    }

    #[test]
    fn bad_routes_name_key_and_line() {
        let p = std::path::Path::new("t.toml");
        let check = |extra: &str, want: &[&str]| {
            let text = format!("{DESTS}{extra}");
            let e = parse(&text, p)
                .and_then(|raw| raw.resolve(&Overrides::default(), Some((p, &text))))
                .unwrap_err()
                .to_string();
            for w in want {
                assert!(e.contains(w), "{e:?} lacks {w:?}");
            }
        };
        check(
            "[[routes]]\nmatch = { Modality = \"CT\" }\ndestinations = [\"nowhere\"]\n",
            &["routes[0].destinations", "nowhere", "line 14"],
        );
        check(
            "[[routes]]\nmatch = { NoSuchKeyword = \"x\" }\ndestinations = [\"a\"]\n",
            &["routes[0].match", "NoSuchKeyword"],
        );
        check(
            "[[routes]]\nmatch = { PixelData = \"x\" }\ndestinations = [\"a\"]\n",
            &["routes[0].match", "7FDF"],
        );
        check(
            "[[routes]]\nname = \"x\"\n",
            &["routes[0].destinations", "required"],
        );
        check(
            "[[destinations]]\nname = \"a\"\nae_title = \"A\"\nhost = \"h\"\nport = 3\n",
            &["destinations[2].name", "earlier", "line 13"],
        );
        check(
            "[[destinations]]\nname = \"c\"\nae_title = \"C\"\nhost = \"h\"\nport = 3\nretry_initial_seconds = 0\n",
            &["destinations[2].retry_initial_seconds", "line 17"],
        );
        check(
            "[[destinations]]\nname = \"c\"\nae_title = \"C\"\nhost = \"h\"\nport = 3\n[destinations.tls]\nca_file = \"/x\"\n",
            &["destinations[2].tls", "ca_file /x", "No such file"],
        );
        check(
            "[[destinations]]\nname = \"c d\"\nae_title = \"C\"\nhost = \"h\"\nport = 3\n",
            &["destinations[2].name"],
        );
    }
}
