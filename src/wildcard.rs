//! `*` / `?` pattern matching, shared by routing rules, the API's study search and the
//! worklist's C-FIND matching (PS3.4 C.2.2.2.4 uses the same two wildcards).
//!
//! Iterative with one backtracking point: linear in practice and never exponential, whatever
//! the pattern (a peer or an API caller chooses it).

/// Whether `value` matches `pattern`, where `many` stands for any run of elements (including
/// none) and `one` for exactly one.
pub fn matches<T: PartialEq>(pattern: &[T], value: &[T], many: &T, one: &T) -> bool {
    let (p, v) = (pattern, value);
    let (mut pi, mut vi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        if pi < p.len() && (p[pi] == *one || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == *many {
            star = Some((pi, vi));
            pi += 1;
        } else if let Some((sp, sv)) = star {
            pi = sp + 1;
            vi = sv + 1;
            star = Some((sp, sv + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == *many {
        pi += 1;
    }
    pi == p.len()
}

/// Case-sensitive matching of text by characters (`?` is one character, not one byte).
pub fn matches_str(pattern: &str, value: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    matches(&p, &v, &'*', &'?')
}

/// Case-insensitive matching of text (Unicode lower-casing of both sides).
pub fn matches_ci(pattern: &str, value: &str) -> bool {
    let p: Vec<char> = pattern.chars().flat_map(char::to_lowercase).collect();
    let v: Vec<char> = value.chars().flat_map(char::to_lowercase).collect();
    matches(&p, &v, &'*', &'?')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches_str("CT", "CT"));
        assert!(!matches_str("CT", "CTX"));
        assert!(matches_str("C?", "CT"));
        assert!(!matches_str("C?", "C"));
        assert!(matches_str("*", ""));
        assert!(matches_str("a*b*c", "aXbYbZc"));
        assert!(!matches_str("?*", ""));
        assert!(matches_str("M?LLER", "MÜLLER"), "? is one character");
        assert!(matches_ci("doe*", "DOE^JOHN"));
        assert!(!matches_str("doe*", "DOE^JOHN"));
        // An adversarial pattern on a long value answers (no exponential backtracking).
        let long = "a".repeat(10_000);
        assert!(!matches_str("*a*a*a*a*a*b", &long));
    }
}
