//! One store suite, three stores: every case in `suite/cases.rs` runs against the embedded store, a
//! `RedisStore` on a real single `redis-server`, and a `RedisStore` on a real 3-master Redis Cluster,
//! with the same assertions.

#![allow(async_fn_in_trait)] // the fixture trait is local to this test crate

#[path = "suite/cases.rs"]
mod cases;
#[path = "suite/fixtures.rs"]
mod fixtures;

use ferry_store::Store;

/// Instantiates every case for one fixture type, as a module of tests.
macro_rules! suite {
    ($backend:ident, $fixture:ty) => {
        mod $backend {
            use super::*;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        cases::$name(<$fixture>::new().await).await;
                    }
                };
            }

            case!(append_assigns_consecutive_seqs_and_stores_the_message);
            case!(append_to_missing_conversation_or_by_non_member_is_refused);
            case!(duplicate_returns_the_original_and_stores_once);
            case!(duplicates_within_one_batch_are_detected);
            case!(dedupe_expires_after_the_window);
            case!(concurrent_appenders_get_gap_free_seqs_in_shared_commits);
            case!(queued_appends_keep_their_order_while_in_flight);
            case!(reopen_preserves_everything_including_the_epoch);
            case!(create_group_writes_the_created_message);
            case!(add_and_remove_follow_the_rules);
            case!(ensure_direct_is_idempotent_and_silent_when_it_exists);
            case!(read_respects_bounds_and_limit);
            case!(set_read_clamps_and_never_goes_back);
            case!(set_delivered_clamps_to_the_head_and_never_goes_back);
            case!(changed_since_pages_and_tokens);
            case!(changed_since_pages_through_many_conversations_oldest_first);
            case!(removed_member_sees_the_removal_but_not_later_messages);
            case!(push_registrations_replace_list_delete_and_survive_reopen);
            case!(members_returned_with_an_append_are_the_current_members);
            case!(token_revocations_only_move_forward_and_survive_reopen);
        }
    };
}

suite!(embedded, fixtures::Embedded);
suite!(redis_single, fixtures::RedisSingle);
suite!(redis_cluster, fixtures::RedisClustered);

/// What only the embedded store has: its own commit counters, and one epoch for the whole store.
mod embedded_only {
    use super::fixtures::{Embedded, Fixture};
    use super::*;
    use bytes::Bytes;
    use ferry_store::NewMessage;

    #[tokio::test]
    async fn duplicates_are_counted_and_conversations_share_the_store_epoch() {
        let store = Embedded::new().await.open().await;
        store.ensure_direct("d:a:b", "a", "b").await.unwrap();
        let message = NewMessage {
            conversation: "d:a:b".into(),
            sender: "a".into(),
            sender_device: "phone".into(),
            client_msg_id: "m1".into(),
            body: Bytes::from_static(b"x"),
            server_time_ms: 1,
        };
        let first = store.append(message.clone()).await.unwrap();
        store.append(message).await.unwrap();
        assert_eq!(store.commit_stats().duplicates, 1);
        assert_eq!(first.epoch, store.store_epoch());
    }
}
