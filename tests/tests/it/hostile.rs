//! Guests that attack the node from inside one runtime: each is stopped
//! with a clear error, or refused when it is loaded, while another
//! tenant's request, sent at the same time, is answered. The attacks that
//! need a whole node (logs, HTTP, tenants' shares) are in `hostile_node`.

use mantle::runtime::{
    HandleError, MAX_CORE_INSTANCES_PER_COMPONENT, MAX_MEMORIES_PER_COMPONENT, MAX_RESPONSE_BYTES,
    MAX_TABLES_PER_COMPONENT, ModuleLimits, Request, Response, SetupError, ShapeLimits,
};
use mantle_tests::crafted::{self, Crafted};
use mantle_tests::served::{ServedNode, program_module, tenant};
use mantle_tests::{Node, http_status, node, post, programs};
use std::time::Duration;

/// `hostile` told to misbehave as `query` says.
fn misbehave(query: &str) -> Request {
    Request { query: query.to_owned(), ..post(Vec::new()) }
}

/// Runs `query` on the hostile guest of one tenant and, at the same time, a
/// request of another tenant, which must get its answer.
async fn with_a_neighbour(node: &Node, query: &str) -> Result<Response, HandleError> {
    let hostile = node.program(programs::HOSTILE, "tenant-a", &[], ModuleLimits::default());
    let echo = node.program(programs::ECHO, "tenant-b", &[], ModuleLimits::default());
    let (outcome, neighbour) =
        tokio::join!(node.call(&hostile, misbehave(query)), node.call_json(&echo, post(b"still here".to_vec())));
    assert_eq!(neighbour["tenant"], "tenant-b");
    assert_eq!(neighbour["body_len"], 10);
    outcome
}

#[tokio::test]
async fn endless_recursion_is_a_stack_overflow_trap() {
    let error = with_a_neighbour(node(), "recurse").await.expect_err("the stack runs out");
    assert!(matches!(&error, HandleError::Trap(message) if message.contains("stack")), "{error:?}");
    assert_eq!(http_status(&error), 500);
}

#[tokio::test]
async fn a_panic_or_unreachable_is_a_trap() {
    for query in ["panic", "unreachable"] {
        let error = with_a_neighbour(node(), query).await.expect_err("it crashes");
        assert!(matches!(&error, HandleError::Trap(message) if message.contains("unreachable")), "{query}: {error:?}");
        assert_eq!(http_status(&error), 500);
    }
}

#[tokio::test]
async fn an_enormous_response_is_refused_past_the_limit() {
    let node = node();
    let limit_mib = MAX_RESPONSE_BYTES >> 20;
    let answer = with_a_neighbour(node, &format!("respond={}", limit_mib - 1)).await.expect("under the limit");
    assert_eq!((answer.status, answer.body.len()), (200, (limit_mib - 1) << 20));

    let error = with_a_neighbour(node, &format!("respond={}", limit_mib + 8)).await.expect_err("over the limit");
    match &error {
        HandleError::ResponseTooLarge { size, limit } => {
            assert_eq!((*size, *limit), ((limit_mib + 8) << 20, MAX_RESPONSE_BYTES));
        }
        other => panic!("expected the response limit, got {other:?}"),
    }
    assert_eq!(http_status(&error), 500);
    assert!(error.to_string().contains("over the limit"), "{error}");
}

#[test]
fn a_flood_of_output_is_cut_short_in_the_log() {
    const KEY: &str = "mk_flood_0123456789abcdef";
    let modules =
        [program_module("hostile", programs::HOSTILE, 30_000), program_module("echo", programs::ECHO, 30_000)];
    let config = tenant("alpha", KEY, &[], &modules.concat());
    let served = ServedNode::with_config(&config);
    let before = served.stderr().len();
    std::thread::scope(|scope| {
        // 16 MiB to each of stdout and stderr.
        let flood = scope.spawn(|| served.post("/t/alpha/hostile?flood=16", Some(KEY), b""));
        let neighbour = served.post("/t/alpha/echo", Some(KEY), b"still here");
        assert_eq!(neighbour.status, 200, "{}", neighbour.text());
        let flooded = flood.join().expect("the flood's client");
        assert_eq!((flooded.status, flooded.text()), (200, "done".to_owned()), "the guest finishes");
    });
    served.wait_for_stderr("bytes not logged", std::time::Duration::from_secs(10));
    let logged = served.stderr().len() - before;
    assert!(logged < 1 << 20, "the node logged {logged} bytes of the guest's 32 MiB");
}

#[tokio::test]
async fn tensors_held_in_the_host_are_bounded_by_the_guests_memory_limit() {
    let node = node();
    // 64 tensors of 1 MiB fit; 300 would hold more than the guest's 256 MiB.
    let answer = with_a_neighbour(node, "tensors=64").await.expect("within the budget");
    assert_eq!((answer.status, answer.body), (200, b"64".to_vec()));
    // Tensors and the guest's own memory draw on one account of 256 MiB.
    let error = with_a_neighbour(node, "tensors=300").await.expect_err("over the budget");
    match &error {
        HandleError::MemoryLimit { limit, wanted } => assert!(*limit == 256 << 20 && *wanted > *limit, "{error}"),
        other => panic!("expected the memory limit, got {other:?}"),
    }
    assert_eq!(http_status(&error), 500);
}

#[tokio::test]
async fn a_guest_cannot_hold_resources_without_bound() {
    let node = node();
    let answer = with_a_neighbour(node, "handles=1000").await.expect("a thousand is fine");
    assert_eq!((answer.status, answer.body), (200, b"1000".to_vec()));
    let error = with_a_neighbour(node, "handles=2000000").await.expect_err("the table is capped");
    assert!(matches!(&error, HandleError::Trap(message) if message.contains("resource table")), "{error:?}");
    assert_eq!(http_status(&error), 500);
}

#[test]
fn a_tenant_flooding_a_looping_guest_takes_only_its_own_turns() {
    const ALPHA: &str = "mk_alpha_0123456789abcdef";
    const BETA: &str = "mk_beta_fedcba9876543210";
    let alpha_limits = "limits = { max_concurrent = 2, max_queued = 2, queue_timeout_ms = 10000 }\n";
    let config = [
        tenant("alpha", ALPHA, &[], &format!("{alpha_limits}{}", program_module("loop", programs::LOOP_FOREVER, 3000))),
        tenant("beta", BETA, &[], &program_module("echo", programs::ECHO, 30_000)),
    ]
    .concat();
    let served = ServedNode::with_config(&config);
    std::thread::scope(|scope| {
        let flood: Vec<_> =
            (0..12).map(|_| scope.spawn(|| served.post("/t/alpha/loop", Some(ALPHA), b"").status)).collect();
        served.wait_for_metrics(std::time::Duration::from_secs(30), |m| {
            m.value("mantle_running_requests", &[("tenant", "alpha")]) == 2.0
                && m.value("mantle_queued_requests", &[("tenant", "alpha")]) == 2.0
        });
        let neighbour = served.post("/t/beta/echo", Some(BETA), b"still here");
        assert_eq!(neighbour.status, 200, "{}", neighbour.text());
        assert!(flood.iter().any(|request| !request.is_finished()), "answered while the loops still ran");

        let mut statuses: Vec<u16> =
            flood.into_iter().map(|request| request.join().expect("a flood request")).collect();
        statuses.sort_unstable();
        // Two run and two wait their turn, each stopped by its deadline; the
        // rest are refused at once.
        assert_eq!(statuses, [[429; 8].as_slice(), &[504; 4]].concat(), "alpha's answers");
    });
}

/// Loads `crafted` as a module of `tenant-a` with `limits`.
fn load(crafted: &Crafted, limits: ModuleLimits) -> Result<mantle::runtime::GuestModule, SetupError> {
    node().load(&crafted.build(), "crafted", "tenant-a", limits)
}

/// Loads `crafted` on a thread of its own while another tenant's request
/// is served, which must get its answer; returns why the load was refused.
async fn refusal(crafted: &Crafted, limits: ModuleLimits) -> String {
    let wasm = crafted.build();
    let loading = tokio::task::spawn_blocking(move || node().load(&wasm, "crafted", "tenant-a", limits).map(drop));
    let echo = node().program(programs::ECHO, "tenant-b", &[], ModuleLimits::default());
    let (loaded, neighbour) = tokio::join!(loading, node().call_json(&echo, post(b"still here".to_vec())));
    assert_eq!(neighbour["tenant"], "tenant-b");
    match loaded.expect("the loading thread") {
        Ok(()) => panic!("the crafted component was loaded"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn a_crafted_handler_serves_as_any_guest_does() {
    // The attacks below are refused for what they add, not for being crafted.
    let plain = load(&Crafted::new(), ModuleLimits::default()).expect("a plain crafted handler loads");
    let answer = node().call(&plain, post(b"hello".to_vec())).await.expect("it answers");
    assert_eq!((answer.status, answer.body), (200, b"ok".to_vec()));
}

#[tokio::test]
async fn a_component_with_more_instances_memories_or_tables_than_the_caps_is_refused_when_loaded() {
    let limits = ModuleLimits::default();
    let memories = MAX_MEMORIES_PER_COMPONENT as usize;
    // The main module has a memory of its own.
    let at_cap = load(&Crafted::new().memories(memories - 1, 1), limits).expect("at the cap");
    let answer = node().call(&at_cap, post(Vec::new())).await.expect("it answers");
    assert_eq!(answer.status, 200);
    let over = refusal(&Crafted::new().memories(memories, 1), limits).await;
    assert!(over.contains("needs more than one guest instance may have"), "{over}");
    assert!(over.contains("linear memories") && over.contains(&format!("maximum of {memories}")), "{over}");

    let instances = MAX_CORE_INSTANCES_PER_COMPONENT as usize;
    let over = refusal(&Crafted::new().core_instances(instances), limits).await;
    assert!(over.contains("core module instances") && over.contains(&format!("maximum of {instances}")), "{over}");

    let tables = MAX_TABLES_PER_COMPONENT as usize;
    let over = refusal(&Crafted::new().tables(tables + 1), limits).await;
    assert!(over.contains("tables") && over.contains(&format!("maximum of {tables}")), "{over}");
}

#[tokio::test]
async fn every_memory_of_an_instance_draws_on_one_limit() {
    let limits = ModuleLimits { memory_bytes: 64 << 20, ..ModuleLimits::default() };
    // Two memories of 37.5 MiB each: either fits the limit, both do not.
    let one_big = Crafted { main_pages: 600, ..Crafted::new() };
    let answer = node().call(&load(&one_big, limits).expect("one memory fits"), post(Vec::new())).await;
    assert_eq!(answer.expect("it answers").status, 200);
    let two_big = Crafted { main_pages: 600, ..Crafted::new() }.memories(1, 600);
    let refused = refusal(&two_big, limits).await;
    assert!(refused.contains("cannot start") && refused.contains("past its limit of 67108864 bytes"), "{refused}");
}

#[tokio::test]
async fn a_module_that_can_never_start_is_refused_when_loaded() {
    let limits = ModuleLimits { deadline: Duration::from_millis(300), ..ModuleLimits::default() };
    let start_traps = Crafted::new().main("(func $start unreachable) (start $start)");
    let refused = refusal(&start_traps, limits).await;
    assert!(refused.contains("cannot start") && refused.contains("unreachable"), "{refused}");

    let data_past_memory = Crafted::new().main(r#"(data (i32.const 1000000) "past the end")"#);
    let refused = refusal(&data_past_memory, limits).await;
    assert!(refused.contains("cannot start") && refused.contains("out of bounds"), "{refused}");

    // 312.5 MiB at start, over the 256 MiB limit.
    let initial_too_large = Crafted { main_pages: 5000, ..Crafted::new() };
    let refused = refusal(&initial_too_large, limits).await;
    assert!(refused.contains("cannot start") && refused.contains("past its limit of 268435456"), "{refused}");

    let start_loops = Crafted::new().main("(func $start (loop br 0)) (start $start)");
    let refused = refusal(&start_loops, limits).await;
    assert!(refused.contains("cannot start") && refused.contains("deadline of 300ms"), "{refused}");
}

#[tokio::test]
async fn a_trap_cannot_forge_log_lines_through_the_names_it_carries() {
    let forged = "evil\\n2026-12-01T00:00:00.000000Z  INFO mantle: all is well \\1b[2K";
    let named = Crafted::new().main(&format!("(func $t (@name \"{forged}\") unreachable)")).calling("$t");
    let module = load(&named, ModuleLimits::default()).expect("it loads");
    let error = with_a_neighbour_on(node(), &module).await.expect_err("it traps");
    let HandleError::Trap(trap) = &error else { panic!("expected a trap, got {error:?}") };
    assert!(trap.raw().contains("evil\n2026-12-01"), "the trap names the function: {trap:?}");
    let shown = error.to_string();
    assert!(!shown.contains('\n') && !shown.contains('\u{1b}'), "shown raw: {shown}");
    assert!(shown.contains("evil\\n2026-12-01") && shown.contains("\\u{1b}[2K"), "{shown}");
}

/// Runs `module` and, at the same time, another tenant's request, which
/// must get its answer.
async fn with_a_neighbour_on(node: &Node, module: &mantle::runtime::GuestModule) -> Result<Response, HandleError> {
    let echo = node.program(programs::ECHO, "tenant-b", &[], ModuleLimits::default());
    let (outcome, neighbour) =
        tokio::join!(node.call(module, post(Vec::new())), node.call_json(&echo, post(b"hi".to_vec())));
    assert_eq!(neighbour["tenant"], "tenant-b");
    outcome
}

#[tokio::test]
async fn a_component_shaped_to_be_expensive_to_compile_is_refused_before_it_is() {
    let shape = ShapeLimits::default();
    let limits = ModuleLimits::default();
    let long = Crafted::new().main(&crafted::long_function("$long", shape.max_function_bytes + 100_000));
    let refused = refusal(&long, limits).await;
    assert!(refused.contains("too expensive to compile") && refused.contains("its body is"), "{refused}");

    let deep = Crafted::new().main(&crafted::nested_function("$deep", shape.max_nesting + 1));
    let refused = refusal(&deep, limits).await;
    assert!(refused.contains(&format!("nest more than {}", shape.max_nesting)), "{refused}");

    let locals = Crafted::new().main(&crafted::function_with_locals("$locals", shape.max_locals as usize + 1));
    let refused = refusal(&locals, limits).await;
    assert!(refused.contains(&format!("{} locals", shape.max_locals + 1)), "{refused}");

    let loops = Crafted::new().main(&crafted::looping_function("$loops", shape.max_loops + 1));
    let refused = refusal(&loops, limits).await;
    assert!(refused.contains(&format!("more than {} loops", shape.max_loops)), "{refused}");

    // Just under every limit, it compiles.
    let fits = Crafted::new()
        .main(&crafted::long_function("$long", shape.max_function_bytes / 4))
        .main(&crafted::nested_function("$deep", shape.max_nesting - 1))
        .main(&crafted::function_with_locals("$locals", shape.max_locals as usize))
        .main(&crafted::looping_function("$loops", shape.max_loops));
    load(&fits, limits).expect("a component within the limits loads");
}
