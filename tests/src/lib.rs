//! Fixtures shared by the integration tests: the test-program guests built
//! by `build.rs`, the repository's real models and samples, one runtime
//! with the example modules compiled once for every test, and the `mantle`
//! binary itself, run as a command or as a serving node.

pub mod browser;
pub mod componentize;
pub mod crafted;
pub mod debian;
pub mod fleet;
pub mod registry;
pub mod served;

use mantle::examples;
use mantle::models::Model;
use mantle::runtime::{GuestModule, HandleError, ModuleLimits, ModuleSpec, Request, Response, SetupError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Paths of the test-program components, one constant per guest in
/// `guest/test-programs/`.
pub mod programs {
    include!(concat!(env!("OUT_DIR"), "/test_programs.rs"));
}

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives in the repository")
}

pub fn models_dir() -> PathBuf {
    repo_root().join("models")
}

/// A sample input from `models/samples/`.
pub fn sample(name: &str) -> Vec<u8> {
    let path = models_dir().join("samples").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read sample {}: {e}", path.display()))
}

/// A `POST /` request with `body`.
/// The HTTP status a node answers a guest request that failed with
/// `error`.
pub fn http_status(error: &HandleError) -> u16 {
    mantle::server::status::of_guest(error).as_u16()
}

pub fn post(body: impl Into<Vec<u8>>) -> Request {
    Request { method: "POST".into(), path: "/".into(), query: String::new(), headers: Vec::new(), body: body.into() }
}

/// Has `module` misbehave in the ways a guest of another language offers
/// at these paths: `/loop` (never returns), `/memory` (takes memory until
/// refused) and `/respond?mib=N` (answers N MiB). Each is stopped with its
/// own error while a neighbour tenant's request, sent at the same time, is
/// answered; then the module still answers.
pub async fn misbehaviour_is_stopped(module: &GuestModule) {
    use mantle::runtime::MAX_RESPONSE_BYTES;
    let node = node();
    let echo = node.program(programs::ECHO, "tenant-neighbour", &[], ModuleLimits::default());
    let with_a_neighbour = async |path: &str, query: String| {
        let request = Request { path: path.to_owned(), query, ..post(Vec::new()) };
        let (outcome, neighbour) =
            tokio::join!(node.call(module, request), node.call_json(&echo, post(b"still here".to_vec())));
        assert_eq!(neighbour["tenant"], "tenant-neighbour");
        outcome
    };
    let error = with_a_neighbour("/loop", String::new()).await.expect_err("an endless loop");
    assert!(matches!(error, HandleError::Deadline(_)), "{error:?}");
    assert_eq!(http_status(&error), 504);

    let error = with_a_neighbour("/memory", String::new()).await.expect_err("a memory bomb");
    assert!(matches!(error, HandleError::MemoryLimit { .. }), "{error:?}");

    let too_many = format!("mib={}", (MAX_RESPONSE_BYTES >> 20) + 1);
    let error = with_a_neighbour("/respond", too_many).await.expect_err("too large");
    assert!(matches!(error, HandleError::ResponseTooLarge { .. }), "{error:?}");

    let answer = with_a_neighbour("/respond", "mib=1".to_owned()).await.expect("a small answer");
    assert_eq!((answer.status, answer.body.len()), (200, 1 << 20));
}

/// The bundled examples' node, built as `mantle serve` builds it, shared by
/// all tests of the process; test programs run on its runtime.
pub struct Node {
    node: &'static mantle::node::Node,
    /// The example modules, as the demo tenant serves them.
    examples: Vec<Arc<GuestModule>>,
}

pub fn node() -> &'static Node {
    static NODE: OnceLock<mantle::node::Node> = OnceLock::new();
    static FIXTURE: OnceLock<Node> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let node = NODE.get_or_init(|| examples::examples_node(&models_dir()).expect("the examples' node builds"));
        let demo = node.tenant(examples::DEMO_TENANT).expect("the examples' node has the demo tenant");
        let examples = examples::EXAMPLES
            .iter()
            .map(|e| demo.module(e.name).unwrap_or_else(|| panic!("no example module {}", e.name)))
            .collect();
        Node { node, examples }
    })
}

impl Node {
    fn demo(&self) -> &mantle::node::Tenant {
        self.node.tenant(examples::DEMO_TENANT).expect("the examples' node has the demo tenant")
    }

    /// The compiled example module `name` (`image-classify`, ...).
    pub fn example(&self, name: &str) -> &GuestModule {
        self.examples.iter().find(|m| m.id() == name).unwrap_or_else(|| panic!("no example module {name}"))
    }

    /// The example model `name`, as the examples' node holds it.
    pub fn model(&self, name: &str) -> Arc<Model> {
        Arc::clone(&self.demo().model(name, None).unwrap_or_else(|| panic!("no model {name}")).model)
    }

    /// Compiles a test program as a module of `tenant`, granted the named
    /// example models.
    pub fn program(&self, wasm_path: &str, tenant: &str, grants: &[&str], limits: ModuleLimits) -> GuestModule {
        let grants = grants.iter().map(|name| (name.to_string(), self.model(name))).collect();
        self.program_granted(wasm_path, tenant, grants, limits)
    }

    /// Compiles a test program as a module of `tenant`, granted `grants`.
    pub fn program_granted(
        &self,
        wasm_path: &str,
        tenant: &str,
        grants: BTreeMap<String, Arc<Model>>,
        limits: ModuleLimits,
    ) -> GuestModule {
        let wasm = std::fs::read(wasm_path).unwrap_or_else(|e| panic!("cannot read {wasm_path}: {e}"));
        let id = Path::new(wasm_path).file_stem().map_or("program".into(), |s| s.to_string_lossy().into_owned());
        let spec = ModuleSpec {
            id,
            tenant: tenant.to_owned(),
            grants,
            limits,
            config: BTreeMap::from([("greeting".to_owned(), "hello from the operator".to_owned())]),
        };
        self.node.runtime.load_module(spec, &wasm).expect("the test program loads")
    }

    /// Loads the component `wasm` as module `id` of `tenant`, granted
    /// nothing: `Ok` only if the runtime takes it.
    pub fn load(&self, wasm: &[u8], id: &str, tenant: &str, limits: ModuleLimits) -> Result<GuestModule, SetupError> {
        let spec = ModuleSpec {
            id: id.to_owned(),
            tenant: tenant.to_owned(),
            grants: BTreeMap::new(),
            limits,
            config: BTreeMap::new(),
        };
        self.node.runtime.load_module(spec, wasm)
    }

    /// Loads `wasm` as `spec` says, and whether its compiled code came
    /// from a module made from the same component before.
    pub fn load_spec(&self, spec: ModuleSpec, wasm: &[u8]) -> (GuestModule, bool) {
        let component = mantle::runtime::ComponentBytes::new(wasm);
        self.node.runtime.load_component(spec, component, None).unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn call(&self, module: &GuestModule, request: Request) -> Result<Response, HandleError> {
        self.node.runtime.handle(module, request, "test-request").await
    }

    /// Calls `module` and parses its 200 answer as JSON.
    pub async fn call_json(&self, module: &GuestModule, request: Request) -> serde_json::Value {
        let response = self.call(module, request).await.unwrap_or_else(|e| panic!("{}: {e}", module.id()));
        assert_eq!(response.status, 200, "body: {}", String::from_utf8_lossy(&response.body));
        serde_json::from_slice(&response.body).expect("the answer is JSON")
    }
}

/// The `mantle` binary, built from this source tree into the target
/// directory and profile of the running tests. `cargo test` builds only
/// the libraries and tests a test binary needs, so the first call builds
/// the binary. It asks for the workspace's tests too: that makes cargo
/// resolve features as `cargo test` did (dev-dependencies included), so the
/// binary links against the dependencies already built for the tests. With
/// `-p mantle` alone, a few crates deep in the graph (indexmap, regex) get
/// other features, and cargo rebuilds wasmtime and tract a second time.
///
/// The variables cargo sets for the running test are taken out of the
/// build's environment: some build scripts (ring's) watch them, and
/// would otherwise be rerun, and all that depends on them rebuilt, on
/// every alternation between `cargo test` and this build.
pub fn mantle_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let profile_dir = profile_dir();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(other) => other,
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(set_by_cargo_for_a_test) {
                build.env_remove(name);
            }
        }
        let status = build
            .current_dir(repo_root())
            .args(["build", "--quiet", "--workspace", "--bins", "--tests", "--profile", profile])
            .arg("--target-dir")
            .arg(target_dir())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the mantle binary failed");
        let binary = profile_dir.join(format!("mantle{}", std::env::consts::EXE_SUFFIX));
        assert!(binary.exists(), "cargo built no binary at {}", binary.display());
        binary
    })
}

/// Whether `name` is one of the variables cargo sets for a test it runs,
/// as opposed to one a user set to configure cargo.
fn set_by_cargo_for_a_test(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_EXE_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
                | "OUT_DIR"
        )
}

/// A directory `dir` under the target directory with the npm packages of
/// `source`'s `package-lock.json` (a directory from the repository root)
/// installed in its `node_modules`, installed again when the lockfile
/// changes.
pub fn npm_installed(source: &str, dir: &str) -> PathBuf {
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _installing = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    debian::program("node", "nodejs");
    debian::program("npm", "npm");
    let source = repo_root().join(source);
    let lock = std::fs::read_to_string(source.join("package-lock.json"))
        .unwrap_or_else(|e| panic!("{}/package-lock.json: {e}", source.display()));
    let dir = target_dir().join(dir);
    let stamp = dir.join("mantle-lockfile.json");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(lock.as_str()) && dir.join("node_modules").exists() {
        return dir;
    }
    std::fs::create_dir_all(&dir).expect("create the npm packages' directory");
    for file in ["package.json", "package-lock.json"] {
        std::fs::copy(source.join(file), dir.join(file)).expect("copy the package files");
    }
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .status()
        .expect("npm runs");
    assert!(status.success(), "npm ci of {} failed", source.display());
    std::fs::write(&stamp, lock).expect("write the lockfile stamp");
    dir
}

/// `<target>/<profile>`, where the running test binary was built.
fn profile_dir() -> PathBuf {
    let test_exe = std::env::current_exe().expect("the test binary knows its path");
    // <target>/<profile>/deps/<test binary>
    test_exe.parent().and_then(Path::parent).expect("tests run from target/<profile>/deps").to_path_buf()
}

/// The cargo target directory of the running tests.
pub fn target_dir() -> PathBuf {
    profile_dir().parent().expect("a target directory").to_path_buf()
}

/// Writes the bundled example `name` into `dir` and returns its path.
pub fn example_wasm(dir: &Path, name: &str) -> String {
    let example = examples::EXAMPLES.iter().find(|e| e.name == name).expect("a bundled example");
    let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::write(&path, example.wasm).expect("write the module");
    path.display().to_string()
}

/// `mantle run --model` for the repository's copy of `model`.
pub fn model_grant(model: &str) -> String {
    format!("{model}={}", model_path(model).display())
}

/// The repository's copy of the example model `name`.
pub fn model_path(name: &str) -> PathBuf {
    models_dir().join(name).join("model.onnx")
}

/// What a finished process left behind.
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// Runs `mantle` with `args`, feeding `stdin`, and kills it if it has not
/// finished within `limit`.
pub fn run_mantle(args: &[&std::ffi::OsStr], stdin: &[u8], limit: std::time::Duration) -> Finished {
    let mut command = std::process::Command::new(mantle_binary());
    command.args(args);
    run_limited(command, stdin, limit)
}

/// Runs `command`, feeding `stdin` and reading what it prints as it runs,
/// and kills it (failing the test) if it has not finished within `limit`.
pub fn run_limited(mut command: std::process::Command, stdin: &[u8], limit: std::time::Duration) -> Finished {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?} does not start: {e}"));
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        // The process may exit without reading all of it: not an error here.
        let _ = input.write_all(&stdin);
    });
    let mut stdout_pipe = child.stdout.take().expect("piped stdout");
    let mut stderr_pipe = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout_pipe.read_to_end(&mut out);
        out
    });
    let err_reader = std::thread::spawn(move || {
        let mut err = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut err);
        err
    });
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the process") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("{command:?} did not finish within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = feeder.join();
    Finished {
        code: status.code(),
        stdout: out_reader.join().expect("stdout reader"),
        stderr: String::from_utf8_lossy(&err_reader.join().expect("stderr reader")).into_owned(),
    }
}

/// The echo guest with a custom section of `padding` bytes that differ per
/// `seed`: a distinct component, and so distinct blobs and compiled code,
/// for every version.
pub fn padded_echo(seed: u64, padding: usize) -> Vec<u8> {
    let mut wasm = std::fs::read(programs::ECHO).expect("the echo guest");
    let name = b"mantle-test-padding";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    payload.extend((0..padding).map(|_| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u8
    }));
    wasm.push(0); // a custom section
    let mut size = payload.len();
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        wasm.push(if size == 0 { byte } else { byte | 0x80 });
        if size == 0 {
            break;
        }
    }
    wasm.extend_from_slice(&payload);
    wasm
}

/// Every blob in the store under `data` whose bytes do not hash to its
/// name, read straight off the disk.
pub fn damaged_blobs(data: &Path) -> Vec<String> {
    let blobs = std::fs::read_dir(data.join("blobs")).expect("the store has a blob directory");
    let mut damaged = Vec::new();
    for entry in blobs {
        let entry = entry.expect("a blob's directory entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let bytes = std::fs::read(entry.path()).expect("a blob reads");
        if mantle::types::Sha256::of(&bytes).to_string() != name {
            damaged.push(name);
        }
    }
    damaged
}
