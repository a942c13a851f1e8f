//! The shape a component must have before the node spends any time
//! compiling it: its size, how many core modules and functions it has, and
//! for every function its body size, locals, loops and nesting depth.
//! Compilation time and memory grow with these, some faster than linearly
//! (a function of 5,000 loops, 75 KB of code, takes Cranelift 10 s; one
//! of 1,000 takes half a second), so a component crafted to be expensive
//! to compile is refused here by the limit it breaks, in a single pass
//! over its bytes. Shapes these do not catch are bounded by the child
//! process the node compiles in (`compiler.rs`).

use wasmparser::{Operator, Parser, Payload};

/// The most a component may be of each thing the compiler's cost follows.
/// Each is far above what the example guests need (text-embed, the
/// largest: 2.4 MB, 3 core modules, 2,775 functions, its longest body
/// 24 KB; at most 86 loops, 122 locals and 126 levels of nesting in a
/// function), to leave room for guests that embed an interpreter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapeLimits {
    pub max_component_bytes: usize,
    pub max_core_modules: usize,
    pub max_functions: usize,
    pub max_function_bytes: usize,
    pub max_locals: u64,
    pub max_loops: usize,
    pub max_nesting: usize,
}

impl Default for ShapeLimits {
    fn default() -> Self {
        ShapeLimits {
            max_component_bytes: 128 << 20,
            max_core_modules: 64,
            max_functions: 200_000,
            max_function_bytes: 1 << 20,
            max_locals: 10_000,
            max_loops: 1_000,
            max_nesting: 2_000,
        }
    }
}

/// Checks `wasm` against `limits`. The error names the limit and, for a
/// function, which one (its index in its core module, counted from the
/// module's first function body).
pub fn check(wasm: &[u8], limits: &ShapeLimits) -> Result<(), String> {
    if wasm.len() > limits.max_component_bytes {
        return Err(format!(
            "the component is {} bytes; the node compiles components of at most {} bytes",
            wasm.len(),
            limits.max_component_bytes
        ));
    }
    let mut modules = 0;
    let mut functions = 0usize;
    // The body's index within the core module being read.
    let mut body = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| format!("the component cannot be read: {e}"))?;
        match payload {
            Payload::ModuleSection { .. } => {
                modules += 1;
                if modules > limits.max_core_modules {
                    return Err(format!(
                        "the component has more than {} core modules, the most the node compiles",
                        limits.max_core_modules
                    ));
                }
            }
            Payload::CodeSectionStart { count, .. } => {
                body = 0;
                functions = functions.saturating_add(count as usize);
                if functions > limits.max_functions {
                    return Err(format!(
                        "the component has more than {} functions, the most the node compiles",
                        limits.max_functions
                    ));
                }
            }
            Payload::CodeSectionEntry(function) => {
                check_function(&function, limits).map_err(|problem| format!("function {body}: {problem}"))?;
                body += 1;
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_function(function: &wasmparser::FunctionBody<'_>, limits: &ShapeLimits) -> Result<(), String> {
    let size = function.range().len();
    if size > limits.max_function_bytes {
        return Err(format!(
            "its body is {size} bytes; the node compiles bodies of at most {}",
            limits.max_function_bytes
        ));
    }
    let mut locals = 0u64;
    for group in function.get_locals_reader().map_err(|e| e.to_string())? {
        let (count, _) = group.map_err(|e| e.to_string())?;
        locals = locals.saturating_add(u64::from(count));
    }
    if locals > limits.max_locals {
        return Err(format!("it declares {locals} locals; the node compiles at most {}", limits.max_locals));
    }
    let mut operators = function.get_operators_reader().map_err(|e| e.to_string())?;
    // The function's own body is the first level.
    let mut depth = 1usize;
    let mut loops = 0usize;
    while !operators.eof() {
        let operator = operators.read().map_err(|e| e.to_string())?;
        if let Operator::Loop { .. } = operator {
            loops += 1;
            if loops > limits.max_loops {
                return Err(format!("it has more than {} loops, the most the node compiles", limits.max_loops));
            }
        }
        match operator {
            Operator::Block { .. }
            | Operator::Loop { .. }
            | Operator::If { .. }
            | Operator::Try { .. }
            | Operator::TryTable { .. } => {
                depth += 1;
                if depth > limits.max_nesting {
                    return Err(format!(
                        "its blocks nest more than {} deep, the most the node compiles",
                        limits.max_nesting
                    ));
                }
            }
            Operator::End => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core module with one function whose body is `body` (without the
    /// final `end`) and `locals` i32 locals, encoded by hand.
    fn module_with_function(locals: u32, body: &[u8]) -> Vec<u8> {
        fn leb(mut n: u64, out: &mut Vec<u8>) {
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(byte);
                    return;
                }
                out.push(byte | 0x80);
            }
        }
        fn section(id: u8, contents: &[u8], out: &mut Vec<u8>) {
            out.push(id);
            leb(contents.len() as u64, out);
            out.extend_from_slice(contents);
        }
        let mut wasm = b"\0asm\x01\0\0\0".to_vec();
        section(1, &[1, 0x60, 0, 0], &mut wasm); // one type: [] -> []
        section(3, &[1, 0], &mut wasm); // one function of that type
        let mut function = Vec::new();
        if locals == 0 {
            function.push(0);
        } else {
            function.push(1);
            leb(u64::from(locals), &mut function);
            function.push(0x7f);
        }
        function.extend_from_slice(body);
        function.push(0x0b);
        let mut code = vec![1];
        leb(function.len() as u64, &mut code);
        code.extend_from_slice(&function);
        section(10, &code, &mut wasm);
        wasm
    }

    #[test]
    fn an_ordinary_module_passes() {
        let wasm = module_with_function(3, &[0x02, 0x40, 0x0b]); // block end
        assert_eq!(check(&wasm, &ShapeLimits::default()), Ok(()));
    }

    #[test]
    fn each_limit_is_named_when_it_is_broken() {
        let limits = ShapeLimits {
            max_component_bytes: 4096,
            max_function_bytes: 200,
            max_locals: 10,
            max_loops: 3,
            max_nesting: 8,
            ..ShapeLimits::default()
        };
        let big = module_with_function(0, &[0x01; 300]); // 300 nops
        assert!(check(&big, &limits).is_err_and(|m| m.contains("function 0") && m.contains("at most 200")));
        let locals = module_with_function(11, &[]);
        assert!(check(&locals, &limits).is_err_and(|m| m.contains("11 locals")));
        let nested: Vec<u8> = [[0x02, 0x40].repeat(8), vec![0x0b; 8]].concat();
        assert!(check(&module_with_function(0, &nested), &limits).is_err_and(|m| m.contains("nest more than 8")));
        let loops: Vec<u8> = [0x03, 0x40, 0x0b].repeat(4);
        assert!(check(&module_with_function(0, &loops), &limits).is_err_and(|m| m.contains("more than 3 loops")));
        let shallow: Vec<u8> = [[0x02, 0x40].repeat(7), vec![0x0b; 7]].concat();
        assert_eq!(check(&module_with_function(0, &shallow), &limits), Ok(()));
        let huge = vec![0u8; 5000];
        assert!(check(&huge, &limits).is_err_and(|m| m.contains("5000 bytes")));
    }

    #[test]
    fn bytes_that_are_not_webassembly_are_refused_without_a_panic() {
        for bytes in [&b"\0asm\x0d\0\x01\0\x07"[..], b"\0asm\x01\0\0\0\x0a\xff\xff\xff\xff\x0f", b"not wasm"] {
            assert!(check(bytes, &ShapeLimits::default()).is_err(), "{bytes:?}");
        }
    }
}
