//! Components made by hand with `wasm-encoder`, for shapes a Rust guest
//! cannot take: several core instances, each with a linear memory of its own.

use wasm_encoder::{
    BlockType, CanonicalFunctionSection, CodeSection, Component, ComponentAliasSection,
    ComponentExportKind, ComponentExportSection, ComponentInstanceSection, ComponentTypeSection,
    ComponentValType, ExportKind, ExportSection, Function, FunctionSection, ImportSection,
    InstanceSection, MemorySection, MemoryType, Module, ModuleArg, ModuleSection, TypeSection,
    ValType,
};

/// A `wasm-stdio` command (it exports `wasi:cli/run@0.2.0` and imports
/// nothing) made of `memories` core instances of one small module, each with
/// a linear memory of its own (one page to start with), and a driver that
/// grows each of them by `mib` MiB in turn. A growth that is refused traps;
/// otherwise the command succeeds with no output.
pub fn many_memories(memories: u32, mib: u32) -> Vec<u8> {
    build(memories, mib, false)
}

/// Like [`many_memories`] with no growth, but the command never ends: it
/// spins until its call's deadline, so its instance (and its share of the
/// node's instance pool) stays taken while the test goes on.
pub fn many_memories_spinning(memories: u32) -> Vec<u8> {
    build(memories, 0, true)
}

fn build(memories: u32, mib: u32, spin: bool) -> Vec<u8> {
    const PAGE: u32 = 64 << 10;
    let pages = i32::try_from(u64::from(mib) * (1 << 20) / u64::from(PAGE)).expect("a few MiB");

    // (module (memory 1) (func (export "grow") (param i32) (result i32) local.get 0 memory.grow))
    let mut grower = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32], [ValType::I32]);
    grower.section(&types);
    grower.section(FunctionSection::new().function(0));
    grower.section(MemorySection::new().memory(MemoryType {
        minimum: 1,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    }));
    grower.section(ExportSection::new().export("grow", ExportKind::Func, 0));
    let mut grow = Function::new([]);
    grow.instructions().local_get(0).memory_grow(0).end();
    grower.section(CodeSection::new().function(&grow));

    // The driver imports `grow` from each instance and calls them in turn:
    // (func (export "run") (result i32) (if (i32.eq (call $g (i32.const pages)) (i32.const -1)) (then unreachable)) ... (i32.const 0))
    let mut driver = Module::new();
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32], [ValType::I32]);
    types.ty().function([], [ValType::I32]);
    driver.section(&types);
    let mut imports = ImportSection::new();
    for index in 0..memories {
        imports.import(
            &format!("g{index}"),
            "grow",
            wasm_encoder::EntityType::Function(0),
        );
    }
    driver.section(&imports);
    driver.section(FunctionSection::new().function(1));
    driver.section(ExportSection::new().export("run", ExportKind::Func, memories));
    let mut run = Function::new([]);
    let mut body = run.instructions();
    for index in 0..memories {
        body.i32_const(pages)
            .call(index)
            .i32_const(-1)
            .i32_eq()
            .if_(BlockType::Empty)
            .unreachable()
            .end();
    }
    if spin {
        // (loop (br 0))
        body.loop_(BlockType::Empty).br(0).end();
    }
    body.i32_const(0).end();
    driver.section(CodeSection::new().function(&run));

    let mut component = Component::new();
    component.section(&ModuleSection(&grower));
    component.section(&ModuleSection(&driver));
    let mut instances = InstanceSection::new();
    for _ in 0..memories {
        instances.instantiate(0, Vec::<(&str, ModuleArg)>::new());
    }
    let args: Vec<(String, ModuleArg)> = (0..memories)
        .map(|index| (format!("g{index}"), ModuleArg::Instance(index)))
        .collect();
    instances.instantiate(1, args);
    component.section(&instances);
    // `run: func() -> result`, lifted from the driver's `run`.
    let mut types = ComponentTypeSection::new();
    types.defined_type().result(None, None);
    types
        .function()
        .params(Vec::<(&str, ComponentValType)>::new())
        .result(Some(ComponentValType::Type(0)));
    component.section(&types);
    component.section(ComponentAliasSection::new().alias(
        wasm_encoder::Alias::CoreInstanceExport {
            instance: memories,
            kind: ExportKind::Func,
            name: "run",
        },
    ));
    component.section(CanonicalFunctionSection::new().lift(0, 1, []));
    component.section(ComponentInstanceSection::new().export_items([(
        "run",
        ComponentExportKind::Func,
        0,
    )]));
    component.section(ComponentExportSection::new().export(
        "wasi:cli/run@0.2.0",
        ComponentExportKind::Instance,
        0,
        None,
    ));
    component.finish()
}
