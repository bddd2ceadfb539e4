//! Service selection: the most specific `match` wins.

/// Segment-aware prefix match on a raw path (no decoding, no normalisation).
///
/// `/chat` matches `/chat`, `/chat/x` and `/chat?q`, not `/chatroom`; a prefix ending in
/// `/` matches every path that starts with it, so `/` matches every path.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    if prefix.ends_with('/') {
        return true;
    }
    matches!(path.as_bytes().get(prefix.len()), None | Some(b'/') | Some(b'?'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_segment_aware() {
        assert!(prefix_matches("/chat", "/chat"));
        assert!(prefix_matches("/chat", "/chat/x"));
        assert!(prefix_matches("/chat", "/chat?q=1"));
        assert!(!prefix_matches("/chat", "/chatroom"));
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/static/", "/static/a.js"));
        assert!(!prefix_matches("/static/", "/static"));
    }
}
