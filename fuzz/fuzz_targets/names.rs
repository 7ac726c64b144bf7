//! Names of functions and namespaces: whatever is accepted is a DNS label
//! (1 to 63 of `a-z`, `0-9`, `-`, not starting or ending with `-`), so it is
//! safe in a path, a metric label and a hostname.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|name: &str| {
    if wisp_core::validate_name(name).is_ok() {
        assert!((1..=63).contains(&name.len()), "{name:?}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{name:?}"
        );
        assert!(!name.starts_with('-') && !name.ends_with('-'), "{name:?}");
    }
});
