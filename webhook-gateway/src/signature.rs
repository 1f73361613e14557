//! Stripe webhook signatures: parsing the `Stripe-Signature` header and
//! verifying it over the exact bytes received.
//!
//! The header is `t=<unix seconds>,v1=<hex>[,v1=<hex>...]`, possibly with
//! `v0=` and other keys that are ignored. Each `v1` is the lowercase hex of
//! HMAC-SHA256 keyed with the whole `whsec_...` secret string (not decoded)
//! over `"<t>." + body`. A request is authentic when any `v1` matches any
//! configured secret (Stripe sends one `v1` per active secret while a secret
//! is rolled) and `t` is within the tolerance of now, in either direction.
//! Parsing follows Stripe's official libraries, which split on `,` and `=`
//! without trimming: `t=1, v1=...` has no `v1` key and is rejected.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The only signature scheme Stripe uses for live signatures.
const SCHEME: &str = "v1";

/// Why a request's signature was refused. Safe to show the sender: it never
/// carries a secret or the expected signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    MissingHeader,
    #[error("the Stripe-Signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("the Stripe-Signature header has no v1 signature")]
    NoV1Signature,
    #[error("the signature timestamp is outside the tolerance")]
    StaleTimestamp,
    #[error("no v1 signature matches the payload")]
    Mismatch,
}

impl SignatureError {
    /// Stable code for responses, logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingHeader => "missing_signature",
            Self::Malformed(_) => "malformed_signature",
            Self::NoV1Signature => "no_v1_signature",
            Self::StaleTimestamp => "stale_timestamp",
            Self::Mismatch => "signature_mismatch",
        }
    }
}

/// A parsed `Stripe-Signature` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader<'a> {
    pub timestamp: i64,
    /// Every `v1` value, as sent (not yet known to be hex).
    pub v1: Vec<&'a str>,
}

/// Parses a header value. Empty items, items without `=` and unknown keys
/// (`v0`, future schemes) are skipped; a missing, repeated or non-numeric
/// `t` is malformed.
pub fn parse_header(value: &str) -> Result<SignatureHeader<'_>, SignatureError> {
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for (key, value) in value.split(',').filter_map(|item| item.split_once('=')) {
        match key {
            "t" if timestamp.is_some() => return Err(SignatureError::Malformed("t appears more than once")),
            "t" => timestamp = Some(parse_timestamp(value)?),
            SCHEME => v1.push(value),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no t timestamp"))?;
    if v1.is_empty() {
        return Err(SignatureError::NoV1Signature);
    }
    Ok(SignatureHeader { timestamp, v1 })
}

fn parse_timestamp(value: &str) -> Result<i64, SignatureError> {
    const NOT_A_TIMESTAMP: SignatureError = SignatureError::Malformed("t is not a Unix timestamp");
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NOT_A_TIMESTAMP);
    }
    value.parse().map_err(|_| NOT_A_TIMESTAMP)
}

/// A webhook endpoint's signing secret (`whsec_...`). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// The prefix of every Stripe webhook signing secret.
    pub const PREFIX: &'static str = "whsec_";

    /// Accepts only values shaped like a Stripe signing secret, so that an
    /// API key or an empty string set by mistake stops the gateway at start-up.
    pub fn new(value: impl Into<String>) -> Result<Self, &'static str> {
        let value = value.into();
        if value.len() <= Self::PREFIX.len() || !value.starts_with(Self::PREFIX) {
            return Err("a Stripe webhook signing secret starts with whsec_");
        }
        Ok(Self(value))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

/// Verifies signatures against one or more secrets.
#[derive(Clone)]
pub struct Verifier {
    /// One HMAC already keyed per secret: cloning it per request skips
    /// re-hashing the key.
    keys: Vec<HmacSha256>,
    tolerance_secs: u64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("secrets", &self.keys.len())
            .field("tolerance_secs", &self.tolerance_secs)
            .finish()
    }
}

impl Verifier {
    pub fn new(secrets: &[WebhookSecret], tolerance_secs: u64) -> Self {
        let keys = secrets.iter().map(|secret| keyed(secret.expose())).collect();
        Self { keys, tolerance_secs }
    }

    /// Checks `header` against `body` as received, at `now` (Unix seconds).
    /// Returns the signed timestamp.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8], now: i64) -> Result<i64, SignatureError> {
        self.check_header(header, now)?.check_body(self, body)
    }

    /// Everything that can be checked before the body is read: the header is
    /// there, parses, is within the tolerance and has a `v1` that could match.
    /// A request that fails here is refused without buffering its body, so a
    /// stranger without a signature cannot make the gateway hold megabytes.
    pub fn check_header(&self, header: Option<&[u8]>, now: i64) -> Result<SignedHeader, SignatureError> {
        let header = header.ok_or(SignatureError::MissingHeader)?;
        let header = std::str::from_utf8(header).map_err(|_| SignatureError::Malformed("not UTF-8"))?;
        let parsed = parse_header(header)?;
        let age = now.checked_sub(parsed.timestamp).map(i64::unsigned_abs);
        if age.is_none_or(|age| age > self.tolerance_secs) {
            return Err(SignatureError::StaleTimestamp);
        }
        let candidates: Vec<[u8; 32]> = parsed.v1.iter().filter_map(|v1| decode_lowercase_hex(v1)).collect();
        if candidates.is_empty() {
            return Err(SignatureError::Mismatch);
        }
        Ok(SignedHeader { timestamp: parsed.timestamp, candidates })
    }
}

/// A `Stripe-Signature` header that passed [`Verifier::check_header`]: what
/// is left to check is that one of its signatures matches the body.
#[derive(Debug, Clone)]
pub struct SignedHeader {
    timestamp: i64,
    candidates: Vec<[u8; 32]>,
}

impl SignedHeader {
    /// Checks the body against the header with `verifier`'s secrets.
    /// Returns the signed timestamp.
    pub fn check_body(&self, verifier: &Verifier, body: &[u8]) -> Result<i64, SignatureError> {
        let matches = verifier.keys.iter().any(|key| {
            let expected = signature(key.clone(), self.timestamp, body);
            self.candidates.iter().any(|candidate| bool::from(expected.ct_eq(candidate)))
        });
        if matches { Ok(self.timestamp) } else { Err(SignatureError::Mismatch) }
    }
}

/// Builds the header Stripe would send for `body` signed with `secret` at
/// `timestamp`: what tests, the fixture sender and the load generator use.
pub fn sign(secret: &WebhookSecret, timestamp: i64, body: &[u8]) -> String {
    let signature = signature(keyed(secret.expose()), timestamp, body);
    format!("t={timestamp},{SCHEME}={}", hex::encode(signature))
}

fn keyed(secret: &str) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    HmacSha256::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// A `v1` value as the 32 bytes it encodes. Only lowercase hex of the exact
/// length counts: Stripe's libraries compare the lowercase hex string, so
/// uppercase or padded values never match.
fn decode_lowercase_hex(value: &str) -> Option<[u8; 32]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let bytes = value.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut decoded = [0u8; 32];
    for (out, pair) in decoded.iter_mut().zip(bytes.chunks_exact(2)) {
        *out = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(decoded)
}

fn signature(mut mac: HmacSha256, timestamp: i64, body: &[u8]) -> [u8; 32] {
    let mut digits = [0u8; 20];
    mac.update(decimal(timestamp, &mut digits));
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// `value`'s decimal digits, written into `buffer` without allocating
/// (timestamps are never negative once parsed).
fn decimal(value: i64, buffer: &mut [u8; 20]) -> &[u8] {
    let mut rest = value.unsigned_abs();
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    &buffer[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_unit_test_secret";
    const BODY: &[u8] = br#"{"id":"evt_1","object":"event"}"#;
    const NOW: i64 = 1_800_000_000;

    fn secret(value: &str) -> WebhookSecret {
        WebhookSecret::new(value).expect("valid secret")
    }

    fn verifier() -> Verifier {
        Verifier::new(&[secret(SECRET)], 300)
    }

    fn valid_v1(timestamp: i64) -> String {
        let header = sign(&secret(SECRET), timestamp, BODY);
        header.split_once(",v1=").expect("v1").1.to_owned()
    }

    fn verify(header: &str) -> Result<i64, SignatureError> {
        verifier().verify(Some(header.as_bytes()), BODY, NOW)
    }

    #[test]
    fn decimal_digits_match_to_string() {
        for value in [0, 7, 10, 1_785_766_190, i64::MAX] {
            assert_eq!(decimal(value, &mut [0; 20]), value.to_string().as_bytes());
        }
    }

    #[test]
    fn only_lowercase_hex_of_the_right_length_decodes() {
        let lower = "0123456789abcdef".repeat(4);
        assert_eq!(hex::encode(decode_lowercase_hex(&lower).expect("decodes")), lower);
        assert!(decode_lowercase_hex(&lower.to_uppercase()).is_none());
        assert!(decode_lowercase_hex(&lower[..62]).is_none());
        assert!(decode_lowercase_hex(&format!("{}g", &lower[..63])).is_none());
    }

    #[test]
    fn header_from_sign_verifies() {
        assert_eq!(verify(&sign(&secret(SECRET), NOW, BODY)), Ok(NOW));
    }

    #[test]
    fn any_matching_v1_among_several_is_enough() {
        let header = format!("t={NOW},v1={},v1={}", "ab".repeat(32), valid_v1(NOW));
        assert_eq!(verify(&header), Ok(NOW));
    }

    #[test]
    fn v0_and_unknown_keys_are_ignored() {
        let header = format!("t={NOW},v0={},scheme=x,v1={},v9=1", "00".repeat(32), valid_v1(NOW));
        assert_eq!(verify(&header), Ok(NOW));
    }

    #[test]
    fn v0_alone_is_not_a_signature() {
        let header = format!("t={NOW},v0={}", valid_v1(NOW));
        assert_eq!(verify(&header), Err(SignatureError::NoV1Signature));
    }

    #[test]
    fn empty_items_and_items_without_equals_are_skipped() {
        let header = format!(",t={NOW},,junk,v1={},", valid_v1(NOW));
        assert_eq!(verify(&header), Ok(NOW));
    }

    #[test]
    fn bad_hex_and_wrong_length_do_not_match() {
        for v1 in ["zz".repeat(32), "ab".repeat(31), String::new(), format!("{}00", valid_v1(NOW))] {
            assert_eq!(verify(&format!("t={NOW},v1={v1}")), Err(SignatureError::Mismatch), "{v1}");
        }
    }

    #[test]
    fn uppercase_hex_does_not_match() {
        let header = format!("t={NOW},v1={}", valid_v1(NOW).to_uppercase());
        assert_eq!(verify(&header), Err(SignatureError::Mismatch));
    }

    #[test]
    fn whitespace_around_items_hides_the_key() {
        assert_eq!(verify(&format!("t={NOW}, v1={}", valid_v1(NOW))), Err(SignatureError::NoV1Signature));
        assert_eq!(
            verify(&format!(" t={NOW},v1={}", valid_v1(NOW))),
            Err(SignatureError::Malformed("no t timestamp"))
        );
        assert_eq!(verify(&format!("t={NOW},v1={} ", valid_v1(NOW))), Err(SignatureError::Mismatch));
    }

    #[test]
    fn duplicate_t_is_malformed() {
        let header = format!("t={NOW},t={NOW},v1={}", valid_v1(NOW));
        assert_eq!(verify(&header), Err(SignatureError::Malformed("t appears more than once")));
    }

    #[test]
    fn non_numeric_t_is_malformed() {
        for t in ["", "abc", "-5", "+5", "1.5", "99999999999999999999", " 5"] {
            let header = format!("t={t},v1={}", valid_v1(NOW));
            assert_eq!(
                verify(&header),
                Err(SignatureError::Malformed("t is not a Unix timestamp")),
                "t={t:?}"
            );
        }
    }

    #[test]
    fn missing_t_or_empty_header_is_malformed() {
        assert_eq!(
            verify(&format!("v1={}", valid_v1(NOW))),
            Err(SignatureError::Malformed("no t timestamp"))
        );
        assert_eq!(verify(""), Err(SignatureError::Malformed("no t timestamp")));
    }

    #[test]
    fn missing_header_is_reported_as_such() {
        assert_eq!(verifier().verify(None, BODY, NOW), Err(SignatureError::MissingHeader));
    }

    #[test]
    fn non_utf8_header_is_malformed() {
        let header = b"t=1,v1=\xff";
        assert_eq!(verifier().verify(Some(header), BODY, NOW), Err(SignatureError::Malformed("not UTF-8")));
    }

    #[test]
    fn timestamps_beyond_tolerance_are_stale_in_both_directions() {
        for t in [NOW - 301, NOW + 301, 0, i64::MAX] {
            let header = sign(&secret(SECRET), t, BODY);
            assert_eq!(verify(&header), Err(SignatureError::StaleTimestamp), "t={t}");
        }
        for t in [NOW - 300, NOW + 300] {
            assert_eq!(verify(&sign(&secret(SECRET), t, BODY)), Ok(t), "t={t}");
        }
    }

    #[test]
    fn a_changed_body_or_timestamp_does_not_verify() {
        let header = sign(&secret(SECRET), NOW, BODY);
        assert_eq!(verifier().verify(Some(header.as_bytes()), b"{}", NOW), Err(SignatureError::Mismatch));
        let moved = format!("t={},v1={}", NOW + 1, valid_v1(NOW));
        assert_eq!(verify(&moved), Err(SignatureError::Mismatch));
    }

    #[test]
    fn any_configured_secret_verifies_during_rotation() {
        let verifier = Verifier::new(&[secret("whsec_old"), secret("whsec_new")], 300);
        for s in ["whsec_old", "whsec_new"] {
            let header = sign(&secret(s), NOW, BODY);
            assert_eq!(verifier.verify(Some(header.as_bytes()), BODY, NOW), Ok(NOW), "{s}");
        }
        let other = sign(&secret("whsec_other"), NOW, BODY);
        assert_eq!(verifier.verify(Some(other.as_bytes()), BODY, NOW), Err(SignatureError::Mismatch));
    }

    #[test]
    fn secrets_must_look_like_stripe_signing_secrets_and_never_print() {
        assert!(WebhookSecret::new("").is_err());
        assert!(WebhookSecret::new("whsec_").is_err());
        assert!(WebhookSecret::new("sk_test_123").is_err());
        let secret = secret("whsec_do_not_print");
        assert!(!format!("{secret:?}").contains("do_not_print"));
        assert!(!format!("{:?}", Verifier::new(&[secret], 300)).contains("do_not_print"));
    }

    /// The known-answer vectors computed with Stripe's official library over
    /// the repository's fixtures, checked at their own time plus 3 seconds.
    #[test]
    fn official_known_answer_vectors_agree() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/stripe");
        let vectors: serde_json::Value = serde_json::from_slice(
            &std::fs::read(format!("{dir}/signatures.json")).expect("signatures.json"),
        )
        .expect("valid JSON");
        let secret = secret(vectors["secret"].as_str().expect("secret"));
        let verifier = Verifier::new(&[secret], 300);
        let cases = vectors["vectors"].as_array().expect("vectors");
        assert!(cases.len() >= 15, "expected every vector, got {}", cases.len());
        for case in cases {
            let file = case["file"].as_str().expect("file");
            let body = std::fs::read(format!("{dir}/{file}")).expect("fixture");
            let header = case["header"].as_str().expect("header");
            let now = case["timestamp"].as_i64().expect("timestamp") + 3;
            let verdict = verifier.verify(Some(header.as_bytes()), &body, now);
            assert_eq!(verdict.is_ok(), case["valid"].as_bool().expect("valid"), "{case}: {verdict:?}");
        }
    }
}
