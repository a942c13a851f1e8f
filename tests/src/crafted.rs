//! Components written in WebAssembly text, for attacks a Rust guest cannot
//! make: many core instances, memories or tables; start functions and data
//! segments; function names with line breaks in them; functions shaped to
//! be expensive to compile.
//!
//! Each is a real component of the `mantle:edge/guest` world: its handler
//! answers 200 with the body `ok` (or traps, when told to), through the
//! canonical ABI, with a bump allocator for the arguments the host passes.

/// What to add to the plain handler.
#[derive(Default, Clone)]
pub struct Crafted {
    /// More of the main core module: functions, a start function, data.
    pub main: String,
    /// The main module's memory, in 64 KiB pages.
    pub main_pages: u32,
    /// More core modules and instances, at the component's top level.
    pub component: String,
    /// The handler calls this function of the main module first, if set.
    pub call_first: Option<String>,
}

impl Crafted {
    pub fn new() -> Self {
        Crafted { main_pages: 1, ..Default::default() }
    }

    /// Adds `count` core modules, each with one memory of `pages` pages,
    /// and an instance of each.
    pub fn memories(mut self, count: usize, pages: u32) -> Self {
        for i in 0..count {
            self.component.push_str(&format!(
                "(core module $memory{i} (memory (export \"memory\") {pages}))\n\
                 (core instance $memory{i} (instantiate $memory{i}))\n"
            ));
        }
        self
    }

    /// Adds `count` instances of an empty core module.
    pub fn core_instances(mut self, count: usize) -> Self {
        self.component.push_str("(core module $empty)\n");
        for _ in 0..count {
            self.component.push_str("(core instance (instantiate $empty))\n");
        }
        self
    }

    /// Adds `count` core modules, each with one table, and an instance of
    /// each.
    pub fn tables(mut self, count: usize) -> Self {
        for i in 0..count {
            self.component.push_str(&format!(
                "(core module $table{i} (table 1 funcref))\n(core instance (instantiate $table{i}))\n"
            ));
        }
        self
    }

    /// Adds text to the main core module.
    pub fn main(mut self, text: &str) -> Self {
        self.main.push_str(text);
        self.main.push('\n');
        self
    }

    /// Makes the handler call `function` of the main module before it
    /// answers.
    pub fn calling(mut self, function: &str) -> Self {
        self.call_first = Some(function.to_owned());
        self
    }

    /// The component, encoded.
    pub fn build(&self) -> Vec<u8> {
        let call = self.call_first.as_ref().map_or(String::new(), |f| format!("call {f}"));
        let text = format!(
            r#"(component
  (core module $main
    (memory (export "memory") {pages})
    (global $heap (mut i32) (i32.const 4096))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      (local.set $at (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                              (i32.sub (i32.const 0) (local.get 2))))
      (global.set $heap (i32.add (local.get $at) (local.get 3)))
      (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
        (then (drop (memory.grow (i32.add (i32.shr_u (global.get $heap) (i32.const 16)) (i32.const 1))))))
      (local.get $at))
    ;; The answer, as the canonical ABI lays out result<response, error>:
    ;; the case at 32, the status at 36, no headers, the body `ok` at 16.
    (data (i32.const 16) "ok")
    (data (i32.const 32) "\00\00\00\00\c8\00\00\00\00\00\00\00\00\00\00\00\10\00\00\00\02\00\00\00")
    (func (export "handle") (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
      {call}
      i32.const 32)
    {main}
  )
  (core instance $main (instantiate $main))
  {component}
  (type $headers (list (tuple string (list u8))))
  (type $request (record (field "method" string) (field "path" string) (field "query" string)
                         (field "headers" $headers) (field "body" (list u8))))
  (type $response (record (field "status" u16) (field "headers" $headers) (field "body" (list u8))))
  (type $error (variant (case "invalid-input" string) (case "unsupported-media-type" string)
                        (case "internal" string) (case "forbidden" string)))
  (func $handle (param "request" $request) (result (result $response (error $error)))
    (canon lift (core func $main "handle") (memory (core memory $main "memory"))
                (realloc (core func $main "realloc"))))
  (instance $handler (export "request" (type $request)) (export "response" (type $response))
                     (export "error" (type $error)) (export "handle" (func $handle)))
  (export "mantle:edge/handler@0.1.0" (instance $handler))
)"#,
            pages = self.main_pages,
            call = call,
            main = self.main,
            component = self.component,
        );
        wat::parse_str(&text).unwrap_or_else(|e| panic!("a crafted component does not encode: {e}"))
    }
}

/// A function `$name` whose body is about `bytes` bytes of arithmetic on
/// one local, for the main module.
pub fn long_function(name: &str, bytes: usize) -> String {
    // `local.get 0`, `i32.const 1`, `i32.add`, `local.set 0`: 7 bytes.
    let step = "local.get 0 i32.const 1 i32.add local.set 0\n";
    format!("(func {name} (local i32)\n{})", step.repeat(bytes / 7))
}

/// A function `$name` whose blocks nest `depth` deep.
pub fn nested_function(name: &str, depth: usize) -> String {
    format!("(func {name} {}{})", "(block ".repeat(depth), ")".repeat(depth))
}

/// A function `$name` of `count` loops one after another, each counting a
/// local up to the function's argument.
pub fn looping_function(name: &str, count: usize) -> String {
    let one = "(loop local.get 1 i32.const 1 i32.add local.tee 1 local.get 0 i32.lt_u br_if 0)\n";
    format!("(func {name} (param i32) (local i32)\n{})", one.repeat(count))
}

/// A function `$name` that declares `count` locals.
pub fn function_with_locals(name: &str, count: usize) -> String {
    format!("(func {name} (local{}))", " i32".repeat(count))
}
