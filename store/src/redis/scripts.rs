//! The Lua scripts (in `lua/`, each prefixed with `lua/common.lua`) and how they are invoked: EVALSHA,
//! with SCRIPT LOAD and a retry when Redis answers NOSCRIPT (after a restart or SCRIPT FLUSH).

use redis::{Cmd, Script};

macro_rules! lua {
    ($file:literal) => {
        concat!(
            include_str!("lua/common.lua"),
            include_str!(concat!("lua/", $file))
        )
    };
}

/// Every script, created (and hashed) once per store.
pub(crate) struct Scripts {
    pub(crate) append: Script,
    pub(crate) ensure_direct: Script,
    pub(crate) membership: Script,
    pub(crate) set_read: Script,
    pub(crate) set_delivered: Script,
    pub(crate) state: Script,
    pub(crate) store_epoch: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            append: Script::new(lua!("append.lua")),
            ensure_direct: Script::new(lua!("ensure_direct.lua")),
            membership: Script::new(lua!("membership.lua")),
            set_read: Script::new(lua!("set_read.lua")),
            set_delivered: Script::new(lua!("set_delivered.lua")),
            state: Script::new(lua!("state.lua")),
            store_epoch: Script::new(lua!("store_epoch.lua")),
        }
    }
}

/// An `EVALSHA` of `script` as a plain command, for pipelines (which the `redis` crate's `Script` does
/// not build). The caller handles NOSCRIPT.
pub(crate) fn evalsha(script: &Script, keys: &[String], args: &[&[u8]]) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
    for arg in args {
        cmd.arg(*arg);
    }
    cmd
}

/// The `EVAL` form of a command [`evalsha`] built (or of an `EVAL`): the same key count, keys and
/// arguments, with `source` in place of the hash, so Redis caches the script if it lacks it.
pub(crate) fn eval_with_source(cmd: &Cmd, source: &str) -> Cmd {
    let mut eval = redis::cmd("EVAL");
    eval.arg(source);
    // Skip the command name and the hash (or source); `evalsha` writes plain arguments only.
    for arg in cmd.args_iter().skip(2) {
        if let redis::Arg::Simple(bytes) = arg {
            eval.arg(bytes);
        }
    }
    eval
}

/// `SCRIPT LOAD` of a script's source, for the node(s) that answered NOSCRIPT.
pub(crate) fn load(code: &str) -> Cmd {
    let mut cmd = redis::cmd("SCRIPT");
    cmd.arg("LOAD").arg(code);
    cmd
}

/// The source of the append script (the pipeline reloads it by itself).
pub(crate) const APPEND_SOURCE: &str = lua!("append.lua");
