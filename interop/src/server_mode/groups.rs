//! Groups: creation, membership rules, what joiners and leavers may read, Open authorisation.

use std::sync::Arc;

use ferry_protocol::frame::{frame::Kind, CreateGroup, MembershipAction, MessageKind};
use ferry_protocol::{ids, ErrorCode};

use super::{create_group, expect_error, expect_refused, ServerCtx};
use crate::runner::{Case, CaseResult};
use crate::{case, ensure, ensure_eq, fail};

pub fn cases() -> Vec<Case<ServerCtx>> {
    vec![
        case!(["FERRY-GROUP-1", "FERRY-ID-4", "FERRY-MSG-13", "FERRY-GROUP-6"], "CreateGroup makes g:<32 hex> with a CREATED system message at seq 1, delivered to the creator", create),
        case!(["FERRY-GROUP-1", "FERRY-ID-1"], "CreateGroup with an invalid member or a long name is INVALID_ARGUMENT", create_invalid),
        case!(["FERRY-GROUP-2", "FERRY-GROUP-3", "FERRY-GROUP-6"], "only the owner adds and removes; current members cannot be re-added; direct conversations have no admin", admin_rules),
        case!(["FERRY-PULL-4", "FERRY-GROUP-2", "FERRY-READ-3"], "a late joiner reads from their ADDED message on", late_joiner),
        case!(["FERRY-PULL-5", "FERRY-GROUP-4", "FERRY-GROUP-3", "FERRY-SEC-4"], "a removed member reads up to left_seq and may not Send", removed_member),
        case!(["FERRY-GROUP-5"], "the owner may leave; then only self-removal remains", owner_leaves),
        case!(["FERRY-STREAM-5", "FERRY-ID-3", "FERRY-ID-5", "FERRY-STREAM-4"], "Open is refused for malformed, foreign, unknown and non-member conversations", open_rules),
    ]
}

async fn create(ctx: Arc<ServerCtx>) -> CaseResult {
    let (owner, member) = (ctx.user("owner"), ctx.user("member"));
    let mut session = ctx.session(&owner, "phone").await?;
    let group = create_group(&mut session, "team", &[&member, &member, &owner]).await?;
    let hex = group.strip_prefix("g:").unwrap_or("");
    ensure!(
        hex.len() == 32 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
        "group id {group:?} is not g:<32 lowercase hex>"
    );
    // The requesting device gets the system message too.
    let mut incoming = session.accept().await?;
    ensure_eq!(
        incoming.conversation,
        group,
        "conversation of the server-opened stream"
    );
    let created = incoming.wait_delivered(1).await?[0].clone();
    ensure_eq!(created.seq, 1, "seq of CREATED");
    ensure_eq!(created.kind(), MessageKind::System, "Message.kind");
    ensure_eq!(created.sender, owner, "Message.sender of CREATED");
    ensure_eq!(
        created.sender_device,
        "",
        "Message.sender_device of a system message (FERRY-MSG-13)"
    );
    ensure!(
        created.client_msg_id.is_empty() && created.body.is_empty(),
        "system message with client_msg_id or body"
    );
    let change = created.membership.clone().unwrap_or_default();
    ensure_eq!(
        change.action(),
        MembershipAction::Created,
        "MembershipChange.action"
    );
    ensure_eq!(change.actor, owner, "MembershipChange.actor");
    ensure_eq!(change.name, "team", "MembershipChange.name");
    let mut users = change.users.clone();
    users.sort();
    let mut expected = vec![owner.clone(), member.clone()];
    expected.sort();
    ensure_eq!(
        users,
        expected,
        "MembershipChange.users (duplicates and the creator listed once)"
    );
    let states = session.sync(0, 0).await?.conversations;
    let s = states
        .iter()
        .find(|c| c.conversation_id == group)
        .cloned()
        .unwrap_or_default();
    ensure_eq!(
        (s.name.as_str(), s.member, s.head_seq),
        ("team", true, 1),
        "(name, member, head_seq) in Sync"
    );
    Ok(())
}

async fn create_invalid(ctx: Arc<ServerCtx>) -> CaseResult {
    let owner = ctx.user("owner");
    let mut session = ctx.session(&owner, "phone").await?;
    let long = "n".repeat(257);
    for (name, members, what) in [
        ("ok", vec!["bad user".to_owned()], "member id with a space"),
        ("ok", vec!["a:b".to_owned()], "member id with a colon"),
        (long.as_str(), vec![], "257-byte name"),
    ] {
        let request_id = session.request_id();
        let kind = Kind::CreateGroup(CreateGroup {
            request_id,
            name: name.into(),
            members,
        });
        let reply = session.request(ferry_protocol::codec::frame(kind)).await?;
        let e = expect_error(reply, ErrorCode::INVALID_ARGUMENT)
            .map_err(|v| crate::runner::Verdict::Fail(format!("{what}: {v:?}")))?;
        ensure_eq!(e.request_id, request_id, "Error.request_id for {what}");
    }
    let states = session.sync(0, 0).await?.conversations;
    ensure!(
        states.is_empty(),
        "refused CreateGroups created {:?}",
        states
            .iter()
            .map(|s| &s.conversation_id)
            .collect::<Vec<_>>()
    );
    Ok(())
}

async fn admin_rules(ctx: Arc<ServerCtx>) -> CaseResult {
    let (owner, member, late) = (ctx.user("owner"), ctx.user("member"), ctx.user("late"));
    let mut o = ctx.session(&owner, "d").await?;
    let mut m = ctx.session(&member, "d").await?;
    let group = create_group(&mut o, "team", &[&member]).await?;
    let direct = ctx.direct(&owner, &member);
    let unknown = ids::group_conversation_id(rand::random());
    let expect =
        |got: Result<(String, u64), ErrorCode>, code: ErrorCode, what: &str| -> CaseResult {
            ensure_eq!(got.err(), Some(code), "{what}");
            Ok(())
        };
    expect(
        m.add_member(&group, &late).await?,
        ErrorCode::FORBIDDEN,
        "AddMember by a non-owner",
    )?;
    expect(
        o.add_member(&group, &member).await?,
        ErrorCode::INVALID_ARGUMENT,
        "AddMember of a current member",
    )?;
    expect(
        o.add_member(&direct, &late).await?,
        ErrorCode::FORBIDDEN,
        "AddMember on a direct conversation",
    )?;
    expect(
        o.add_member(&unknown, &late).await?,
        ErrorCode::NOT_FOUND,
        "AddMember on an unknown group",
    )?;
    expect(
        o.add_member(&group, "bad user").await?,
        ErrorCode::INVALID_ARGUMENT,
        "AddMember of a malformed user id",
    )?;
    expect(
        o.add_member("nonsense", &late).await?,
        ErrorCode::INVALID_ARGUMENT,
        "AddMember on a malformed conversation id",
    )?;
    expect(
        m.remove_member(&group, &owner).await?,
        ErrorCode::FORBIDDEN,
        "RemoveMember of the owner by a member",
    )?;
    expect(
        o.remove_member(&group, &late).await?,
        ErrorCode::INVALID_ARGUMENT,
        "RemoveMember of a non-member",
    )?;
    expect(
        o.remove_member(&unknown, &member).await?,
        ErrorCode::NOT_FOUND,
        "RemoveMember on an unknown group",
    )?;
    let (id, seq) = o.add_member(&group, &late).await?.map_err(|c| {
        crate::runner::Verdict::Fail(format!("AddMember by the owner refused with {c:?}"))
    })?;
    ensure_eq!(
        (id.as_str(), seq),
        (group.as_str(), 2),
        "GroupResult of AddMember"
    );
    let (_, seq) = o.remove_member(&group, &late).await?.map_err(|c| {
        crate::runner::Verdict::Fail(format!("RemoveMember by the owner refused with {c:?}"))
    })?;
    ensure_eq!(seq, 3, "GroupResult.seq of RemoveMember");
    Ok(())
}

async fn late_joiner(ctx: Arc<ServerCtx>) -> CaseResult {
    let (owner, late) = (ctx.user("owner"), ctx.user("late"));
    let mut o = ctx.session(&owner, "d").await?;
    let group = create_group(&mut o, "team", &[]).await?;
    let mut s = o.open(&group).await?;
    s.send_and_ack("early", b"before the joiner").await?;
    let (_, added_at) = o
        .add_member(&group, &late)
        .await?
        .map_err(|c| crate::runner::Verdict::Fail(format!("AddMember refused with {c:?}")))?;
    ensure_eq!(added_at, 3, "seq of ADDED");
    let mut l = ctx.session(&late, "d").await?;
    let mut ls = l.open(&group).await?;
    let page = ls.pull(0, 0).await?;
    ensure_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![3],
        "seqs a late joiner pulls from 0"
    );
    let change = page.messages[0].membership.clone().unwrap_or_default();
    ensure_eq!(
        (change.action(), change.users),
        (MembershipAction::Added, vec![late.clone()]),
        "(action, users) of ADDED"
    );
    let states = l.sync(0, 0).await?.conversations;
    let st = states
        .iter()
        .find(|c| c.conversation_id == group)
        .cloned()
        .unwrap_or_default();
    ensure_eq!(
        (st.first_seq, st.head_seq),
        (3, 3),
        "(first_seq, head_seq) of the joiner"
    );
    ensure!(
        st.read_seq >= 2 && st.unread_count <= 1,
        "joiner's read_seq {} / unread {} count history they cannot read",
        st.read_seq,
        st.unread_count
    );
    Ok(())
}

async fn removed_member(ctx: Arc<ServerCtx>) -> CaseResult {
    let (owner, member) = (ctx.user("owner"), ctx.user("member"));
    let mut o = ctx.session(&owner, "d").await?;
    let mut m = ctx.session(&member, "d").await?;
    let group = create_group(&mut o, "team", &[&member]).await?;
    let mut os = o.open(&group).await?;
    os.send_and_ack("m2", b"2").await?;
    // The member keeps a stream open across the removal, on which it has already sent (FERRY-SEC-4:
    // checked on every operation, not once per stream).
    let mut open_before = m.open(&group).await?;
    open_before.pull(0, 0).await?;
    open_before.send_and_ack("m3", b"3").await?;
    let (_, left_at) = o
        .remove_member(&group, &member)
        .await?
        .map_err(|c| crate::runner::Verdict::Fail(format!("RemoveMember refused with {c:?}")))?;
    ensure_eq!(left_at, 4, "seq of REMOVED");
    os.send_and_ack("m4", b"after removal").await?;
    open_before.send_message("late-send", b"x").await?;
    let e = expect_error(
        open_before.next_non_deliver("Error").await?,
        ErrorCode::FORBIDDEN,
    )?;
    ensure_eq!(e.client_msg_id, "late-send", "Error.client_msg_id");
    let mut gone = m.open(&group).await?;
    let page = gone.pull(0, 0).await?;
    ensure_eq!(page.head_seq, 4, "visible head of a removed member");
    ensure_eq!(
        page.messages.last().map(|m| m.seq),
        Some(4),
        "last seq a removed member pulls"
    );
    ensure!(!page.has_more, "has_more for a removed member at left_seq");
    let states = m.sync(0, 0).await?.conversations;
    let st = states
        .iter()
        .find(|c| c.conversation_id == group)
        .cloned()
        .unwrap_or_default();
    ensure_eq!(
        (st.member, st.head_seq),
        (false, 4),
        "(member, head_seq) in Sync of a removed member"
    );
    Ok(())
}

async fn owner_leaves(ctx: Arc<ServerCtx>) -> CaseResult {
    let (owner, a, b) = (ctx.user("owner"), ctx.user("a"), ctx.user("b"));
    let mut o = ctx.session(&owner, "d").await?;
    let mut sa = ctx.session(&a, "d").await?;
    let group = create_group(&mut o, "team", &[&a, &b]).await?;
    o.remove_member(&group, &owner).await?.map_err(|c| {
        crate::runner::Verdict::Fail(format!("the owner leaving was refused with {c:?}"))
    })?;
    ensure_eq!(
        sa.remove_member(&group, &b).await?.err(),
        Some(ErrorCode::FORBIDDEN),
        "a member removing another after the owner left"
    );
    sa.remove_member(&group, &a).await?.map_err(|c| {
        crate::runner::Verdict::Fail(format!("leaving an ownerless group was refused with {c:?}"))
    })?;
    Ok(())
}

async fn open_rules(ctx: Arc<ServerCtx>) -> CaseResult {
    let (alice, bob, carol, owner) = (
        ctx.user("alice"),
        ctx.user("bob"),
        ctx.user("carol"),
        ctx.user("owner"),
    );
    let mut o = ctx.session(&owner, "d").await?;
    let group = create_group(&mut o, "private", &[]).await?;
    let session = ctx.session(&alice, "d").await?;
    let (lo, hi) = if bob < carol {
        (&bob, &carol)
    } else {
        (&carol, &bob)
    };
    let reversed = format!("d:{hi}:{lo}");
    let cases = [
        (
            "not-a-conversation".to_owned(),
            ErrorCode::INVALID_ARGUMENT,
            "malformed id",
        ),
        (
            format!("d:{alice}:{alice}"),
            ErrorCode::INVALID_ARGUMENT,
            "direct id with the same user twice",
        ),
        (
            reversed,
            ErrorCode::INVALID_ARGUMENT,
            "direct id not in canonical order",
        ),
        (
            format!("g:{}", "A".repeat(32)),
            ErrorCode::INVALID_ARGUMENT,
            "group id with upper-case hex",
        ),
        (
            ctx.direct(&bob, &carol),
            ErrorCode::FORBIDDEN,
            "someone else's direct conversation",
        ),
        (
            ids::group_conversation_id(rand::random()),
            ErrorCode::NOT_FOUND,
            "unknown group",
        ),
        (
            group,
            ErrorCode::FORBIDDEN,
            "group of which the user never was a member",
        ),
    ];
    for (id, code, what) in cases {
        let mut stream = session.open(&id).await?;
        // Frames pipelined behind a refused Open are discarded unanswered.
        stream.send_message("behind-open", b"x").await.ok();
        if let Err(v) = expect_refused(&mut stream, code).await {
            fail!("Open of {what} ({id}): {v:?}");
        }
    }
    // A direct conversation of one's own opens (and is created on first use).
    let mut s = session.open(&ctx.direct(&alice, &bob)).await?;
    ensure_eq!(
        s.pull(0, 0).await?.head_seq,
        0,
        "head of a new direct conversation"
    );
    Ok(())
}
