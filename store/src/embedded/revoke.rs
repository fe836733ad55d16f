//! Token revocation stamps in the embedded store: one redb table, written directly in its own small
//! transaction, like push registrations. Revocations are rare and independent of the message log; a
//! redb commit makes each one durable before the call returns.

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::{backend, Shared};
use crate::revoke::{device_key, ALL_DEVICES};
use crate::StoreError;

/// `(user, device)` → Unix seconds; device `""` is the stamp for every device of the user.
const REVOKED: TableDefinition<(&str, &str), u64> = TableDefinition::new("revoked");

/// Raises the stamp of (`user`, `device`) to `at_s` (never lowers it); returns the stored stamp.
pub(super) fn revoke(
    shared: &Shared,
    user: &str,
    device: Option<&str>,
    at_s: u64,
) -> Result<u64, StoreError> {
    let key = (user, device_key(device));
    let txn = shared
        .db
        .get()
        .map_err(backend)?
        .begin_write()
        .map_err(backend)?;
    let stored = {
        let mut table = txn.open_table(REVOKED).map_err(backend)?;
        let before = table.get(key).map_err(backend)?.map_or(0, |v| v.value());
        let stored = before.max(at_s);
        table.insert(key, stored).map_err(backend)?;
        stored
    };
    txn.commit().map_err(backend)?;
    Ok(stored)
}

/// The stamp that applies to `device` of `user`: the later of the user-wide and the device's own.
pub(super) fn revoked_at(shared: &Shared, user: &str, device: &str) -> Result<u64, StoreError> {
    let txn = shared
        .db
        .get()
        .map_err(backend)?
        .begin_read()
        .map_err(backend)?;
    let table = match txn.open_table(REVOKED) {
        Ok(table) => table,
        // Nothing was ever revoked: the table is created by the first revocation.
        Err(TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(backend(e)),
    };
    let mut stamp = 0;
    for key in [(user, ALL_DEVICES), (user, device)] {
        if let Some(value) = table.get(key).map_err(backend)? {
            stamp = stamp.max(value.value());
        }
    }
    Ok(stamp)
}
