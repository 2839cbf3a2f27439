//! Name patterns for routing and rules: `*` and `?`.

/// `*` matches any run of characters, `?` any one; everything else literally.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Whether pattern `p` matches the scope `s` (`location=IN/MH/Mumbai,cdn=cdn-a`) whole or
/// one of its parts: `cdn=cdn-a` finds that CDN's location+CDN incidents too.
pub fn scope_matches(p: &str, s: &str) -> bool {
    glob(p, s) || s.split(',').any(|part| glob(p, part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_wildcards() {
        assert!(glob("*", ""));
        assert!(glob("location=IN/*", "location=IN/MH/Mumbai,cdn=cdn-a"));
        assert!(glob("*cdn=cdn-?", "location=X,cdn=cdn-a"));
        assert!(!glob("*cdn=cdn-?", "location=X,cdn=cdn-ab"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(!glob("cdn=*", "location=X,cdn=y"));
    }
}
