//! Delegation path matching: TUF `paths` patterns and `path_hash_prefixes` digests.
//!
//! A pattern and a target path are split on `/` and must have the same number of
//! segments; each segment is matched with shell (fnmatch) rules: `*` is any run of
//! characters, `?` one character, `[abc]`, `[a-z]` and `[!abc]` a class. Wildcards never
//! match `/`, and matching is case-sensitive.

use ring::digest;

/// Whether `target_path` matches the delegation pattern `pattern`.
pub fn matches(pattern: &str, target_path: &str) -> bool {
    let mut p = pattern.split('/');
    let mut t = target_path.split('/');
    loop {
        match (p.next(), t.next()) {
            (None, None) => return true,
            (Some(ps), Some(ts)) => {
                if !segment_matches(ps, ts) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// One token of a segment pattern.
enum Token {
    Star,
    Any,
    Literal(char),
    /// A bracket class: the characters between the brackets and whether it is negated.
    Class(Vec<char>, bool),
}

fn tokenize(p: &str) -> Vec<Token> {
    let p: Vec<char> = p.chars().collect();
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '*' => {
                // Collapse runs of stars.
                if !matches!(out.last(), Some(Token::Star)) {
                    out.push(Token::Star);
                }
                i += 1;
            }
            '?' => {
                out.push(Token::Any);
                i += 1;
            }
            '[' => {
                // Python's fnmatch: `[!` negates, a `]` right after `[` or `[!` is literal,
                // and an unclosed `[` is a literal bracket.
                let mut j = i + 1;
                let negated = j < p.len() && p[j] == '!';
                if negated {
                    j += 1;
                }
                if j < p.len() && p[j] == ']' {
                    j += 1;
                }
                while j < p.len() && p[j] != ']' {
                    j += 1;
                }
                if j >= p.len() {
                    out.push(Token::Literal('['));
                    i += 1;
                } else {
                    let start = i + 1 + usize::from(negated);
                    out.push(Token::Class(p[start..j].to_vec(), negated));
                    i = j + 1;
                }
            }
            c => {
                out.push(Token::Literal(c));
                i += 1;
            }
        }
    }
    out
}

fn class_matches(set: &[char], negated: bool, ch: char) -> bool {
    let mut found = false;
    let mut k = 0;
    while k < set.len() {
        if k + 2 < set.len() && set[k + 1] == '-' {
            found |= set[k] <= ch && ch <= set[k + 2];
            k += 3;
        } else {
            found |= set[k] == ch;
            k += 1;
        }
    }
    found != negated
}

/// Matches one segment (no `/` inside either side), backtracking to the last `*`.
fn segment_matches(pattern: &str, text: &str) -> bool {
    let tokens = tokenize(pattern);
    let text: Vec<char> = text.chars().collect();
    let (mut ti, mut pi) = (0usize, 0usize);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < text.len() {
        let ok = match tokens.get(pi) {
            Some(Token::Star) => {
                backtrack = Some((pi, ti));
                pi += 1;
                continue;
            }
            Some(Token::Any) => true,
            Some(Token::Literal(c)) => *c == text[ti],
            Some(Token::Class(set, neg)) => class_matches(set, *neg, text[ti]),
            None => false,
        };
        if ok {
            pi += 1;
            ti += 1;
        } else if let Some((bp, bt)) = backtrack {
            pi = bp + 1;
            ti = bt + 1;
            backtrack = Some((bp, bt + 1));
        } else {
            return false;
        }
    }
    tokens[pi..].iter().all(|t| matches!(t, Token::Star))
}

/// SHA-256 of a target path, as used by `path_hash_prefixes` and succinct hashed bins.
pub fn path_hash(target_path: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, target_path.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lowercase hex SHA-256 of a target path.
pub fn path_hash_hex(target_path: &str) -> String {
    hex::encode(path_hash(target_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spec_examples() {
        assert!(matches("targets/*.tgz", "targets/foo.tgz"));
        assert!(!matches("targets/*.tgz", "targets/foo.txt"));
        assert!(matches("foo-version-?.tgz", "foo-version-2.tgz"));
        assert!(matches("foo-version-?.tgz", "foo-version-a.tgz"));
        assert!(!matches("foo-version-?.tgz", "foo-version-alpha.tgz"));
        assert!(matches("*.tgz", "foo.tgz"));
        assert!(!matches("*.tgz", "targets/foo.tgz"));
        assert!(matches("foo.tgz", "foo.tgz"));
        assert!(!matches("foo.tgz", "bar.tgz"));
    }

    #[test]
    fn star_does_not_cross_a_slash() {
        assert!(!matches("apps/*", "apps/vendor/app"));
        assert!(matches("apps/*/*", "apps/vendor/app"));
        assert!(!matches("*", "a/b"));
        assert!(!matches("a?b", "a/b"));
    }

    #[test]
    fn matching_is_case_sensitive() {
        assert!(!matches("Apps/*", "apps/x"));
        assert!(!matches("*.TGZ", "foo.tgz"));
    }

    #[test]
    fn bracket_classes() {
        assert!(matches("file-[0-9].txt", "file-7.txt"));
        assert!(!matches("file-[0-9].txt", "file-x.txt"));
        assert!(matches("file-[!0-9].txt", "file-x.txt"));
        assert!(!matches("file-[!0-9].txt", "file-3.txt"));
        assert!(matches("a[b", "a[b"), "an unclosed bracket is literal");
    }

    #[test]
    fn stars_backtrack() {
        assert!(matches("*a*b*c", "xxaxxbxxbxxc"));
        assert!(!matches("*a*b*c", "xxaxxbxxbxx"));
        assert!(matches("**", ""));
        assert!(matches("*", ""));
        assert!(!matches("?", ""));
    }

    #[test]
    fn non_ascii_characters_count_once() {
        assert!(matches("?.txt", "é.txt"));
        assert!(matches("é*", "été"));
        assert!(!matches("e*", "été"));
    }

    #[test]
    fn path_hash_is_sha256_hex() {
        assert_eq!(
            path_hash_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    proptest! {
        #[test]
        fn star_segment_matches_any_slashless_segment(s in "[a-zA-Z0-9._-]{0,20}") {
            prop_assert!(matches("*", &s));
            let with_slash = format!("{s}/{s}");
            prop_assert!(!matches("*", &with_slash));
        }

        #[test]
        fn literal_pattern_matches_only_itself(a in "[a-z/]{1,12}", b in "[a-z/]{1,12}") {
            prop_assert_eq!(matches(&a, &b), a == b);
        }
    }
}
