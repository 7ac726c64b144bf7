//! `wisp.toml` as written by anyone: parsing never panics, and every function
//! it accepts becomes a deployment the API validates without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wisp_core::{FunctionSpec, manifest::Manifest};

fuzz_target!(|text: &str| {
    if let Ok(manifest) = Manifest::parse(text) {
        for function in &manifest.function {
            let _ = FunctionSpec::from_deployment(function.deployment(None));
        }
    }
});
