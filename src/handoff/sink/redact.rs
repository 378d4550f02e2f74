//! Hiding the secrets a sink spec can carry, wherever a spec is shown (logs,
//! status, errors, `Debug`). Three forms carry secrets:
//!
//! - URL userinfo: `postgres://app:SECRET@host/db` → `postgres://app:***@host/db`.
//!   In a webhook URL a user without a password is often a token itself, so
//!   `http://TOKEN@host/` → `http://***@host/`.
//! - Query parameters named like secrets (`?token=`, `api_key`, `key`,
//!   `secret`, `password`, ...): the value becomes `***`.
//! - The PostgreSQL keyword form, `host=h user=app password=SECRET`: the
//!   value of any keyword named like a secret (`password`, `sslpassword`)
//!   becomes `***`, quoted or not.
//!
//! The functions work on text, not on a parsed URL, so that they also hide
//! secrets in a spec that failed to parse (and is quoted in the error).

const HIDDEN: &str = "***";

/// Whether a query parameter or connection keyword holds a secret.
pub(super) fn is_secret_name(name: &str) -> bool {
    let n = name.trim().to_ascii_lowercase();
    const EXACT: &[&str] = &[
        "key",
        "pass",
        "pwd",
        "passwd",
        "secret",
        "token",
        "auth",
        "sig",
        "signature",
        "apikey",
        "api-key",
        "credentials",
    ];
    const SUFFIXES: &[&str] = &["password", "token", "secret", "_key", "-key", "apikey"];
    EXACT.contains(&n.as_str()) || SUFFIXES.iter().any(|s| n.ends_with(s))
}

/// A whole spec as given on the command line (`kind:rest`).
pub(super) fn spec(s: &str) -> String {
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        return url(s, false);
    }
    match s.split_once(':') {
        Some(("file", _)) | None => s.to_string(),
        Some(("postgres", rest)) => format!("postgres:{}", conninfo(rest)),
        Some(("webhook", rest)) => format!("webhook:{}", url(rest, true)),
        // An unknown kind (a typo of a known one, perhaps): hide what either form would.
        Some((kind, rest)) if rest.contains("://") => format!("{kind}:{}", url(rest, true)),
        Some((kind, rest)) => format!("{kind}:{}", keywords(rest)),
    }
}

/// A PostgreSQL connection string, in URL or keyword form.
pub(super) fn conninfo(s: &str) -> String {
    if s.contains("://") {
        url(s, false)
    } else {
        keywords(s)
    }
}

/// A URL with the password in its userinfo (and, if `hide_bare_user`, a
/// userinfo without a password) and secret query values hidden.
pub(super) fn url(url: &str, hide_bare_user: bool) -> String {
    let Some(scheme_end) = url.find("://") else {
        return query(url);
    };
    let (head, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:{HIDDEN}{host}"),
                None if hide_bare_user && !userinfo.is_empty() => format!("{HIDDEN}{host}"),
                None => authority.to_string(),
            }
        }
        None => authority.to_string(),
    };
    format!("{head}{authority}{}", query(tail))
}

/// Hides secret values in the query part (after `?`, before `#`) of `s`.
fn query(s: &str) -> String {
    let Some(q) = s.find('?') else {
        return s.to_string();
    };
    let (before, rest) = s.split_at(q + 1);
    let (params, fragment) = rest.split_at(rest.find('#').unwrap_or(rest.len()));
    let params: Vec<String> = params
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((name, _)) if is_secret_name(&percent_decoded(name)) => {
                format!("{name}={HIDDEN}")
            }
            _ => p.to_string(),
        })
        .collect();
    format!("{before}{}{fragment}", params.join("&"))
}

/// A parameter name percent-decoded as a form would be (`api%5Fkey`,
/// `+` for a space); an undecodable escape is kept as it is.
fn percent_decoded(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// The keyword form, `key=value key = 'quoted value'`, with secret values
/// hidden. Unparseable text stays as it is, except that a word after a
/// secret keyword is hidden even without its `=`.
fn keywords(s: &str) -> String {
    let b = s.as_bytes();
    let ws = |i: usize| i < b.len() && b[i].is_ascii_whitespace();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut hide_next_word = false;
    while i < b.len() {
        let start = i;
        while ws(i) {
            i += 1;
        }
        out.push_str(&s[start..i]);
        if i == b.len() {
            break;
        }
        // A keyword (or a stray word).
        let key_start = i;
        while i < b.len() && b[i] != b'=' && !ws(i) {
            i += 1;
        }
        let key = &s[key_start..i];
        let mut j = i;
        while ws(j) {
            j += 1;
        }
        if j == b.len() || b[j] != b'=' {
            out.push_str(if hide_next_word { HIDDEN } else { key });
            hide_next_word = is_secret_name(key);
            continue;
        }
        // `=` and the spaces after it.
        j += 1;
        while ws(j) {
            j += 1;
        }
        out.push_str(&s[key_start..j]);
        // The value: quoted (with `\'` and `\\` escapes) or up to whitespace.
        let value_start = j;
        if j < b.len() && b[j] == b'\'' {
            j += 1;
            while j < b.len() && b[j] != b'\'' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            j = (j + 1).min(b.len());
        } else {
            while j < b.len() && !ws(j) {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            j = j.min(b.len());
        }
        if is_secret_name(key) || hide_next_word {
            out.push_str(HIDDEN);
        } else {
            out.push_str(&s[value_start..j]);
        }
        hide_next_word = false;
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_userinfo_password_is_hidden() {
        assert_eq!(
            url("postgres://app:hunter2@127.0.0.1:5432/db", false),
            "postgres://app:***@127.0.0.1:5432/db"
        );
        // An `@` in the password (already percent-encoded or not).
        assert_eq!(
            url("postgres://app:p@ss@h/db", false),
            "postgres://app:***@h/db"
        );
        assert_eq!(url("postgres://app@h/db", false), "postgres://app@h/db");
        assert_eq!(
            url("http://user:hunter2@127.0.0.1:9000/in", true),
            "http://user:***@127.0.0.1:9000/in"
        );
        assert_eq!(
            url("http://tok3n@127.0.0.1:9000/in", true),
            "http://***@127.0.0.1:9000/in"
        );
        // No path: the userinfo still ends at the host.
        assert_eq!(url("http://u:pw@h?x=1", true), "http://u:***@h?x=1");
        assert_eq!(url("http://h/p@q", true), "http://h/p@q");
    }

    #[test]
    fn secret_query_parameters_are_hidden() {
        assert_eq!(
            url("https://host/path?token=hunter2&x=1", true),
            "https://host/path?token=***&x=1"
        );
        for name in [
            "api_key",
            "key",
            "secret",
            "password",
            "access_token",
            "API_KEY",
            "api%5Fkey",
        ] {
            let shown = url(&format!("http://h/p?a=b&{name}=hunter2#frag"), true);
            assert_eq!(shown, format!("http://h/p?a=b&{name}=***#frag"));
        }
        // Not secrets: left alone.
        assert_eq!(
            url("http://h/p?keys=3&monkey=x&v", true),
            "http://h/p?keys=3&monkey=x&v"
        );
        assert_eq!(
            url(
                "postgres://app@h/db?password=hunter2&sslmode=disable",
                false
            ),
            "postgres://app@h/db?password=***&sslmode=disable"
        );
    }

    #[test]
    fn keyword_form_passwords_are_hidden() {
        assert_eq!(
            conninfo("host=127.0.0.1 user=app password=hunter2 dbname=post"),
            "host=127.0.0.1 user=app password=*** dbname=post"
        );
        assert_eq!(
            conninfo("host = h  password = 'hunter 2\\' x'  dbname=post"),
            "host = h  password = ***  dbname=post"
        );
        assert_eq!(
            conninfo("PASSWORD=hunter2 sslpassword=hunter3"),
            "PASSWORD=*** sslpassword=***"
        );
        assert_eq!(conninfo("password=a\\ b user=x"), "password=*** user=x");
        // Malformed: a word after `password` without `=` is still hidden.
        assert_eq!(conninfo("host=h password hunter2"), "host=h password ***");
        assert_eq!(conninfo("password="), "password=***");
        assert_eq!(conninfo("host=h user=app"), "host=h user=app");
    }

    #[test]
    fn whole_specs_are_redacted_by_kind() {
        for (given, shown) in [
            ("postgres://a:s3cret@h/db", "postgres://a:***@h/db"),
            (
                "postgres:postgresql://a:s3cret@h/db",
                "postgres:postgresql://a:***@h/db",
            ),
            (
                "postgres:host=h password=s3cret",
                "postgres:host=h password=***",
            ),
            (
                "webhook:http://u:s3cret@h/in?token=s3cret&x=1",
                "webhook:http://u:***@h/in?token=***&x=1",
            ),
            ("webhok:http://u:s3cret@h/in", "webhok:http://u:***@h/in"),
            ("pg:password=s3cret", "pg:password=***"),
            ("file:/var/lib/x", "file:/var/lib/x"),
            ("noop", "noop"),
        ] {
            assert_eq!(spec(given), shown);
            assert!(!spec(given).contains("s3cret"));
        }
    }
}
