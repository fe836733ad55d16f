//! Group helpers for wire-level tests: create a group and expect it to exist, list every conversation.

use ferry_interop::driver::Session;
use ferry_protocol::frame::ConversationState;

/// Creates group `name` with `members` (besides the creator) and returns its conversation id; panics
/// unless the server created it with seq 1 (the creation event).
pub async fn create_group(session: &mut Session, name: &str, members: &[&str]) -> String {
    let (conversation, seq) = session
        .create_group(name, members)
        .await
        .unwrap_or_else(|e| panic!("CreateGroup {name}: {e}"))
        .unwrap_or_else(|code| panic!("CreateGroup {name} refused: {code:?}"));
    assert_eq!(seq, 1, "seq of the creation event of {name}");
    conversation
}

/// Every conversation of the session's user: a Sync from token 0 with the default page.
pub async fn sync_all(session: &mut Session) -> Vec<ConversationState> {
    session
        .sync(0, 0)
        .await
        .unwrap_or_else(|e| panic!("Sync from 0: {e}"))
        .conversations
}
