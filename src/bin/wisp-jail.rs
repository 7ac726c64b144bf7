//! `wisp-jail`: run by bubblewrap inside a process function's sandbox to
//! drop privileges, apply Landlock and execute the function (see the
//! `wisp_jail` crate). Not for use by hand.

fn main() {
    let error = match wisp_jail::Entry::parse(std::env::args_os().skip(1)) {
        Ok((entry, program)) => entry.enter(&program),
        Err(error) => error,
    };
    eprintln!("wisp-jail: {error}");
    // As a shell does: 127 when the program is not there, 126 otherwise.
    let missing = matches!(
        &error,
        wisp_jail::JailError::Exec { error, .. } if error.kind() == std::io::ErrorKind::NotFound
    );
    std::process::exit(if missing { 127 } else { 126 });
}
