//! A `wasi:cli` command test guest. Its request body says what to do:
//! `env` prints the environment, `exit N` fails with status N, `loop` never
//! ends, `trap` panics; anything else is echoed back.

use std::io::{Read as _, Write as _};

fn main() {
    let mut body = String::new();
    std::io::stdin()
        .read_to_string(&mut body)
        .expect("stdin reads");
    let command = body.trim();
    if command == "env" {
        let mut vars: Vec<String> = std::env::vars()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect();
        vars.sort();
        print!("{}", vars.concat());
    } else if let Some(code) = command.strip_prefix("exit ") {
        eprintln!("stdio-probe: exiting with status {code} as asked");
        std::process::exit(code.parse().unwrap_or(1));
    } else if command == "loop" {
        loop {
            std::hint::black_box(0);
        }
    } else if command == "trap" {
        panic!("the probe was asked to trap");
    } else {
        std::io::stdout()
            .write_all(body.as_bytes())
            .expect("stdout writes");
    }
}
