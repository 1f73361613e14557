//! `ListPurchases` page tokens: opaque to clients, versioned, and bound to
//! the listing they continue.
//!
//! Clients store tokens, so their form is a contract. A token is `1.`
//! (the version) and 32 hex digits: the id of the last purchase of the
//! page, then the first 8 bytes of a SHA-256 of the listing's filter, so a
//! token given for one user's purchases cannot page through another's.
//! Only the exact text this service gives is accepted: a token that does
//! not parse, names no purchase, or was made for another listing is
//! refused, never guessed at. A new form takes the next version, and the
//! old one stays readable for as long as clients may hold it.

use sha2::{Digest, Sha256};

const VERSION: &str = "1.";

/// The token that continues the listing for `user_id` after purchase
/// `after_id`.
pub fn encode(after_id: i64, user_id: Option<&str>) -> String {
    let mut bytes = after_id.to_be_bytes().to_vec();
    bytes.extend_from_slice(&filter_digest(user_id));
    format!("{VERSION}{}", hex::encode(bytes))
}

/// The purchase id a token for the listing of `user_id` continues after;
/// `None` for anything but a token [`encode`] gave for that listing.
pub fn decode(token: &str, user_id: Option<&str>) -> Option<i64> {
    let bytes = hex::decode(token.strip_prefix(VERSION)?).ok()?;
    let (id, digest) = bytes.split_first_chunk::<8>()?;
    let after_id = i64::from_be_bytes(*id);
    let canonical = after_id > 0 && digest == filter_digest(user_id) && encode(after_id, user_id) == token;
    canonical.then_some(after_id)
}

fn filter_digest(user_id: Option<&str>) -> [u8; 8] {
    let filter = match user_id {
        Some(user) => format!("user:{user}"),
        None => "all".to_owned(),
    };
    let digest = Sha256::digest(filter.as_bytes());
    let mut first = [0; 8];
    first.copy_from_slice(&digest[..8]);
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_for_its_own_listing_only() {
        let token = encode(42, Some("u_1"));
        assert!(token.starts_with("1.") && token.len() == 34, "{token}");
        assert_eq!(decode(&token, Some("u_1")), Some(42));
        assert_eq!(decode(&token, Some("u_2")), None);
        assert_eq!(decode(&token, None), None);
        assert_eq!(decode(&encode(7, None), None), Some(7));
    }

    #[test]
    fn anything_but_the_exact_token_is_refused() {
        let token = encode(42, None);
        let refused = [
            "42".to_owned(),
            "+5".to_owned(),
            "05".to_owned(),
            token.to_uppercase(),
            format!("2.{}", &token[2..]),
            format!("{token}00"),
            token[..token.len() - 2].to_owned(),
            format!(" {token}"),
            encode(0, None),
            encode(-1, None),
        ];
        for token in refused {
            assert_eq!(decode(&token, None), None, "{token}");
        }
    }
}
