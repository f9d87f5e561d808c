//! Plain Rust helpers behind the prelude's modules: hashing, randomness, URL parts and HTTP.
//! Nothing here touches QuickJS, so each piece is testable on its own.

use std::io::Read;

use hmac::{Hmac, Mac};
use sha2::Digest as _;

/// Digest of `data` with `alg` (md5, sha1, sha256, sha512); an HMAC when `key` is given.
pub(crate) fn digest(alg: &str, data: &[u8], key: Option<&[u8]>) -> Result<Vec<u8>, String> {
    fn hmac<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }
    Ok(match (alg, key) {
        ("md5", None) => md5::Md5::digest(data).to_vec(),
        ("sha1", None) => sha1::Sha1::digest(data).to_vec(),
        ("sha256", None) => sha2::Sha256::digest(data).to_vec(),
        ("sha512", None) => sha2::Sha512::digest(data).to_vec(),
        ("md5", Some(k)) => hmac::<Hmac<md5::Md5>>(k, data),
        ("sha1", Some(k)) => hmac::<Hmac<sha1::Sha1>>(k, data),
        ("sha256", Some(k)) => hmac::<Hmac<sha2::Sha256>>(k, data),
        ("sha512", Some(k)) => hmac::<Hmac<sha2::Sha512>>(k, data),
        (other, _) => return Err(format!("Digest method not supported: {other}")),
    })
}

/// `size` bytes from the operating system's random source.
pub(crate) fn random_bytes(size: usize) -> Vec<u8> {
    let mut out = vec![0u8; size];
    getrandom::fill(&mut out).expect("the OS random source is available");
    out
}

/// A random (version 4) UUID in canonical form.
pub(crate) fn random_uuid() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random source is available");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// The WHATWG URL parts the prelude's `URL` exposes, in the prelude's `URL_PARTS` order:
/// href, protocol, username, password, host, hostname, port, pathname, search, hash, origin.
/// The `url` crate's `quirks` module is the URL Standard's API, getters and setters alike.
pub(crate) fn url_parts(u: &url::Url) -> Vec<String> {
    use url::quirks as q;
    let mut parts: Vec<String> =
        [q::href, q::protocol, q::username, q::password, q::host, q::hostname, q::port, q::pathname, q::search, q::hash]
            .iter()
            .map(|get| get(u).to_string())
            .collect();
    parts.push(q::origin(u));
    parts
}

/// Parses `input` against `base` as `new URL(input, base)` does; `None` when either fails.
pub(crate) fn url_parse(input: &str, base: Option<&str>) -> Option<url::Url> {
    match base {
        Some(base) => url::Url::parse(base).ok()?.join(input).ok(),
        None => url::Url::parse(input).ok(),
    }
}

/// Runs one URL setter as the standard says: values a setter cannot use are ignored, except
/// for `href`, whose failure is the caller's `TypeError` (`Err`). `query` is what a
/// `URLSearchParams` change writes back (an empty list removes the query).
pub(crate) fn url_set(u: &mut url::Url, part: &str, value: &str) -> Result<(), ()> {
    use url::quirks as q;
    match part {
        "href" => return q::set_href(u, value).map_err(|_| ()),
        "protocol" => q::set_protocol(u, value).unwrap_or(()),
        "username" => q::set_username(u, value).unwrap_or(()),
        "password" => q::set_password(u, value).unwrap_or(()),
        "host" => q::set_host(u, value).unwrap_or(()),
        "hostname" => q::set_hostname(u, value).unwrap_or(()),
        "port" => q::set_port(u, value).unwrap_or(()),
        "pathname" => q::set_pathname(u, value),
        "search" => q::set_search(u, value),
        "hash" => q::set_hash(u, value),
        "query" => u.set_query(Some(value).filter(|q| !q.is_empty())),
        _ => return Err(()),
    }
    Ok(())
}

/// `application/x-www-form-urlencoded` parsing, as a flat `[name, value, name, value, …]` list.
pub(crate) fn form_parse(query: &str) -> Vec<String> {
    url::form_urlencoded::parse(query.as_bytes()).flat_map(|(k, v)| [k.into_owned(), v.into_owned()]).collect()
}

/// `application/x-www-form-urlencoded` serialising of a flat `[name, value, …]` list.
pub(crate) fn form_serialize(flat: &[String]) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for pair in flat.chunks(2) {
        out.append_pair(&pair[0], pair.get(1).map_or("", String::as_str));
    }
    out.finish()
}

/// What an HTTP exchange returned.
pub(crate) struct HttpReply {
    pub status: u16,
    pub status_text: String,
    pub url: String,
    pub headers: Vec<Vec<String>>,
    pub body: Vec<u8>,
}

/// Largest response body `fetch` reads (bigger bodies fail the request).
const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;

/// Performs one HTTP request. `Err` carries a network-level reason; HTTP error statuses are
/// replies, as in `fetch`.
pub(crate) fn http_request(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Option<Vec<u8>>,
    timeout: Option<std::time::Duration>,
) -> Result<HttpReply, String> {
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(k, v);
    }
    let mut request = builder.body(body.unwrap_or_default()).map_err(|e| e.to_string())?;
    if let Some(t) = timeout {
        // The whole exchange (connect, send, read the body) within `t`, on top of the agent's own.
        request = agent.configure_request(request).timeout_global(Some(t)).build();
    }
    let mut response = agent.run(request).map_err(|e| e.to_string())?;
    let status = response.status();
    let mut out_headers = Vec::new();
    for (k, v) in response.headers() {
        out_headers.push(vec![k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()]);
    }
    let mut bytes = Vec::new();
    response.body_mut().with_config().limit(MAX_BODY_BYTES).reader().read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    Ok(HttpReply {
        status: status.as_u16(),
        status_text: status.canonical_reason().unwrap_or("").to_string(),
        url: url.to_string(),
        headers: out_headers,
        body: bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn digests_match_known_vectors() {
        assert_eq!(hex(&digest("md5", b"abc", None).unwrap()), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(hex(&digest("sha1", b"abc", None).unwrap()), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(hex(&digest("sha256", b"abc", None).unwrap()), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(
            hex(&digest("sha256", b"The quick brown fox jumps over the lazy dog", Some(b"key")).unwrap()),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
        assert!(digest("sha3", b"", None).is_err());
    }

    #[test]
    fn uuids_are_version_4() {
        let id = random_uuid();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, random_uuid());
    }

    #[test]
    fn url_parts_follow_whatwg() {
        let u = url::Url::parse("https://user:pw@example.com:8080/a/b?x=1#frag").unwrap();
        let p = url_parts(&u);
        assert_eq!(p[1], "https:");
        assert_eq!(p[4], "example.com:8080");
        assert_eq!(p[7], "/a/b");
        assert_eq!(p[8], "?x=1");
        assert_eq!(p[9], "#frag");
        assert_eq!(p[10], "https://example.com:8080");
        let mut u = u;
        url_set(&mut u, "search", "?y=2").unwrap();
        assert_eq!(u.as_str(), "https://user:pw@example.com:8080/a/b?y=2#frag");
    }
}
