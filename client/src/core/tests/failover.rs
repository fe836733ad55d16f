//! Failover rules: a node killed with `kill -9` sends no CONNECTION_CLOSE, so the client must notice
//! the silence itself (heartbeat timeout), leave for another endpoint at once (not back to the dead
//! one) and catch up there with Sync + Pull.

use super::*;

const OTHER: &str = "127.0.0.1:7701";
const THIRD: &str = "127.0.0.1:7702";
const MS: Duration = Duration::from_millis(1);

fn heartbeats(out: &[Transmit]) -> usize {
    picked(out, |k| matches!(k, Kind::Heartbeat(_)).then_some(())).len()
}

/// A harness whose client beats every 250 ms and gives a Heartbeat 400 ms.
fn fast(endpoints: &[&str]) -> Harness {
    let mut s = settings(endpoints);
    s.heartbeat = Some(250 * MS);
    s.heartbeat_timeout = Some(400 * MS);
    Harness::new(s)
}

/// Dials the next endpoint and establishes the session on the address dialled (1-RTT).
fn establish_dialled(h: &mut Harness) -> (u64, String) {
    let (gen, endpoint) = h.next_dial();
    let addr: SocketAddr = endpoint.parse().expect("address");
    assert!(h.core.handle_established(gen, Ok((addr, false)), h.now));
    h.step();
    (gen, endpoint)
}

#[test]
fn a_silent_node_is_left_after_the_heartbeat_timeout_not_the_idle_timeout() {
    let mut h = fast(&[SERVER, OTHER]);
    let gen = h.connect();
    h.advance(250 * MS);
    assert_eq!(heartbeats(&h.step()), 1);
    // kill -9: nothing answers and nothing closes. The verdict must come from the 400 ms timeout.
    h.advance(250 * MS);
    assert_eq!(heartbeats(&h.step()), 1, "the next beat still goes out");
    h.advance(149 * MS);
    assert!(!h.step().iter().any(|t| matches!(t, Transmit::Close { .. })));
    h.advance(MS);
    let out = h.step();
    assert!(out.iter().any(|t| matches!(t, Transmit::Close { .. })));
    assert!(matches!(
        h.events.last(),
        Some(Event::Connection(ConnectionState::Disconnected { reason })) if reason.contains("heartbeats")
    ));
    assert_eq!(
        h.core.poll_timeout(),
        Some(h.now),
        "reconnects without backoff"
    );
    let (next, endpoint) = h.next_dial();
    assert!(next > gen);
    assert_eq!(endpoint, OTHER, "the other node, not the dead one");
}

#[test]
fn the_dead_address_is_skipped_until_every_other_endpoint_was_dialled() {
    // GoAway moved the client to THIRD (the rotation still points at the second entry, THIRD), and
    // THIRD is then killed: the next dial must not go straight back to it.
    let mut h = fast(&[SERVER, THIRD, OTHER]);
    let gen = h.connect();
    let goaway = f(Kind::GoAway(frame::GoAway {
        code: ErrorCode::SHUTTING_DOWN.0,
        reason: "drain".into(),
        endpoints: vec![THIRD.into()],
    }));
    h.core.handle_frame(gen, control(), goaway, h.now);
    h.step();
    let (gen, endpoint) = establish_dialled(&mut h);
    assert_eq!(endpoint, THIRD);
    h.welcome(gen);
    h.lose(gen);
    let mut first = vec![h.next_dial().1];
    // The first other node does not answer in time: the rotation (which wraps) must not lead back to
    // THIRD before the last other node was tried.
    h.core
        .handle_established(h.core.gen, Err("timed out".into()), h.now);
    first.push(h.next_dial().1);
    first.sort();
    let mut expected = [SERVER, OTHER];
    expected.sort();
    assert_eq!(first, expected, "THIRD just died");
    // Then the next round tries THIRD again (it could have been restarted).
    let mut round = Vec::new();
    for _ in 0..3 {
        h.core
            .handle_established(h.core.gen, Err("refused".into()), h.now);
        round.push(h.next_dial().1);
    }
    assert!(round.iter().any(|e| e == THIRD), "{round:?}");
}

#[test]
fn the_clients_of_a_dead_node_spread_over_the_others() {
    // Many clients homed on SERVER, all knowing [SERVER, OTHER, THIRD]: after SERVER dies they must not
    // all move to OTHER (the next in the list) and leave THIRD idle.
    let mut first_moves = Vec::new();
    for seed in 0..40 {
        let mut s = settings(&[SERVER, OTHER, THIRD]);
        s.heartbeat = Some(250 * MS);
        s.heartbeat_timeout = Some(400 * MS);
        let mut h = Harness::with_seed(s, seed);
        let gen = h.connect();
        h.lose(gen);
        first_moves.push(h.next_dial().1);
    }
    let to = |e: &str| first_moves.iter().filter(|m| *m == e).count();
    assert_eq!(to(SERVER), 0, "never straight back to the dead node");
    assert!(to(OTHER) >= 8 && to(THIRD) >= 8, "{first_moves:?}");
}

#[test]
fn a_single_endpoint_is_dialled_again() {
    let mut h = fast(&[SERVER]);
    let gen = h.connect();
    h.lose(gen);
    assert_eq!(h.next_dial().1, SERVER);
}

#[test]
fn after_failover_the_client_resends_unacked_sends_and_catches_up_with_sync_and_pull() {
    let mut h = fast(&[SERVER, OTHER]);
    let gen = h.synced(vec![]);
    let _receipt = h.send("m1");
    assert_eq!(sends(&h.step()), ["m1"]);
    // The node dies with m1 unanswered.
    h.advance(250 * MS);
    h.step();
    h.advance(400 * MS);
    h.step();
    let first_sync = h.last_sync;
    let (gen2, endpoint) = establish_dialled(&mut h);
    assert!(gen2 > gen);
    assert_eq!(endpoint, OTHER);
    // Sync goes with Hello (FERRY-HELLO-5): it was sent when the new connection was established.
    let sync = h
        .last_sync
        .filter(|id| Some(*id) != first_sync)
        .expect("Sync with Hello on the new node");
    let out = h.welcome(gen2);
    assert_eq!(
        sends(&out),
        ["m1"],
        "the unanswered send goes again, same id"
    );
    // Messages stored while the client moved: the new node's Sync reveals them and they are pulled.
    h.sync_result(gen2, sync, vec![state(5)], false);
    assert_eq!(pulls(&h.step()), [0], "a Pull for the missing messages");
}

#[test]
fn endpoints_named_by_goaway_join_the_rotation() {
    // Configured with one node only; GoAway names another. When that one fails later, the client must
    // still know it (the configured node is the one that drained away).
    let mut h = fast(&[SERVER]);
    let gen = h.connect();
    let goaway = f(Kind::GoAway(frame::GoAway {
        code: ErrorCode::SHUTTING_DOWN.0,
        reason: "drain".into(),
        endpoints: vec![OTHER.into()],
    }));
    h.core.handle_frame(gen, control(), goaway, h.now);
    h.step();
    let (gen, endpoint) = establish_dialled(&mut h);
    assert_eq!(endpoint, OTHER);
    h.welcome(gen);
    h.lose(gen);
    // OTHER just died: skipped once, so SERVER; then OTHER is in the rotation.
    assert_eq!(h.next_dial().1, SERVER);
    h.core
        .handle_established(h.core.gen, Err("refused".into()), h.now);
    assert_eq!(h.next_dial().1, OTHER, "learnt from GoAway");
}

/// Establishes a session on the endpoint dialled next and answers Hello with a Welcome naming
/// `endpoints` (FERRY-HELLO-6).
fn welcome_naming(h: &mut Harness, endpoints: Vec<String>) -> u64 {
    let (gen, _) = establish_dialled(h);
    let welcome = f(Kind::Welcome(frame::Welcome {
        user_id: "alice".into(),
        endpoints,
        ..Default::default()
    }));
    h.core.handle_frame(gen, control(), welcome, h.now);
    h.step();
    gen
}

#[test]
fn endpoints_named_by_welcome_join_the_rotation_after_the_configured_ones() {
    // Configured with one node only; its Welcome names the cluster's others (itself too, as a node
    // might): after a kill -9 of it the client reaches them, each once per round.
    let mut h = fast(&[SERVER]);
    let gen = welcome_naming(&mut h, vec![OTHER.into(), SERVER.into(), THIRD.into()]);
    h.lose(gen);
    let mut dialled = Vec::new();
    for _ in 0..6 {
        let (gen, endpoint) = h.next_dial();
        dialled.push(endpoint);
        h.core.handle_established(gen, Err("refused".into()), h.now);
    }
    assert_ne!(dialled[0], SERVER, "a learnt node first, not the dead one");
    for e in [OTHER, THIRD, SERVER] {
        assert_eq!(dialled.iter().filter(|d| *d == e).count(), 2, "{dialled:?}");
    }
}

#[test]
fn endpoints_learnt_from_welcome_are_bounded() {
    // A Welcome is a hint from one server, not a list to grow without end.
    let mut h = fast(&[SERVER]);
    let many = (0..1000).map(|i| format!("10.0.{}.{}:7700", i / 256, i % 256));
    welcome_naming(&mut h, many.collect());
    assert_eq!(
        h.core.settings.endpoints.len(),
        crate::core::session::MAX_ENDPOINTS
    );
    assert_eq!(h.core.settings.endpoints[0], SERVER, "configured first");
}

#[test]
fn a_retryable_error_answers_a_heartbeat_so_a_store_outage_is_no_failover() {
    let mut h = fast(&[SERVER, OTHER]);
    let gen = h.connect();
    for _ in 0..4 {
        h.advance(250 * MS);
        assert_eq!(heartbeats(&h.step()), 1);
        // The node is alive but its store (Redis) is away: it answers with a retryable error.
        let error = f(Kind::Error(frame::Error {
            code: ErrorCode::INTERNAL.0,
            message: "store unavailable".into(),
            ..Default::default()
        }));
        h.core.handle_frame(gen, control(), error, h.now);
        assert!(!h.step().iter().any(|t| matches!(t, Transmit::Close { .. })));
    }
    assert!(!h
        .events
        .iter()
        .any(|e| matches!(e, Event::Connection(ConnectionState::Disconnected { .. }))));
}

#[test]
fn a_probe_finding_the_port_closed_leaves_at_once() {
    let mut h = fast(&[SERVER, OTHER]);
    let gen = h.connect();
    let probes = |out: &[Transmit]| {
        out.iter()
            .filter(|t| matches!(t, Transmit::Probe { gen: g } if *g == gen))
            .count()
    };
    h.advance(250 * MS);
    assert_eq!(heartbeats(&h.step()), 1);
    // A quarter of the 400 ms timeout into the silence, one probe; none before.
    h.advance(99 * MS);
    assert_eq!(probes(&h.step()), 0);
    h.advance(MS);
    assert_eq!(probes(&h.step()), 1);
    h.advance(50 * MS);
    assert_eq!(probes(&h.step()), 0, "one probe per silence");
    // An answer about an older session changes nothing.
    h.core.handle_port_closed(gen + 1, h.now);
    assert!(!h.step().iter().any(|t| matches!(t, Transmit::Close { .. })));
    // The port is closed: the session ends now, 250 ms before the heartbeat timeout would end it.
    h.core.handle_port_closed(gen, h.now);
    let out = h.step();
    assert!(out.iter().any(|t| matches!(t, Transmit::Close { .. })));
    assert!(matches!(
        h.events.last(),
        Some(Event::Connection(ConnectionState::Disconnected { reason })) if reason.contains("port closed")
    ));
    // Without backoff: the dial goes out in the same wake-up, to the other node.
    let dial = out.iter().find_map(|t| match t {
        Transmit::Dial { endpoint, .. } => Some(endpoint.as_str()),
        _ => None,
    });
    assert_eq!(dial, Some(OTHER), "the other node, at once");
}
