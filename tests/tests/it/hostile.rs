//! Guests that attack the node: each is stopped with a clear error while
//! another tenant's request, sent at the same time, is answered.

use mantle::runtime::{HandleError, MAX_RESPONSE_BYTES, ModuleLimits, Request, Response};
use mantle_tests::served::{ServedNode, program_module, tenant};
use mantle_tests::{Node, node, post, programs};

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
    assert_eq!(error.status(), 500);
}

#[tokio::test]
async fn a_panic_or_unreachable_is_a_trap() {
    for query in ["panic", "unreachable"] {
        let error = with_a_neighbour(node(), query).await.expect_err("it crashes");
        assert!(matches!(&error, HandleError::Trap(message) if message.contains("unreachable")), "{query}: {error:?}");
        assert_eq!(error.status(), 500);
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
    assert_eq!(error.status(), 500);
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
    let error = with_a_neighbour(node, "tensors=300").await.expect_err("over the budget");
    assert!(matches!(&error, HandleError::Trap(message) if message.contains("over their budget")), "{error:?}");
    assert_eq!(error.status(), 500);
}

#[tokio::test]
async fn a_guest_cannot_hold_resources_without_bound() {
    let node = node();
    let answer = with_a_neighbour(node, "handles=1000").await.expect("a thousand is fine");
    assert_eq!((answer.status, answer.body), (200, b"1000".to_vec()));
    let error = with_a_neighbour(node, "handles=2000000").await.expect_err("the table is capped");
    assert!(matches!(&error, HandleError::Trap(message) if message.contains("resource table")), "{error:?}");
    assert_eq!(error.status(), 500);
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
