//! Function and namespace names: DNS labels, so they are safe in URLs, file
//! names and `{name}.{namespace}` routing.

/// The longest name a DNS label allows.
pub const MAX_NAME_LEN: usize = 63;

/// Why a name is not a DNS label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("name must not be empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("name `{0}` is longer than {MAX_NAME_LEN} characters")]
    TooLong(String),
    /// The name has a character outside `[a-z0-9-]`, or starts or ends with `-`.
    #[error(
        "name `{0}` is not a DNS label: use lowercase letters, digits and `-`, not at either end"
    )]
    Invalid(String),
}

/// Checks that `name` is a DNS label: 1 to 63 of `[a-z0-9-]`, with no `-` at either end.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.to_owned()));
    }
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    if !name.bytes().all(allowed) || name.starts_with('-') || name.ends_with('-') {
        return Err(NameError::Invalid(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for name in ["a", "hello", "hello-world", "f1", "0", &"x".repeat(63)] {
            assert_eq!(validate_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert!(matches!(
            validate_name(&"x".repeat(64)),
            Err(NameError::TooLong(_))
        ));
        for name in ["../x", "Hello", "a_b", "a.b", "-a", "a-", "a b", "é", "a/b"] {
            assert!(
                matches!(validate_name(name), Err(NameError::Invalid(_))),
                "{name}"
            );
        }
    }
}
