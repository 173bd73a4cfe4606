//! The Lua scripts on the real Redis: an error inside a script is reported with the piece it
//! happened in and the line within that piece, not the line of the assembled script.

use std::time::Duration;

use session_manager::{
    domain::{Command, UserId},
    store::{Bucket, Keys, StoreError},
};

use crate::helpers::StoreAlone;

/// The line (from 1) of `source` that contains `needle`, which must occur once.
fn line_of(source: &str, needle: &str) -> usize {
    let lines: Vec<usize> = source
        .lines()
        .enumerate()
        .filter(|(_, line)| line.contains(needle))
        .map(|(at, _)| at + 1)
        .collect();
    assert_eq!(lines.len(), 1, "{needle:?} in {lines:?}");
    lines[0]
}

fn script_error(result: Result<impl std::fmt::Debug, StoreError>) -> String {
    match result {
        Err(StoreError::Script(message)) => message,
        other => panic!("expected a script error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_lua_error_names_the_piece_and_its_own_line() {
    let mut alone = StoreAlone::open(Duration::from_secs(60), None, None).await;
    let keys = Keys::new(&alone.settings.key_prefix);

    // A session key holding a string: the delete script's HMGET fails in delete.lua.
    let session = Bucket::of_user(&UserId::parse("u".into()).unwrap()).new_session_id();
    let _: () = redis::cmd("SET")
        .arg(keys.session(&session))
        .arg("not a hash")
        .query_async(&mut alone.redis)
        .await
        .unwrap();
    let deleted = alone
        .store
        .apply(&Command::DeleteSession(session.clone()), None)
        .await;
    let message = script_error(deleted);
    let delete_lua = include_str!("../../src/store/ops/delete.lua");
    let expected = format!("delete.lua:{}", line_of(delete_lua, "'HMGET'"));
    assert!(message.contains(&expected), "{message:?} names {expected}");
    assert!(message.contains("WRONGTYPE"), "{message}");
    assert!(!message.contains("user_script"), "{message}");

    // An outbox key holding a string: ending a session fails in the shared piece bucket.lua.
    let live = alone.create("phone").await;
    let _: () = redis::cmd("SET")
        .arg(keys.outbox(Bucket::of_session(&live)))
        .arg("not a stream")
        .query_async(&mut alone.redis)
        .await
        .unwrap();
    let message = script_error(
        alone
            .store
            .apply(&Command::DeleteSession(live.clone()), None)
            .await,
    );
    let bucket_lua = include_str!("../../src/store/lua/bucket.lua");
    let expected = format!("bucket.lua:{}", line_of(bucket_lua, "'XADD'"));
    assert!(message.contains(&expected), "{message:?} names {expected}");
    alone.clean_up().await;
}
