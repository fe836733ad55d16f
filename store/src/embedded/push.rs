//! Push registrations in the embedded store: one redb table, written directly in its own small
//! transaction. They are rare, tiny and independent of the message log, so they bypass the writer and
//! the log (no group commit needed); redb's commit makes each change durable before the call returns.

use prost::Message as _;
use redb::{ReadableTable, TableDefinition, TableError};

use super::{backend, Shared};
use crate::{PushRecord, StoreError, MAX_PUSH_DEVICES_PER_USER};

/// `(user, device)` → prost-encoded [`PushRecord`].
const PUSH: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("push");

/// Stores `record` for (`user`, `device`), replacing an earlier one; refuses a device beyond
/// [`MAX_PUSH_DEVICES_PER_USER`].
pub(super) fn put(
    shared: &Shared,
    user: &str,
    device: &str,
    record: &PushRecord,
) -> Result<(), StoreError> {
    let txn = shared.begin_write()?;
    {
        let mut table = txn.open_table(PUSH).map_err(backend)?;
        let exists = table.get((user, device)).map_err(backend)?.is_some();
        if !exists {
            let count = table
                .range((user, "")..)
                .map_err(backend)?
                .take_while(|row| row.as_ref().is_ok_and(|(k, _)| k.value().0 == user))
                .count();
            if count >= MAX_PUSH_DEVICES_PER_USER {
                return Err(crate::push::too_many_devices());
            }
        }
        table
            .insert((user, device), record.encode_to_vec().as_slice())
            .map_err(backend)?;
    }
    txn.commit().map_err(backend)
}

/// Removes the registration of (`user`, `device`); whether there was one.
pub(super) fn delete(shared: &Shared, user: &str, device: &str) -> Result<bool, StoreError> {
    let txn = shared.begin_write()?;
    let removed = {
        let mut table = txn.open_table(PUSH).map_err(backend)?;
        let removed = table.remove((user, device)).map_err(backend)?.is_some();
        removed
    };
    txn.commit().map_err(backend)?;
    Ok(removed)
}

/// Every registration of `user`'s devices, by device id.
pub(super) fn list(shared: &Shared, user: &str) -> Result<Vec<(String, PushRecord)>, StoreError> {
    let txn = shared.begin_read()?;
    let table = match txn.open_table(PUSH) {
        Ok(table) => table,
        // Nobody ever registered: the table is created by the first write.
        Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(backend(e)),
    };
    let mut out = Vec::new();
    for row in table.range((user, "")..).map_err(backend)? {
        let (key, value) = row.map_err(backend)?;
        let (row_user, device) = key.value();
        if row_user != user || out.len() >= MAX_PUSH_DEVICES_PER_USER {
            break;
        }
        let record = PushRecord::decode(value.value()).map_err(backend)?;
        out.push((device.to_owned(), record));
    }
    Ok(out)
}
