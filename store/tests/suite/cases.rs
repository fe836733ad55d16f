//! The store suite: every case takes a [`Fixture`] and runs against whatever store it opens, with the
//! same assertions for each (see `suite.rs` for the stores).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::frame::{ConversationKind, MembershipAction, MessageKind};
use ferry_store::{MembershipOp, NewMessage, Store, StoreError, SyncPage};

use super::fixtures::Fixture;

const DIRECT: &str = "d:alice:bob";
const GROUP: &str = "g:0123456789abcdef0123456789abcdef";

fn msg(conv: &str, sender: &str, cmid: &str, time: u64) -> NewMessage {
    NewMessage {
        conversation: conv.to_owned(),
        sender: sender.to_owned(),
        sender_device: "phone".to_owned(),
        client_msg_id: cmid.to_owned(),
        body: Bytes::from(format!("body of {cmid}")),
        server_time_ms: time,
    }
}

async fn create_group(store: &impl Store, owner: &str, members: &[&str]) {
    let op = MembershipOp::Create {
        name: "team".into(),
        owner: owner.into(),
        members: members.iter().map(|m| m.to_string()).collect(),
    };
    store.change_membership(GROUP, op, 1).await.unwrap();
}

fn add(actor: &str, user: &str) -> MembershipOp {
    MembershipOp::Add {
        actor: actor.into(),
        user: user.into(),
    }
}

fn remove(actor: &str, user: &str) -> MembershipOp {
    MembershipOp::Remove {
        actor: actor.into(),
        user: user.into(),
    }
}

pub async fn append_assigns_consecutive_seqs_and_stores_the_message<F: Fixture>(f: F) {
    let store = f.open().await;
    store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
    for (i, cmid) in ["a", "b", "c"].into_iter().enumerate() {
        let appended = store.append(msg(DIRECT, "alice", cmid, 10)).await.unwrap();
        assert_eq!(appended.seq, i as u64 + 1);
        assert!(!appended.duplicate);
        let info = store.conversation(DIRECT).await.unwrap().unwrap();
        assert_eq!(appended.epoch, info.epoch);
        assert_ne!(appended.epoch, 0);
        let message = appended.message.unwrap();
        assert_eq!(message.seq, appended.seq);
        assert_eq!(message.client_msg_id, cmid);
        assert_eq!(message.kind, MessageKind::User as i32);
    }
    let read = store.read(DIRECT, 0, u64::MAX, 100).await.unwrap();
    let seqs: Vec<u64> = read.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(read[1].body, Bytes::from("body of b"));
    assert_eq!(read[1].sender_device, "phone");
    let info = store.conversation(DIRECT).await.unwrap().unwrap();
    assert_eq!(info.head_seq, 3);
    assert_eq!(info.kind, ConversationKind::Direct);
    // Sending marks read.
    assert_eq!(
        store
            .membership(DIRECT, "alice")
            .await
            .unwrap()
            .unwrap()
            .read_seq,
        3
    );
    assert_eq!(
        store
            .membership(DIRECT, "bob")
            .await
            .unwrap()
            .unwrap()
            .read_seq,
        0
    );
}

pub async fn append_to_missing_conversation_or_by_non_member_is_refused<F: Fixture>(f: F) {
    let store = f.open().await;
    assert!(matches!(
        store.append(msg(DIRECT, "alice", "x", 1)).await,
        Err(StoreError::NotFound)
    ));
    store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
    assert!(matches!(
        store.append(msg(DIRECT, "mallory", "x", 1)).await,
        Err(StoreError::Forbidden(_))
    ));
    assert_eq!(
        store.conversation(DIRECT).await.unwrap().unwrap().head_seq,
        0
    );
}

pub async fn duplicate_returns_the_original_and_stores_once<F: Fixture>(f: F) {
    let store = f.open().await;
    store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
    let first = store.append(msg(DIRECT, "alice", "m1", 100)).await.unwrap();
    let again = store.append(msg(DIRECT, "alice", "m1", 200)).await.unwrap();
    assert!(again.duplicate);
    assert!(again.message.is_none());
    assert_eq!((again.seq, again.server_time_ms), (first.seq, 100));
    // The same id from another sender is a different message.
    let bob = store.append(msg(DIRECT, "bob", "m1", 300)).await.unwrap();
    assert_eq!((bob.seq, bob.duplicate), (2, false));
    assert_eq!(store.read(DIRECT, 0, u64::MAX, 100).await.unwrap().len(), 2);
}

pub async fn duplicates_within_one_batch_are_detected<F: Fixture>(f: F) {
    let store = Arc::new(f.open().await);
    store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.append(msg(DIRECT, "alice", "same", 5)).await })
        })
        .collect();
    let mut originals = 0;
    for task in tasks {
        let appended = task.await.unwrap().unwrap();
        assert_eq!(appended.seq, 1);
        originals += usize::from(!appended.duplicate);
    }
    assert_eq!(originals, 1);
    assert_eq!(
        store.conversation(DIRECT).await.unwrap().unwrap().head_seq,
        1
    );
}

pub async fn dedupe_expires_after_the_window<F: Fixture>(f: F) {
    let store = f.open_with_dedupe_window(Duration::from_millis(1000)).await;
    store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
    store
        .append(msg(DIRECT, "alice", "m1", 10_000))
        .await
        .unwrap();
    let inside = store
        .append(msg(DIRECT, "alice", "m1", 10_999))
        .await
        .unwrap();
    assert_eq!((inside.seq, inside.duplicate), (1, true));
    let after = store
        .append(msg(DIRECT, "alice", "m1", 11_000))
        .await
        .unwrap();
    assert_eq!((after.seq, after.duplicate), (2, false));
    // The new entry is remembered from its own time, even though purging ran in between.
    store
        .append(msg(DIRECT, "bob", "other", 11_500))
        .await
        .unwrap();
    let again = store
        .append(msg(DIRECT, "alice", "m1", 11_900))
        .await
        .unwrap();
    assert_eq!((again.seq, again.duplicate), (2, true));
}

pub async fn concurrent_appenders_get_gap_free_seqs_in_shared_commits<F: Fixture>(f: F) {
    const CONVS: usize = 5;
    const TASKS: usize = 50;
    const PER_TASK: usize = 100;
    let store = Arc::new(f.open().await);
    let conv = |i: usize| format!("d:u{i}:v{i}");
    for i in 0..CONVS {
        store
            .ensure_direct(&conv(i), &format!("u{i}"), &format!("v{i}"))
            .await
            .unwrap();
    }
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = store.clone();
            let conv = conv(t % CONVS);
            let sender = format!("u{}", t % CONVS);
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..PER_TASK {
                    let m = msg(&conv, &sender, &format!("t{t}-{i}"), 1);
                    seqs.push(store.append(m).await.unwrap().seq);
                }
                (conv, seqs)
            })
        })
        .collect();
    let mut acked: HashMap<String, Vec<u64>> = HashMap::new();
    for task in tasks {
        let (conv, seqs) = task.await.unwrap();
        acked.entry(conv).or_default().extend(seqs);
    }
    let per_conv = TASKS / CONVS * PER_TASK;
    for (conv, mut seqs) in acked {
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=per_conv as u64).collect::<Vec<_>>(), "{conv}");
        let stored = store.read(&conv, 0, u64::MAX, u32::MAX).await.unwrap();
        let ids: HashSet<_> = stored.iter().map(|m| m.client_msg_id.clone()).collect();
        assert_eq!(stored.len(), per_conv);
        assert_eq!(ids.len(), per_conv, "every message stored exactly once");
        assert!(stored.iter().zip(1..).all(|(m, seq)| m.seq == seq));
    }
    let stats = store.write_stats();
    assert!(stats.requests >= (TASKS * PER_TASK) as u64, "{stats:?}");
    assert!(stats.requests > stats.commits, "no group commit: {stats:?}");
}

pub async fn reopen_preserves_everything_including_the_epoch<F: Fixture>(f: F) {
    let (epoch, token) = {
        let store = f.open().await;
        assert_ne!(store.store_epoch(), 0);
        store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
        create_group(&store, "alice", &["bob"]).await;
        store.append(msg(DIRECT, "alice", "m1", 1)).await.unwrap();
        store.append(msg(DIRECT, "alice", "m2", 1)).await.unwrap();
        store.set_read(DIRECT, "bob", 1).await.unwrap();
        store.set_delivered(DIRECT, "bob", "tab", 2).await.unwrap();
        let token = store
            .changed_since("bob", "tab", 0, 10)
            .await
            .unwrap()
            .next_token;
        (store.store_epoch(), token)
    };
    let store = f.open().await;
    assert_eq!(store.store_epoch(), epoch);
    assert_eq!(
        store.conversation(DIRECT).await.unwrap().unwrap().head_seq,
        2
    );
    assert_eq!(store.members(GROUP).await.unwrap(), ["alice", "bob"]);
    assert_eq!(
        store
            .membership(DIRECT, "bob")
            .await
            .unwrap()
            .unwrap()
            .read_seq,
        1
    );
    // Seqs, dedupe and change tokens continue where they were.
    let dup = store.append(msg(DIRECT, "alice", "m2", 1)).await.unwrap();
    assert_eq!((dup.seq, dup.duplicate), (2, true));
    assert_eq!(
        store
            .append(msg(DIRECT, "alice", "m3", 1))
            .await
            .unwrap()
            .seq,
        3
    );
    let page = store.changed_since("bob", "tab", token, 10).await.unwrap();
    assert_eq!(page.conversations.len(), 1);
    assert_eq!(page.conversations[0].acked_seq, 2);
    assert!(page.next_token > token);
    // A different data directory (key prefix) is a different store.
    assert_ne!(f.open_other().await.store_epoch(), epoch);
}

pub async fn create_group_writes_the_created_message<F: Fixture>(f: F) {
    let store = f.open().await;
    let op = MembershipOp::Create {
        name: "team".into(),
        owner: "alice".into(),
        members: vec!["bob".into(), "alice".into(), "bob".into(), "carol".into()],
    };
    let created = store.change_membership(GROUP, op.clone(), 7).await.unwrap();
    assert_eq!(created.seq, 1);
    let message = created.message.unwrap();
    assert_eq!(message.kind, MessageKind::System as i32);
    assert_eq!(message.sender, "alice");
    let change = message.membership.unwrap();
    assert_eq!(change.action, MembershipAction::Created as i32);
    assert_eq!(change.users, ["alice", "bob", "carol"]);
    assert_eq!(change.name, "team");
    assert_eq!(
        store.members(GROUP).await.unwrap(),
        ["alice", "bob", "carol"]
    );
    let info = store.conversation(GROUP).await.unwrap().unwrap();
    assert_eq!(
        (info.kind, info.owner.as_str(), info.head_seq),
        (ConversationKind::Group, "alice", 1)
    );
    assert_eq!(
        store
            .membership(GROUP, "carol")
            .await
            .unwrap()
            .unwrap()
            .first_seq,
        1
    );
    assert_eq!(store.read(GROUP, 0, 10, 10).await.unwrap().len(), 1);
    assert!(matches!(
        store.change_membership(GROUP, op, 8).await,
        Err(StoreError::Invalid(_))
    ));
}

pub async fn add_and_remove_follow_the_rules<F: Fixture>(f: F) {
    let store = f.open().await;
    let missing = "g:ffffffffffffffffffffffffffffffff";
    assert!(matches!(
        store
            .change_membership(missing, add("alice", "bob"), 1)
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .change_membership(missing, remove("alice", "alice"), 1)
            .await,
        Err(StoreError::NotFound)
    ));
    create_group(&store, "alice", &["bob"]).await;
    store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
    for op in [
        add("alice", "carol"),
        remove("alice", "bob"),
        remove("bob", "bob"),
    ] {
        assert!(matches!(
            store.change_membership(DIRECT, op, 1).await,
            Err(StoreError::Forbidden(_))
        ));
    }
    // Only the owner adds; members cannot be added twice.
    assert!(matches!(
        store.change_membership(GROUP, add("bob", "carol"), 2).await,
        Err(StoreError::Forbidden(_))
    ));
    assert!(matches!(
        store.change_membership(GROUP, add("alice", "bob"), 2).await,
        Err(StoreError::Invalid(_))
    ));
    store.append(msg(GROUP, "bob", "hello", 2)).await.unwrap(); // seq 2
    let added = store
        .change_membership(GROUP, add("alice", "carol"), 3)
        .await
        .unwrap();
    assert_eq!(added.seq, 3);
    let carol = store.membership(GROUP, "carol").await.unwrap().unwrap();
    // A late joiner's read cursor starts just below what they can read (FERRY-READ-3).
    assert_eq!(
        (carol.first_seq, carol.left_seq, carol.read_seq),
        (3, None, 2)
    );
    // Others cannot remove; only owner or self. Non-members cannot be removed.
    assert!(matches!(
        store
            .change_membership(GROUP, remove("bob", "carol"), 4)
            .await,
        Err(StoreError::Forbidden(_))
    ));
    assert!(matches!(
        store
            .change_membership(GROUP, remove("alice", "dave"), 4)
            .await,
        Err(StoreError::Invalid(_))
    ));
    let removed = store
        .change_membership(GROUP, remove("alice", "carol"), 4)
        .await
        .unwrap();
    assert_eq!(removed.seq, 4);
    let change = removed.message.unwrap().membership.unwrap();
    assert_eq!(
        (change.action, change.users),
        (MembershipAction::Removed as i32, vec!["carol".to_owned()])
    );
    assert_eq!(
        store
            .membership(GROUP, "carol")
            .await
            .unwrap()
            .unwrap()
            .left_seq,
        Some(4)
    );
    assert!(matches!(
        store
            .change_membership(GROUP, remove("carol", "carol"), 5)
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.append(msg(GROUP, "carol", "late", 5)).await,
        Err(StoreError::Forbidden(_))
    ));
    // Re-adding starts over at the new ADDED message.
    assert_eq!(
        store
            .change_membership(GROUP, add("alice", "carol"), 5)
            .await
            .unwrap()
            .seq,
        5
    );
    let carol = store.membership(GROUP, "carol").await.unwrap().unwrap();
    assert_eq!((carol.first_seq, carol.left_seq), (5, None));
    // A member leaves by themselves; the owner leaving leaves the group without owner.
    assert_eq!(
        store
            .change_membership(GROUP, remove("bob", "bob"), 6)
            .await
            .unwrap()
            .seq,
        6
    );
    assert_eq!(
        store
            .change_membership(GROUP, remove("alice", "alice"), 7)
            .await
            .unwrap()
            .seq,
        7
    );
    assert_eq!(store.conversation(GROUP).await.unwrap().unwrap().owner, "");
    assert!(matches!(
        store.change_membership(GROUP, add("alice", "bob"), 8).await,
        Err(StoreError::Forbidden(_))
    ));
    assert_eq!(store.members(GROUP).await.unwrap(), ["carol"]);
    assert_eq!(
        store.conversation(GROUP).await.unwrap().unwrap().head_seq,
        7
    );
}

pub async fn ensure_direct_is_idempotent_and_silent_when_it_exists<F: Fixture>(f: F) {
    let store = f.open().await;
    store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
    let page = store.changed_since("alice", "phone", 0, 10).await.unwrap();
    assert_eq!(page.conversations.len(), 1);
    store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
    let again = store
        .changed_since("alice", "phone", page.next_token, 10)
        .await
        .unwrap();
    assert!(again.conversations.is_empty());
    assert_eq!(again.next_token, page.next_token);
    let bob = store.membership(DIRECT, "bob").await.unwrap().unwrap();
    assert_eq!((bob.first_seq, bob.left_seq), (1, None));
    assert_eq!(store.members(DIRECT).await.unwrap(), ["alice", "bob"]);
}

pub async fn read_respects_bounds_and_limit<F: Fixture>(f: F) {
    let store = f.open().await;
    store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
    for i in 0..10 {
        store
            .append(msg(DIRECT, "alice", &format!("m{i}"), 1))
            .await
            .unwrap();
    }
    let seqs = |v: Vec<ferry_protocol::frame::Message>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.read(DIRECT, 3, 6, 100).await.unwrap()),
        [4, 5, 6]
    );
    assert_eq!(seqs(store.read(DIRECT, 3, 100, 2).await.unwrap()), [4, 5]);
    assert_eq!(
        seqs(store.read(DIRECT, 8, 100, 100).await.unwrap()),
        [9, 10]
    );
    assert!(store.read(DIRECT, 10, 100, 100).await.unwrap().is_empty());
    assert!(store.read(DIRECT, 5, 5, 100).await.unwrap().is_empty());
    assert!(store.read(DIRECT, 0, 10, 0).await.unwrap().is_empty());
    assert!(store.read("d:x:y", 0, 10, 10).await.unwrap().is_empty());
}

pub async fn set_read_clamps_and_never_goes_back<F: Fixture>(f: F) {
    let store = f.open().await;
    create_group(&store, "alice", &["bob", "carol"]).await;
    store.append(msg(GROUP, "alice", "a", 1)).await.unwrap(); // 2
    store
        .change_membership(GROUP, remove("alice", "carol"), 1)
        .await
        .unwrap(); // 3
    store.append(msg(GROUP, "alice", "b", 1)).await.unwrap(); // 4
    assert_eq!(store.set_read(GROUP, "bob", 2).await.unwrap(), 2);
    assert_eq!(store.set_read(GROUP, "bob", 1).await.unwrap(), 2);
    assert_eq!(store.set_read(GROUP, "bob", 99).await.unwrap(), 4);
    // A removed member reads up to their removal.
    assert_eq!(store.set_read(GROUP, "carol", 99).await.unwrap(), 3);
    assert!(matches!(
        store.set_read(GROUP, "mallory", 1).await,
        Err(StoreError::Forbidden(_))
    ));
    assert!(matches!(
        store
            .set_read("g:ffffffffffffffffffffffffffffffff", "bob", 1)
            .await,
        Err(StoreError::NotFound)
    ));
}

pub async fn set_delivered_clamps_to_the_head_and_never_goes_back<F: Fixture>(f: F) {
    let store = f.open().await;
    store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
    store.append(msg(DIRECT, "alice", "m1", 1)).await.unwrap();
    store.append(msg(DIRECT, "alice", "m2", 1)).await.unwrap();
    let acked = |page: SyncPage| page.conversations[0].acked_seq;
    // An Ack past the head records the head, not the claimed seq.
    store.set_delivered(DIRECT, "bob", "tab", 99).await.unwrap();
    let page = store.changed_since("bob", "tab", 0, 10).await.unwrap();
    assert_eq!(acked(page), 2);
    // A lower Ack does not move it back.
    store.set_delivered(DIRECT, "bob", "tab", 1).await.unwrap();
    let page = store.changed_since("bob", "tab", 0, 10).await.unwrap();
    assert_eq!(acked(page), 2);
    // The clamp follows the head as it grows.
    store.append(msg(DIRECT, "alice", "m3", 1)).await.unwrap();
    store.set_delivered(DIRECT, "bob", "tab", 99).await.unwrap();
    let page = store.changed_since("bob", "tab", 0, 10).await.unwrap();
    assert_eq!(acked(page), 3);
    // An unknown conversation is not an error and stores nothing.
    store
        .set_delivered("d:nobody:none", "bob", "tab", 5)
        .await
        .unwrap();
    assert!(store.conversation("d:nobody:none").await.unwrap().is_none());
}

pub async fn changed_since_pages_and_tokens<F: Fixture>(f: F) {
    let store = f.open().await;
    let convs: Vec<String> = (0..5).map(|i| format!("d:alice:u{i}")).collect();
    for (i, conv) in convs.iter().enumerate() {
        store
            .ensure_direct(conv, "alice", &format!("u{i}"))
            .await
            .unwrap();
    }
    // Appends in reverse order: conv 4 changed first.
    for (i, conv) in convs.iter().enumerate().rev() {
        store
            .append(msg(conv, &format!("u{i}"), "m", 1))
            .await
            .unwrap();
    }
    let first = store.changed_since("alice", "phone", 0, 2).await.unwrap();
    let ids = |p: &ferry_store::SyncPage| {
        p.conversations
            .iter()
            .map(|c| c.conversation_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&first), [convs[4].clone(), convs[3].clone()]);
    assert!(first.has_more);
    let second = store
        .changed_since("alice", "phone", first.next_token, 2)
        .await
        .unwrap();
    assert_eq!(ids(&second), [convs[2].clone(), convs[1].clone()]);
    let third = store
        .changed_since("alice", "phone", second.next_token, 2)
        .await
        .unwrap();
    assert_eq!(ids(&third), [convs[0].clone()]);
    assert!(!third.has_more);
    let state = &third.conversations[0];
    assert_eq!(
        (state.head_seq, state.read_seq, state.unread_count),
        (1, 0, 1)
    );
    assert_eq!(
        (state.member, state.first_seq, state.kind),
        (true, 1, ConversationKind::Direct as i32)
    );
    assert_eq!(
        state.epoch,
        store.conversation(&convs[0]).await.unwrap().unwrap().epoch
    );
    let token = third.next_token;
    assert!(store
        .changed_since("alice", "phone", token, 10)
        .await
        .unwrap()
        .conversations
        .is_empty());

    // A read cursor change shows up, with unread reduced; delivery cursors are per device.
    store.set_read(&convs[2], "alice", 50).await.unwrap();
    store
        .set_delivered(&convs[2], "alice", "phone", 1)
        .await
        .unwrap();
    store
        .set_delivered(&convs[2], "alice", "phone", 0)
        .await
        .unwrap();
    let page = store
        .changed_since("alice", "phone", token, 10)
        .await
        .unwrap();
    assert_eq!(ids(&page), [convs[2].clone()]);
    let state = &page.conversations[0];
    assert_eq!(
        (state.read_seq, state.unread_count, state.acked_seq),
        (1, 0, 1)
    );
    let laptop = store
        .changed_since("alice", "laptop", token, 10)
        .await
        .unwrap();
    assert_eq!(laptop.conversations[0].acked_seq, 0);
    // Other users' cursors do not concern alice.
    store.set_read(&convs[3], "u3", 1).await.unwrap();
    let quiet = store
        .changed_since("alice", "phone", page.next_token, 10)
        .await
        .unwrap();
    assert!(quiet.conversations.is_empty());
    assert!(store
        .changed_since("nobody", "x", 0, 10)
        .await
        .unwrap()
        .conversations
        .is_empty());
}

/// Many changed conversations paged in small pages: every page is the next oldest changes, in order,
/// and the pages together list each conversation once (the store picks a page out of all of a user's
/// conversations without sorting them all).
pub async fn changed_since_pages_through_many_conversations_oldest_first<F: Fixture>(f: F) {
    let store = f.open().await;
    let count = 40;
    let convs: Vec<String> = (0..count).map(|i| format!("d:alice:p{i:02}")).collect();
    for (i, conv) in convs.iter().enumerate() {
        store
            .ensure_direct(conv, "alice", &format!("p{i:02}"))
            .await
            .unwrap();
    }
    // Changed in an order unrelated to the names: 7 is coprime with 40.
    let order: Vec<usize> = (0..count).map(|i| i * 7 % count).collect();
    for &i in &order {
        store
            .append(msg(&convs[i], &format!("p{i:02}"), "m", 1))
            .await
            .unwrap();
    }
    let mut listed = Vec::new();
    let mut token = 0;
    // Bounded: 40 conversations in pages of 6 take 7 pages.
    for _ in 0..8 {
        let page = store
            .changed_since("alice", "phone", token, 6)
            .await
            .unwrap();
        assert!(page.conversations.len() <= 6);
        listed.extend(page.conversations.iter().map(|c| c.conversation_id.clone()));
        token = page.next_token;
        if !page.has_more {
            break;
        }
    }
    let expected: Vec<String> = order.iter().map(|&i| convs[i].clone()).collect();
    assert_eq!(listed, expected);
}

pub async fn removed_member_sees_the_removal_but_not_later_messages<F: Fixture>(f: F) {
    let store = f.open().await;
    create_group(&store, "alice", &["bob"]).await;
    store
        .change_membership(GROUP, remove("alice", "bob"), 2)
        .await
        .unwrap(); // 2
    let page = store.changed_since("bob", "phone", 0, 10).await.unwrap();
    let state = &page.conversations[0];
    assert_eq!(
        (state.member, state.head_seq, state.unread_count),
        (false, 2, 2)
    );
    // The append itself refuses a removed sender (servers rely on it instead of reading first).
    assert!(matches!(
        store.append(msg(GROUP, "bob", "after removal", 3)).await,
        Err(StoreError::Forbidden(_))
    ));
    store.append(msg(GROUP, "alice", "later", 3)).await.unwrap();
    let after = store
        .changed_since("bob", "phone", page.next_token, 10)
        .await
        .unwrap();
    assert!(after.conversations.is_empty());
    // Alice sees the append.
    assert_eq!(
        store
            .changed_since("alice", "phone", page.next_token, 10)
            .await
            .unwrap()
            .conversations
            .len(),
        1
    );
}

pub async fn queued_appends_keep_their_order_while_in_flight<F: Fixture>(f: F) {
    const QUEUED: u64 = 300;
    let store = f.open().await;
    store.ensure_direct(DIRECT, "alice", "bob").await.unwrap();
    // One caller queues without waiting for any result, as a stream pipelining Sends does.
    let mut pending = Vec::new();
    for i in 0..QUEUED {
        pending.push(
            store
                .queue_append(msg(DIRECT, "alice", &format!("q{i}"), 1))
                .await
                .unwrap(),
        );
    }
    for (i, appended) in pending.into_iter().enumerate() {
        let appended = appended.await.unwrap();
        assert_eq!(appended.seq, i as u64 + 1, "queue order broken at {i}");
        assert_eq!(appended.message.unwrap().client_msg_id, format!("q{i}"));
    }
    let stats = store.write_stats();
    assert!(
        stats.commits < QUEUED,
        "queued appends did not share round trips: {stats:?}"
    );
}

pub async fn push_registrations_replace_list_delete_and_survive_reopen<F: Fixture>(f: F) {
    use ferry_store::{PushRecord, MAX_PUSH_DEVICES_PER_USER};
    let record = |endpoint: &str, policy: i32| PushRecord {
        endpoint: endpoint.into(),
        app_token: "tok".into(),
        policy,
        registered_ms: 5,
    };
    let store = f.open().await;
    assert!(store.push_registrations("alice").await.unwrap().is_empty());
    store
        .put_push("alice", "phone", record("https://a/1", 0))
        .await
        .unwrap();
    store
        .put_push("alice", "tablet", record("https://a/2", 1))
        .await
        .unwrap();
    // Registering again replaces the device's registration; another user's is separate.
    store
        .put_push("alice", "phone", record("https://a/3", 1))
        .await
        .unwrap();
    store
        .put_push("alicea", "phone", record("https://b/1", 0))
        .await
        .unwrap();
    let listed = store.push_registrations("alice").await.unwrap();
    assert_eq!(
        listed,
        vec![
            ("phone".to_string(), record("https://a/3", 1)),
            ("tablet".to_string(), record("https://a/2", 1)),
        ]
    );
    drop(store);
    let store = f.open().await;
    assert_eq!(store.push_registrations("alice").await.unwrap(), listed);
    assert!(store.delete_push("alice", "phone").await.unwrap());
    assert!(!store.delete_push("alice", "phone").await.unwrap());
    let left = store.push_registrations("alice").await.unwrap();
    assert_eq!(left, vec![("tablet".to_string(), record("https://a/2", 1))]);
    assert_eq!(store.push_registrations("alicea").await.unwrap().len(), 1);
    // The per-user cap refuses a new device but still lets a registered one re-register.
    for i in 1..MAX_PUSH_DEVICES_PER_USER {
        let device = format!("d{i}");
        store
            .put_push("alice", &device, record("https://a/x", 0))
            .await
            .unwrap();
    }
    let refused = store
        .put_push("alice", "one-more", record("https://a/y", 0))
        .await;
    assert!(
        matches!(refused, Err(StoreError::Invalid(_))),
        "{refused:?}"
    );
    store
        .put_push("alice", "tablet", record("https://a/z", 0))
        .await
        .unwrap();
}

/// The members an append returns (the Redis store's script does, to spare the fan-out a round trip)
/// are exactly the current members, also after a removal; a duplicate returns none.
pub async fn members_returned_with_an_append_are_the_current_members<F: Fixture>(f: F) {
    let store = f.open().await;
    create_group(&store, "alice", &["bob", "carol"]).await;
    store
        .change_membership(GROUP, remove("alice", "carol"), 2)
        .await
        .unwrap();
    let appended = store.append(msg(GROUP, "bob", "m1", 3)).await.unwrap();
    assert_eq!(appended.members.is_some(), F::APPEND_RETURNS_MEMBERS);
    if let Some(members) = &appended.members {
        assert_eq!(members, &["alice", "bob"]);
        assert_eq!(members, &store.members(GROUP).await.unwrap());
    }
    let again = store.append(msg(GROUP, "bob", "m1", 4)).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.members, None);
}

pub async fn token_revocations_only_move_forward_and_survive_reopen<F: Fixture>(f: F) {
    let store = f.open().await;
    assert_eq!(store.tokens_revoked_at("alice", "phone").await.unwrap(), 0);
    assert_eq!(
        store
            .revoke_tokens("alice", Some("phone"), 100)
            .await
            .unwrap(),
        100
    );
    // An earlier stamp never lowers a later one (a late or repeated revocation revives nothing).
    assert_eq!(
        store
            .revoke_tokens("alice", Some("phone"), 50)
            .await
            .unwrap(),
        100
    );
    assert_eq!(
        store.tokens_revoked_at("alice", "phone").await.unwrap(),
        100
    );
    // One device's revocation leaves the user's other devices and other users alone.
    assert_eq!(store.tokens_revoked_at("alice", "tablet").await.unwrap(), 0);
    assert_eq!(store.tokens_revoked_at("alicea", "phone").await.unwrap(), 0);
    // A user-wide stamp applies to every device; the later of the two counts.
    assert_eq!(store.revoke_tokens("alice", None, 80).await.unwrap(), 80);
    assert_eq!(
        store.tokens_revoked_at("alice", "tablet").await.unwrap(),
        80
    );
    assert_eq!(
        store.tokens_revoked_at("alice", "phone").await.unwrap(),
        100
    );
    store.revoke_tokens("alice", None, 120).await.unwrap();
    drop(store);
    let store = f.open().await;
    assert_eq!(
        store.tokens_revoked_at("alice", "phone").await.unwrap(),
        120
    );
    assert_eq!(
        store.tokens_revoked_at("alice", "laptop").await.unwrap(),
        120
    );
    assert_eq!(store.tokens_revoked_at("bob", "phone").await.unwrap(), 0);
}
