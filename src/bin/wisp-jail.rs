//! `wisp-jail`: run by bubblewrap inside a process function's sandbox to
//! drop privileges, apply Landlock and execute the function, or, with
//! `--template`, to stay as the function's warm sandbox and do that for a
//! fresh process per call (see the `wisp_jail` crate). Not for use by hand.

fn main() {
    let mut args = std::env::args_os().skip(1).peekable();
    let error = if args.peek().is_some_and(|arg| arg == "--template") {
        wisp_jail::template::serve()
    } else {
        match wisp_jail::Entry::parse(args) {
            Ok((entry, program)) => entry.enter(&program),
            Err(error) => error,
        }
    };
    eprintln!("wisp-jail: {error}");
    // As a shell does: 127 when the program is not there, 126 otherwise.
    let missing = matches!(
        &error,
        wisp_jail::JailError::Exec { error, .. } if error.kind() == std::io::ErrorKind::NotFound
    );
    std::process::exit(if missing { 127 } else { 126 });
}
