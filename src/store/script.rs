//! Lua scripts, assembled from pieces: a header that Rust generates, the shared pieces under
//! `lua/`, and the script's own body.
//!
//! What both sides must agree on is written in the pieces as named constants, each taken from
//! the one place it is kept on the Rust side and put in as a literal when the script is
//! assembled (so a script run pays nothing for them, and a name that does not exist stops the
//! assembly): the session hash's field codes (`FIELD.<name>`, from `hash.rs`), the outbox entry's
//! field codes and consumer group (`EVENT.<name>`, `GROUP`, from `outbox.rs`), the key kinds a
//! script derives keys with (`KIND.<name>`, from `keys.rs`), the reasons a session ends
//! (`REASON.<name>`, from the domain), the statuses a command script answers (`STATUS.<name>`,
//! from `ops`) and the instance's policy (`LIFETIME`, `IDLE`, `MAX_PER_USER`, `TTL_MARGIN`,
//! `SEEN_EVERY`).
//! The header binds the script's `KEYS` and `ARGV` to the names of its [`Layout`], which the
//! Rust side calls it with ([`Call`] checks the names in debug builds).
//!
//! Every piece states at its top what it `needs` and what it `provides`; a test checks that each
//! need is met by a constant, the header or an earlier piece. A Lua error that Redis reports
//! names the piece and the line within it, not the line of the assembled text.

use std::collections::HashMap;

use redis::{FromRedisValue, Script, ScriptInvocation, ToRedisArgs};

use super::{
    hash::HashField,
    keys::kind,
    ops::status,
    outbox::{EventField, GROUP},
    Policy, RedisConnection, StoreError, SEEN_EVERY, TTL_MARGIN,
};
use crate::domain::CloseReason;

/// A piece of Lua: its file name and text.
#[derive(Debug, Clone, Copy)]
pub(super) struct Piece {
    pub name: &'static str,
    pub text: &'static str,
}

/// The idempotency record of a command: answers a repeat, records the outcome (`finish`).
pub(super) const RECORD: Piece = Piece {
    name: "record.lua",
    text: include_str!("lua/record.lua"),
};
/// Redis's clock, derived keys, and `end_session`.
pub(super) const BUCKET: Piece = Piece {
    name: "bucket.lua",
    text: include_str!("lua/bucket.lua"),
};
/// Whether a session is live (`live`, `live_device`) and the idle deadline (`touch`).
pub(super) const LIVE: Piece = Piece {
    name: "live.lua",
    text: include_str!("lua/live.lua"),
};
/// The pieces every command script starts with.
pub(super) const COMMAND_PIECES: &[Piece] = &[RECORD, BUCKET, LIVE];

/// How the header reads one argument.
#[derive(Debug, Clone, Copy)]
pub(super) enum Arg {
    /// A string, as given.
    Text(&'static str),
    /// A number (`tonumber`).
    Number(&'static str),
}

impl Arg {
    fn name(self) -> &'static str {
        match self {
            Arg::Text(name) | Arg::Number(name) => name,
        }
    }
}

/// A script as written: its file name, its body, the shared pieces that go before it and the
/// names of its keys and arguments.
#[derive(Debug)]
pub(super) struct Source {
    pub name: &'static str,
    pub text: &'static str,
    pub pieces: &'static [Piece],
    pub layout: Layout,
}

/// The keys every command script starts with: its idempotency record, its bucket's schedule and
/// outbox (added by `ops::CommandCall::call`).
const COMMAND_KEYS: &[&str] = &["record_key", "schedule_key", "outbox_key"];
/// The arguments every command script starts with: how long to keep its record (0: it has no
/// idempotency key), the digests of its fingerprint (comma-separated, the one to record
/// first) and its bucket's key base.
const COMMAND_ARGS: &[Arg] = &[
    Arg::Number("record_ttl"),
    Arg::Text("digests"),
    Arg::Text("base"),
];

/// The names of a script's `KEYS` and `ARGV`, in order.
#[derive(Debug)]
pub(super) struct Layout {
    /// A command script's keys and arguments start with [`COMMAND_KEYS`] and [`COMMAND_ARGS`].
    pub command_script: bool,
    pub keys: &'static [&'static str],
    pub args: &'static [Arg],
    /// The name under which the header gives the index of the first argument after the named
    /// ones, for a script that takes a list of any length there.
    pub rest: Option<&'static str>,
}

impl Layout {
    /// Every key name, in order.
    fn all_keys(&self) -> Vec<&'static str> {
        let leading = if self.command_script {
            COMMAND_KEYS
        } else {
            &[]
        };
        leading.iter().chain(self.keys).copied().collect()
    }

    /// Every named argument, in order.
    fn all_args(&self) -> Vec<Arg> {
        let leading = if self.command_script {
            COMMAND_ARGS
        } else {
            &[]
        };
        leading.iter().chain(self.args).copied().collect()
    }
}

/// The tables of named constants: a piece writes `FIELD.user_id`.
const TABLES: [&str; 5] = ["FIELD", "EVENT", "KIND", "REASON", "STATUS"];
/// The single constants: a piece writes `GROUP`.
const SCALARS: [&str; 6] = [
    "GROUP",
    "LIFETIME",
    "IDLE",
    "MAX_PER_USER",
    "TTL_MARGIN",
    "SEEN_EVERY",
];

/// The constants of one store's scripts, by the name the pieces write, as Lua literals.
#[derive(Debug, Clone)]
pub(super) struct Constants {
    values: HashMap<String, String>,
}

impl Constants {
    pub fn new(policy: &Policy) -> Self {
        let mut values = HashMap::new();
        let mut table = |table: &str, entries: &mut dyn Iterator<Item = (&str, &str)>| {
            for (name, value) in entries {
                values.insert(format!("{table}.{name}"), quoted(value));
            }
        };
        table(
            "FIELD",
            &mut HashField::TABLE.iter().map(|(_, n, code)| (*n, *code)),
        );
        table(
            "EVENT",
            &mut EventField::TABLE.iter().map(|(_, n, code)| (*n, *code)),
        );
        table(
            "KIND",
            &mut [("session", kind::SESSION), ("index", kind::INDEX)].into_iter(),
        );
        table(
            "REASON",
            &mut CloseReason::ALL.iter().map(|r| (r.as_str(), r.as_str())),
        );
        table("STATUS", &mut status::ALL.iter().map(|s| (*s, *s)));
        let millis = |duration: std::time::Duration| (duration.as_millis() as u64).to_string();
        values.insert("GROUP".into(), quoted(GROUP));
        values.insert("LIFETIME".into(), millis(policy.lifetime));
        values.insert("IDLE".into(), policy.idle.map_or("0".into(), millis));
        values.insert(
            "MAX_PER_USER".into(),
            policy.max_per_user.unwrap_or(0).to_string(),
        );
        values.insert("TTL_MARGIN".into(), millis(TTL_MARGIN));
        values.insert("SEEN_EVERY".into(), millis(SEEN_EVERY));
        Self { values }
    }

    /// `text` (the piece `piece`) with every constant put in as its literal; comments and
    /// strings are left as they are, and so are the lines. Panics at a `TABLE.name` that names
    /// nothing: a mistake in a piece, found when the script is assembled.
    fn put_in(&self, piece: &str, text: &str) -> String {
        let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if rest.starts_with("--") {
                let end = rest.find('\n').unwrap_or(rest.len());
                out.push_str(&rest[..end]);
                rest = &rest[end..];
            } else if c == '\'' || c == '"' {
                let mut end = 1;
                let bytes = rest.as_bytes();
                while end < bytes.len() && bytes[end] != c as u8 && bytes[end] != b'\n' {
                    end += if bytes[end] == b'\\' { 2 } else { 1 };
                }
                let end = (end + 1).min(rest.len());
                out.push_str(&rest[..end]);
                rest = &rest[end..];
            } else if c.is_ascii_alphabetic() || c == '_' {
                let word = rest.find(|c: char| !is_word(c)).unwrap_or(rest.len());
                let mut token = &rest[..word];
                let after = &rest[word..];
                if TABLES.contains(&token) && after.starts_with('.') {
                    let name = after[1..]
                        .find(|c: char| !is_word(c))
                        .unwrap_or(after.len() - 1);
                    token = &rest[..word + 1 + name];
                    let value = self.values.get(token).unwrap_or_else(|| {
                        panic!("{piece}: {token} is no constant the Rust side defines")
                    });
                    out.push_str(value);
                } else if SCALARS.contains(&token) {
                    out.push_str(&self.values[token]);
                } else {
                    out.push_str(token);
                }
                rest = &rest[token.len()..];
            } else {
                // A number or a name that goes on after a dot (`redis.call`) is copied as is.
                let end = rest
                    .find(|c: char| !(is_word(c) || c == '.'))
                    .unwrap_or(rest.len());
                let end = end.max(c.len_utf8());
                out.push_str(&rest[..end]);
                rest = &rest[end..];
            }
        }
        out
    }
}

/// A Lua string literal of `value`.
fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The header that binds a layout's keys and arguments to their names.
fn bindings(layout: &Layout) -> String {
    let (keys, args) = (layout.all_keys(), layout.all_args());
    let mut text = String::new();
    let bind = |names: Vec<&str>, values: Vec<String>| {
        if names.is_empty() {
            String::new()
        } else {
            format!("local {} = {}\n", names.join(", "), values.join(", "))
        }
    };
    text += &bind(
        keys.clone(),
        (1..=keys.len()).map(|at| format!("KEYS[{at}]")).collect(),
    );
    text += &bind(
        args.iter().map(|arg| arg.name()).collect(),
        args.iter()
            .enumerate()
            .map(|(at, arg)| match arg {
                Arg::Text(_) => format!("ARGV[{}]", at + 1),
                Arg::Number(_) => format!("tonumber(ARGV[{}])", at + 1),
            })
            .collect(),
    );
    if let Some(rest) = layout.rest {
        text += &format!("local {rest} = {}\n", args.len() + 1);
    }
    text
}

/// How Redis names a line of a script in its errors: `user_script:<line>`.
const SCRIPT_LINE: &str = "user_script:";

/// Where a piece starts in the assembled text.
#[derive(Debug)]
struct Section {
    name: &'static str,
    first_line: usize,
    lines: usize,
}

/// One assembled script, loaded into Redis once and then called by its SHA.
#[derive(Debug)]
pub(super) struct LuaScript {
    script: Script,
    layout: &'static Layout,
    sections: Vec<Section>,
}

impl LuaScript {
    /// The script of `source`, after the generated header and its pieces.
    pub fn assemble(source: &'static Source, constants: &Constants) -> Self {
        let Source {
            name,
            text,
            pieces,
            ref layout,
        } = *source;
        let header = format!(
            "-- header, generated by store/script.rs: KEYS and ARGV by name\n{}",
            bindings(layout)
        );
        let mut assembled = String::new();
        let mut sections = Vec::new();
        let parts = std::iter::once(("header", header.as_str()))
            .chain(pieces.iter().map(|piece| (piece.name, piece.text)))
            .chain([(name, text)]);
        for (name, text) in parts {
            let text = constants.put_in(name, text);
            let text = text.trim_end();
            sections.push(Section {
                name,
                first_line: assembled.lines().count() + 1,
                lines: text.lines().count(),
            });
            assembled.push_str(text);
            assembled.push('\n');
        }
        Self {
            script: Script::new(&assembled),
            layout,
            sections,
        }
    }

    /// A call of this script, to which the caller adds keys and arguments in layout order.
    pub fn call(&self) -> Call<'_> {
        Call {
            script: self,
            invocation: self.script.prepare_invoke(),
            keys: 0,
            args: 0,
        }
    }

    /// `name:line` of the piece holding line `line` of the assembled text.
    fn locate(&self, line: usize) -> Option<String> {
        self.sections
            .iter()
            .find(|section| {
                (section.first_line..section.first_line + section.lines).contains(&line)
            })
            .map(|section| format!("{}:{}", section.name, line - section.first_line + 1))
    }

    /// The message of a Redis error, with every `user_script:<line>` replaced by the piece and
    /// its own line.
    fn located(&self, message: &str) -> String {
        const MARK: &str = SCRIPT_LINE;
        let mut out = String::with_capacity(message.len());
        let mut rest = message;
        while let Some(at) = rest.find(MARK) {
            out.push_str(&rest[..at]);
            let after = &rest[at + MARK.len()..];
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            match after[..digits]
                .parse()
                .ok()
                .and_then(|line| self.locate(line))
            {
                Some(located) => out.push_str(&located),
                None => out.push_str(&rest[at..at + MARK.len() + digits]),
            }
            rest = &after[digits..];
        }
        out.push_str(rest);
        out
    }
}

/// One call of a [`LuaScript`] being put together.
pub(super) struct Call<'a> {
    script: &'a LuaScript,
    invocation: ScriptInvocation<'a>,
    keys: usize,
    args: usize,
}

impl Call<'_> {
    /// Adds the next key, which the layout names `name`.
    pub fn key(&mut self, name: &str, key: impl ToRedisArgs) -> &mut Self {
        debug_assert_eq!(self.script.layout.all_keys().get(self.keys), Some(&name));
        self.keys += 1;
        self.invocation.key(key);
        self
    }

    /// Adds the next named argument.
    pub fn arg(&mut self, name: &str, value: impl ToRedisArgs) -> &mut Self {
        debug_assert_eq!(
            self.script
                .layout
                .all_args()
                .get(self.args)
                .map(|arg| arg.name()),
            Some(name)
        );
        self.args += 1;
        self.invocation.arg(value);
        self
    }

    /// Adds an argument to the list after the named ones.
    pub fn rest(&mut self, value: impl ToRedisArgs) -> &mut Self {
        debug_assert!(self.script.layout.rest.is_some());
        debug_assert_eq!(self.args, self.script.layout.all_args().len());
        self.invocation.arg(value);
        self
    }

    /// Runs the script.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        connection: &RedisConnection,
    ) -> Result<T, StoreError> {
        debug_assert_eq!(self.keys, self.script.layout.all_keys().len());
        debug_assert_eq!(self.args, self.script.layout.all_args().len());
        let mut connection = connection.clone();
        self.invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|error| match StoreError::from(error) {
                // An error raised while the script ran (Redis names it by its line there).
                StoreError::Redis(error) if error.to_string().contains(SCRIPT_LINE) => {
                    StoreError::Script(self.script.located(&error.to_string()))
                }
                other => other,
            })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::HashSet;

    use super::*;

    /// The names after `label:` in a piece's top comment (which may continue on `--   ` lines).
    fn declared(text: &str, label: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut inside = false;
        for line in text.lines().take_while(|line| line.starts_with("--")) {
            let continued = line.starts_with("--   ");
            let line = line.trim_start_matches('-').trim();
            if let Some(list) = line.strip_prefix(label) {
                inside = true;
                names.extend(list.split(',').map(|n| n.trim().to_owned()));
            } else if inside && continued {
                names.extend(line.split(',').map(|n| n.trim().to_owned()));
            } else {
                inside = false;
            }
        }
        names.retain(|name| !name.is_empty());
        names
    }

    /// The words of the code of `text`, comments left out.
    fn words(text: &str) -> HashSet<&str> {
        text.lines()
            .map(|line| line.split("--").next().unwrap_or_default())
            .flat_map(|code| code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
            .filter(|word| !word.is_empty())
            .collect()
    }

    /// Checks that every need of every piece of a script is met by the header or an earlier
    /// piece, that a piece uses nothing of an earlier piece nor a constant that it does not
    /// declare as a need, and that each piece defines what it says it provides.
    pub fn check_pieces(source: &Source) {
        let layout = &source.layout;
        let body = Piece {
            name: source.name,
            text: source.text,
        };
        // What earlier pieces define and the constants: a piece must declare what it uses of
        // them. (The layout's names are left out: pieces use the same words for parameters.)
        let mut shared: HashSet<String> = TABLES
            .iter()
            .chain(&SCALARS)
            .map(|n| n.to_string())
            .collect();
        let mut provided = shared.clone();
        provided.extend(layout.all_keys().iter().map(|n| n.to_string()));
        provided.extend(layout.all_args().iter().map(|arg| arg.name().to_owned()));
        provided.extend(layout.rest.map(str::to_owned));
        for piece in source.pieces.iter().chain([&body]) {
            assert!(
                piece.text.starts_with("-- "),
                "{} starts with a comment saying what it does",
                piece.name
            );
            let needs = declared(piece.text, "needs:");
            for need in &needs {
                assert!(
                    provided.contains(need),
                    "{} needs {need}, which nothing before it provides",
                    piece.name
                );
            }
            for used in words(piece.text) {
                assert!(
                    !shared.contains(used) || needs.iter().any(|need| need == used),
                    "{} uses {used} without saying that it needs it",
                    piece.name
                );
            }
            for name in declared(piece.text, "provides:") {
                let defined = piece.text.contains(&format!("local function {name}("))
                    || piece.text.lines().any(|line| {
                        line.strip_prefix("local ")
                            .and_then(|l| l.split('=').next())
                            .is_some_and(|names| names.split(',').any(|n| n.trim() == name))
                    });
                assert!(
                    defined,
                    "{} says it provides {name} but does not define it",
                    piece.name
                );
                shared.insert(name.clone());
                provided.insert(name);
            }
        }
    }

    #[test]
    fn errors_name_the_piece_and_its_own_line() {
        static SOURCE: Source = Source {
            name: "body.lua",
            text: "-- a body\nreturn 1\n",
            pieces: &[RECORD],
            layout: Layout {
                command_script: true,
                keys: &[],
                args: &[],
                rest: None,
            },
        };
        let constants = Constants::new(&Policy {
            lifetime: std::time::Duration::from_secs(60),
            idle: None,
            max_per_user: None,
            record_retention: std::time::Duration::from_secs(60),
        });
        let script = LuaScript::assemble(&SOURCE, &constants);
        let record = &script.sections[1];
        let body = &script.sections[2];
        assert_eq!(record.name, "record.lua");
        let message = format!(
            "ERR user_script:{}: boom script: abc, on @user_script:{}.",
            body.first_line + 1,
            record.first_line
        );
        assert_eq!(
            script.located(&message),
            "ERR body.lua:2: boom script: abc, on @record.lua:1."
        );
        assert_eq!(script.located("no line here"), "no line here");
    }

    #[test]
    fn every_shared_piece_meets_its_needs_in_command_order() {
        check_pieces(&Source {
            name: "end.lua",
            text: "-- nothing\n-- needs: finish, live, live_device, touch, end_session\n",
            pieces: COMMAND_PIECES,
            layout: Layout {
                command_script: true,
                keys: &[],
                args: &[],
                rest: None,
            },
        });
    }
}
