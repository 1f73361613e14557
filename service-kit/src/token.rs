//! The bearer token the two services share (`PAYMENTS_GRPC_TOKEN`), read by
//! one rule on both sides: a value that one service accepts is never one the
//! other would read differently. A space or line break around it (easy to
//! leave in a secrets file) is refused at start-up rather than trimmed on
//! one side and sent as is by the other, which would refuse every call.

/// Shortest token accepted: guessing must be hopeless.
pub const MIN_TOKEN_LEN: usize = 32;

/// Why a configured token is refused; never says what the token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("PAYMENTS_GRPC_TOKEN has white space around it; remove it, on both services")]
    SurroundingWhitespace,
    #[error("PAYMENTS_GRPC_TOKEN must be at least {MIN_TOKEN_LEN} characters")]
    TooShort,
    #[error("PAYMENTS_GRPC_TOKEN must be visible ASCII characters only (it travels in an HTTP/2 header)")]
    NotVisibleAscii,
}

/// The token as configured: `None` when unset or empty, else the value
/// itself, checked.
pub fn parse(value: Option<&str>) -> Result<Option<String>, TokenError> {
    let Some(value) = value.filter(|value| !value.is_empty()) else { return Ok(None) };
    if value.trim() != value {
        return Err(TokenError::SurroundingWhitespace);
    }
    if !value.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(TokenError::NotVisibleAscii);
    }
    if value.len() < MIN_TOKEN_LEN {
        return Err(TokenError::TooShort);
    }
    Ok(Some(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn unset_or_empty_is_no_token() {
        assert_eq!(parse(None), Ok(None));
        assert_eq!(parse(Some("")), Ok(None));
    }

    #[test]
    fn a_well_formed_token_is_taken_as_it_is() {
        assert_eq!(parse(Some(TOKEN)), Ok(Some(TOKEN.to_owned())));
    }

    #[test]
    fn white_space_around_it_is_refused_not_trimmed() {
        for value in [format!("{TOKEN} "), format!(" {TOKEN}"), format!("{TOKEN}\n"), "   ".to_owned()] {
            assert_eq!(parse(Some(&value)), Err(TokenError::SurroundingWhitespace), "{value:?}");
        }
    }

    #[test]
    fn short_or_invisible_tokens_are_refused() {
        assert_eq!(parse(Some("short")), Err(TokenError::TooShort));
        assert_eq!(parse(Some(&format!("{TOKEN}é"))), Err(TokenError::NotVisibleAscii));
        assert_eq!(parse(Some("0123456789abcdef 0123456789abcdef")), Err(TokenError::NotVisibleAscii));
    }
}
