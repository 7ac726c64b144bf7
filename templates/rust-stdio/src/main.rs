//! A wasi:cli command: the request body on STDIN, the response on STDOUT.
//! Counts the lines, words and bytes it is given, as JSON.

use std::io::Read as _;

fn main() {
    let mut input = String::new();
    if let Err(error) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("could not read the request: {error}");
        std::process::exit(1);
    }
    println!(
        "{{\"lines\":{},\"words\":{},\"bytes\":{}}}",
        input.lines().count(),
        input.split_whitespace().count(),
        input.len()
    );
}
