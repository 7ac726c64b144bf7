//! What a `wasm-*` artifact may be: a component, taken as it is, or a
//! `wasm32-wasip1` core module (what Spin's SDKs, wasi-libc and older
//! toolchains build), turned into a component with wasmtime's WASI preview1
//! adapter, as Spin does when it loads one. A module that exports `_start`
//! is a command (`wasi:cli/run`); any other gets the reactor adapter, and
//! its own exports (`wasi:http/incoming-handler` from a Spin SDK) come from
//! the component type its bindings generator embedded.

use std::borrow::Cow;

use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
    WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wasmtime::{Engine, component::Component};

use crate::PrepareError;

const COMPONENT_VERSION: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];
const MODULE_VERSION: [u8; 4] = [0x01, 0x00, 0x00, 0x00];

/// The largest core module wisp converts: the encoder holds a few copies
/// of a module while it works, so a larger one is for the toolchain to
/// make a component of, not for the node.
pub(crate) const MAX_MODULE_BYTES: usize = 64 << 20;

/// Spin host interfaces wisp provides; a component importing any other
/// `fermyon:spin` or `spin:` interface is refused, naming it.
const SPIN_PROVIDED: &[&str] = &["fermyon:spin/key-value@2.0.0"];

/// The component `bytes` are, or make up when they are a core module.
pub(crate) fn component_bytes(bytes: &[u8]) -> Result<Cow<'_, [u8]>, PrepareError> {
    let invalid = |what: String| PrepareError::InvalidArtifact(what);
    match bytes {
        [0x00, b'a', b's', b'm', version @ ..] if version.starts_with(&COMPONENT_VERSION) => {
            Ok(Cow::Borrowed(bytes))
        }
        [0x00, b'a', b's', b'm', version @ ..] if version.starts_with(&MODULE_VERSION) => {
            if bytes.len() > MAX_MODULE_BYTES {
                return Err(invalid(format!(
                    "the artifact is a core WebAssembly module of {} bytes, and wisp makes \
                     components of modules up to {MAX_MODULE_BYTES} bytes: make it a component \
                     when you build it (wasm32-wasip2, or `wasm-tools component new` with the \
                     WASI preview 1 adapter)",
                    bytes.len()
                )));
            }
            let adapter = if exports_start(bytes)? {
                WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER
            } else {
                WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER
            };
            // The encoder reads a tenant's bytes: should it panic on them, the
            // module is refused like any other it cannot convert, rather than
            // failing the deploy (or a node's start) with a panic.
            let encode = || {
                // No validation here: compiling the component validates it.
                wit_component::ComponentEncoder::default()
                    .module(bytes)
                    .and_then(|encoder| {
                        encoder.adapter(WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, adapter)
                    })
                    .and_then(|mut encoder| encoder.encode())
            };
            let why = match std::panic::catch_unwind(encode) {
                Ok(Ok(component)) => return Ok(Cow::Owned(component)),
                Ok(Err(error)) => format!("{error:#}"),
                Err(_) => "the encoder failed on it".to_owned(),
            };
            Err(invalid(format!(
                "the artifact is a core WebAssembly module that cannot be made a component \
                 (wisp takes wasm32-wasip1 modules, which import only wasi_snapshot_preview1 \
                 and the interfaces of their embedded component type; or build for \
                 wasm32-wasip2): {why}"
            )))
        }
        _ => Err(invalid(
            "the artifact is not WebAssembly (it does not start with \\0asm)".into(),
        )),
    }
}

/// Whether a core module exports `_start`, the entry point of a command.
fn exports_start(module: &[u8]) -> Result<bool, PrepareError> {
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        let payload = payload.map_err(|error| {
            PrepareError::InvalidArtifact(format!(
                "the core WebAssembly module is malformed: {error}"
            ))
        })?;
        if let wasmparser::Payload::ExportSection(exports) = payload {
            for export in exports {
                let export = export.map_err(|error| {
                    PrepareError::InvalidArtifact(format!(
                        "the core WebAssembly module is malformed: {error}"
                    ))
                })?;
                if export.name == "_start" {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// The Spin host interfaces `component` imports that wisp does not provide.
pub(crate) fn unprovided_spin_imports(component: &Component, engine: &Engine) -> Vec<String> {
    component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|name| name.starts_with("fermyon:spin/") || name.starts_with("spin:"))
        .filter(|name| !SPIN_PROVIDED.contains(name))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use wasm_encoder::{
        CodeSection, EntityType, ExportKind, ExportSection, Function, FunctionSection,
        ImportSection, MemorySection, MemoryType, Module, TypeSection, ValType,
    };

    /// A core module importing `fd_write` from `import_module` (as wasi-libc
    /// links one) and exporting `_start` and its memory.
    fn command_module(import_module: &str) -> Vec<u8> {
        let mut module = Module::new();
        let mut types = TypeSection::new();
        types.ty().function([ValType::I32; 4], [ValType::I32]);
        types.ty().function([], []);
        module.section(&types);
        let mut imports = ImportSection::new();
        imports.import(import_module, "fd_write", EntityType::Function(0));
        module.section(&imports);
        let mut functions = FunctionSection::new();
        functions.function(1);
        module.section(&functions);
        let mut memories = MemorySection::new();
        memories.memory(MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        module.section(&memories);
        let mut exports = ExportSection::new();
        exports.export("memory", ExportKind::Memory, 0);
        exports.export("_start", ExportKind::Func, 1);
        module.section(&exports);
        let mut code = CodeSection::new();
        let mut start = Function::new([]);
        start.instructions().end();
        code.function(&start);
        module.section(&code);
        module.finish()
    }

    #[test]
    fn components_pass_as_they_are_and_commands_get_the_command_adapter() {
        let component = b"\0asm\x0d\0\x01\0";
        assert!(matches!(
            component_bytes(component).unwrap(),
            Cow::Borrowed(_)
        ));
        let module = command_module("wasi_snapshot_preview1");
        assert!(exports_start(&module).unwrap());
        let made = component_bytes(&module).unwrap();
        assert!(made.starts_with(b"\0asm\x0d\0\x01\0"), "a component");
        let engine = Engine::default();
        let component = Component::new(&engine, &made).unwrap();
        let exports: Vec<String> = component
            .component_type()
            .exports(&engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        assert!(
            exports
                .iter()
                .any(|name| name.starts_with("wasi:cli/run@0.2")),
            "{exports:?}"
        );
    }

    #[test]
    fn what_is_not_a_usable_module_says_why() {
        let foreign = command_module("env");
        let error = component_bytes(&foreign).unwrap_err().to_string();
        assert!(
            error.contains("env"),
            "names the import it cannot satisfy: {error}"
        );
        let mut huge = command_module("wasi_snapshot_preview1");
        huge.resize(MAX_MODULE_BYTES + 1, 0);
        let error = component_bytes(&huge).unwrap_err().to_string();
        assert!(error.contains("wasm-tools component new"), "{error}");
        let text = component_bytes(b"#!/bin/sh").unwrap_err().to_string();
        assert!(text.contains("not WebAssembly"), "{text}");
    }
}
