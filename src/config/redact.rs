//! Redaction of URL credentials: a proxy URL (from the file or from `HTTPS_PROXY`) may carry
//! `user:password@`, and nothing the daemon prints (configuration errors, logs, `check-config`,
//! fetch errors) may repeat the password.
//!
//! A leaf of `config/`; `discovery` uses it for the proxy it connects to.

/// Characters that never occur in a URL (RFC 3986 §2) and so end one inside a longer text:
/// whitespace, quotes of `{:?}` and TOML, angle brackets and the like.
fn ends_url(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '`' | '<' | '>' | '{' | '}' | '|' | '\\' | '^')
}

/// `text` with the userinfo (RFC 3986 §3.2.1) of every URL in it replaced by `***`:
/// `http://user:secret@proxy:3128` becomes `http://***@proxy:3128`. Works on a bare URL and on
/// any message that quotes one (a TOML error, `{:?}` output); a word without a scheme but with
/// an `@` (`user:secret@proxy:3128`) is redacted the same way. Everything up to the last `@` of a
/// word is hidden, so a password with a stray `@`, `/` or `#` does not leak either.
pub fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest.find(ends_url).unwrap_or(rest.len());
        let (word, tail) = rest.split_at(end);
        out.push_str(&redact_word(word));
        // The delimiter itself (one char), then the next word.
        let mut chars = tail.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

fn redact_word(word: &str) -> std::borrow::Cow<'_, str> {
    let Some(at) = word.rfind('@') else {
        return word.into();
    };
    let start = word[..at].find("://").map_or(0, |i| i + 3);
    if start == at {
        return word.into();
    }
    format!("{}***{}", &word[..start], &word[at..]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_hidden_and_the_rest_kept() {
        for (text, want) in [
            ("http://user:secret@proxy:3128", "http://***@proxy:3128"),
            ("http://user:secret@proxy:3128/", "http://***@proxy:3128/"),
            ("http://user@proxy", "http://***@proxy"),
            ("http://u:p%40ss@[::1]:8080", "http://***@[::1]:8080"),
            // A raw `@`, `/` or `#` in the password: everything before the last `@` goes.
            ("http://user:p@ss@proxy:1", "http://***@proxy:1"),
            ("http://user:pa/ss#x@proxy:1", "http://***@proxy:1"),
            ("user:secret@proxy:3128", "***@proxy:3128"),
            ("socks5://u:secret@h:1", "socks5://***@h:1"),
            // Nothing to hide.
            ("http://proxy.example:3128", "http://proxy.example:3128"),
            ("http://@proxy:1", "http://@proxy:1"),
            ("", ""),
            ("no url here", "no url here"),
        ] {
            assert_eq!(redact_userinfo(text), want, "{text}");
        }
    }

    #[test]
    fn urls_inside_messages_are_redacted() {
        assert_eq!(
            redact_userinfo(
                "\"http://u:secret@x:1\": expected http://HOST:PORT without credentials or path"
            ),
            "\"http://***@x:1\": expected http://HOST:PORT without credentials or path"
        );
        // A TOML error quoting the line, with a non-ASCII neighbour and two URLs.
        let toml = "2 | proxy = \"http://a:s3cret@p:1 » http://b:other@q:2\n  |         ^";
        let got = redact_userinfo(toml);
        assert!(!got.contains("s3cret") && !got.contains("other"), "{got}");
        assert_eq!(
            got,
            "2 | proxy = \"http://***@p:1 » http://***@q:2\n  |         ^"
        );
    }
}
